// The built-in `http` transport (SPEC section 4): one HTTP(S) request per delivery attempt.
//
// Operation
// * Two clients behind one transport, each on its own thread with a bounded queue:
//   - http:// URIs to an IP address, without user info, go to PlainHttpClient
//     (plain_http_client.h): the request
//     is serialised here into one buffer and sent over a pooled keep-alive connection. This is
//     the fast path; libcurl's per-transfer overhead was the delivery limit (docs/performance.md).
//   - Everything else (https://, host names, user info) goes to libcurl: one multi handle that
//   turns queued
//     jobs into transfers, drives every transfer at once (curl_multi_poll) and calls `done` when
//     a transfer ends. Its connection cache is shared by all transfers; easy handles are
//     recycled through a free list.
//   Either way a slow or dead destination only occupies its own connections; the others keep
//   moving, and connections to one destination are reused (bounded per host and in total).
// * Request: `job.method` upper-cased, body = `job.data` as-is when there is data (text/plain or
//   application/json; never for HEAD, whose answer curl must not wait a body for), our headers
//   (User-Agent, X-Skyring-Timer-Id, Idempotency-Key, X-Skyring-Attempt) followed by `job.headers`.
//   A job header whose name is one we set, one that frames the message (Content-Length,
//   Transfer-Encoding, Expect) or a hop-by-hop one (Connection, Keep-Alive, Upgrade, TE,
//   Proxy-Connection) is ignored: receivers can trust our headers and a job cannot
//   desynchronise or take over a pooled connection. A job's Host header replaces ours. Redirects
//   are not followed; the response body is discarded.
// * Outcome: 2xx success; 5xx, 408, 429 and every transport error (refused, DNS, timeout after
//   `job.timeout_ms`) retryable; any other status permanent.
//
// Concurrency
// * deliver(), validate(), destination() and stop() are safe from any thread; deliver() only
//   takes a short mutex. `done` runs on the transport thread, exactly once per job, with no lock
//   of ours held (it may call deliver() again). A rejected deliver() (queue full, stopped) calls
//   `done` right away on the caller's thread.
// * stop() is idempotent: every queued and in-flight job completes with kAborted, then the thread
//   is joined. Called from inside a `done` it cannot join and only asks the thread to finish.
//
// Limitations
// * `max_queue` bounds jobs accepted and not yet done (queued + in flight) per client, not
//   bytes. Per-destination fairness beyond the per-host connection limit is the engine's job.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "delivery/transport.h"

namespace skyring {

class PlainHttpClient;

struct HttpTransportOptions {
  size_t max_queue = 100000;  // jobs accepted and not yet done; beyond it: "delivery queue full"
  size_t max_connections_total = 1024;
  size_t max_connections_per_host = 64;
  int64_t connect_timeout_ms = 5000;
};

class HttpTransport final : public Transport {
 public:
  explicit HttpTransport(HttpTransportOptions options = {});
  ~HttpTransport() override;  // stop()
  HttpTransport(const HttpTransport&) = delete;
  HttpTransport& operator=(const HttpTransport&) = delete;

  std::string_view name() const override { return "http"; }
  Result<void> validate(std::string_view method, std::string_view uri) const override;
  // "scheme://host:port" with the default port filled in; a bad uri is its own destination.
  std::string destination(std::string_view uri) const override;
  void deliver(DeliveryJob job, DeliveryDone done) override;
  void stop() override;

 private:
  class Loop;  // the curl thread and everything it owns; keeps curl out of this header
  std::unique_ptr<Loop> loop_;
  std::unique_ptr<PlainHttpClient> plain_;
};

}  // namespace skyring
