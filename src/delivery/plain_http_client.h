// PlainHttpClient: keep-alive HTTP/1.1 over plain TCP, for the http transport's http:// jobs.
//
// Why not libcurl for these: at 13,000-15,000 deliveries/s the curl thread was the limit, with
// about 70% of it in libcurl itself (easy-handle reset and set-up, header lists, its own
// polling, status-line parsing) rather than in the kernel's socket work. A request here is one
// buffer the caller serialised, one write and one parse of the answer.
//
// Scope: hosts given as IP addresses only. Names stay with libcurl, whose threaded resolver
// ends a hanging DNS lookup at the job's deadline (Asio's resolver cannot be cut short), and so
// do https:// and URIs with user info (TLS, authentication).
//
// Operation: send() takes the whole request (request line, headers, body) and where to send it.
// Per destination (host, port) at most max_connections_per_host connections are open; a request
// takes an idle one, opens a new one below the limit, or waits in the destination's FIFO. After
// an answer that allows keep-alive the connection goes back to the idle list (closed after
// idle_timeout_ms unused). A request that fails on a reused connection before any byte of an
// answer arrived (the server had closed the idle connection) is sent once more on a new
// connection, as curl does; the receiver can tell by the unchanged Idempotency-Key.
// Informational (1xx) answers are skipped; the answer's body is read and discarded.
//
// Threading: send() and stop() may be called from any thread. Everything else runs on the
// client's own thread (one Asio io_context), and so do the `done` callbacks.
//
// Limits: at most max_queue requests accepted and not answered (beyond it send() answers
// kRefused at once); at most max_connections_total connections (an idle connection of another
// destination is closed to make room, and a connection that would go idle is handed to a
// destination waiting for room); every exchange ends by `timeout_ms` (connect included,
// connect alone by connect_timeout_ms). Waiting requests have no deadline of their own: they
// move as the exchanges ahead of them end. Destinations waiting for room are served in no
// particular order; the engine keeps in-flight attempts at or below max_connections_total, so
// with the node's settings no request waits for room at all.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace skyring {

struct PlainRequest {
  std::string host;  // an IP address as in the URI: an IPv6 literal in brackets
  uint16_t port = 80;
  std::string wire;   // the complete request
  bool head = false;  // the answer carries no body, whatever its headers announce
  int64_t timeout_ms = 10'000;
};

struct PlainReply {
  enum class Kind {
    kStatus,   // an answer arrived: `status`
    kFailed,   // connect, send, receive or timeout failure: `error`
    kRefused,  // not accepted: the queue is full (`error`)
    kAborted,  // stop() came first: nothing is known
  };
  Kind kind = Kind::kFailed;
  int status = 0;
  std::string error;
};

// Must not throw: it runs on the client's loop. HttpTransport wraps the engine's callback in
// its call_done(), which catches and logs, as it does for the curl path.
using PlainDone = std::function<void(PlainReply)>;

struct PlainHttpOptions {
  size_t max_queue = 100'000;
  size_t max_connections_per_host = 64;
  size_t max_connections_total = 1024;
  int64_t connect_timeout_ms = 5000;
  int64_t idle_timeout_ms = 60'000;
};

class PlainHttpClient {
 public:
  explicit PlainHttpClient(PlainHttpOptions options);
  ~PlainHttpClient();  // stop()
  PlainHttpClient(const PlainHttpClient&) = delete;
  PlainHttpClient& operator=(const PlainHttpClient&) = delete;

  // `done` is called exactly once: inline for kRefused and after stop(), otherwise on the
  // client's thread.
  void send(PlainRequest request, PlainDone done);
  // Answers every waiting and in-flight request with kAborted, closes every connection and
  // joins the thread. Idempotent; from a `done` callback it returns without joining.
  void stop();

 private:
  class Impl;  // keeps Asio and Beast out of this header
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring
