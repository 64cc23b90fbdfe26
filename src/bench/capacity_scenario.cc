// `capacity`: K pending far-future timers on a fresh node, then
// * RAM per timer: VmRSS after the creates minus VmRSS of the empty node, over K;
// * listing: a walk through GET /timer?state=retrying (empty among the K) while /ping is timed
//   on one connection, against a baseline without listing (list_walk.cc); measured after the
//   RSS, which the walk's block reads would otherwise inflate;
// * restart time after a graceful stop (SIGTERM, wait for exit 0) and after kill -9, on the same
//   data dir and port: spawn -> "listening" in the log, spawn -> first GET /ping 200;
// * the `skyring_timers_pending` gauge after each restart must equal the creates acknowledged
//   (a lost timer is a correctness failure, not a speed miss).
#include <fmt/format.h>

#include "base/clock.h"
#include "bench/load_client.h"
#include "bench/node_metrics.h"
#include "bench/scenario.h"

namespace skyring::bench {
namespace {

Result<int64_t> pending_gauge(uint16_t port) {
  auto text = fetch_metrics(port, 5000);
  if (!text) return tl::unexpected(text.error());
  return metric_value(*text, "skyring_timers_pending");
}

// Restarts the node, records its timings and the pending count. False when the scenario cannot
// go on (the error row is already in the report).
bool restart_and_check(const ScenarioContext& ctx, NodeProcess& node, const std::string& how,
                       uint64_t expected_pending, int64_t start_timeout_ms) {
  const char* sc = "capacity";
  auto t = node.start(node.port(), start_timeout_ms);
  if (!t) {
    ctx.report.error(sc, fmt::format("restart after {}: {}", how, t.error().message));
    return false;
  }
  fmt::print(stderr, "[{}] restarted after {}: listening {:.3f} s, serving {:.3f} s\n", sc, how,
             static_cast<double>(t->listening_us) / 1e6, static_cast<double>(t->ping_us) / 1e6);
  ctx.report.info(sc, fmt::format("restart after {}: listening", how),
                  static_cast<double>(t->listening_us) / 1e6, "s", 3);
  ctx.report.speed(sc, fmt::format("restart after {}: serving /ping", how),
                   static_cast<double>(t->ping_us) / 1e6, "s", 3, Goal::kAtMost, 5);
  auto pending = pending_gauge(node.port());
  if (!pending) {
    ctx.report.error(sc, pending.error().message);
    return false;
  }
  ctx.report.must_be(sc, fmt::format("pending after {} restart", how),
                     static_cast<double>(*pending), static_cast<double>(expected_pending));
  return true;
}

}  // namespace

bool run_capacity(const ScenarioContext& ctx) {
  const char* sc = "capacity";
  const BenchOptions& o = ctx.options;
  Report& rep = ctx.report;
  if (!o.url.empty()) {
    rep.note(sc, "skipped", "needs its own node (not with --url)");
    return true;
  }
  auto target = open_target(ctx, sc);
  if (!target) {
    rep.error(sc, target.error().message);
    return false;
  }
  NodeProcess& node = *target->node;
  auto rss_empty = node.rss_bytes();
  if (!rss_empty) {
    rep.error(sc, rss_empty.error().message);
    return true;
  }
  fmt::print(stderr, "[{}] creating {} pending timers over {} connections\n", sc, o.capacity,
             o.connections);
  const std::string request = far_future_create(target->port);
  uint64_t created = 0, errors = 0;
  int64_t t0 = monotonic_us();
  LoadOptions lo;
  lo.port = target->port;
  lo.connections = o.connections;
  lo.max_requests = o.capacity;
  lo.deadline_us = t0 + (60 + static_cast<int64_t>(o.capacity / 2000)) * 1'000'000;
  auto stats = run_load(
      lo, [&](uint64_t, std::string& out) { out.append(request); },
      [&](const Outcome& r) {
        if (r.status == 201) {
          ++created;
        } else {
          ++errors;
        }
      });
  double create_s = static_cast<double>(monotonic_us() - t0) / 1e6;
  if (!stats) {
    rep.error(sc, stats.error().message);
    return true;
  }
  rep.info(sc, "pending timers created", static_cast<double>(created), "", 0);
  rep.info(sc, "create rate", static_cast<double>(created) / create_s, "/s", 0);
  rep.speed(sc, "create errors (non-201)", static_cast<double>(errors), "", 0, Goal::kEqual, 0);
  if (stats->interrupted || stats->deadline_hit || created == 0 || !node.running()) {
    rep.error(sc, stats->interrupted    ? "interrupted"
                  : stats->deadline_hit ? "creates did not finish in time"
                  : created == 0        ? "no timer was created"
                                        : "the node exited: " + node.log_tail(3));
    return true;
  }
  auto rss_full = node.rss_bytes();
  if (!rss_full) {
    rep.error(sc, rss_full.error().message);
    return true;
  }
  auto per_timer = [&](int64_t rss) {
    return static_cast<double>(rss - *rss_empty) / static_cast<double>(created);
  };
  rep.info(sc, "RSS empty node", static_cast<double>(*rss_empty) / (1 << 20), "MiB", 1);
  rep.info(sc, "RSS with timers", static_cast<double>(*rss_full) / (1 << 20), "MiB", 1);
  rep.speed(sc, "RAM per pending timer", per_timer(*rss_full), "B", 0, Goal::kAtMost, 200);
  auto pending = pending_gauge(node.port());
  if (!pending) {
    rep.error(sc, pending.error().message);
    return true;
  }
  rep.must_be(sc, "pending before restart", static_cast<double>(*pending),
              static_cast<double>(created));
  measure_list_walk(ctx, sc, node.port(), created);
  if (!node.running()) {
    rep.error(sc, "the node exited during the listing: " + node.log_tail(3));
    return true;
  }
  if (o.storage == "memory") {
    rep.note(sc, "restart", "skipped (--storage memory keeps nothing)");
    return true;
  }

  const int64_t start_timeout_ms = 60'000 + static_cast<int64_t>(o.capacity / 10);
  auto stopped = node.stop(60'000);
  if (!stopped) {
    rep.error(sc, "graceful stop: " + stopped.error().message);
    return true;
  }
  rep.info(sc, "graceful stop (SIGTERM to exit)", static_cast<double>(*stopped) / 1e6, "s", 3);
  if (!restart_and_check(ctx, node, "SIGTERM", created, start_timeout_ms)) return true;
  if (auto rss = node.rss_bytes(); rss) {
    rep.info(sc, "RAM per timer after recovery", per_timer(*rss), "B", 0);
  }
  node.kill_hard();
  restart_and_check(ctx, node, "kill -9", created, start_timeout_ms);
  return true;
}

}  // namespace skyring::bench
