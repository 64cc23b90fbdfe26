#include "app/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <functional>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>
#include <CLI/CLI.hpp>

#include "base/ascii.h"

namespace skyring {
namespace {

struct Option {
  const char*
      name;  // flag without dashes; env SKYRING_<NAME>; TOML key name (or name_with_underscores)
  const char* help;
  std::function<Result<void>(Config&, const std::string&)> set;
  bool repeatable = false;
};

tl::unexpected<Error> bad(const char* name, std::string why) {
  return fail(Errc::kInvalidArgument, fmt::format("--{}: {}", name, why));
}

template <typename T>
Result<T> parse_uint(const char* name, const std::string& v, T min, T max) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size() || n < min || n > max) {
    return bad(name, fmt::format("'{}' is not an integer from {} to {}", v, min, max));
  }
  return static_cast<T>(n);
}

template <typename T>
std::function<Result<void>(Config&, const std::string&)> uint_field(const char* name, T Config::*f,
                                                                    T min, T max) {
  return [=](Config& c, const std::string& v) -> Result<void> {
    auto n = parse_uint<T>(name, v, min, max);
    if (!n) return tl::unexpected(n.error());
    c.*f = *n;
    return {};
  };
}

std::function<Result<void>(Config&, const std::string&)> duration_field(const char* name,
                                                                        int64_t Config::*f,
                                                                        int64_t min_ms) {
  return [=](Config& c, const std::string& v) -> Result<void> {
    auto d = parse_duration_ms(v);
    if (!d) return bad(name, d.error().message);
    if (*d < min_ms) return bad(name, fmt::format("must be at least {} ms", min_ms));
    c.*f = *d;
    return {};
  };
}

std::function<Result<void>(Config&, const std::string&)> string_field(std::string Config::*f) {
  return [=](Config& c, const std::string& v) -> Result<void> {
    c.*f = v;
    return {};
  };
}

std::function<Result<void>(Config&, const std::string&)> choice_field(
    const char* name, std::string Config::*f, std::vector<std::string> choices) {
  return [=](Config& c, const std::string& v) -> Result<void> {
    for (const auto& ch : choices) {
      if (v == ch) {
        c.*f = v;
        return {};
      }
    }
    return bad(name, fmt::format("'{}' is not one of {}", v, fmt::join(choices, ", ")));
  };
}

bool valid_port(std::string_view p) {
  return parse_port(p).has_value();
}

// host:port, host[:port] with an optional scheme and user info for NATS; the host is a name,
// an IPv4 address or a bracketed IPv6 literal.
bool valid_host_port(std::string_view hp, bool port_required) {
  std::string_view host = hp;
  std::string_view port;
  if (hp.starts_with("[")) {
    size_t close = hp.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    host = hp.substr(1, close - 1);
    std::string_view rest = hp.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return false;
      port = rest.substr(1);
      if (!valid_port(port)) return false;
    } else if (port_required) {
      return false;
    }
    return true;
  }
  size_t colon = hp.rfind(':');
  if (colon != std::string_view::npos) {
    host = hp.substr(0, colon);
    port = hp.substr(colon + 1);
    if (!valid_port(port)) return false;
  } else if (port_required) {
    return false;
  }
  if (host.empty()) return false;
  return std::all_of(host.begin(), host.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == '_';
  });
}

Result<void> check_nats_urls(const std::string& urls) {
  if (urls.empty()) return {};
  size_t start = 0;
  while (start <= urls.size()) {
    size_t comma = urls.find(',', start);
    std::string_view u(urls);
    u = u.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    while (!u.empty() && u.front() == ' ') u.remove_prefix(1);
    while (!u.empty() && u.back() == ' ') u.remove_suffix(1);
    std::string_view rest = u;
    if (size_t sep = rest.find("://"); sep != std::string_view::npos) {
      std::string_view scheme = rest.substr(0, sep);
      if (scheme != "nats" && scheme != "tls") {
        return bad("nats", fmt::format("'{}': the scheme must be nats:// or tls://", u));
      }
      rest = rest.substr(sep + 3);
    }
    if (size_t at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);
    if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
    if (!valid_host_port(rest, false)) {
      return bad("nats", fmt::format("'{}' is not a NATS URL (nats://host:port)", u));
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return {};
}

Result<void> check_advertise(const std::string& a) {
  if (a.empty() || valid_host_port(a, true)) return {};
  return bad("advertise", fmt::format("'{}' is not host:port", a));
}

const std::vector<Option>& options() {
  static const std::vector<Option> opts = {
      {"port", "HTTP port (0 = pick a free one and log it)",
       uint_field<uint16_t>("port", &Config::port, 0, 65535)},
      {"host", "HTTP bind address", string_field(&Config::host)},
      {"data-dir", "storage directory", string_field(&Config::data_dir)},
      {"storage", "rocksdb (durable) or memory (nothing survives a restart)",
       choice_field("storage", &Config::storage, {"rocksdb", "memory"})},
      {"node-id", "stable identity of this node (default: generated once, kept in the data dir)",
       string_field(&Config::node_id)},
      {"nats", "NATS server URL(s), comma separated: join a cluster", string_field(&Config::nats)},
      {"cluster", "cluster name", string_field(&Config::cluster)},
      {"advertise", "host:port peers use to reach this node's HTTP API",
       string_field(&Config::advertise)},
      {"log-level", "trace, debug, info, warn, error",
       choice_field("log-level", &Config::log_level, {"trace", "debug", "info", "warn", "error"})},
      {"log-format", "text or json",
       choice_field("log-format", &Config::log_format, {"text", "json"})},
      {"retention", "how long completed timers stay readable (e.g. 24h, 30m)",
       duration_field("retention", &Config::retention_ms, 1000)},
      {"transport", "path of a transport plugin (repeatable)",
       [](Config& c, const std::string& v) -> Result<void> {
         c.transports.push_back(v);
         return {};
       },
       true},
      {"max-connections", "open HTTP connections at most",
       uint_field<size_t>("max-connections", &Config::max_connections, 1, 1'000'000)},
      {"idle-timeout", "close a connection that sends nothing for this long",
       duration_field("idle-timeout", &Config::idle_timeout_ms, 100)},
      {"delivery-timeout", "time limit of one delivery attempt",
       duration_field("delivery-timeout", &Config::delivery_timeout_ms, 10)},
      {"max-inflight", "delivery attempts in flight per node",
       uint_field<size_t>("max-inflight", &Config::max_inflight, 1, 1'000'000)},
      {"max-inflight-per-destination", "delivery attempts in flight per destination",
       uint_field<size_t>("max-inflight-per-destination", &Config::max_inflight_per_destination, 1,
                          1'000'000)},
      {"max-pending-writes", "accepted changes waiting for storage before 503",
       uint_field<size_t>("max-pending-writes", &Config::max_pending_writes, 1, 10'000'000)},
      {"max-queued-deliveries", "deliveries queued inside a transport",
       uint_field<size_t>("max-queued-deliveries", &Config::max_queued_deliveries, 1, 10'000'000)},
      {"shutdown-timeout", "how long a graceful stop waits for in-flight work",
       duration_field("shutdown-timeout", &Config::shutdown_timeout_ms, 0)},
      {"heartbeat-interval", "cluster: how often this node tells the others it is alive",
       duration_field("heartbeat-interval", &Config::heartbeat_interval_ms, 10)},
      {"member-timeout",
       "cluster: a member not heard from for this long is dropped from the ring (a crashed node)",
       duration_field("member-timeout", &Config::member_timeout_ms, 100)},
      {"leave-timeout",
       "cluster: how long a stopping node hands its timers over before it exits anyway",
       duration_field("leave-timeout", &Config::leave_timeout_ms, 0)},
      {"nats-batch",
       "cluster: how long events gather before they go to NATS in one write (membership "
       "messages never wait; 0 to 1s, 0: no wait between writes)",
       duration_field("nats-batch", &Config::nats_batch_ms, 0)},
      {"max-body-buffer",
       "bytes of request bodies buffered at once, over all connections (at least 1 MiB); a "
       "request beyond it is answered 503",
       uint_field<size_t>("max-body-buffer", &Config::max_body_buffer, size_t{1} << 20,
                          size_t{1} << 40)},
  };
  return opts;
}

std::string env_name(const char* name) {
  std::string e = "SKYRING_";
  for (const char* p = name; *p; ++p) {
    e.push_back(*p == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(*p))));
  }
  return e;
}

std::optional<std::string> toml_scalar(const toml::node& n) {
  if (auto s = n.value<std::string>(); s && n.is_string()) return *s;
  if (n.is_integer()) return std::to_string(*n.value<int64_t>());
  if (n.is_boolean()) return *n.value<bool>() ? "true" : "false";
  if (n.is_floating_point()) return fmt::format("{}", *n.value<double>());
  return std::nullopt;
}

}  // namespace

Result<Config> load_config(const std::vector<std::string>& args,
                           const std::map<std::string, std::string>& env) {
  CLI::App app{"skyring run: start a node"};
  app.allow_extras(false);
  app.set_help_flag();
  std::map<std::string, std::vector<std::string>> flags;
  std::string config_flag;
  app.add_option("--config", config_flag, "TOML file");
  for (const Option& o : options()) {
    auto* opt = app.add_option(std::string("--") + o.name, flags[o.name], o.help);
    if (!o.repeatable) opt->expected(1);
  }
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    return fail(Errc::kInvalidArgument, e.what());
  }

  std::string config_file = config_flag;
  if (config_file.empty()) {
    if (auto it = env.find("SKYRING_CONFIG"); it != env.end()) config_file = it->second;
  }
  std::map<std::string, std::vector<std::string>> file_values;
  std::map<std::string, std::string> transport_settings;
  if (!config_file.empty()) {
    toml::table tbl;
    try {
      tbl = toml::parse_file(config_file);
    } catch (const toml::parse_error& e) {
      return fail(Errc::kInvalidArgument,
                  fmt::format("--config {}: {}", config_file, std::string(e.description())));
    }
    for (auto&& [k, node] : tbl) {
      std::string key(k.str());
      for (char& c : key) {
        if (c == '_') c = '-';
      }
      if (key == "transports") {
        // [transports.<name>]: the settings a transport plugin gets, as TOML text.
        auto* sub = node.as_table();
        if (sub == nullptr) {
          return fail(Errc::kInvalidArgument,
                      fmt::format("--config {}: 'transports' must be a table of tables "
                                  "([transports.<name>])",
                                  config_file));
        }
        for (auto&& [name, t] : *sub) {
          auto* table = t.as_table();
          if (table == nullptr) {
            return fail(Errc::kInvalidArgument,
                        fmt::format("--config {}: 'transports.{}' must be a table", config_file,
                                    std::string(name.str())));
          }
          std::ostringstream text;
          text << *table;
          transport_settings[std::string(name.str())] = text.str();
        }
        continue;
      }
      const Option* match = nullptr;
      for (const Option& o : options()) {
        if (key == o.name) match = &o;
      }
      if (match == nullptr) {
        return fail(Errc::kInvalidArgument, fmt::format("--config {}: unknown key '{}'",
                                                        config_file, std::string(k.str())));
      }
      if (auto* arr = node.as_array()) {
        for (auto& el : *arr) {
          auto v = toml_scalar(el);
          if (!v)
            return fail(
                Errc::kInvalidArgument,
                fmt::format("--config {}: '{}' has an unsupported value", config_file, key));
          file_values[key].push_back(*v);
        }
      } else {
        auto v = toml_scalar(node);
        if (!v)
          return fail(Errc::kInvalidArgument,
                      fmt::format("--config {}: '{}' has an unsupported value", config_file, key));
        file_values[key].push_back(*v);
      }
    }
  }

  Config c;
  c.config_file = config_file;
  c.transport_settings = std::move(transport_settings);
  for (const Option& o : options()) {
    std::vector<std::string> values;
    if (!flags[o.name].empty()) {
      values = flags[o.name];
    } else if (auto it = env.find(env_name(o.name)); it != env.end()) {
      if (o.repeatable) {
        // Comma separated list in the environment.
        std::string_view s = it->second;
        while (!s.empty()) {
          size_t comma = s.find(',');
          values.emplace_back(s.substr(0, comma));
          s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
        }
      } else {
        values.push_back(it->second);
      }
    } else if (auto f = file_values.find(o.name); f != file_values.end()) {
      values = f->second;
    }
    if (!o.repeatable && values.size() > 1) {
      return fail(Errc::kInvalidArgument, fmt::format("--{}: given more than once", o.name));
    }
    for (const std::string& v : values) {
      if (auto r = o.set(c, v); !r) return tl::unexpected(r.error());
    }
  }
  if (auto r = check_nats_urls(c.nats); !r) return tl::unexpected(r.error());
  if (!c.nats.empty() && c.cluster.empty()) return bad("cluster", "must not be empty");
  if (auto r = check_advertise(c.advertise); !r) return tl::unexpected(r.error());
  if (c.nats_batch_ms > 1000) return bad("nats-batch", "must be at most 1s");
  return c;
}

DescriptorPlan plan_descriptors(const Config& config, uint64_t fd_limit, size_t storage_fds) {
  DescriptorPlan p;
  p.limit = fd_limit;
  const uint64_t outbound = 2 * static_cast<uint64_t>(config.max_inflight);
  p.wanted = config.max_connections + outbound + storage_fds + kDescriptorSlack;
  if (p.wanted <= fd_limit) {
    p.storage = storage_fds;
    p.outbound = static_cast<size_t>(outbound);
    p.clients = config.max_connections;
    return p;
  }
  p.reduced = true;
  const uint64_t usable = fd_limit > kDescriptorSlack ? fd_limit - kDescriptorSlack : 0;
  p.storage = static_cast<size_t>(std::min<uint64_t>(storage_fds, usable / 2));
  const uint64_t rest = usable - p.storage;
  const uint64_t clients_share = std::max(rest / 2, rest > outbound ? rest - outbound : 0);
  p.clients = static_cast<size_t>(
      std::max<uint64_t>(1, std::min<uint64_t>(config.max_connections, clients_share)));
  // Split evenly between the two outbound clients, at least one connection each.
  uint64_t out = std::min(outbound, rest > p.clients ? rest - p.clients : 0);
  p.outbound = static_cast<size_t>(std::max<uint64_t>(2, out - out % 2));
  return p;
}

std::string config_help() {
  std::string out =
      "Usage: skyring run [options]\n\nEvery option is also an environment variable "
      "SKYRING_<OPTION> (upper case, dashes as underscores) and a key in the --config TOML "
      "file. Precedence: flag > environment > file > default.\n\n  --config FILE\n      TOML "
      "file\n";
  for (const Option& o : options()) out += fmt::format("  --{} VALUE\n      {}\n", o.name, o.help);
  return out;
}

}  // namespace skyring
