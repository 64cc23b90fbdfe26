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
};

// argv after "run": flags; env: the process environment (name -> value).
// On failure the message is one line meant for stderr, naming the option.
Result<Config> load_config(const std::vector<std::string>& args,
                           const std::map<std::string, std::string>& env);

// The help text of `skyring run --help`.
std::string config_help();

}  // namespace skyring
