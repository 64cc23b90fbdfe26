#include "bench/options.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <filesystem>

#include <fmt/format.h>

#include "base/duration.h"

namespace skyring::bench {
namespace {

tl::unexpected<Error> usage_error(std::string why) {
  return fail(Errc::kInvalidArgument, std::move(why));
}

Result<uint64_t> parse_count(const std::string& flag, const std::string& v, uint64_t min,
                             uint64_t max) {
  std::string digits;
  for (char c : v) {
    if (c != ',' && c != '_') digits.push_back(c);  // 1,000,000 and 1_000_000 read as numbers
  }
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size() || n < min ||
      n > max) {
    return usage_error(fmt::format("{}: '{}' is not an integer from {} to {}", flag, v, min, max));
  }
  return n;
}

// http://HOST:PORT[/]; HOST must be loopback: the bench never sends traffic off the machine.
Result<void> parse_url(BenchOptions& o, const std::string& url) {
  std::string_view u = url;
  if (u.substr(0, 7) != "http://") return usage_error("--url: must start with http://");
  u.remove_prefix(7);
  if (!u.empty() && u.back() == '/') u.remove_suffix(1);
  size_t colon = u.rfind(':');
  if (colon == std::string_view::npos) return usage_error("--url: needs an explicit :PORT");
  std::string host(u.substr(0, colon));
  auto port = parse_count("--url port", std::string(u.substr(colon + 1)), 1, 65535);
  if (!port) return tl::unexpected(port.error());
  if (host == "localhost") host = "127.0.0.1";
  in_addr addr{};
  if (inet_pton(AF_INET, host.c_str(), &addr) != 1 || (ntohl(addr.s_addr) >> 24) != 127) {
    return usage_error(fmt::format(
        "--url: host '{}' is not loopback (only 127.x.x.x or localhost are allowed)", host));
  }
  o.url = url;
  o.url_host = host;
  o.url_port = static_cast<uint16_t>(*port);
  return {};
}

}  // namespace

std::string usage_text() {
  return "Usage: skyring-bench [scenario...] [options]\n"
         "\n"
         "Measures the performance goals of SPEC section 8 and prints one table.\n"
         "Scenarios (default: all, in this order):\n"
         "  create     closed-loop POST /timer over keep-alive connections: timers/s, latency\n"
         "  delivery   --timers timers due in one short window to a built-in webhook receiver:\n"
         "             deliveries/s, lateness, early/duplicate/missing; then how soon the node\n"
         "             purges them all (it runs with --retention 2s unless --node-arg sets it)\n"
         "  lateness   timers due at --rate per second for --duration: lateness p50/p99/p999/max\n"
         "  capacity   --capacity pending timers: RAM per timer, /ping latency while listing an\n"
         "             empty state among them, restart time after SIGTERM and after kill -9,\n"
         "             pending count after restart (skipped with --url)\n"
         "  cluster    nats-server + 3 nodes on loopback: creates/s spread over the nodes with\n"
         "             random x-timer-id vs one standalone node, deliveries exactly once through\n"
         "             the cluster, then a 4th node joins and leaves with --cluster-pending\n"
         "             timers pending: time until the moves are done, creates/s and errors\n"
         "             meanwhile, none lost (skipped with --url)\n"
         "\n"
         "Options:\n"
         "  --skyring PATH      node binary (default: skyring next to skyring-bench)\n"
         "  --url URL           use a running node at http://127.0.0.1:PORT instead of starting\n"
         "                      a fresh one per scenario (loopback only); timers created by\n"
         "                      `create` stay pending there (due in 1 h, callback 127.0.0.1:9)\n"
         "  --json              print the results as one JSON object instead of a table\n"
         "  --smoke             tiny bounded run for CI (a few seconds); asserts only completion\n"
         "                      and zero early/duplicate/missing deliveries\n"
         "  --connections N     client connections (default 64)\n"
         "  --duration D        create: measured time after a 1 s warm-up; lateness: span of due\n"
         "                      times (default 10s)\n"
         "  --timers N          delivery: timers (default 100000)\n"
         "  --rate R            lateness: timers due per second (default 10000)\n"
         "  --capacity K        capacity: pending timers (default 1000000)\n"
         "  --cluster-pending N cluster: far-future timers pending when the 4th node joins\n"
         "                      (default 1000000)\n"
         "  --nats-server PATH  cluster, --transport nats: nats-server binary (default: PATH,\n"
         "                      /usr/sbin, /usr/bin)\n"
         "  --transport LIST    delivery, lateness: transports to measure, comma separated, of\n"
         "                      http, tcp, zmq, nats (default http); http always runs first\n"
         "                      and the others are also reported as a ratio to it\n"
         "  --storage S         rocksdb (durable, default) or memory\n"
         "  --node-arg ARG      extra flag for `skyring run`, repeatable\n"
         "                      (e.g. --node-arg=--max-inflight-per-destination=512)\n"
         "  -h, --help          this text\n"
         "\n"
         "Exit code: 0 all correct (speed misses are reported, not failed); 1 an early, duplicate\n"
         "or missing delivery, a lost timer, or a scenario that did not complete; 2 usage error\n"
         "or the node failed to start.\n";
}

Result<BenchOptions> parse_options(const std::vector<std::string>& args, const std::string& self) {
  BenchOptions o;
  // --smoke sets the small defaults first; explicit flags still override them.
  if (std::find(args.begin(), args.end(), "--smoke") != args.end()) {
    o.smoke = true;
    o.connections = 4;
    o.duration_ms = 1000;
    o.warmup_ms = 200;
    o.timers = 500;
    o.rate = 300;
    o.capacity = 2000;
    o.cluster_pending = 2000;
  }
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    std::string value;
    bool has_inline = false;
    if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
      value = a.substr(a.find('=') + 1);
      a = a.substr(0, a.find('='));
      has_inline = true;
    }
    auto next = [&]() -> Result<std::string> {
      if (has_inline) return value;
      if (i + 1 >= args.size()) return usage_error(fmt::format("{}: needs a value", a));
      return args[++i];
    };
    auto flag_only = [&]() -> Result<void> {
      if (has_inline) return usage_error(fmt::format("{}: takes no value", a));
      return {};
    };
    Result<void> ok;
    if (a == "--json" || a == "--smoke") {
      ok = flag_only();
      if (a == "--json") o.json = true;
    } else if (a == "--skyring" || a == "--url" || a == "--connections" || a == "--duration" ||
               a == "--timers" || a == "--rate" || a == "--capacity" || a == "--storage" ||
               a == "--node-arg" || a == "--cluster-pending" || a == "--nats-server" ||
               a == "--transport") {
      auto v = next();
      if (!v) return tl::unexpected(v.error());
      if (a == "--skyring") {
        o.skyring = *v;
      } else if (a == "--url") {
        ok = parse_url(o, *v);
      } else if (a == "--duration") {
        auto d = parse_duration_ms(*v);
        if (!d) return usage_error("--duration: " + d.error().message);
        if (*d < 100 || *d > 86'400'000)
          return usage_error("--duration: must be from 100ms to 24h");
        o.duration_ms = *d;
      } else if (a == "--storage") {
        if (*v != "rocksdb" && *v != "memory") {
          return usage_error(fmt::format("--storage: '{}' is not rocksdb or memory", *v));
        }
        o.storage = *v;
      } else if (a == "--node-arg") {
        o.node_args.push_back(*v);
      } else if (a == "--nats-server") {
        o.nats_server = *v;
      } else if (a == "--transport") {
        std::vector<std::string> list = {"http"};
        for (size_t start = 0; start <= v->size();) {
          size_t end = std::min(v->find(',', start), v->size());
          std::string t = v->substr(start, end - start);
          if (t != "http" && t != "tcp" && t != "zmq" && t != "nats") {
            return usage_error(
                fmt::format("--transport: '{}' is not one of http, tcp, zmq, nats", t));
          }
          if (std::find(list.begin(), list.end(), t) == list.end()) list.push_back(t);
          start = end + 1;
        }
        o.transports = std::move(list);
      } else {
        uint64_t max = a == "--connections" ? 10'000 : 100'000'000;
        auto n = parse_count(a, *v, 1, max);
        if (!n) return tl::unexpected(n.error());
        if (a == "--connections") o.connections = *n;
        if (a == "--timers") o.timers = *n;
        if (a == "--rate") o.rate = *n;
        if (a == "--capacity") o.capacity = *n;
        if (a == "--cluster-pending") o.cluster_pending = *n;
      }
    } else if (a.rfind("-", 0) == 0) {
      return usage_error(fmt::format("unknown option '{}'", a));
    } else {
      if (std::find(std::begin(kScenarioNames), std::end(kScenarioNames), a) ==
          std::end(kScenarioNames)) {
        return usage_error(fmt::format(
            "unknown scenario '{}' (create, delivery, lateness, capacity, cluster)", a));
      }
      if (std::find(o.scenarios.begin(), o.scenarios.end(), a) == o.scenarios.end()) {
        o.scenarios.push_back(a);
      }
    }
    if (!ok) return tl::unexpected(ok.error());
  }
  if (o.scenarios.empty()) o.scenarios.assign(std::begin(kScenarioNames), std::end(kScenarioNames));
  if (o.rate * o.duration_ms / 1000 > 100'000'000) {
    return usage_error("--rate x --duration: more than 100,000,000 timers");
  }
  if (o.skyring.empty() && o.url.empty()) {
    o.skyring = (std::filesystem::path(self).parent_path() / "skyring").string();
  }
  return o;
}

}  // namespace skyring::bench
