// Closed-loop HTTP/1.1 load on one thread: N keep-alive connections, each with exactly one
// request in flight; a response immediately starts that connection's next request.
//
// Operation
// * Requests are numbered 0, 1, 2, ... in the order they start; `build` writes request `seq`
//   (complete bytes: start line, headers, body) and `done` hears its outcome. Callers keep
//   their buffers preformatted so building costs one copy.
// * Responses are parsed just enough to frame them (status line, Content-Length, body);
//   "Connection: close" and dropped connections reconnect, a bounded number of times.
// * A request that fails at the transport level (refused, reset, unparseable answer, deadline)
//   is reported with status 0 and is not retried: the caller counts it as an error.
//
// Limits
// * Everything is bounded: `max_requests`, `stop_issuing_us` (no new request starts after it),
//   `deadline_us` (in-flight requests are abandoned) and the reconnect budget. The loop also
//   winds down when interrupted() is set, and stops issuing once `*stop` reads true (another
//   thread may set it: the end of the load is then an event, not a time).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace skyring::bench {

struct LoadOptions {
  uint16_t port = 0;  // on 127.0.0.1
  // When not empty: connection i goes to spread[i % spread.size()] instead of `port` (one load
  // thread over several nodes, as one client process would spread its connections).
  std::vector<uint16_t> spread;
  size_t connections = 64;
  uint64_t max_requests = UINT64_MAX;
  int64_t stop_issuing_us = INT64_MAX;      // monotonic_us()
  int64_t deadline_us = INT64_MAX;          // monotonic_us()
  const std::atomic<bool>* stop = nullptr;  // when set and true: no new request starts
};

struct Outcome {
  uint64_t seq;
  int status;  // 0: transport failure
  std::string_view body;
  int64_t sent_us;  // monotonic, when the request was written
  int64_t done_us;  // monotonic, when the whole response was read
};

struct LoadStats {
  uint64_t started = 0;
  uint64_t responses = 0;  // with any HTTP status
  uint64_t failures = 0;   // status 0
  uint64_t reconnects = 0;
  bool deadline_hit = false;
  bool interrupted = false;
};

using BuildRequest = std::function<void(uint64_t seq, std::string& out)>;
using OnOutcome = std::function<void(const Outcome&)>;

Result<LoadStats> run_load(const LoadOptions& options, const BuildRequest& build,
                           const OnOutcome& done);

struct HttpReply {
  int status = 0;
  std::string body;
};

// One blocking request on a fresh connection to 127.0.0.1:port (for /ping and /metrics).
Result<HttpReply> http_request(uint16_t port, std::string_view method, std::string_view path,
                               int64_t timeout_ms);

}  // namespace skyring::bench
