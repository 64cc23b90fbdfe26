// The four scenarios of SPEC section 8. Each one adds its rows to the report and is bounded in
// count and time; each starts a fresh node (own temp dir, removed afterwards) unless --url.
//
// create    closed-loop creates of far-future timers: timers/s and latency.
// delivery  timers all due in one short window: deliveries/s, lateness, early/dup/missing.
//           Then, on the same node, the purge step: every completed record gone within
//           retention + 10 s (the node runs with a short --retention).
// lateness  timers due at a steady rate: lateness percentiles, early/dup/missing.
// capacity  many pending timers: RAM per timer; listing an empty waiting state among them while
//           /ping is timed (the node must not stall); restart time (SIGTERM and kill -9), and
//           the pending count after each restart.
// cluster   nats-server + 3 nodes: creates/s through the cluster vs one node, deliveries exactly
//           once, a 4th node joining and leaving with many timers pending (cluster_scenario.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench/node_process.h"
#include "bench/options.h"
#include "bench/report.h"

namespace skyring::bench {

struct ScenarioContext {
  const BenchOptions& options;
  Report& report;
  std::string run_id;      // unique per bench run, part of every timer id the bench chooses
  double create_rate = 0;  // timers/s measured by `create` in this run; 0 until it ran
};

// The node a scenario talks to: a fresh child, or the one given with --url.
struct Target {
  std::unique_ptr<NodeProcess> node;  // null with --url
  uint16_t port = 0;
};

// Starts a fresh node with --node-arg flags plus `node_args` (or checks the --url one answers
// /ping). On failure the caller stops the whole run with exit code 2.
Result<Target> open_target(const ScenarioContext& ctx, const char* scenario,
                           const std::vector<std::string>& node_args = {});

// The bytes of one POST /timer for a timer due in 1 h whose callback goes nowhere (127.0.0.1:9):
// it never fires while the bench runs, so only the create path is measured.
std::string far_future_create(uint16_t port);

// Steps run inside a scenario, on its node, after the scenario's own measurement.
//
// The retention the delivery node runs with: the one --node-arg gives (-1 when unreadable), or
// a short one whose flags are appended to `add`. See purge_pace.cc.
int64_t purge_retention_ms(const BenchOptions& o, std::vector<std::string>* add);
// Polls GET /metrics until `delivered` records are purged; adds the purge rows.
void measure_purge_pace(const ScenarioContext& ctx, const char* scenario, uint16_t port,
                        int64_t retention_ms, uint64_t delivered, int64_t last_delivery_us);
// Walks GET /timer?state=retrying among `pending` timers while timing /ping. See list_walk.cc.
void measure_list_walk(const ScenarioContext& ctx, const char* scenario, uint16_t port,
                       uint64_t pending);

// Each returns false when its node could not be started.
bool run_create(ScenarioContext& ctx);
bool run_delivery(const ScenarioContext& ctx);
bool run_lateness(const ScenarioContext& ctx);
bool run_capacity(const ScenarioContext& ctx);
bool run_cluster(const ScenarioContext& ctx);

}  // namespace skyring::bench
