// `create`: N keep-alive connections, each a closed loop of POST /timer, for a fixed time after
// an unmeasured warm-up. Throughput counts 201s completed inside the measured window; latency is
// write-of-request to end-of-response, per request, in µs.
#include <algorithm>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/load_client.h"
#include "bench/scenario.h"

namespace skyring::bench {

Result<Target> open_target(const ScenarioContext& ctx, const char* scenario,
                           const std::vector<std::string>& node_args) {
  Target t;
  if (!ctx.options.url.empty()) {
    t.port = ctx.options.url_port;
    auto ping = http_request(t.port, "GET", "/ping", 2000);
    if (!ping || ping->status != 200) {
      return fail(Errc::kUnavailable, fmt::format("{}: GET /ping: {}", ctx.options.url,
                                                  ping ? fmt::format("status {}", ping->status)
                                                       : ping.error().message));
    }
    return t;
  }
  std::vector<std::string> args = ctx.options.node_args;
  args.insert(args.end(), node_args.begin(), node_args.end());
  auto node = NodeProcess::create(NodeSpec{ctx.options.skyring, ctx.options.storage, args});
  if (!node) return tl::unexpected(node.error());
  auto started = (*node)->start(0, 60'000);
  if (!started) return tl::unexpected(started.error());
  t.port = (*node)->port();
  t.node = std::move(*node);
  fmt::print(stderr, "[{}] node pid {} on 127.0.0.1:{}, started in {:.3f} s\n", scenario,
             t.node->pid(), t.port, static_cast<double>(started->ping_us) / 1e6);
  return t;
}

std::string far_future_create(uint16_t port) {
  std::string body = R"({"timeout":3600000,"data":"skyring-bench","callback":{"transport":"http",)"
                     R"("method":"post","uri":"http://127.0.0.1:9/hook"}})";
  return fmt::format(
      "POST /timer HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n"
      "Content-Length: {}\r\n\r\n{}",
      port, body.size(), body);
}

bool run_create(ScenarioContext& ctx) {
  const char* sc = "create";
  const BenchOptions& o = ctx.options;
  auto target = open_target(ctx, sc);
  if (!target) {
    ctx.report.error(sc, target.error().message);
    return false;
  }
  const std::string request = far_future_create(target->port);
  int64_t start = monotonic_us();
  int64_t measure_from = start + o.warmup_ms * 1000;
  int64_t measure_to = measure_from + o.duration_ms * 1000;
  fmt::print(stderr, "[{}] {} connections, {} ms warm-up + {} ms measured\n", sc, o.connections,
             o.warmup_ms, o.duration_ms);

  std::vector<int64_t> latency_us;
  latency_us.reserve(1 << 20);
  uint64_t created = 0, errors = 0, errors_measured = 0;
  LoadOptions lo;
  lo.port = target->port;
  lo.connections = o.connections;
  lo.stop_issuing_us = measure_to;
  lo.deadline_us = measure_to + 30'000'000;  // in-flight requests get 30 s to finish
  auto stats = run_load(
      lo, [&](uint64_t, std::string& out) { out.append(request); },
      [&](const Outcome& r) {
        bool ok = r.status == 201 && r.body.find("\"id\"") != std::string_view::npos;
        if (ok) ++created;
        if (!ok) ++errors;
        if (r.done_us < measure_from || r.done_us > measure_to) return;
        if (!ok) {
          ++errors_measured;
          return;
        }
        if (latency_us.size() < 50'000'000) latency_us.push_back(r.done_us - r.sent_us);
      });
  if (!stats) {
    ctx.report.error(sc, stats.error().message);
    return true;
  }
  std::sort(latency_us.begin(), latency_us.end());
  double seconds = static_cast<double>(o.duration_ms) / 1000.0;
  double rate = static_cast<double>(latency_us.size()) / seconds;
  ctx.report.speed(sc, "timers/s", rate, "/s", 0, Goal::kAtLeast, 50'000);
  ctx.create_rate = rate;
  ctx.report.info(sc, "latency p50", static_cast<double>(percentile(latency_us, 0.50)) / 1000.0,
                  "ms", 3);
  ctx.report.info(sc, "latency p99", static_cast<double>(percentile(latency_us, 0.99)) / 1000.0,
                  "ms", 3);
  ctx.report.info(sc, "latency p999", static_cast<double>(percentile(latency_us, 0.999)) / 1000.0,
                  "ms", 3);
  ctx.report.speed(sc, "errors (non-201)", static_cast<double>(errors), "", 0, Goal::kEqual, 0);
  ctx.report.info(sc, "timers created (incl. warm-up)", static_cast<double>(created), "", 0);
  if (stats->interrupted) {
    ctx.report.error(sc, "interrupted");
  } else if (latency_us.empty()) {
    ctx.report.error(sc, fmt::format("no timer created in the measured window ({} errors, {} "
                                     "transport failures)",
                                     errors_measured, stats->failures));
  } else if (target->node && !target->node->running()) {
    ctx.report.error(sc, "the node exited: " + target->node->log_tail(3));
  }
  return true;
}

}  // namespace skyring::bench
