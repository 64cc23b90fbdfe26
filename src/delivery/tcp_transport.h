// The built-in `tcp` transport (SPEC section 4): one line per delivery attempt over a pooled
// TCP connection.
//
// Operation
// * URI: exactly `tcp://host:port`. host is an IPv4 literal, an IPv6 literal in brackets or a
//   name (resolved asynchronously, once per new connection); port is 1-65535. Nothing else is
//   accepted: no path (not even "/"), query, fragment or user info. The scheme and the host are
//   case-insensitive; destination() is "tcp://<lower-case host>:<port>".
// * `callback.method` means nothing to tcp: any non-empty value is accepted and ignored.
// * Wire format: the payload followed by one '\n'. Payload = the `data` string byte for byte,
//   or the JSON object text as stored (Boost.JSON serialize: compact, and a newline inside a
//   JSON string is always escaped, so an object payload never contains a raw '\n'), or nothing
//   when the timer has no data (the line is then just "\n"). A string payload is sent as is,
//   raw newlines included: a receiver that splits on lines must not be given string payloads
//   that contain '\n'. Nothing identifies the timer or the attempt on the wire.
// * Outcome: kSuccess once the whole line was written into the connection (handed to the
//   kernel; tcp has no acknowledgement). Connect failures (refused, unreachable, name not
//   resolved), a connection reset or closed while writing and a timeout are kRetryable. The
//   attempt ends `job.timeout_ms` after it reached the transport's thread (waiting for a
//   connection, connecting and writing all count; `default_timeout_ms` when the job has none).
// * Pool per destination: at most max_connections_per_destination connections; an attempt
//   takes an idle one, opens a new one below the limit (and below max_connections_total,
//   closing an idle connection of another destination to make room), or waits in the
//   destination's FIFO. After a successful write the connection serves the next waiting attempt
//   or goes idle (closed after idle_timeout_ms unused). Connections have TCP_NODELAY and, unless
//   disabled, SO_KEEPALIVE.
// * Liveness of pooled connections: the protocol is one-way, so every connection keeps one read
//   pending. Whatever it returns (EOF, reset, any byte from the peer) retires the connection:
//   at once if it is idle, after the current write otherwise. Before an idle connection is
//   reused it is also checked with a non-blocking peek, so a peer that closed it is noticed and
//   the line goes over a fresh connection instead of into a dead socket. A receiver must
//   therefore never send anything back: a byte from it costs the connection.
// * Reconnect backoff per destination: after a connect to it fails or times out, attempts that
//   need a new connection fail at once (kRetryable, "... backing off ...") until the backoff
//   window has passed; the window starts at reconnect_backoff_min_ms, doubles with each failed
//   connect up to reconnect_backoff_max_ms and resets when a connect succeeds. The engine's
//   retry policy decides when the timer tries again.
//
// Concurrency
// * One Asio io_context thread owns every connection and the pool. deliver(), validate(),
//   destination() and stop() are safe from any thread; deliver() takes a short mutex and posts
//   the job to that thread. `done` runs on the transport thread, exactly once per job, with no
//   lock of ours held (it may call deliver() again). A rejected deliver() (queue full, stopped,
//   a URI validate() would have refused) calls `done` right away on the caller's thread.
// * stop() is idempotent: every queued and in-flight job completes with kAborted, connections
//   are closed, then the thread is joined. Called from inside a `done` it cannot join and only
//   asks the thread to finish.
//
// Limitations
// * At-least-once and no acknowledgement: a line written just as the receiver closes the
//   connection can be lost although the attempt counted as a success; an attempt whose write
//   failed half way may leave a partial line (no '\n') before the connection closes, and the
//   retry sends the whole line again. Receivers must tolerate duplicates and drop a trailing
//   partial line.
// * Name resolution runs on Asio's resolver thread (one per transport, getaddrinfo): a hanging
//   lookup delays other name lookups (IP literals are unaffected), and although its job ends at
//   its deadline, its connection slot stays taken, and stop() waits, until getaddrinfo returns.
// * A job waiting for a connection has no timer of its own: it is answered (started, or failed
//   as timed out) when a connection of its destination, or room under max_connections_total,
//   frees up, at the latest when the attempts ahead of it reach their deadlines.
// * `max_queue` bounds jobs accepted and not yet done (queued + in flight), not bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "delivery/transport.h"

namespace skyring {

struct TcpTransportOptions {
  size_t max_queue = 100'000;  // jobs accepted and not yet done; beyond: "delivery queue full"
  size_t max_connections_per_destination = 8;
  size_t max_connections_total = 1024;
  int64_t connect_timeout_ms = 5000;        // one connect, name lookup included
  int64_t default_timeout_ms = 10'000;      // attempt deadline for a job without job.timeout_ms
  int64_t idle_timeout_ms = 60'000;         // an idle pooled connection is closed after this
  int64_t reconnect_backoff_min_ms = 100;   // first window after a failed connect
  int64_t reconnect_backoff_max_ms = 5000;  // the window doubles up to this
  bool keepalive = true;                    // SO_KEEPALIVE with the three settings below
  int keepalive_idle_s = 30;
  int keepalive_interval_s = 10;
  int keepalive_count = 3;
};

class TcpTransport final : public Transport {
 public:
  explicit TcpTransport(TcpTransportOptions options = {});
  ~TcpTransport() override;  // stop()
  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;

  std::string_view name() const override { return "tcp"; }
  // method: any non-empty value (ignored); uri: exactly tcp://host:port.
  Result<void> validate(std::string_view method, std::string_view uri) const override;
  // "tcp://host:port" with the host in lower case; a bad uri is its own destination.
  std::string destination(std::string_view uri) const override;
  void deliver(DeliveryJob job, DeliveryDone done) override;
  void stop() override;

 private:
  class Impl;  // the Asio loop and everything it owns; keeps Asio out of this header
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring
