// `cluster` (SPEC section 8, cluster goals): a nats-server and three nodes on loopback, all
// started by the bench (release binary from --skyring; nats-server from --nats-server, PATH,
// /usr/sbin or /usr/bin).
//
// Phases
// 1. Baseline: a standalone node (no NATS), closed-loop creates with random x-timer-id for
//    --duration after --warmup: timers/s. Stopped before the cluster starts.
// 2. Cluster creates: the same load (one load thread, the same connection count) with its
//    connections spread round-robin over the three nodes. Ids are random, so about 2/3 of the
//    creates are forwarded to their owner. Goal: >= 0.5 x the baseline.
// 3. Deliveries: min(--timers, 20,000) timers with known due times (`at`) created through all
//    nodes, delivered to the built-in webhook receiver: early / duplicate / missing must be 0.
// 4. Join: --cluster-pending far-future timers (due in 1 h, callback 127.0.0.1:9) are created
//    through the cluster, then a 4th node starts. From its spawn until every node's /health
//    reports `"members":4` and `"settled":true` (every node holds only timers it owns) is the
//    join time (goal <= 30 s); meanwhile a client keeps creating through node-1 (creates/s and
//    errors during the move are reported).
// 5. Leave: SIGTERM to the 4th node: its exit (after handing its timers back) and the time until
//    the three report settled on a 3-member ring; creates go on meanwhile, as above.
//    Then the pending gauges of the three must add up to every far-future timer acknowledged
//    (none lost, none doubled by the moves).
//
// Everything is bounded: request counts, per-phase deadlines, polling counts. Children die with
// the bench (PR_SET_PDEATHSIG) and their temp dirs are removed.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/load_client.h"
#include "bench/nats_child.h"
#include "bench/node_metrics.h"
#include "bench/node_process.h"
#include "bench/scenario.h"
#include "bench/webhook_receiver.h"

namespace skyring::bench {
namespace {

constexpr const char* kSc = "cluster";

void sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

double secs(int64_t us) {
  return static_cast<double>(us) / 1e6;
}

struct ClusterNode {
  std::string id;
  uint16_t port = 0;
  std::unique_ptr<NodeProcess> proc;
};

Result<ClusterNode> start_cluster_node(const BenchOptions& o, const std::string& nats_url,
                                       const std::string& cluster, int index) {
  ClusterNode n;
  n.id = fmt::format("node-{}", index);
  auto port = free_port();
  if (!port) return tl::unexpected(port.error());
  n.port = *port;
  std::vector<std::string> args = o.node_args;
  args.insert(args.end(), {"--nats", nats_url, "--cluster", cluster, "--node-id", n.id,
                           "--advertise", fmt::format("127.0.0.1:{}", n.port)});
  auto proc = NodeProcess::create(NodeSpec{o.skyring, o.storage, args});
  if (!proc) return tl::unexpected(proc.error());
  auto started = (*proc)->start(n.port, 60'000);
  if (!started) return tl::unexpected(started.error());
  n.proc = std::move(*proc);
  fmt::print(stderr, "[{}] {} pid {} on 127.0.0.1:{}, serving after {:.3f} s\n", kSc, n.id,
             n.proc->pid(), n.port, secs(started->ping_us));
  return n;
}

// /health of the node says it sees `members` members and has settled (compact JSON).
bool settled_on(uint16_t port, int members) {
  auto r = http_request(port, "GET", "/health", 2000);
  if (!r || r->status != 200) return false;
  std::string b;
  b.reserve(r->body.size());
  for (char c : r->body) {
    if (c != ' ' && c != '\n') b.push_back(c);
  }
  size_t at = b.find("\"cluster\":{");
  if (at == std::string::npos) return false;
  std::string cl = b.substr(at);
  return cl.find("\"settled\":true") != std::string::npos &&
         cl.find("\"state\":\"ok\"") != std::string::npos &&
         cl.find(fmt::format("\"members\":{}", members)) != std::string::npos;
}

// Polls every 100 ms until all ports report settled on `members`; returns the elapsed µs since
// `since_us`, or an error after `timeout_ms`.
Result<int64_t> wait_settled(const std::vector<uint16_t>& ports, int members, int64_t since_us,
                             int64_t timeout_ms) {
  int64_t deadline = monotonic_us() + timeout_ms * 1000;
  for (int i = 0; i < 1'000'000 && !interrupted().load(); ++i) {
    bool all = true;
    for (uint16_t p : ports) {
      if (!settled_on(p, members)) {
        all = false;
        break;
      }
    }
    if (all) return monotonic_us() - since_us;
    if (monotonic_us() > deadline) break;
    sleep_ms(100);
  }
  return fail(Errc::kUnavailable,
              fmt::format("not settled on {} members within {} ms", members, timeout_ms));
}

int64_t metric_or_zero(uint16_t port, std::string_view name) {
  auto text = fetch_metrics(port, 5000);
  if (!text) return 0;
  auto v = metric_value(*text, name);
  return v ? *v : 0;
}

// Host names no port: the load's connections may go to several nodes.
std::string create_request(std::string_view id, std::string_view body) {
  return fmt::format(
      "POST /timer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      "x-timer-id: {}\r\nContent-Length: {}\r\n\r\n{}",
      id, body.size(), body);
}

constexpr std::string_view kFarBody =
    R"({"timeout":3600000,"data":"skyring-bench","callback":{"transport":"http",)"
    R"("method":"post","uri":"http://127.0.0.1:9/hook"}})";

struct CreateRun {
  uint64_t acked = 0;
  uint64_t errors = 0;
  uint64_t measured = 0;  // 201s completed inside [measure_from, measure_to]
  std::vector<int64_t> latency_us;
  bool failed = false;
  std::string failure;
};

// Closed-loop far-future creates with ids "<prefix><seq>" (`max_requests` at most) from one
// load thread whose connections are spread round-robin over `ports`: the same client as the
// single-node baseline (one thread, the same connection count), only its connections go to
// several nodes.
CreateRun create_load(const std::vector<uint16_t>& ports, size_t connections,
                      const std::string& prefix, uint64_t max_requests, int64_t measure_from,
                      int64_t measure_to, int64_t stop_issuing, int64_t deadline) {
  CreateRun run;
  run.latency_us.reserve(1 << 16);
  LoadOptions lo;
  lo.spread = ports;
  lo.connections = std::max<size_t>(connections, ports.size());
  lo.max_requests = max_requests;
  lo.stop_issuing_us = stop_issuing;
  lo.deadline_us = deadline;
  auto stats = run_load(
      lo,
      [&](uint64_t seq, std::string& out) {
        out.append(create_request(fmt::format("{}{}", prefix, seq), kFarBody));
      },
      [&](const Outcome& r) {
        bool ok = r.status == 201;
        if (ok) {
          ++run.acked;
        } else {
          ++run.errors;
        }
        if (ok && r.done_us >= measure_from && r.done_us <= measure_to) {
          ++run.measured;
          if (run.latency_us.size() < 10'000'000) run.latency_us.push_back(r.done_us - r.sent_us);
        }
      });
  if (!stats) {
    run.failed = true;
    run.failure = stats.error().message;
  }
  std::sort(run.latency_us.begin(), run.latency_us.end());
  return run;
}

// Measured create rate (timers/s) through `ports`; adds its rows under `label`.
double measure_rate(const ScenarioContext& ctx, const std::vector<uint16_t>& ports,
                    const std::string& prefix, const std::string& label) {
  const BenchOptions& o = ctx.options;
  int64_t start = monotonic_us();
  int64_t from = start + o.warmup_ms * 1000;
  int64_t to = from + o.duration_ms * 1000;
  CreateRun run =
      create_load(ports, o.connections, prefix, UINT64_MAX, from, to, to, to + 30'000'000);
  double rate = static_cast<double>(run.measured) / (static_cast<double>(o.duration_ms) / 1000.0);
  ctx.report.info(kSc, label + ": timers/s", rate, "/s", 0);
  ctx.report.info(kSc, label + ": latency p50",
                  static_cast<double>(percentile(run.latency_us, 0.50)) / 1000.0, "ms", 3);
  ctx.report.info(kSc, label + ": latency p99",
                  static_cast<double>(percentile(run.latency_us, 0.99)) / 1000.0, "ms", 3);
  ctx.report.speed(kSc, label + ": errors (non-201)", static_cast<double>(run.errors), "", 0,
                   Goal::kEqual, 0);
  if (run.failed) ctx.report.error(kSc, label + ": " + run.failure);
  fmt::print(stderr, "[{}] {}: {:.0f} creates/s ({} errors)\n", kSc, label, rate, run.errors);
  return rate;
}

// Creates through node-1 until `stop` is set (a move in progress): answers and errors.
struct Background {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ok{0};
  std::atomic<uint64_t> errors{0};
  int64_t started_us = 0;
  int64_t stopped_us = 0;
  std::thread thread;

  void start(uint16_t port, const std::string& prefix, size_t connections) {
    started_us = monotonic_us();
    thread = std::thread([this, port, prefix, connections] {
      LoadOptions lo;
      lo.port = port;
      lo.connections = connections;
      lo.stop = &stop;
      lo.deadline_us = monotonic_us() + 900'000'000;  // the phases themselves are bounded
      auto stats = run_load(
          lo,
          [&](uint64_t seq, std::string& out) {
            out.append(create_request(fmt::format("{}{}", prefix, seq), kFarBody));
          },
          [&](const Outcome& r) { (r.status == 201 ? ok : errors).fetch_add(1); });
      (void)stats;
    });
  }
  void finish() {
    stop.store(true);
    if (thread.joinable()) thread.join();
    stopped_us = monotonic_us();
  }
  ~Background() { finish(); }
};

bool run_cluster_impl(const ScenarioContext& ctx) {
  const BenchOptions& o = ctx.options;
  Report& rep = ctx.report;
  if (!o.url.empty()) {
    rep.note(kSc, "skipped", "needs its own nodes (not with --url)");
    return true;
  }
  const std::string prefix = fmt::format("bench-{}-k", ctx.run_id);

  // 1. Baseline: one standalone node, same request shape.
  double single_rate = 0;
  {
    auto target = open_target(ctx, kSc);
    if (!target) {
      rep.error(kSc, "single node: " + target.error().message);
      return false;
    }
    single_rate = measure_rate(ctx, {target->port}, prefix + "s", "single node");
    if (target->node) (void)target->node->stop(30'000);
  }
  if (interrupted().load()) return true;

  // NATS and three nodes.
  auto nats_port = free_port();
  if (!nats_port) {
    rep.error(kSc, nats_port.error().message);
    return true;
  }
  NatsChild nats;
  if (auto s = nats.start(find_nats_server(o.nats_server), *nats_port, 20'000); !s) {
    rep.error(kSc, s.error().message);
    return true;
  }
  const std::string nats_url = fmt::format("nats://127.0.0.1:{}", *nats_port);
  const std::string cluster = fmt::format("bench-{}", ctx.run_id);
  std::vector<ClusterNode> nodes;
  for (int i = 1; i <= 3; ++i) {
    auto n = start_cluster_node(o, nats_url, cluster, i);
    if (!n) {
      rep.error(kSc, fmt::format("node-{}: {}", i, n.error().message));
      return false;
    }
    nodes.push_back(std::move(*n));
  }
  std::vector<uint16_t> ports;
  for (const ClusterNode& n : nodes) ports.push_back(n.port);
  int64_t t_form = monotonic_us();
  if (auto s = wait_settled(ports, 3, t_form, 60'000); !s) {
    rep.error(kSc, "three nodes did not form a ring: " + s.error().message);
    return true;
  }
  auto nodes_alive = [&] {
    return std::all_of(nodes.begin(), nodes.end(),
                       [](ClusterNode& n) { return !n.proc || n.proc->running(); });
  };

  // 2. Creates through the cluster.
  double cluster_rate = measure_rate(ctx, ports, prefix + "c", "cluster of 3");
  int64_t forwarded = 0;
  for (uint16_t p : ports) forwarded += metric_or_zero(p, "skyring_cluster_forwarded_total");
  rep.info(kSc, "cluster of 3: requests forwarded", static_cast<double>(forwarded), "", 0);
  rep.speed(kSc, "cluster / single node create rate",
            single_rate > 0 ? cluster_rate / single_rate : 0, "", 2, Goal::kAtLeast, 0.5);
  if (interrupted().load()) return true;

  // 3. Deliveries through the cluster, exactly once.
  {
    const uint64_t count = std::max<uint64_t>(1, std::min<uint64_t>(o.timers, 20'000));
    const std::string dprefix = fmt::format("bench-{}-kd-", ctx.run_id);
    auto receiver = WebhookReceiver::start(dprefix, static_cast<uint32_t>(count), 1);
    if (!receiver) {
      rep.error(kSc, receiver.error().message);
      return true;
    }
    WebhookReceiver& rx = **receiver;
    const std::string callback = fmt::format(
        R"({{"transport":"http","method":"post","uri":"http://127.0.0.1:{}/hook"}})", rx.port());
    double rate = std::max(cluster_rate, 500.0);
    int64_t lead_ms = static_cast<int64_t>(static_cast<double>(count) / rate * 1500.0) + 2000;
    const int64_t window_ms = std::max<int64_t>(1000, static_cast<int64_t>(count / 10));
    SystemClock wall;
    const int64_t t0_ms = wall.now_us() / 1000 + lead_ms;
    auto due_ms = [&](uint64_t seq) {
      return t0_ms + static_cast<int64_t>(seq) * window_ms / static_cast<int64_t>(count);
    };
    std::vector<uint8_t> acked(count, 0);
    std::mutex mu;
    uint64_t n_acked = 0, errors = 0;
    std::vector<std::thread> threads;
    for (size_t k = 0; k < ports.size(); ++k) {
      threads.emplace_back([&, k] {
        uint16_t port = ports[k];
        std::vector<uint64_t> seqs;
        for (uint64_t s = k; s < count; s += ports.size()) seqs.push_back(s);
        LoadOptions lo;
        lo.port = port;
        lo.connections = std::max<size_t>(1, o.connections / ports.size());
        lo.max_requests = seqs.size();
        lo.deadline_us = monotonic_us() + (lead_ms + 60'000) * 1000;
        (void)run_load(
            lo,
            [&](uint64_t i, std::string& out) {
              uint64_t s = seqs[i];
              std::string body =
                  fmt::format(R"({{"at":{},"data":"{}","callback":{}}})", due_ms(s), s, callback);
              out.append(create_request(fmt::format("{}d{}", dprefix, s), body));
            },
            [&](const Outcome& r) {
              std::lock_guard<std::mutex> g(mu);
              if (r.status == 201) {
                acked[seqs[r.seq]] = 1;
                ++n_acked;
              } else {
                ++errors;
              }
            });
      });
    }
    for (std::thread& t : threads) t.join();
    const int64_t wait_until_ms = due_ms(count - 1) + 30'000 + static_cast<int64_t>(count / 2);
    while (rx.measured_unique() < n_acked && wall.now_us() / 1000 < wait_until_ms &&
           !interrupted().load() && nodes_alive()) {
      sleep_ms(5);
    }
    sleep_ms(500);  // repeats would come right behind
    rx.stop();
    std::vector<uint8_t> seen(count, 0);
    uint64_t early = 0, repeats = 0, missing = 0, unasked = 0;
    std::vector<int64_t> lateness;
    for (const Receipt& r : rx.receipts()) {
      if (r.recv_us < due_ms(r.seq) * 1000) ++early;
      if (seen[r.seq]) {
        ++repeats;
      } else {
        seen[r.seq] = 1;
        lateness.push_back(r.recv_us - due_ms(r.seq) * 1000);
        if (!acked[r.seq]) ++unasked;
      }
    }
    repeats += rx.counts().overflow;
    for (uint64_t s = 0; s < count; ++s) missing += (acked[s] && !seen[s]) ? 1 : 0;
    std::sort(lateness.begin(), lateness.end());
    rep.info(kSc, "deliveries: timers", static_cast<double>(n_acked), "", 0);
    rep.speed(kSc, "deliveries: create errors", static_cast<double>(errors), "", 0, Goal::kEqual,
              0);
    rep.info(kSc, "deliveries: lateness p50",
             static_cast<double>(percentile(lateness, 0.5)) / 1000.0, "ms", 3);
    rep.info(kSc, "deliveries: lateness p99",
             static_cast<double>(percentile(lateness, 0.99)) / 1000.0, "ms", 3);
    rep.must_be(kSc, "deliveries: early", static_cast<double>(early), 0);
    rep.must_be(kSc, "deliveries: duplicates", static_cast<double>(repeats), 0);
    if (interrupted().load()) {
      rep.note(kSc, "deliveries: missing", "not measured (interrupted)");
    } else {
      rep.must_be(kSc, "deliveries: missing", static_cast<double>(missing), 0);
    }
    if (unasked > 0) {
      rep.must_be(kSc, "deliveries: delivered though refused", static_cast<double>(unasked), 0);
    }
    fmt::print(stderr, "[{}] deliveries: {} acked, {} early, {} repeats, {} missing\n", kSc,
               n_acked, early, repeats, missing);
  }
  if (!nodes_alive()) {
    rep.error(kSc, "a node exited during the deliveries");
    return true;
  }
  if (interrupted().load()) return true;

  // 4. Join with --cluster-pending timers pending.
  const uint64_t pending_target = o.cluster_pending;
  {
    int64_t t = monotonic_us();
    CreateRun run = create_load(ports, o.connections, prefix + "p", pending_target, 0, 0, INT64_MAX,
                                t + static_cast<int64_t>(pending_target / 300 + 300) * 1'000'000);
    fmt::print(stderr, "[{}] {} far-future timers pending ({} errors) in {:.1f} s\n", kSc,
               run.acked, run.errors, secs(monotonic_us() - t));
    if (run.failed) {
      rep.error(kSc, "pending creates: " + run.failure);
      return true;
    }
  }
  int64_t pending_before = 0;
  for (uint16_t p : ports) pending_before += metric_or_zero(p, "skyring_timers_pending");
  rep.info(kSc, "join: timers pending before", static_cast<double>(pending_before), "", 0);
  if (interrupted().load()) return true;

  Background join_load;
  join_load.start(ports[0], prefix + "j", std::max<size_t>(1, o.connections / 8));
  int64_t t_join = monotonic_us();
  auto fourth = start_cluster_node(o, nats_url, cluster, 4);
  if (!fourth) {
    join_load.finish();
    rep.error(kSc, "node-4: " + fourth.error().message);
    return true;
  }
  std::vector<uint16_t> ports4 = ports;
  ports4.push_back(fourth->port);
  auto joined = wait_settled(ports4, 4, t_join, 300'000);
  join_load.finish();
  double join_s = secs(join_load.stopped_us - join_load.started_us);
  if (!joined) {
    rep.error(kSc, "join: " + joined.error().message);
  } else {
    rep.speed(kSc, "join: moves done", secs(*joined), "s", 2, Goal::kAtMost, 30);
  }
  int64_t moved_in = metric_or_zero(fourth->port, "skyring_cluster_moves_in_total");
  rep.info(kSc, "join: timers moved to node-4", static_cast<double>(moved_in), "", 0);
  rep.info(kSc, "join: creates/s during the move",
           join_s > 0 ? static_cast<double>(join_load.ok.load()) / join_s : 0, "/s", 0);
  rep.speed(kSc, "join: create errors during the move",
            static_cast<double>(join_load.errors.load()), "", 0, Goal::kEqual, 0);
  if (interrupted().load()) return true;

  // 5. Leave: SIGTERM to node-4.
  Background leave_load;
  leave_load.start(ports[0], prefix + "l", std::max<size_t>(1, o.connections / 8));
  int64_t t_leave = monotonic_us();
  auto stopped = fourth->proc->stop(300'000);
  if (!stopped) {
    leave_load.finish();
    rep.error(kSc, "leave: " + stopped.error().message);
    return true;
  }
  rep.info(kSc, "leave: node-4 exited after SIGTERM", secs(*stopped), "s", 2);
  auto left = wait_settled(ports, 3, t_leave, 300'000);
  leave_load.finish();
  double leave_s = secs(leave_load.stopped_us - leave_load.started_us);
  if (!left) {
    rep.error(kSc, "leave: " + left.error().message);
  } else {
    rep.speed(kSc, "leave: moves done", secs(*left), "s", 2, Goal::kAtMost, 30);
  }
  rep.info(kSc, "leave: creates/s during the move",
           leave_s > 0 ? static_cast<double>(leave_load.ok.load()) / leave_s : 0, "/s", 0);
  rep.speed(kSc, "leave: create errors during the move",
            static_cast<double>(leave_load.errors.load()), "", 0, Goal::kEqual, 0);

  // None lost, none doubled: pending now = pending before + creates acknowledged since.
  int64_t pending_after = 0;
  for (uint16_t p : ports) pending_after += metric_or_zero(p, "skyring_timers_pending");
  int64_t expected = pending_before + static_cast<int64_t>(join_load.ok.load()) +
                     static_cast<int64_t>(leave_load.ok.load());
  rep.info(kSc, "after join+leave: timers pending", static_cast<double>(pending_after), "", 0);
  if (join_load.errors.load() + leave_load.errors.load() == 0) {
    rep.must_be(kSc, "after join+leave: pending lost (-) or doubled (+)",
                static_cast<double>(pending_after - expected), 0);
  } else {
    // A create answered 5xx may or may not exist: only a loss beyond those is certain.
    int64_t unknown = static_cast<int64_t>(join_load.errors.load() + leave_load.errors.load());
    int64_t off = pending_after < expected             ? pending_after - expected
                  : pending_after > expected + unknown ? pending_after - expected - unknown
                                                       : 0;
    rep.must_be(kSc, "after join+leave: pending lost (-) or doubled (+)", static_cast<double>(off),
                0);
  }
  if (!nodes_alive()) rep.error(kSc, "a node exited");
  // The nodes are killed on the way out (NodeProcess destructor): a graceful stop would hand
  // every pending timer from node to node, which measures nothing here.
  return true;
}

}  // namespace

bool run_cluster(const ScenarioContext& ctx) {
  return run_cluster_impl(ctx);
}

}  // namespace skyring::bench
