// Forward batches: the forwarded requests that queue for one owner travel together, as one
// POST /cluster/forward, and come back in one answer (docs/cluster.md, "Forward batches").
//
// Why: on one machine a forwarded request costs little CPU in user space and a lot in the
// kernel: two loopback writes, two reads and two sleeping threads woken per request. Under
// load the requests for a peer arrive faster than its answers come back; sending what
// gathered meanwhile as one exchange pays those costs once per batch instead of per request.
//
// ForwardBatcher (the entry node's side). Per peer address at most in_flight_per_peer
// exchanges at a time. A request that finds a free slot goes at once, alone, as the plain HTTP
// request (no framing: a quiet cluster forwards exactly as without batches, with no added
// wait); otherwise it waits in the peer's FIFO. When an exchange ends, what waits goes: up to
// max_requests requests and max_bytes encoded as one batch, or the one request alone.
// Every request gets its own PeerResponse: the owner's answer to it, or its batch's failure
// (kNotSent / kFailed / kRefused: a batch fails as a whole, with what PeerClient says of it).
// An answer to the batch other than 200 (403 wrong cluster, 400 malformed, 413, 503 body
// buffer full, an older node's 404) becomes each request's answer; a 200 whose body cannot be
// read is kFailed for each (the owner may have acted on them).
// Bounds: at most max_queued requests wait over all peers (beyond it: kRefused at once).
// A request's timeout_ms counts from when it is sent; the wait in the queue is bounded by the
// timeouts of the exchanges ahead of it.
// Threading: send() on the executor; `done` runs on it too (posted).
//
// Wire format, u32 little-endian; str = u32 length + bytes.
//   batch:   "SKF1" u32 count, then per request: str method, str target,
//            u32 header count, (str name, str value)..., str body
//   answers: "SKA1" u32 count, then per answer: u32 status, str content type,
//            u32 header count, (str name, str value)..., str body
// The owner (the Api) decodes with decode_forward_batch(), handles each request as if it had
// come on its own, and answers with ForwardAnswerWriter, in the same order.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/executor.h"
#include "base/metrics.h"
#include "base/result.h"
#include "cluster/peer_client.h"

namespace skyring::cluster {

inline constexpr std::string_view kForwardPath = "/cluster/forward";
inline constexpr std::string_view kForwardContentType = "application/x-skyring-forward";

// x-skyring-hops (absent: 0, not parsed): a decimal number up to max; anything else (empty,
// garbage, negative, huge) -> max, so a request whose count cannot be read is never forwarded
// again.
inline int parse_hops(std::string_view v, int max) {
  if (v.empty() || v.size() > 3) return max;
  int n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return max;
    n = n * 10 + (c - '0');
  }
  return n < max ? n : max;
}

// One request of a batch, as the owner sees it: views into the batch body.
struct ForwardedRequest {
  std::string_view method;
  std::string_view target;
  std::string_view timer_id;      // x-timer-id
  std::string_view content_type;  // Content-Type
  std::string_view body;
  int hops = 0;           // x-skyring-hops, parse_hops(.., max_hops)
  bool fallback = false;  // x-skyring-fallback present
};

// The whole body or an error (kInvalidArgument): wrong magic, truncated, trailing bytes, more
// than max_requests requests, a count of zero.
Result<std::vector<ForwardedRequest>> decode_forward_batch(std::string_view body,
                                                           size_t max_requests, int max_hops);

// Owner side: the answers, in the order of the batch's requests.
class ForwardAnswerWriter {
 public:
  explicit ForwardAnswerWriter(size_t count);
  void add(int status, std::string_view content_type,
           const std::vector<std::pair<std::string, std::string>>& headers, std::string_view body);
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

// Entry side: `expected` answers, each as a kAnswered PeerResponse (Content-Type among its
// headers), or an error.
Result<std::vector<PeerResponse>> decode_forward_answers(std::string_view body, size_t expected);

struct ForwardBatchOptions {
  std::string cluster = "skyring";  // sent as x-skyring-cluster
  size_t in_flight_per_peer = 2;    // exchanges (plain or batch) per peer address
  size_t max_requests = 128;        // requests in one batch
  size_t max_bytes = 512 * 1024;    // encoded batch; must fit the peers' body limit (1 MiB)
  size_t max_queued = 10'000;       // requests waiting, over all peers
  size_t max_requests_in = 1024;    // owner side: a batch with more is refused (400)
};

class ForwardBatcher {
 public:
  ForwardBatcher(PeerClient& peers, Executor& executor, ForwardBatchOptions options,
                 Registry& metrics);
  ~ForwardBatcher();
  ForwardBatcher(const ForwardBatcher&) = delete;
  ForwardBatcher& operator=(const ForwardBatcher&) = delete;

  // request.address says where; `done` is called exactly once, on the executor.
  void send(PeerRequest request, std::function<void(PeerResponse)> done);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace skyring::cluster
