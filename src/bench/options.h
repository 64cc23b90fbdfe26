// Command line of skyring-bench (SPEC section 8): which scenarios to run, against what, how big.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "base/result.h"

namespace skyring::bench {

inline constexpr const char* kScenarioNames[] = {"create", "delivery", "lateness", "capacity",
                                                 "cluster"};

struct BenchOptions {
  std::vector<std::string> scenarios;  // in run order; default: all of kScenarioNames
  std::string skyring;                 // node binary; default: `skyring` next to skyring-bench
  std::string url;                     // empty: start a fresh node per scenario
  std::string url_host;                // from --url, always a loopback address
  uint16_t url_port = 0;
  bool json = false;
  bool smoke = false;
  size_t connections = 64;
  int64_t duration_ms = 10'000;          // create: measured time; lateness: span of due times
  int64_t warmup_ms = 1'000;             // create: not measured
  uint64_t timers = 100'000;             // delivery: timers due in one short window
  uint64_t rate = 10'000;                // lateness: timers due per second
  uint64_t capacity = 1'000'000;         // capacity: pending timers
  uint64_t cluster_pending = 1'000'000;  // cluster: far-future timers pending at the join
  std::string nats_server;               // cluster, nats transport: nats-server binary
  std::vector<std::string> transports = {"http"};  // delivery, lateness: http first, then others
  std::string storage = "rocksdb";
  std::vector<std::string> node_args;  // extra `skyring run` flags (--node-arg)
};

// argv without the program name. Errors are one line for stderr (exit code 2).
// `self` is /proc/self/exe, used for the default --skyring.
Result<BenchOptions> parse_options(const std::vector<std::string>& args, const std::string& self);

std::string usage_text();

// Set by SIGINT/SIGTERM: every loop of the bench checks it and winds down, so the node is
// killed and the temp dirs removed on the way out.
inline std::atomic<bool>& interrupted() {
  static std::atomic<bool> flag{false};
  return flag;
}

}  // namespace skyring::bench
