// The `nats` transport (SPEC section 4): publishes a timer's payload to a NATS subject, one
// attempt per delivery.
//
// Operation
// * `callback.uri` is `nats://host[:port]/subject` (port 4222 by default: a connection to that
//   server) or `nats:subject` (a connection to the node's own `--nats` servers,
//   `default_urls`; without `--nats` such a uri is refused by validate()). Subjects: 1-1024
//   printable non-space ASCII bytes, tokens separated by '.', no empty token, no wildcard
//   characters ('*', '>'): a timer publishes to one subject.
// * Payload: `data` as-is (string or JSON object text); no data, an empty message. Headers
//   (NATS 2.2+): `Skyring-Timer-Id: <id>`, `Skyring-Attempt: <n>`, then `callback.headers`
//   (ours cannot be overridden; names with ':' or spaces and values with CR/LF are skipped).
//   A server without header support gets the bare message.
// * `callback.method` (case-insensitive):
//   - `publish`: success once the server has the message: the attempt's PUB is followed by a
//     PING/PONG round trip (natsConnection_FlushTimeout) that covers it; one flush covers every
//     publish of a batch (up to `max_batch` jobs), so throughput does not pay one round trip
//     per timer. Not connected, connect failure, flush timeout, lost connection: kRetryable.
//     A payload above the server's max_payload: kPermanent.
//   - `request`: PUB with a reply subject on the connection's own inbox (one wildcard
//     subscription `_INBOX.<nuid>.*` per connection); success when any reply arrives within
//     `job.timeout_ms`. Timeout, lost connection, or the server's "no responders" status:
//     kRetryable. The reply's content is not looked at. At most `max_pending_requests`
//     requests wait per server; beyond it an attempt fails at once with kRetryable.
// * Connections: one per server key (`destination(uri)`: "nats://host:port", or "nats:" + the
//   default URLs), created lazily by that server's own worker thread and reused by every
//   delivery to it. libnats' automatic reconnect is off, so nothing is ever parked in its
//   reconnect buffer and counted as sent: a lost connection fails what it carried (retryable)
//   and the next attempt connects again, at most once per `reconnect_wait_ms` (attempts in
//   between fail at once with the last connect error). At most `max_connections` servers are
//   kept; a new one evicts an idle one (nothing queued or pending), else its attempt fails
//   with kRetryable.
//
// Delivery guarantee: at-least-once. A flush or reply that times out after the server got the
// message (or a reply lost with its connection) makes the engine retry, and subscribers see
// the message again. Receivers deduplicate with Skyring-Timer-Id + Skyring-Attempt (or set
// `Nats-Msg-Id` through callback.headers for JetStream's duplicate window).
//
// Concurrency
// * deliver(), validate(), destination() and stop() are safe from any thread; deliver() only
//   takes short mutexes (and starts a server's thread the first time a server is used). A
//   blocking connect (bounded by `connect_timeout_ms` per URL) or flush stalls only its own
//   server's worker: other servers keep moving.
// * `done` runs on a server's worker thread (or, for a refused job, on the caller's), exactly
//   once per job, with no lock of ours held; it may call deliver() again.
// * stop() is idempotent: every queued job and every request waiting for its reply completes
//   with kAborted, the workers close their connections and are joined. A worker busy in a
//   connect or flush finishes that first (bounded by the timeouts above) and reports that
//   batch's real outcome. Called from inside a `done` it cannot join that worker and only asks
//   it to finish.
//
// Limitations
// * No TLS, no credentials in `nats://` uris (the default URLs may carry them: libnats reads
//   them from `--nats`; destination() hides them). Host names are resolved by libnats on the
//   worker thread.
// * `max_queue` bounds jobs accepted and not yet done (queued + flushing + pending), not bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "delivery/transport.h"

namespace skyring {

struct NatsTransportOptions {
  std::string default_urls;             // the node's --nats (comma separated); empty: no nats:subj
  size_t max_queue = 100000;            // jobs accepted and not yet done, all servers together
  size_t max_connections = 64;          // servers with a connection (and a worker thread)
  size_t max_batch = 1024;              // publishes covered by one flush
  size_t max_pending_requests = 10000;  // `request` jobs waiting for a reply, per server
  int64_t connect_timeout_ms = 2000;    // per URL tried
  int64_t reconnect_wait_ms = 1000;     // after a failed connect, attempts fail fast this long
  int64_t flush_timeout_ms = 10000;     // upper bound of a flush (also bounded by job.timeout_ms)
};

// libnats' last error on this thread, without its "(file.c:line): " prefix; the text of
// `status` (a natsStatus) when there is none. Shared with cluster/nats_bus.cc, so that
// nats.h stays inside the two .cc files that use libnats.
std::string nats_error_text(int status);

class NatsTransport final : public Transport {
 public:
  explicit NatsTransport(NatsTransportOptions options = {});
  ~NatsTransport() override;  // stop()
  NatsTransport(const NatsTransport&) = delete;
  NatsTransport& operator=(const NatsTransport&) = delete;

  std::string_view name() const override { return "nats"; }
  Result<void> validate(std::string_view method, std::string_view uri) const override;
  // "nats://host:port", or "nats:" + the default URLs (credentials removed); a bad uri is its
  // own destination.
  std::string destination(std::string_view uri) const override;
  void deliver(DeliveryJob job, DeliveryDone done) override;
  void stop() override;

  // Connections established since construction (tests: connections are reused).
  uint64_t connections_opened() const;

 private:
  class Impl;  // threads, connections and libnats stay in the .cc
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring
