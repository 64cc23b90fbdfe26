// skyring-bench: measures the performance goals of SPEC section 8 and prints one table.
// See README.md in this folder and `skyring-bench --help`.
#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/options.h"
#include "bench/report.h"
#include "bench/scenario.h"

namespace {

using namespace skyring::bench;

void on_signal(int) {
  interrupted().store(true);
}

void install_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

std::string self_path() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string describe_config(const BenchOptions& o) {
  std::string node = o.url.empty() ? fmt::format("{} (fresh node per scenario)", o.skyring)
                                   : fmt::format("{} (running node)", o.url);
  std::string s = fmt::format(
      "scenarios={} storage={} connections={} duration={}ms timers={} rate={}/s capacity={} "
      "cluster-pending={} node={}",
      fmt::join(o.scenarios, ","), o.url.empty() ? o.storage : "as running", o.connections,
      o.duration_ms, o.timers, o.rate, o.capacity, o.cluster_pending, node);
  if (!o.node_args.empty()) s += fmt::format(" node-args=[{}]", fmt::join(o.node_args, " "));
  if (o.smoke) s += " smoke";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::fputs(usage_text().c_str(), stdout);
      return 0;
    }
  }
  auto options = parse_options(args, self_path());
  if (!options) {
    std::fprintf(stderr, "skyring-bench: error: %s (see --help)\n",
                 options.error().message.c_str());
    return 2;
  }
  install_signals();
  std::random_device rd;
  Report report;
  ScenarioContext ctx{*options, report, fmt::format("{:08x}", rd())};
  Machine machine = describe_machine();
  std::string config = describe_config(*options);
  fmt::print(stderr, "skyring-bench: {}\n", config);

  int64_t t0 = skyring::monotonic_us();
  bool node_started = true;
  for (const std::string& s : options->scenarios) {
    if (interrupted().load()) break;
    if (s == "create") node_started = run_create(ctx);
    if (s == "delivery") node_started = run_delivery(ctx);
    if (s == "lateness") node_started = run_lateness(ctx);
    if (s == "capacity") node_started = run_capacity(ctx);
    if (s == "cluster") node_started = run_cluster(ctx);
    if (!node_started) break;
  }
  if (interrupted().load()) ctx.report.error("bench", "interrupted");
  std::string out =
      options->json ? ctx.report.json(machine, config) : ctx.report.table(machine, config);
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
  fmt::print(stderr, "skyring-bench: finished in {:.1f} s\n",
             static_cast<double>(skyring::monotonic_us() - t0) / 1e6);
  if (!node_started) {
    std::fprintf(stderr, "skyring-bench: error: the node failed to start\n");
    return 2;
  }
  return ctx.report.correctness_ok() ? 0 : 1;
}
