#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "app/config.h"

namespace skyring {
namespace {

using Args = std::vector<std::string>;
using Env = std::map<std::string, std::string>;

// A TOML file in a fresh directory under /tmp, removed with it.
class TomlFile {
 public:
  explicit TomlFile(const std::string& text) {
    char tmpl[] = "/tmp/skyring-config-test-XXXXXX";
    char* p = mkdtemp(tmpl);
    EXPECT_NE(p, nullptr);
    dir_ = p ? p : "/tmp";
    path_ = dir_ + "/skyring.toml";
    std::ofstream(path_) << text;
  }
  ~TomlFile() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
};

Config load_ok(const Args& args, const Env& env = {}) {
  auto c = load_config(args, env);
  EXPECT_TRUE(c.has_value()) << (c ? "" : c.error().message);
  return c ? *c : Config{};
}

// Expects a one-line error that names `needle` (the option).
void expect_error(const Args& args, const Env& env, std::string_view needle) {
  std::string joined;
  for (const auto& a : args) joined += a + " ";
  SCOPED_TRACE(joined);
  auto c = load_config(args, env);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code, Errc::kInvalidArgument);
  EXPECT_NE(c.error().message.find(needle), std::string::npos)
      << "'" << c.error().message << "' does not mention '" << needle << "'";
  EXPECT_EQ(c.error().message.find('\n'), std::string::npos) << c.error().message;
}

TEST(Config, Defaults) {
  Config c = load_ok({});
  EXPECT_EQ(c.port, 3000);
  EXPECT_EQ(c.host, "0.0.0.0");
  EXPECT_EQ(c.data_dir, "./skyring-data");
  EXPECT_EQ(c.storage, "rocksdb");
  EXPECT_EQ(c.node_id, "");
  EXPECT_EQ(c.nats, "");
  EXPECT_EQ(c.cluster, "skyring");
  EXPECT_EQ(c.advertise, "");
  EXPECT_EQ(c.log_level, "info");
  EXPECT_EQ(c.log_format, "text");
  EXPECT_EQ(c.retention_ms, 24 * 3600 * 1000);
  EXPECT_TRUE(c.transports.empty());
  EXPECT_EQ(c.config_file, "");
  Config d;
  EXPECT_EQ(c.max_connections, d.max_connections);
  EXPECT_EQ(c.idle_timeout_ms, d.idle_timeout_ms);
  EXPECT_EQ(c.delivery_timeout_ms, 10'000);
  EXPECT_EQ(c.max_inflight, d.max_inflight);
  EXPECT_EQ(c.max_inflight_per_destination, d.max_inflight_per_destination);
  EXPECT_EQ(c.max_pending_writes, d.max_pending_writes);
  EXPECT_EQ(c.max_queued_deliveries, d.max_queued_deliveries);
  EXPECT_EQ(c.shutdown_timeout_ms, d.shutdown_timeout_ms);
}

TEST(Config, EverySpecFlag) {
  Config c = load_ok({"--port",        "8080",        "--host",
                      "127.0.0.1",     "--data-dir",  "/var/lib/skyring",
                      "--storage",     "memory",      "--node-id",
                      "node-a",        "--nats",      "nats://a:4222,nats://b:4222",
                      "--cluster",     "blue",        "--advertise",
                      "10.0.0.1:8080", "--log-level", "debug",
                      "--log-format",  "json",        "--retention",
                      "30m",           "--transport", "/opt/libfoo.so"});
  EXPECT_EQ(c.port, 8080);
  EXPECT_EQ(c.host, "127.0.0.1");
  EXPECT_EQ(c.data_dir, "/var/lib/skyring");
  EXPECT_EQ(c.storage, "memory");
  EXPECT_EQ(c.node_id, "node-a");
  EXPECT_EQ(c.nats, "nats://a:4222,nats://b:4222");
  EXPECT_EQ(c.cluster, "blue");
  EXPECT_EQ(c.advertise, "10.0.0.1:8080");
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.log_format, "json");
  EXPECT_EQ(c.retention_ms, 30 * 60 * 1000);
  EXPECT_EQ(c.transports, (std::vector<std::string>{"/opt/libfoo.so"}));
}

TEST(Config, TuningFlags) {
  Config c =
      load_ok({"--max-connections", "5", "--idle-timeout", "5s", "--delivery-timeout", "2500ms",
               "--max-inflight", "7", "--max-inflight-per-destination", "3", "--max-pending-writes",
               "9", "--max-queued-deliveries", "11", "--shutdown-timeout", "0"});
  EXPECT_EQ(c.max_connections, 5u);
  EXPECT_EQ(c.idle_timeout_ms, 5000);
  EXPECT_EQ(c.delivery_timeout_ms, 2500);
  EXPECT_EQ(c.max_inflight, 7u);
  EXPECT_EQ(c.max_inflight_per_destination, 3u);
  EXPECT_EQ(c.max_pending_writes, 9u);
  EXPECT_EQ(c.max_queued_deliveries, 11u);
  EXPECT_EQ(c.shutdown_timeout_ms, 0);
}

TEST(Config, FlagWithEqualsSign) {
  Config c = load_ok({"--port=0", "--data-dir=/tmp/x"});
  EXPECT_EQ(c.port, 0);  // 0 = pick a free port
  EXPECT_EQ(c.data_dir, "/tmp/x");
}

TEST(Config, PortRange) {
  EXPECT_EQ(load_ok({"--port", "65535"}).port, 65535);
  expect_error({"--port", "70000"}, {}, "--port");
  expect_error({"--port", "65536"}, {}, "--port");
  expect_error({"--port", "abc"}, {}, "--port");
  expect_error({"--port", "-1"}, {}, "--port");
  expect_error({"--port", "80x"}, {}, "--port");
  expect_error({"--port", ""}, {}, "--port");
  expect_error({"--port"}, {}, "--port");
}

TEST(Config, NatsUrlsAndAdvertise) {
  EXPECT_EQ(load_ok({"--nats", "nats://127.0.0.1:4222"}).nats, "nats://127.0.0.1:4222");
  load_ok({"--nats", "nats://a.example:4222, nats://user:pw@b.example:4223,tls://[::1]:4222"});
  load_ok({"--nats", "localhost:4222"});
  load_ok({"--nats", "nats://nats.internal"});
  expect_error({"--nats", "not a url"}, {}, "--nats");
  expect_error({"--nats", "nats://127.0.0.1:99999"}, {}, "--nats");
  expect_error({"--nats", "http://127.0.0.1:4222"}, {}, "--nats");
  expect_error({"--nats", "nats://"}, {}, "--nats");
  expect_error({"--nats", "nats://a:1,,nats://b:2"}, {}, "--nats");
  expect_error({"--nats", "nats://a:1", "--cluster", ""}, {}, "--cluster");
  EXPECT_EQ(load_ok({"--advertise", "10.0.0.5:3000"}).advertise, "10.0.0.5:3000");
  load_ok({"--advertise", "[fd00::1]:3000"});
  load_ok({"--advertise", "node-1.example:3000"});
  expect_error({"--advertise", "10.0.0.5"}, {}, "--advertise");
  expect_error({"--advertise", "10.0.0.5:0"}, {}, "--advertise");
  expect_error({"--advertise", "a b:3000"}, {}, "--advertise");
}

TEST(Config, ClusterTuning) {
  Config c = load_ok(
      {"--heartbeat-interval", "200ms", "--member-timeout", "2s", "--leave-timeout", "30s"});
  EXPECT_EQ(c.heartbeat_interval_ms, 200);
  EXPECT_EQ(c.member_timeout_ms, 2000);
  EXPECT_EQ(c.leave_timeout_ms, 30'000);
  Config d = load_ok({});
  EXPECT_EQ(d.heartbeat_interval_ms, 1000);
  EXPECT_EQ(d.member_timeout_ms, 5000);
  EXPECT_EQ(d.nats_batch_ms, 50);
  EXPECT_EQ(load_ok({"--nats-batch", "0"}).nats_batch_ms, 0);
  EXPECT_EQ(load_ok({"--nats-batch", "1s"}).nats_batch_ms, 1000);
  EXPECT_EQ(load_ok({}, {{"SKYRING_NATS_BATCH", "20ms"}}).nats_batch_ms, 20);
  expect_error({"--nats-batch", "1001ms"}, {}, "--nats-batch");
  expect_error({"--nats-batch", "-5ms"}, {}, "--nats-batch");
}

TEST(Config, BadChoices) {
  expect_error({"--storage", "sqlite"}, {}, "--storage");
  expect_error({"--storage", "RocksDB"}, {}, "--storage");
  expect_error({"--log-level", "loud"}, {}, "--log-level");
  expect_error({"--log-format", "xml"}, {}, "--log-format");
}

TEST(Config, BadDurations) {
  expect_error({"--retention", "10x"}, {}, "--retention");
  expect_error({"--retention", "h"}, {}, "--retention");
  expect_error({"--retention", "1.5h"}, {}, "--retention");
  expect_error({"--retention", "-1h"}, {}, "--retention");
  expect_error({"--retention", "500ms"}, {}, "--retention");  // below its minimum of 1 s
  expect_error({"--idle-timeout", "forever"}, {}, "--idle-timeout");
  expect_error({"--delivery-timeout", "99999999999999999999"}, {}, "--delivery-timeout");
}

TEST(Config, BadCounts) {
  expect_error({"--max-inflight", "0"}, {}, "--max-inflight");
  expect_error({"--max-connections", "many"}, {}, "--max-connections");
}

TEST(Config, UnknownFlag) {
  expect_error({"--bogus", "1"}, {}, "--bogus");
  expect_error({"--port", "1", "--data_dir", "/x"}, {}, "--data_dir");
  expect_error({"stray-positional"}, {}, "stray-positional");
}

TEST(Config, RepeatedTransport) {
  Config c = load_ok({"--transport", "/a.so", "--transport", "/b.so", "--transport", "/c.so"});
  EXPECT_EQ(c.transports, (std::vector<std::string>{"/a.so", "/b.so", "/c.so"}));
}

TEST(Config, RepeatedSingleValueFlagIsAnError) {
  auto c = load_config({"--port", "1", "--port", "2"}, {});
  ASSERT_FALSE(c.has_value()) << "port " << c->port;
  EXPECT_NE(c.error().message.find("port"), std::string::npos) << c.error().message;
}

TEST(Config, Environment) {
  Config c = load_ok({}, {{"SKYRING_DATA_DIR", "/env/data"},
                          {"SKYRING_PORT", "4444"},
                          {"SKYRING_STORAGE", "memory"},
                          {"SKYRING_LOG_LEVEL", "warn"},
                          {"SKYRING_RETENTION", "2h"},
                          {"SKYRING_NODE_ID", "env-node"},
                          {"SKYRING_MAX_INFLIGHT_PER_DESTINATION", "4"},
                          {"SKYRING_TRANSPORT", "/a.so,/b.so"},
                          {"HOME", "/root"},
                          {"SKYRING_UNRELATED", "ignored"}});
  EXPECT_EQ(c.data_dir, "/env/data");
  EXPECT_EQ(c.port, 4444);
  EXPECT_EQ(c.storage, "memory");
  EXPECT_EQ(c.log_level, "warn");
  EXPECT_EQ(c.retention_ms, 2 * 3600 * 1000);
  EXPECT_EQ(c.node_id, "env-node");
  EXPECT_EQ(c.max_inflight_per_destination, 4u);
  EXPECT_EQ(c.transports, (std::vector<std::string>{"/a.so", "/b.so"}));
}

TEST(Config, BadEnvironmentValueNamesTheOption) {
  expect_error({}, {{"SKYRING_PORT", "70000"}}, "--port");
  expect_error({}, {{"SKYRING_STORAGE", "floppy"}}, "--storage");
  expect_error({}, {{"SKYRING_RETENTION", "soon"}}, "--retention");
}

TEST(Config, TomlFile) {
  TomlFile f(R"(# a comment
port = 4000
data_dir = "/file/data"
log-level = "error"
retention = "90s"
max_inflight = 12
max-queued-deliveries = 13
storage = "memory"
transport = ["/x.so", "/y.so"]
)");
  Config c = load_ok({"--config", f.path()});
  EXPECT_EQ(c.config_file, f.path());
  EXPECT_EQ(c.port, 4000);
  EXPECT_EQ(c.data_dir, "/file/data");
  EXPECT_EQ(c.log_level, "error");
  EXPECT_EQ(c.retention_ms, 90'000);
  EXPECT_EQ(c.max_inflight, 12u);
  EXPECT_EQ(c.max_queued_deliveries, 13u);
  EXPECT_EQ(c.storage, "memory");
  EXPECT_EQ(c.transports, (std::vector<std::string>{"/x.so", "/y.so"}));
  EXPECT_EQ(c.host, "0.0.0.0");  // not in the file: default
}

TEST(Config, TomlFileFromEnvironment) {
  TomlFile f("cluster = \"from-file\"\n");
  Config c = load_ok({}, {{"SKYRING_CONFIG", f.path()}});
  EXPECT_EQ(c.cluster, "from-file");
  EXPECT_EQ(c.config_file, f.path());
}

TEST(Config, PrecedenceFlagEnvFileDefault) {
  TomlFile f("port = 1111\ntransport = [\"/file.so\"]\n");
  Env env = {{"SKYRING_PORT", "2222"}, {"SKYRING_TRANSPORT", "/env.so"}};
  Args flag = {"--config", f.path(), "--port", "3333", "--transport", "/flag.so"};
  Args no_flag = {"--config", f.path()};

  Config c = load_ok(flag, env);
  EXPECT_EQ(c.port, 3333);
  EXPECT_EQ(c.transports, (std::vector<std::string>{"/flag.so"}));
  c = load_ok(no_flag, env);
  EXPECT_EQ(c.port, 2222);
  EXPECT_EQ(c.transports, (std::vector<std::string>{"/env.so"}));
  c = load_ok(no_flag, {});
  EXPECT_EQ(c.port, 1111);
  EXPECT_EQ(c.transports, (std::vector<std::string>{"/file.so"}));
  c = load_ok({}, {});
  EXPECT_EQ(c.port, 3000);
  EXPECT_TRUE(c.transports.empty());
  // The flag wins over the environment without a file too.
  EXPECT_EQ(load_ok({"--port", "3333"}, {{"SKYRING_PORT", "2222"}}).port, 3333);
  // A bad value lower in the order is not looked at when a higher one is set.
  EXPECT_EQ(load_ok({"--port", "3333"}, {{"SKYRING_PORT", "bad"}}).port, 3333);
}

TEST(Config, ConfigFlagWinsOverConfigEnv) {
  TomlFile a("cluster = \"a\"\n");
  TomlFile b("cluster = \"b\"\n");
  EXPECT_EQ(load_ok({"--config", a.path()}, {{"SKYRING_CONFIG", b.path()}}).cluster, "a");
}

TEST(Config, UnknownTomlKey) {
  TomlFile f("port = 1\nbogus_key = 2\n");
  expect_error({"--config", f.path()}, {}, "bogus_key");
}

TEST(Config, MalformedToml) {
  TomlFile f("port = = 3\n");
  expect_error({"--config", f.path()}, {}, f.path());
  TomlFile g("data_dir = \"unterminated\n");
  expect_error({"--config", g.path()}, {}, g.path());
}

TEST(Config, MissingTomlFile) {
  expect_error({"--config", "/nonexistent/skyring.toml"}, {}, "/nonexistent/skyring.toml");
}

TEST(Config, BadTomlValues) {
  TomlFile port("port = \"abc\"\n");
  expect_error({"--config", port.path()}, {}, "--port");
  TomlFile table("[storage]\nkind = \"memory\"\n");
  expect_error({"--config", table.path()}, {}, "storage");
  TomlFile twice("port = [1, 2]\n");
  expect_error({"--config", twice.path()}, {}, "port");
}

TEST(Config, TransportTablesReachTheirPluginAsToml) {
  TomlFile f(R"(transport = ["/x.so"]
[transports.file]
dir = "/tmp/out"
fsync = true
[transports.smtp]
)");
  Config c = load_ok({"--config", f.path()});
  EXPECT_EQ(c.transports, (std::vector<std::string>{"/x.so"}));
  ASSERT_EQ(c.transport_settings.size(), 2u);
  // The text is toml++'s rendering of the table: what a plugin parses.
  const std::string& file = c.transport_settings.at("file");
  EXPECT_NE(file.find("dir = "), std::string::npos) << file;
  EXPECT_NE(file.find("/tmp/out"), std::string::npos) << file;
  EXPECT_NE(file.find("fsync = true"), std::string::npos) << file;
  EXPECT_EQ(c.transport_settings.at("smtp"), "");
}

TEST(Config, TransportsMustBeTablesOfTables) {
  TomlFile scalar("transports = 3\n");
  expect_error({"--config", scalar.path()}, {}, "transports");
  TomlFile flat("[transports]\nfile = \"x\"\n");
  expect_error({"--config", flat.path()}, {}, "transports.file");
}

TEST(Config, HelpListsEveryOption) {
  std::string help = config_help();
  for (const char* flag :
       {"--port", "--host", "--data-dir", "--storage", "--node-id", "--nats", "--cluster",
        "--advertise", "--log-level", "--log-format", "--retention", "--transport", "--config"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  }
  EXPECT_NE(help.find("SKYRING_"), std::string::npos);
}

TEST(ParseDuration, Units) {
  EXPECT_EQ(parse_duration_ms("500ms").value(), 500);
  EXPECT_EQ(parse_duration_ms("30s").value(), 30'000);
  EXPECT_EQ(parse_duration_ms("15m").value(), 900'000);
  EXPECT_EQ(parse_duration_ms("24h").value(), 86'400'000);
  EXPECT_EQ(parse_duration_ms("7d").value(), 604'800'000);
  EXPECT_EQ(parse_duration_ms("0s").value(), 0);
}

TEST(ParseDuration, BareIntegerIsMilliseconds) {
  EXPECT_EQ(parse_duration_ms("250").value(), 250);
  EXPECT_EQ(parse_duration_ms("0").value(), 0);
  EXPECT_EQ(parse_duration_ms("9223372036854775807").value(), INT64_MAX);
}

TEST(ParseDuration, Rejects) {
  for (const char* bad : {"", "ms", "s", "10x", "10 s", " 10s", "10s ", "1.5s", "-5s", "+5s", "5S",
                          "5sec", "5msms", "1h30m"}) {
    auto r = parse_duration_ms(bad);
    EXPECT_FALSE(r.has_value()) << "'" << bad << "' = " << (r ? *r : 0);
    if (!r) {
      EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    }
  }
}

TEST(ParseDuration, Overflow) {
  EXPECT_FALSE(parse_duration_ms("9223372036854775808").has_value());
  EXPECT_FALSE(parse_duration_ms("99999999999999999999999ms").has_value());
  EXPECT_FALSE(parse_duration_ms("9223372036854775807s").has_value());
  EXPECT_FALSE(parse_duration_ms("106751991168d").has_value());
  EXPECT_EQ(parse_duration_ms("106751991167d").value(), 106751991167LL * 86'400'000);
  EXPECT_FALSE(parse_duration_ms("2562047788016h").has_value());
  EXPECT_EQ(parse_duration_ms("2562047788015h").value(), 2562047788015LL * 3'600'000);
}

TEST(Config, MaxBodyBuffer) {
  EXPECT_EQ(load_ok({}).max_body_buffer, 268'435'456u);  // 256 MiB
  EXPECT_EQ(load_ok({"--max-body-buffer", "2000000"}).max_body_buffer, 2'000'000u);
  EXPECT_EQ(load_ok({}, {{"SKYRING_MAX_BODY_BUFFER", "3000000"}}).max_body_buffer, 3'000'000u);
  TomlFile dashes("max-body-buffer = 4000000\n");
  EXPECT_EQ(load_ok({"--config", dashes.path()}).max_body_buffer, 4'000'000u);
  TomlFile underscores("max_body_buffer = 5000000\n");
  EXPECT_EQ(load_ok({"--config", underscores.path()}).max_body_buffer, 5'000'000u);
  // At least one whole body (1 MiB): a smaller budget would refuse every chunked request.
  EXPECT_EQ(load_ok({"--max-body-buffer", "1048576"}).max_body_buffer, 1'048'576u);
  expect_error({"--max-body-buffer", "1048575"}, {}, "--max-body-buffer");
  expect_error({"--max-body-buffer", "256MiB"}, {}, "--max-body-buffer");
  expect_error({}, {{"SKYRING_MAX_BODY_BUFFER", "-1"}}, "--max-body-buffer");
  EXPECT_NE(config_help().find("--max-body-buffer"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// plan_descriptors

constexpr size_t kRocksFds = 512 + 16;

TEST(DescriptorPlan, EverythingFitsAsConfigured) {
  Config c;
  DescriptorPlan p = plan_descriptors(c, 1 << 20, kRocksFds);
  EXPECT_FALSE(p.reduced);
  EXPECT_EQ(p.clients, c.max_connections);
  EXPECT_EQ(p.outbound, 2 * c.max_inflight);
  EXPECT_EQ(p.storage, kRocksFds);
  EXPECT_EQ(p.wanted, c.max_connections + 2 * c.max_inflight + kRocksFds + kDescriptorSlack);
  // Exactly at the limit still fits.
  EXPECT_FALSE(plan_descriptors(c, p.wanted, kRocksFds).reduced);
  EXPECT_TRUE(plan_descriptors(c, p.wanted - 1, kRocksFds).reduced);
}

TEST(DescriptorPlan, TinyLimitIsShared) {
  Config c;  // 10,000 connections, 1024 in flight
  DescriptorPlan p = plan_descriptors(c, 256, kRocksFds);
  EXPECT_TRUE(p.reduced);
  // 192 after the slack: storage half, then clients and outbound half of the rest each.
  EXPECT_EQ(p.storage, 96u);
  EXPECT_EQ(p.clients, 48u);
  EXPECT_EQ(p.outbound, 48u);
}

TEST(DescriptorPlan, ClientsCannotTakeWhatStorageAndDeliveriesNeed) {
  Config c;
  DescriptorPlan p = plan_descriptors(c, 4096, kRocksFds);
  EXPECT_TRUE(p.reduced);
  EXPECT_EQ(p.storage, kRocksFds);  // fits in half: kept whole
  EXPECT_EQ(p.clients, 1752u);
  EXPECT_EQ(p.outbound, 1752u);
  // What one side does not need goes to the other.
  c.max_connections = 100;
  p = plan_descriptors(c, 1024, kRocksFds);
  EXPECT_EQ(p.storage, 480u);
  EXPECT_EQ(p.clients, 100u);
  EXPECT_EQ(p.outbound, 380u);
  c.max_connections = 10'000;
  c.max_inflight = 10;
  p = plan_descriptors(c, 4096, kRocksFds);
  EXPECT_EQ(p.outbound, 20u);
  EXPECT_EQ(p.clients, 4096 - kDescriptorSlack - kRocksFds - 20);
}

TEST(DescriptorPlan, MemoryStorageReservesNothing) {
  Config c;
  DescriptorPlan p = plan_descriptors(c, 256, 0);
  EXPECT_EQ(p.storage, 0u);
  EXPECT_EQ(p.clients, 96u);
  EXPECT_EQ(p.outbound, 96u);
}

TEST(DescriptorPlan, NeverMoreThanTheLimitNorTheConfiguredValues) {
  for (uint64_t limit : {0ull, 1ull, 64ull, 65ull, 100ull, 256ull, 1000ull, 1024ull, 4096ull,
                         65536ull, 1ull << 20}) {
    for (size_t conns : {size_t{1}, size_t{50}, size_t{10'000}, size_t{1'000'000}}) {
      for (size_t inflight : {size_t{1}, size_t{7}, size_t{1024}, size_t{1'000'000}}) {
        for (size_t storage : {size_t{0}, kRocksFds}) {
          Config c;
          c.max_connections = conns;
          c.max_inflight = inflight;
          DescriptorPlan p = plan_descriptors(c, limit, storage);
          SCOPED_TRACE(fmt::format("limit {} conns {} inflight {} storage {}", limit, conns,
                                   inflight, storage));
          EXPECT_GE(p.clients, 1u);
          EXPECT_LE(p.clients, conns);
          EXPECT_GE(p.outbound, 2u);
          EXPECT_EQ(p.outbound % 2, 0u);
          EXPECT_LE(p.outbound, std::max<size_t>(2, 2 * inflight));
          EXPECT_LE(p.storage, storage);
          if (limit >= kDescriptorSlack + 3 + (storage ? 2 : 0)) {
            EXPECT_LE(p.clients + p.outbound + p.storage + kDescriptorSlack, limit);
          }
          EXPECT_EQ(p.reduced, p.wanted > limit);
        }
      }
    }
  }
}

}  // namespace
}  // namespace skyring
