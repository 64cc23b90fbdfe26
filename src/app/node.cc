#include "app/node.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>

#include "api/api.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/version.h"
#include "cluster/events.h"
#include "cluster/membership.h"
#include "cluster/mover.h"
#include "cluster/nats_bus.h"
#include "cluster/peer_client.h"
#include "cluster/router.h"
#include "delivery/http_transport.h"
#include "delivery/nats_transport.h"
#include "delivery/plugin_transport.h"
#include "delivery/tcp_transport.h"
#include "delivery/zmq_transport.h"
#include "engine/timer_engine.h"
#include "http/io_loop.h"
#include "http/server.h"
#include "storage/group_committer.h"
#include "storage/kv.h"
#include "storage/retention_purger.h"
#include "storage/timer_store.h"

namespace skyring {
namespace {

int config_error(const std::string& msg) {
  std::fprintf(stderr, "skyring: error: %s\n", msg.c_str());
  return 2;
}

Result<void> prepare_data_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return fail(Errc::kIo, fmt::format("--data-dir {}: cannot create: {}", dir, ec.message()));
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return fail(Errc::kIo,
                fmt::format("--data-dir {}: not writable: {}", dir, std::strerror(errno)));
  }
  return {};
}

// RocksDB's max_open_files at most (RocksOptions; less when the descriptor plan gives storage
// less) and what it keeps open besides tables: WAL, MANIFEST, LOG, LOCK, directories.
constexpr size_t kRocksMaxOpenFiles = 512;
constexpr size_t kRocksOtherFiles = 16;

struct FdLimit {
  uint64_t before = 0;  // soft RLIMIT_NOFILE at start
  uint64_t now = 0;     // after raising it
  std::string error;    // why it could not be raised
};

// Raises the soft RLIMIT_NOFILE to the hard limit (an unlimited hard limit means fs.nr_open,
// the most Linux allows).
FdLimit raise_fd_limit() {
  FdLimit out;
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    out.error = std::strerror(errno);
    out.before = out.now = 1024;
    return out;
  }
  out.before = out.now = rl.rlim_cur;
  rlim_t target = rl.rlim_max;
  if (target == RLIM_INFINITY) {
    uint64_t nr_open = 0;
    std::ifstream f("/proc/sys/fs/nr_open");
    target = (f >> nr_open) && nr_open > 0 ? static_cast<rlim_t>(nr_open) : rlim_t{1} << 20;
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < target) {
    rlimit raised{target, rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      out.now = target;
    } else {
      out.error = std::strerror(errno);
    }
  }
  return out;
}

void log_descriptor_plan(const FdLimit& fds, const DescriptorPlan& plan, const Config& config) {
  if (!fds.error.empty()) {
    log::warn("file descriptors: cannot raise the limit {}: {}", fds.before, fds.error);
  }
  log::info(
      "file descriptors: limit {}{}; client connections {}, outbound connections {}, storage {}, "
      "slack {}",
      fds.now, fds.now != fds.before ? fmt::format(" (raised from {})", fds.before) : "",
      plan.clients, plan.outbound, plan.storage, kDescriptorSlack);
  if (plan.reduced) {
    log::warn(
        "file descriptors: --max-connections {} and 2 x --max-inflight {} need {} descriptors "
        "with storage and slack but the limit is {}: client connections capped at {}, outbound "
        "at {} (raise the hard limit: ulimit -Hn, LimitNOFILE=)",
        config.max_connections, config.max_inflight, plan.wanted, plan.limit, plan.clients,
        plan.outbound);
  }
}

std::string random_node_id() {
  std::random_device rd;
  return fmt::format("node-{:08x}{:04x}", rd(), rd() & 0xffff);
}

// The address peers use when --advertise is not given: the bind address unless it is a
// wildcard, else the first non-loopback IPv4 address of this host, else 127.0.0.1.
std::string default_advertise(const std::string& host, uint16_t port) {
  if (host != "0.0.0.0" && host != "::" && !host.empty()) {
    return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                               : fmt::format("{}:{}", host, port);
  }
  std::string ip = "127.0.0.1";
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) == 0) {
    for (ifaddrs* i = ifs; i != nullptr; i = i->ifa_next) {
      if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
      char buf[INET_ADDRSTRLEN] = {};
      auto* sin = reinterpret_cast<sockaddr_in*>(i->ifa_addr);
      if (inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf) == nullptr) continue;
      if (std::string_view(buf).starts_with("127.")) continue;
      ip = buf;
      break;
    }
    freeifaddrs(ifs);
  }
  return fmt::format("{}:{}", ip, port);
}

// The cluster layer of a node started with --nats (docs/cluster.md).
struct ClusterParts {
  std::unique_ptr<cluster::NatsBus> bus;
  std::unique_ptr<cluster::Membership> membership;
  std::unique_ptr<cluster::PeerClient> peers;
  std::unique_ptr<cluster::EventPublisher> events;
  std::unique_ptr<cluster::Mover> mover;
  std::unique_ptr<cluster::Router> router;
};

}  // namespace

int run_node(const Config& config) {
  SystemClock clock;
  Registry metrics;

  // Claim the HTTP address first: a port in use is reported before anything else happens.
  // Nothing is accepted until recovery is done (start() below).
  IoLoop loop(clock);
  // Registered before recovery: a SIGTERM during a long recovery is held until the loop runs,
  // then stops the node gracefully.
  int signal_seen = 0;
  loop.on_shutdown_signal([&](int sig) {
    signal_seen = sig;
    loop.stop();
  });
  // Before storage opens: RocksDB needs its share of descriptors from the start.
  const FdLimit fds = raise_fd_limit();
  const DescriptorPlan fd_plan = plan_descriptors(
      config, fds.now, config.storage == "rocksdb" ? kRocksMaxOpenFiles + kRocksOtherFiles : 0);
  Api* api_ptr = nullptr;
  HttpServerOptions sopts;
  sopts.host = config.host;
  sopts.port = config.port;
  sopts.max_connections = fd_plan.clients;
  sopts.idle_timeout_ms = config.idle_timeout_ms;
  sopts.max_body_buffer_bytes = config.max_body_buffer;
  HttpServer server(
      loop, sopts,
      [&api_ptr](const ApiRequest& r, Api::Done d) { api_ptr->handle(r, std::move(d)); }, metrics);
  auto port = server.bind();
  if (!port) return config_error(port.error().message);

  std::unique_ptr<Kv> kv;
  bool durable = config.storage == "rocksdb";
  if (durable) {
    if (auto r = prepare_data_dir(config.data_dir); !r) return config_error(r.error().message);
    RocksOptions ropts;
    // RocksDB stays inside its share of the descriptor plan (tables + its other files).
    ropts.max_open_files = fd_plan.storage > kRocksOtherFiles
                               ? std::min(kRocksMaxOpenFiles, fd_plan.storage - kRocksOtherFiles)
                               : kRocksOtherFiles;
    auto opened = open_rocks_kv(config.data_dir, ropts);
    if (!opened) return config_error(opened.error().message);
    kv = std::move(*opened);
  } else {
    kv = make_memory_kv();
  }
  TimerStore store(*kv);
  if (auto r = store.open(); !r)
    return config_error(fmt::format("--data-dir {}: {}", config.data_dir, r.error().message));

  std::string node_id = config.node_id;
  auto stored_id = store.meta("node-id");
  if (!stored_id) return config_error(stored_id.error().message);
  if (node_id.empty()) node_id = stored_id->value_or(random_node_id());
  if (!*stored_id || **stored_id != node_id) {
    if (auto r = store.set_meta("node-id", node_id); !r) return config_error(r.error().message);
  }

  TransportRegistry transports;
  HttpTransportOptions http_opts;
  http_opts.max_queue = config.max_queued_deliveries;
  // Each of the two clients (plain, curl) pools up to this many: half of the outbound share.
  http_opts.max_connections_total = fd_plan.outbound / 2;
  http_opts.max_connections_per_host =
      std::min(config.max_inflight_per_destination, http_opts.max_connections_total);
  transports.add(std::make_unique<HttpTransport>(http_opts));
  // The other built-in transports (README, Transports). Each bounds its own queue by
  // --max-queued-deliveries; in-flight attempts are bounded for all of them by the engine.
  {
    TcpTransportOptions o;
    o.max_queue = config.max_queued_deliveries;
    o.max_connections_total = http_opts.max_connections_total;  // 8 per destination at most
    transports.add(std::make_unique<TcpTransport>(o));
  }
  {
    ZmqTransportOptions o;
    o.max_queue = config.max_queued_deliveries;
    transports.add(std::make_unique<ZmqTransport>(o));
  }
  {
    NatsTransportOptions o;
    o.default_urls = config.nats;
    o.max_queue = config.max_queued_deliveries;
    transports.add(std::make_unique<NatsTransport>(o));
  }
  // Plugins (docs/plugins.md): a load error, a wrong ABI or a taken name stops the node here.
  for (const std::string& path : config.transports) {
    PluginTransportOptions o;
    o.max_pending = config.max_queued_deliveries;
    // Below the 5 s the shutdown gives transports to stop (the loop waits while they do).
    o.stop_timeout_ms = 3000;
    auto plugin = load_transport_plugin(
        path,
        [&config](std::string_view name) {
          auto it = config.transport_settings.find(std::string(name));
          return it == config.transport_settings.end() ? std::string() : it->second;
        },
        o);
    if (!plugin) return config_error(plugin.error().message);
    if (transports.find((*plugin)->name()) != nullptr) {
      return config_error(fmt::format("--transport {}: a transport named '{}' is already loaded",
                                      path, (*plugin)->name()));
    }
    transports.add(std::move(*plugin));
  }

  EngineOptions eopts;
  CommitterOptions copts;
  copts.sync = durable;
  copts.max_queue_ops =
      config.max_pending_writes * 4 + config.max_inflight * 4 + 65536 + 2 * eopts.max_move_ops;
  CommitterProbe cprobe;
  cprobe.commit_seconds =
      &metrics.histogram("skyring_storage_commit_seconds",
                         "Latency of one group commit (write + fsync)", latency_buckets_seconds());
  cprobe.group_size = &metrics.histogram("skyring_storage_commit_batch_size",
                                         "Key writes (puts and deletes) per group commit",
                                         {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096});
  GroupCommitter committer(*kv, loop, copts, cprobe);
  // The engine's changes of one loop turn reach the committer as one submit (one fsync).
  TurnCommitter turn_committer(committer, loop);

  eopts.max_inflight = config.max_inflight;
  eopts.max_inflight_per_destination = config.max_inflight_per_destination;
  eopts.max_unsettled = config.max_pending_writes;
  eopts.retention_us = config.retention_ms * 1000;
  eopts.delivery_timeout_ms = config.delivery_timeout_ms;
  TimerEngine engine(clock, loop, loop, store, turn_committer, transports, eopts,
                     EngineProbe::make(metrics));
  const bool clustered = !config.nats.empty();
  // A clustered node fires nothing before it knows the ring (docs/cluster.md, "Restart").
  if (clustered) engine.hold_firing(true);
  int64_t t0 = monotonic_us();
  auto recovered = engine.recover();
  if (!recovered)
    return config_error(fmt::format("recovery failed: {}", recovered.error().message));
  log::info("recovered {} waiting timers in {} ms (storage {}, node {})", *recovered,
            (monotonic_us() - t0) / 1000, config.storage, node_id);
  log_descriptor_plan(fds, fd_plan, config);

  ClusterParts cl;
  if (clustered) {
    cluster::NatsOptions nopts;
    nopts.urls = config.nats;
    nopts.name = node_id;
    nopts.batch_interval_ms = config.nats_batch_ms;
    auto bus = cluster::NatsBus::start(nopts, loop, metrics);
    if (!bus) return config_error(bus.error().message);
    cl.bus = std::move(*bus);
    cluster::MembershipOptions mopts;
    mopts.cluster = config.cluster;
    mopts.self.id = node_id;
    mopts.self.address =
        config.advertise.empty() ? default_advertise(config.host, *port) : config.advertise;
    mopts.heartbeat_ms = config.heartbeat_interval_ms;
    mopts.member_timeout_ms = config.member_timeout_ms;
    mopts.discovery_ms = std::max<int64_t>(1500, config.heartbeat_interval_ms * 3 / 2);
    cl.membership = std::make_unique<cluster::Membership>(*cl.bus, clock, mopts, metrics);
    // On the loop's thread: a forwarded request costs no thread hand-off.
    cl.peers =
        std::make_unique<cluster::PeerClient>(cluster::PeerClientOptions{}, &loop.io_context());
    cl.events = std::make_unique<cluster::EventPublisher>(*cl.bus, node_id, config.cluster);
    engine.set_observer(cl.events.get());
    cluster::MoverOptions mvopts;
    mvopts.self_id = node_id;
    mvopts.cluster = config.cluster;
    cl.mover =
        std::make_unique<cluster::Mover>(engine, *cl.membership, *cl.peers, loop, mvopts, metrics);
    cluster::RouterOptions ropts;
    ropts.cluster = config.cluster;
    ropts.self_id = node_id;
    ropts.nats_connected = [bus = cl.bus.get()] { return bus->connected(); };
    cl.router = std::make_unique<cluster::Router>(engine, *cl.membership, *cl.peers, loop,
                                                  *cl.mover, ropts, metrics);
    cl.membership->on_ring_change([&cl] { cl.mover->ring_changed(); });
    cl.mover->on_settled([&cl](const cluster::MoveStats& st) {
      cl.events->node_event(
          "rebalance", fmt::format(R"("moved_out":{},"moved_in":{})", st.moved_out, st.moved_in));
    });
    cl.membership->start();
    cl.mover->start();
    size_t waiting = *recovered;
    loop.every(100, [&cl, &engine, waiting] {
      cl.membership->tick();
      cl.mover->tick();
      if (engine.firing_held() && cl.membership->ring_known()) {
        log::info("ring known ({} members, version {}): delivering", cl.membership->ring().size(),
                  cl.membership->ring_version());
        engine.hold_firing(false);
        cl.events->node_event("recover", fmt::format(R"("timers":{})", waiting));
      }
    });
    log::info("cluster '{}' over NATS {}: this node is {} at {}", config.cluster, config.nats,
              node_id, mopts.self.address);
  }

  PurgerOptions popts;
  if (clustered) {
    popts.on_caught_up = [events = cl.events.get()](size_t n) {
      events->node_event("purge", fmt::format(R"("count":{})", n));
    };
  }
  RetentionPurger purger(store, clock, popts, PurgerProbe::make(metrics));
  purger.start();

  ApiOptions aopts;
  aopts.node_id = node_id;
  aopts.router = cl.router.get();
  Api api(engine, transports, metrics, clock, aopts);
  api_ptr = &api;
  if (auto started = server.start(); !started) return config_error(started.error().message);

  loop.set_on_wake([&engine] { engine.tick(); });
  log::always("skyring {} listening on {}:{} (node {})", kVersion, config.host, *port, node_id);
  if (clustered) cl.events->node_event("ready", fmt::format(R"("address":"{}")", *port));
  engine.tick();
  loop.run();

  // A clustered node leaves the ring and hands its timers over while it still serves:
  // requests for them are forwarded to their new owners meanwhile (docs/cluster.md, "Leave").
  bool handed_over = false;
  if (clustered) {
    cl.membership->leave();
    cl.mover->ring_changed();
    if (cl.membership->ring().empty()) {
      log::info("shutting down (signal {}): last node of the ring; timers stay in {}", signal_seen,
                config.data_dir);
    } else {
      log::info("shutting down (signal {}): handing {} waiting timers to {} members", signal_seen,
                engine.waiting(), cl.membership->ring().size());
      int64_t t_leave = monotonic_us();
      handed_over =
          loop.run_until([&] { return cl.mover->settled() && engine.moving_count() == 0; },
                         config.leave_timeout_ms);
      log::info("handoff {} in {} ms: {} timers moved out, {} still here",
                handed_over ? "done" : "timed out", (monotonic_us() - t_leave) / 1000,
                cl.mover->stats().moved_out, engine.waiting());
    }
  }
  log::info("shutting down (signal {}): draining requests and deliveries", signal_seen);
  server.stop_accepting();
  engine.stop_firing();
  int64_t budget = config.shutdown_timeout_ms;
  loop.run_until([&] { return server.drained() && engine.inflight() == 0; }, budget);
  if (engine.inflight() > 0) {
    log::warn("{} deliveries still in flight after {} ms; aborting them (they stay owed)",
              engine.inflight(), budget);
  }
  // Aborted attempts report back through the loop; keep it turning while transports stop.
  std::thread stopper([&] { transports.stop_all(); });
  loop.run_until([&] { return engine.inflight() == 0; }, 5000);
  stopper.join();
  loop.run_until([&] { return engine.backlog() == 0; }, 10000);
  if (clustered) {
    // Attempts that ended during the drain left final records: they move too.
    if (handed_over && !cl.membership->ring().empty()) {
      cl.mover->ring_changed();
      handed_over =
          loop.run_until([&] { return cl.mover->settled() && engine.moving_count() == 0; }, 10000);
    }
    purger.stop();  // its "purge" events go through the bus
    // handed_over: nothing is left here, and a leaving node stores no new move (Mover), so a
    // move to this node whose outcome its sender does not know may go to the new owners.
    cl.membership->gone(handed_over);
    cl.events->node_event("shutdown");
    cl.peers->stop();
    loop.run_until([&] { return cl.peers->idle(); }, 2000);
    cl.bus->stop();
    engine.set_observer(nullptr);
  }
  turn_committer.flush();
  committer.stop();
  purger.stop();
  loop.run_until([&] { return engine.backlog() == 0; }, 1000);
  log::info("stopped: {} timers waiting in storage", engine.waiting());
  return 0;
}

}  // namespace skyring
