// The HTTP API of SPEC section 2 as a plain function of a request: no sockets here, so the
// whole contract (routes, status codes, headers, error bodies) is testable without a server.
// The http module turns Beast messages into ApiRequest and ApiResponse back into bytes.
//
// Threading: handle() runs on the engine thread; `done` is called on that thread, either
// before handle() returns or later (after the change is durable, or a peer answered). With a
// router, the buffers an ApiRequest points into must stay alive until `done` is called.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/metrics.h"
#include "delivery/transport.h"
#include "engine/timer_engine.h"
#include "model/request.h"

namespace skyring {

namespace cluster {
class Router;
}

// x-skyring-hops values above this (and unparsable ones) read as this: such a request is
// never forwarded again (any sensible max_hops is below it).
inline constexpr int kMaxHopsHeaderValue = 255;

struct ApiRequest {
  std::string_view method;    // "GET", "POST", ...
  std::string_view target;    // path and query, as received
  std::string_view timer_id;  // x-timer-id header, empty if absent
  std::string_view body;
  // Cluster routing (read only when ApiOptions::router is set).
  std::string_view content_type;  // Content-Type, passed on when forwarded
  std::string_view cluster;       // x-skyring-cluster
  int hops = 0;                   // x-skyring-hops: times this request was forwarded
  bool fallback = false;          // x-skyring-fallback present
};

struct ApiResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // Location, x-skyring-reason, ...
};

struct ApiOptions {
  std::string node_id;
  ParseLimits parse;
  // Set in a cluster: every request is routed first (cluster/router.h) and handled here only
  // when the router says so; /health gains a "cluster" object. Null: standalone, no routing.
  cluster::Router* router = nullptr;
};

class Api {
 public:
  using Done = std::function<void(ApiResponse)>;
  Api(TimerEngine& engine, const TransportRegistry& transports, Registry& metrics,
      const Clock& clock, ApiOptions options);

  void handle(const ApiRequest& req, Done done);

  // The uniform error answer: status, x-skyring-reason header and {"error": message}.
  static ApiResponse error(int status, std::string_view message);
  static int status_for(Errc code);

 private:
  // After routing (or without a router): the request is answered by this node.
  void handle_here(const ApiRequest& req, bool fresh_id, Done done);
  void route(const ApiRequest& req, Done done);
  // POST /cluster/forward: each request of the batch routed on its own, answered together.
  void forward_batch(const ApiRequest& req, Done done);
  void create(const ApiRequest& req, bool fresh_id, Done done);
  void replace(std::string id, const ApiRequest& req, Done done);
  void list(std::string_view query, Done done);
  Result<TimerRecord> parse_body(const ApiRequest& req);
  ApiResponse health() const;

  TimerEngine& engine_;
  const TransportRegistry& transports_;
  Registry& metrics_;
  const Clock& clock_;
  const ApiOptions options_;
  Histogram& latency_;
  static constexpr size_t kValidCallbackCacheSize = 4096;
  std::unordered_set<std::string> valid_callbacks_;  // "transport method uri" that validated
};

}  // namespace skyring
