// `delivery` and `lateness`: timers with known due times (`at`, epoch ms) and ids chosen by the
// bench (x-timer-id "<prefix>d<seq>"), delivered to the built-in webhook receiver.
//
// Operation
// 1. Warm-up: a small batch of timers due soon after their create ("<prefix>w<seq>"). It opens
//    the node's keep-alive connections to the receiver and measures the create rate (unless the
//    `create` scenario did), which sets how far ahead the measured timers must be due so that
//    all of them exist before the first is due.
// 2. Create: timer seq is due at T0 + seq * window / count, so they come due evenly over the
//    window: a short window (delivery: 200,000 due per second, faster than any node delivers)
//    measures delivery throughput, a long one (lateness: --rate per second for --duration)
//    measures lateness at a steady rate.
// 3. Wait, bounded, until every acknowledged timer arrived, then a little longer for repeats.
// 4. `delivery` only, after its rows are taken: the purge step (purge_pace.cc) on the same node,
//    which runs with a short --retention (2 s). Records delivered early in the window become
//    purgeable while later ones are still being delivered, so the purger's writes compete with
//    delivery inside the measured window, as on a busy node (on 2 cores deliveries/s is lower
//    for it; --node-arg=--retention=24h measures without it and skips the step). The step
//    itself only polls /metrics after the receiver stopped.
//
// Lateness is receive time - due time: it includes the node's HTTP hop to the receiver.
// Correctness: no receipt before its due time (early), no id twice (duplicates), every 201'd
// timer received (missing), nothing received whose create was refused.
#include <algorithm>
#include <map>
#include <thread>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/load_client.h"
#include "bench/nats_child.h"
#include "bench/scenario.h"
#include "bench/transport_receivers.h"
#include "bench/webhook_receiver.h"

namespace skyring::bench {
namespace {

constexpr uint8_t kUnsent = 0, kAcked = 1, kRefused = 2, kUnknown = 3;

struct DueSet {
  const char* scenario;  // row label: "delivery" / "lateness", "-<transport>" appended unless http
  std::string transport;
  uint64_t count;
  int64_t window_ms;
  bool lateness_goals;   // lateness: p50/p99 goals; delivery: deliveries/s goal
  bool short_retention;  // the node runs with the purge step's short retention
  bool purge_step;       // then measure_purge_pace
};

void append_create(std::string& out, uint16_t port, std::string_view id_prefix, char kind,
                   uint64_t seq, std::string_view when, std::string_view callback) {
  char body[1024];
  // The data is the timer's id: receivers of transports without headers (tcp, zmq, nats) read
  // it from the payload.
  size_t n = fmt::format_to_n(body, sizeof body, R"({{{},"data":"{}{}{}","callback":{}}})", when,
                              id_prefix, kind, seq, callback)
                 .size;
  fmt::format_to(std::back_inserter(out),
                 "POST /timer HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n"
                 "x-timer-id: {}{}{}\r\nContent-Length: {}\r\n\r\n",
                 port, id_prefix, kind, seq, n);
  out.append(body, std::min(n, sizeof body));
}

bool acked(const Outcome& r, std::string_view prefix, char kind) {
  if (r.status != 201) return false;
  std::string id = fmt::format("\"{}{}{}\"", prefix, kind, r.seq);
  return r.body.find(id) != std::string_view::npos;
}

void sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

// The receiver at the far end of `transport` (nats: with its own nats-server, in `nats`).
Result<std::unique_ptr<Receiver>> start_receiver(const ScenarioContext& ctx, const DueSet& d,
                                                 const std::string& prefix, uint64_t warm,
                                                 NatsChild& nats) {
  auto measured = static_cast<uint32_t>(d.count);
  auto w = static_cast<uint32_t>(warm);
  if (d.transport == "zmq") return ZmqReceiver::start(prefix, measured, w);
  if (d.transport == "nats") {
    auto port = free_port();
    if (!port) return tl::unexpected(port.error());
    if (auto s = nats.start(find_nats_server(ctx.options.nats_server), *port, 20'000); !s) {
      return tl::unexpected(s.error());
    }
    return NatsReceiver::start(prefix, measured, w, fmt::format("nats://127.0.0.1:{}", *port));
  }
  auto wire = d.transport == "tcp" ? WebhookReceiver::Wire::kLines : WebhookReceiver::Wire::kHttp;
  return WebhookReceiver::start(prefix, measured, w, wire);
}

// deliveries/s measured per transport in this run, for the "vs http" rows.
std::map<std::string, double>& delivery_rates() {
  static std::map<std::string, double> rates;
  return rates;
}

bool run_due_set(const ScenarioContext& ctx, const DueSet& d) {
  const std::string label = d.transport == "http" ? std::string(d.scenario)
                                                  : fmt::format("{}-{}", d.scenario, d.transport);
  const char* sc = label.c_str();
  const BenchOptions& o = ctx.options;
  Report& rep = ctx.report;
  int64_t retention_ms = 0;
  std::vector<std::string> node_args;
  if (d.short_retention && o.url.empty()) retention_ms = purge_retention_ms(o, &node_args);
  auto target = open_target(ctx, sc, node_args);
  if (!target) {
    rep.error(sc, target.error().message);
    return false;
  }
  const uint16_t port = target->port;
  const std::string prefix = fmt::format("bench-{}-{}{}-", ctx.run_id, sc[0], d.transport);
  const uint64_t warm = std::clamp<uint64_t>(d.count / 20, 50, 2000);
  NatsChild nats;
  auto receiver = start_receiver(ctx, d, prefix, warm, nats);
  if (!receiver) {
    rep.error(sc, receiver.error().message);
    return true;
  }
  Receiver& rx = **receiver;
  const std::string callback = rx.callback();
  auto node_alive = [&] { return !target->node || target->node->running(); };

  // 1. Warm-up. Due about when a node creating 2,000/s would have created them all.
  const std::string warm_timeout =
      fmt::format(R"("timeout":{})", std::clamp<uint64_t>(warm / 2, 100, 1000));
  uint64_t warm_acked = 0;
  int64_t t_warm = monotonic_us();
  LoadOptions lo;
  lo.port = port;
  lo.connections = std::min<size_t>(o.connections, warm);
  lo.max_requests = warm;
  lo.deadline_us = t_warm + 30'000'000;
  auto ws = run_load(
      lo,
      [&](uint64_t seq, std::string& out) {
        append_create(out, port, prefix, 'w', seq, warm_timeout, callback);
      },
      [&](const Outcome& r) { warm_acked += acked(r, prefix, 'w') ? 1 : 0; });
  double warm_s = static_cast<double>(monotonic_us() - t_warm) / 1e6;
  if (!ws || warm_acked == 0) {
    rep.error(sc, ws ? "warm-up: no create was accepted" : ws.error().message);
    return true;
  }
  for (int64_t until = monotonic_us() + 10'000'000;
       rx.warm_unique() < warm_acked && monotonic_us() < until && !interrupted().load();) {
    sleep_ms(5);
  }
  // The warm-up timers come due mostly after all creates are done:
  // its rate is a create rate (cold connections included, so a low estimate). A rate measured
  // by the `create` scenario of this run is better; either way 1.5x margin.
  double create_rate =
      std::max(static_cast<double>(warm_acked) / std::max(warm_s, 1e-3), ctx.create_rate);
  int64_t lead_ms =
      static_cast<int64_t>(static_cast<double>(d.count) / create_rate * 1500.0) + 1000;
  lead_ms = std::min<int64_t>(lead_ms, 120'000);

  // 2. Create the measured timers, due from T0 on.
  SystemClock wall;
  const int64_t t0_ms = wall.now_us() / 1000 + lead_ms;
  auto due_ms = [&](uint64_t seq) {
    return t0_ms + static_cast<int64_t>(seq) * d.window_ms / static_cast<int64_t>(d.count);
  };
  const int64_t last_due_ms = due_ms(d.count - 1);
  fmt::print(stderr,
             "[{}] {} timers due over {} ms from {} ms from now (warm-up created {:.0f}/s), "
             "callback {}\n",
             sc, d.count, d.window_ms, lead_ms, create_rate, callback);
  std::vector<uint8_t> state(d.count, kUnsent);
  uint64_t n_acked = 0, create_errors = 0, created_late = 0;
  lo.connections = o.connections;
  lo.max_requests = d.count;
  lo.deadline_us = monotonic_us() + (lead_ms + d.window_ms + 30'000) * 1000;
  auto cs = run_load(
      lo,
      [&](uint64_t seq, std::string& out) {
        char when[48];
        size_t n = fmt::format_to_n(when, sizeof when, R"("at":{})", due_ms(seq)).size;
        append_create(out, port, prefix, 'd', seq, std::string_view(when, n), callback);
      },
      [&](const Outcome& r) {
        if (acked(r, prefix, 'd')) {
          state[r.seq] = kAcked;
          ++n_acked;
          if (wall.now_us() > due_ms(r.seq) * 1000) ++created_late;
        } else {
          state[r.seq] = r.status == 0 ? kUnknown : kRefused;
          ++create_errors;
        }
      });
  if (!cs) {
    rep.error(sc, cs.error().message);
    return true;
  }
  fmt::print(stderr, "[{}] created {} timers ({} errors) with {} ms to spare\n", sc, n_acked,
             create_errors, t0_ms - wall.now_us() / 1000);

  // 3. Wait for the deliveries.
  // Bounded: 10 s plus the time a node delivering only 2,000/s would need.
  const int64_t grace_ms = 10'000 + static_cast<int64_t>(d.count / 2);
  const int64_t wait_until_ms = last_due_ms + grace_ms;
  bool node_died = false;
  while (rx.measured_unique() < n_acked && wall.now_us() / 1000 < wait_until_ms &&
         !interrupted().load()) {
    if (!node_alive()) {
      node_died = true;
      break;
    }
    sleep_ms(5);
  }
  sleep_ms(300);  // repeats would come right behind
  rx.stop();

  // Results.
  std::vector<int64_t> first_us(d.count, 0);
  uint64_t early = 0, repeats = 0;
  for (const Receipt& r : rx.receipts()) {
    if (r.recv_us < due_ms(r.seq) * 1000) ++early;
    if (first_us[r.seq] != 0) {
      ++repeats;
    } else {
      first_us[r.seq] = r.recv_us;
    }
  }
  std::vector<int64_t> lateness_us;
  lateness_us.reserve(d.count);
  uint64_t missing = 0, unasked = 0;
  int64_t first = INT64_MAX, last = INT64_MIN;
  for (uint64_t s = 0; s < d.count; ++s) {
    if (first_us[s] == 0) {
      if (state[s] == kAcked) ++missing;
      continue;
    }
    if (state[s] == kRefused) ++unasked;
    lateness_us.push_back(first_us[s] - due_ms(s) * 1000);
    first = std::min(first, first_us[s]);
    last = std::max(last, first_us[s]);
  }
  const ReceiverCounts& rc = rx.counts();
  uint64_t warm_missing = warm_acked > rx.warm_unique() ? warm_acked - rx.warm_unique() : 0;
  repeats += rc.warm_total - rx.warm_unique() + rc.overflow;
  std::sort(lateness_us.begin(), lateness_us.end());
  auto ms = [](int64_t us) { return static_cast<double>(us) / 1000.0; };

  rep.info(sc, "timers created", static_cast<double>(n_acked), "", 0);
  rep.speed(sc, "create errors (non-201)", static_cast<double>(create_errors), "", 0, Goal::kEqual,
            0);
  rep.info(sc, "created after their due time", static_cast<double>(created_late), "", 0);
  double span_s = static_cast<double>(last - first) / 1e6;
  double per_s =
      lateness_us.size() > 1 && span_s > 0 ? static_cast<double>(lateness_us.size()) / span_s : 0;
  if (!d.lateness_goals) delivery_rates()[d.transport] = per_s;
  if (d.lateness_goals) {
    rep.info(sc, "deliveries/s", per_s, "/s", 0);
    rep.speed(sc, "lateness p50", ms(percentile(lateness_us, 0.50)), "ms", 3, Goal::kAtMost, 2);
    rep.speed(sc, "lateness p99", ms(percentile(lateness_us, 0.99)), "ms", 3, Goal::kAtMost, 10);
  } else {
    rep.speed(sc, "deliveries/s", per_s, "/s", 0, Goal::kAtLeast, 20'000);
    auto http = delivery_rates().find("http");
    if (d.transport != "http" && http != delivery_rates().end() && http->second > 0) {
      // Issue 9: every other transport delivers at least as many per second as http does.
      rep.speed(sc, "deliveries/s vs http (same run)", per_s / http->second, "", 2, Goal::kAtLeast,
                1.0);
    }
    rep.info(sc, "lateness p50", ms(percentile(lateness_us, 0.50)), "ms", 3);
    rep.info(sc, "lateness p99", ms(percentile(lateness_us, 0.99)), "ms", 3);
  }
  rep.info(sc, "lateness p999", ms(percentile(lateness_us, 0.999)), "ms", 3);
  rep.info(sc, "lateness max", lateness_us.empty() ? 0 : ms(lateness_us.back()), "ms", 3);
  rep.must_be(sc, "early", static_cast<double>(early), 0);
  rep.must_be(sc, "duplicates", static_cast<double>(repeats), 0);
  if (interrupted().load()) {
    rep.note(sc, "missing", "not measured (interrupted)");
  } else {
    rep.must_be(sc, "missing", static_cast<double>(missing + warm_missing), 0);
  }
  if (unasked > 0) rep.must_be(sc, "delivered though refused", static_cast<double>(unasked), 0);
  if (rc.retried > 0) rep.info(sc, "attempts > 1", static_cast<double>(rc.retried), "", 0);
  if (rc.foreign + rc.bad > 0) {
    rep.info(sc, "foreign/bad requests", static_cast<double>(rc.foreign + rc.bad), "", 0);
  }
  if (interrupted().load()) {
    rep.error(sc, "interrupted");
  } else if (node_died) {
    rep.error(sc, "the node exited: " + target->node->log_tail(3));
  } else if (n_acked == 0) {
    rep.error(sc, "no timer was created");
  } else if (cs->deadline_hit) {
    rep.error(sc, "creates did not finish in time");
  }

  // 4. The purge step.
  if (!d.purge_step) return true;
  if (!o.url.empty()) {
    rep.note(sc, "purge", "skipped (needs its own node, not --url)");
  } else if (interrupted().load() || node_died || lateness_us.empty()) {
    rep.note(sc, "purge", "skipped (no completed delivery phase)");
  } else {
    measure_purge_pace(ctx, sc, port, retention_ms, lateness_us.size() + rx.warm_unique(), last);
  }
  return true;
}

}  // namespace

// --transport: http first (the baseline of the "vs http" rows), then the others in order.
bool run_delivery(const ScenarioContext& ctx) {
  // 200,000 due per second: the node, not the due times, sets the pace.
  uint64_t n = ctx.options.timers;
  int64_t window = std::max<int64_t>(1, static_cast<int64_t>(n / 200));
  for (const std::string& t : ctx.options.transports) {
    // Every transport's node purges alike (same node flags: a fair "vs http"); the purge
    // step's own rows are taken once, with http.
    if (!run_due_set(ctx, DueSet{"delivery", t, n, window, false, true, t == "http"})) {
      return false;
    }
    if (interrupted().load()) break;
  }
  return true;
}

bool run_lateness(const ScenarioContext& ctx) {
  const BenchOptions& o = ctx.options;
  uint64_t n = std::max<uint64_t>(1, o.rate * static_cast<uint64_t>(o.duration_ms) / 1000);
  for (const std::string& t : ctx.options.transports) {
    if (!run_due_set(ctx, DueSet{"lateness", t, n, o.duration_ms, true, false, false}))
      return false;
    if (interrupted().load()) break;
  }
  return true;
}

}  // namespace skyring::bench
