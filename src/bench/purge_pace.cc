// The purge step of `delivery`: how soon after the last delivery the node's retention purge has
// removed every record the scenario completed, on the node that just delivered them.
//
// Operation
// * The delivery node runs with a short retention (2 s; 1 s with --smoke) unless --node-arg
//   already gives --retention. With 2 s, the purge of the warm-up timers and of the first
//   measured ones starts while later ones are still being delivered: inside the measured window
//   the purger competes with delivery, as it would on a busy node. The step itself starts only
//   after the deliveries/s figure is taken (receipts complete, receiver stopped), and only polls.
// * GET /metrics every 100 ms, bounded by retention + 30 s, until skyring_timers_purged_total
//   reaches the timers delivered in the scenario (warm-up included: the node purges those too).
// * purged within: wall clock of the sample that saw them all purged minus the last delivery's
//   arrival; resolution 100 ms. Goal: retention + 10 s (a speed goal, a miss does not fail).
// * purge rate: records purged from the first sample that showed any purge to the one that saw
//   all, over the time between them. A record becomes purgeable retention after it completed,
//   so this is the pace the purger kept up with (the delivery rate), not its ceiling.
// * purge lag max: the largest skyring_retention_purge_lag_milliseconds among the samples.
#include <algorithm>
#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "base/clock.h"
#include "base/duration.h"
#include "bench/node_metrics.h"
#include "bench/scenario.h"

namespace skyring::bench {
namespace {

constexpr int64_t kRetentionMs = 2000;
constexpr int64_t kSmokeRetentionMs = 1000;  // the node's minimum
constexpr int64_t kMaxRetentionMs = 60'000;  // a longer one (from --node-arg): step skipped
constexpr int64_t kPollMs = 100;
constexpr int64_t kWaitBeyondRetentionMs = 30'000;
constexpr int64_t kGoalBeyondRetentionS = 10;

struct Sample {
  int64_t wall_us;
  int64_t purged;
  int64_t lag_ms;
};

}  // namespace

int64_t purge_retention_ms(const BenchOptions& o, std::vector<std::string>* add) {
  constexpr std::string_view kFlag = "--retention";
  for (size_t i = 0; i < o.node_args.size(); ++i) {
    std::string_view a = o.node_args[i];
    std::string_view value;
    if (a == kFlag) {
      value = i + 1 < o.node_args.size() ? std::string_view(o.node_args[i + 1]) : "";
    } else if (a.substr(0, kFlag.size() + 1) == "--retention=") {
      value = a.substr(kFlag.size() + 1);
    } else {
      continue;
    }
    auto ms = parse_duration_ms(value);
    return ms ? *ms : -1;
  }
  int64_t ms = o.smoke ? kSmokeRetentionMs : kRetentionMs;
  add->push_back(std::string(kFlag));
  add->push_back(fmt::format("{}s", ms / 1000));
  return ms;
}

void measure_purge_pace(const ScenarioContext& ctx, const char* sc, uint16_t port,
                        int64_t retention_ms, uint64_t delivered, int64_t last_delivery_us) {
  Report& rep = ctx.report;
  if (retention_ms < 0) {
    rep.note(sc, "purge", "skipped (the --retention given with --node-arg is unreadable)");
    return;
  }
  if (retention_ms > kMaxRetentionMs) {
    rep.note(
        sc, "purge",
        fmt::format("skipped (retention {} s: longer than the bench waits)", retention_ms / 1000));
    return;
  }
  const double retention_s = static_cast<double>(retention_ms) / 1e3;
  fmt::print(stderr, "[{}] waiting for the purge of {} records (retention {:.1f} s)\n", sc,
             delivered, retention_s);
  SystemClock wall;
  std::vector<Sample> samples;
  const int64_t until_us = monotonic_us() + (retention_ms + kWaitBeyondRetentionMs) * 1000;
  samples.reserve(static_cast<size_t>((retention_ms + kWaitBeyondRetentionMs) / kPollMs) + 1);
  while (!interrupted().load()) {
    auto text = fetch_metrics(port, 2000);
    int64_t now_us = wall.now_us();
    if (!text) {
      rep.error(sc, "purge: " + text.error().message);
      return;
    }
    auto purged = metric_value(*text, "skyring_timers_purged_total");
    auto lag = metric_value(*text, "skyring_retention_purge_lag_milliseconds");
    if (!purged || !lag) {
      rep.error(sc, "purge: " + (purged ? lag.error().message : purged.error().message));
      return;
    }
    samples.push_back(Sample{now_us, *purged, *lag});
    if (static_cast<uint64_t>(*purged) >= delivered || monotonic_us() >= until_us) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(kPollMs));
  }
  if (samples.empty()) {
    rep.note(sc, "purge", "not measured (interrupted)");
    return;
  }

  const Sample& last = samples.back();
  const bool all = static_cast<uint64_t>(last.purged) >= delivered;
  const double bound = retention_s + kGoalBeyondRetentionS;
  rep.info(sc, "purge: node retention", retention_s, "s", 1);
  rep.info(sc, "purge: records to purge", static_cast<double>(delivered), "", 0);
  if (all) {
    rep.speed(sc, "purge: all gone, after last delivery",
              static_cast<double>(last.wall_us - last_delivery_us) / 1e6, "s", 1, Goal::kAtMost,
              bound);
  } else {
    Row r{sc, "purge: all gone, after last delivery", 0, "s", 1, Goal::kAtMost, bound};
    r.text = fmt::format("not in {:.0f} s ({} of {} purged)",
                         static_cast<double>(last.wall_us - last_delivery_us) / 1e6, last.purged,
                         delivered);
    rep.add(std::move(r));
  }
  auto first =
      std::find_if(samples.begin(), samples.end(), [](const Sample& s) { return s.purged > 0; });
  if (first != samples.end() && last.wall_us > first->wall_us && last.purged > first->purged) {
    rep.info(sc, "purge: rate, first seen to all gone",
             static_cast<double>(last.purged - first->purged) /
                 (static_cast<double>(last.wall_us - first->wall_us) / 1e6),
             "/s", 0);
  } else {
    rep.note(sc, "purge: rate, first seen to all gone", "n/a (fewer than two samples purging)");
  }
  int64_t lag_max = 0;
  for (const Sample& s : samples) lag_max = std::max(lag_max, s.lag_ms);
  rep.info(sc, "purge: lag max (sampled)", static_cast<double>(lag_max), "ms", 0);
}

}  // namespace skyring::bench
