// Router: decides where a request is answered (docs/cluster.md, "Routing and forwarding").
// The Api asks it first; it answers "here" (the Api handles the request with the local
// engine) or gives the whole answer itself (forwarded to the owner, the cluster view, a move).
//
// Rules, for a request about timer id X on node N:
//   * x-skyring-fallback set (an owner asking where X may still be): here if N holds X,
//     else 404 with x-skyring-absent: 1.
//   * POST without x-timer-id: X = engine.new_id() on N, chosen before routing.
//   * N holds X (waiting, moving, or a retention record not yet moved): here.
//   * N is joining and has heard from no member yet: 503, retry. (A joining node is in no
//     ring, its own included, so once it knows a member it forwards what it does not hold.)
//   * owner(X) == N: here, unless an earlier ring's owner may still hold X
//     (Membership::previous_owners): each is asked with x-skyring-fallback, the first that
//     holds X answers; when none does, here.
//   * otherwise forwarded to owner(X) with x-skyring-hops + 1 over pooled keep-alive
//     connections, alone or, when the owner's exchanges are all busy, in the next forward
//     batch (forward_batch.h); status, headers and body come back unchanged. hops >= max_hops: 503
//     (ring views differ); owner unreachable or no answer within forward_timeout_ms: 503 with
//     x-skyring-reason and Retry-After.
//   * GET /cluster: this node's view. POST /cluster/moves (x-skyring-cluster must match): a
//     batch of moved timers, handed to the MoveSink. POST /cluster/forward (a forward batch)
//     is taken apart by the Api before routing: each of its requests is routed on its own.
//   * anything else (list, health, metrics, ping): here. Listing is per node (README).
//
// Threading: route() on the engine's executor; `done` on it too.
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
#include "cluster/forward_batch.h"
#include "cluster/membership.h"
#include "cluster/peer_client.h"
#include "engine/timer_engine.h"

namespace skyring::cluster {

inline constexpr std::string_view kHopsHeader = "x-skyring-hops";
inline constexpr std::string_view kFallbackHeader = "x-skyring-fallback";
inline constexpr std::string_view kAbsentHeader = "x-skyring-absent";
inline constexpr std::string_view kClusterHeader = "x-skyring-cluster";

struct RouteRequest {
  std::string_view method;  // "GET", "POST", ...
  std::string_view target;  // path and query, as received
  std::string timer_id;     // from the path or x-timer-id; empty for a POST without one
  std::string_view body;
  std::string_view content_type;
  std::string_view cluster;  // x-skyring-cluster
  int hops = 0;              // x-skyring-hops
  bool fallback = false;     // x-skyring-fallback
};

struct RouteResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

struct RouteDecision {
  bool local = false;
  // local: the id to use (for a POST without x-timer-id, the one chosen here) and whether it
  // is fresh from engine.new_id() (TimerEngine::create's fresh_id).
  std::string timer_id;
  bool fresh_id = false;
  RouteResponse response;  // !local: the answer
};

// Receives POST /cluster/moves (implemented by the Mover).
class MoveSink {
 public:
  virtual ~MoveSink() = default;
  virtual void receive_moves(std::string_view body, std::function<void(RouteResponse)> done) = 0;
};

struct RouterOptions {
  std::string cluster = "skyring";
  std::string self_id;  // this node's member id (MembershipOptions::self.id)
  int max_hops = 2;
  int64_t forward_timeout_ms = 5000;
  // Forwards that queue for one owner go together (forward_batch.h); `cluster` is ignored
  // (the one above is used).
  ForwardBatchOptions forward_batch;
  // For /health; empty: reported as disconnected. Called on the executor.
  std::function<bool()> nats_connected;
};

class Router {
 public:
  Router(TimerEngine& engine, Membership& membership, PeerClient& peers, Executor& executor,
         MoveSink& moves, RouterOptions options, Registry& metrics);

  void route(RouteRequest request, std::function<void(RouteDecision)> done);
  // The "cluster" object of /health: membership, ring, NATS state.
  std::string health_json() const;
  // The body of GET /cluster.
  std::string view_json() const;
  const RouterOptions& options() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace skyring::cluster
