// Configuration of `skyring run` (SPEC section 1): every option is a flag, an environment
// variable SKYRING_<FLAG> or a key of the TOML file given with --config; the first of
// flag > env > file > default that is set wins. Names are fixed by the spec.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/duration.h"
#include "base/result.h"

namespace skyring {

struct Config {
  // SPEC section 1
  uint16_t port = 3000;
  std::string host = "0.0.0.0";
  std::string data_dir = "./skyring-data";
  std::string storage = "rocksdb";
  std::string node_id;
  std::string nats;
  std::string cluster = "skyring";
  std::string advertise;
  std::string log_level = "info";
  std::string log_format = "text";
  int64_t retention_ms = 24LL * 3600 * 1000;
  std::vector<std::string> transports;
  // [transports.<name>] tables of the --config file, as TOML text, by transport name: what a
  // transport plugin of that name gets at start (docs/plugins.md).
  std::map<std::string, std::string> transport_settings;
  std::string config_file;
  // Tuning (documented in the README)
  size_t max_connections = 10'000;
  int64_t idle_timeout_ms = 60'000;
  int64_t delivery_timeout_ms = 10'000;
  size_t max_inflight = 1024;
  size_t max_inflight_per_destination = 128;
  size_t max_pending_writes = 200'000;
  size_t max_queued_deliveries = 100'000;
  int64_t shutdown_timeout_ms = 10'000;
  size_t max_body_buffer = 256 * 1024 * 1024;  // bytes of request bodies buffered at once
  // Cluster (README, Cluster)
  int64_t heartbeat_interval_ms = 1000;
  int64_t member_timeout_ms = 5000;
  int64_t leave_timeout_ms = 120'000;
  int64_t nats_batch_ms = 50;  // events gather this long before one NATS write
};

// argv after "run": flags; env: the process environment (name -> value).
// On failure the message is one line meant for stderr, naming the option.
Result<Config> load_config(const std::vector<std::string>& args,
                           const std::map<std::string, std::string>& env);

// The help text of `skyring run --help`.
std::string config_help();

// File descriptors. At start the node raises its soft RLIMIT_NOFILE to the hard limit and
// splits it (README, Configuration; docs/architecture.md, Bounds):
//   slack    kDescriptorSlack: stdio, the listener, epoll/eventfd/timerfd/signalfd, curl's own,
//            DNS, files read now and then
//   storage  what the store keeps open (RocksDB: max_open_files + WAL, MANIFEST, LOG, LOCK)
//   outbound 2 x --max-inflight: the plain client and curl each pool up to --max-inflight
//   clients  --max-connections
// If the sum fits the limit, everything is as configured. Otherwise (the node warns once)
// what is left after the slack is shared: storage gets what it needs up to half of it; client
// connections get at least half of the rest (more if outbound needs less), outbound the
// remainder. So client connections can never take the descriptors storage and deliveries
// need; beyond the cap they are closed at once.
inline constexpr size_t kDescriptorSlack = 64;

struct DescriptorPlan {
  uint64_t limit = 0;    // the soft RLIMIT_NOFILE planned for
  size_t storage = 0;    // held back for storage
  size_t outbound = 0;   // outbound delivery connections, both clients together (even)
  size_t clients = 0;    // effective --max-connections
  bool reduced = false;  // the configured limits did not fit and were lowered
  uint64_t wanted = 0;   // what the configured limits need in all (with storage and slack)
};

// storage_fds: descriptors the store may keep open (0 for memory storage).
DescriptorPlan plan_descriptors(const Config& config, uint64_t fd_limit, size_t storage_fds);

}  // namespace skyring
