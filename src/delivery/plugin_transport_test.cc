#include "delivery/plugin_transport.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "skyring/transport_plugin.h"

#ifndef SKYRING_TEST_PLUGIN_DIR
#error "SKYRING_TEST_PLUGIN_DIR must name the directory of the built plugins (examples/)"
#endif

namespace skyring {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kDeadline{10'000};

template <typename Pred>
bool wait_until(Pred pred, milliseconds deadline = kDeadline) {
  const auto end = Clock::now() + deadline;
  while (!pred()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

std::string plugin_path(const std::string& target) {
  return std::string(SKYRING_TEST_PLUGIN_DIR) + "/lib" + target + ".so";
}
const std::string kFilePlugin = plugin_path("skyring_file_transport");
const std::string kTestPlugin = plugin_path("skyring_test_plugin");

// Results of `done`, by call order; counts every call so a second one shows.
class Results {
 public:
  DeliveryDone done() {
    return [this](DeliveryResult r) {
      std::lock_guard lock(mu_);
      results_.push_back(std::move(r));
    };
  }
  size_t count() {
    std::lock_guard lock(mu_);
    return results_.size();
  }
  bool wait(size_t n) {
    return wait_until([&] { return count() >= n; });
  }
  DeliveryResult at(size_t i) {
    std::lock_guard lock(mu_);
    return results_.at(i);
  }

 private:
  std::mutex mu_;
  std::vector<DeliveryResult> results_;
};

DeliveryJob make_job(std::string uri, DataKind kind = DataKind::kNone, std::string data = "") {
  DeliveryJob j;
  j.timer_id = "t1";
  j.method = "post";
  j.uri = std::move(uri);
  j.data_kind = kind;
  j.data = std::move(data);
  j.timeout_ms = 5000;
  return j;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "skyring-plugin-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
    EXPECT_FALSE(path_.empty());
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

std::unique_ptr<Transport> load(const std::string& path, const std::string& config = "",
                                PluginTransportOptions options = {}) {
  auto t = load_transport_plugin(
      path, [config](std::string_view) { return config; }, options);
  EXPECT_TRUE(t.has_value()) << (t ? "" : t.error().message);
  return t ? std::move(*t) : nullptr;
}

std::string load_error(const std::string& path, const std::string& config = "") {
  auto t = load_transport_plugin(path, [config](std::string_view) { return config; });
  EXPECT_FALSE(t.has_value());
  return t ? std::string() : t.error().message;
}

// The test plugin's hooks (examples/test_plugins/test_plugin.c), from the loaded library.
struct TestHooks {
  int (*held)() = nullptr;
  int (*release)(int) = nullptr;
  int (*stop_calls)() = nullptr;
  int (*destroy_calls)() = nullptr;
  const char* (*config)() = nullptr;

  TestHooks() {
    void* h = dlopen(kTestPlugin.c_str(), RTLD_NOW | RTLD_LOCAL);
    EXPECT_NE(h, nullptr) << dlerror();
    if (h == nullptr) return;
    held = reinterpret_cast<int (*)()>(dlsym(h, "test_plugin_held"));
    release = reinterpret_cast<int (*)(int)>(dlsym(h, "test_plugin_release"));
    stop_calls = reinterpret_cast<int (*)()>(dlsym(h, "test_plugin_stop_calls"));
    destroy_calls = reinterpret_cast<int (*)()>(dlsym(h, "test_plugin_destroy_calls"));
    config = reinterpret_cast<const char* (*)()>(dlsym(h, "test_plugin_config"));
    EXPECT_TRUE(held && release && stop_calls && destroy_calls && config);
  }
};

// ------------------------------------------------------------------------- the file plugin

TEST(FilePluginTest, AppendsStringAndJsonPayloadsAsLines) {
  TempDir dir;
  auto t = load(kFilePlugin, "dir = '" + dir.path() + "'\n");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->name(), "file");
  const std::string file = dir.path() + "/out.log";
  const std::string uri = "file://" + file;
  ASSERT_TRUE(t->validate("post", uri).has_value());
  Results res;
  t->deliver(make_job(uri, DataKind::kString, "hello world"), res.done());
  ASSERT_TRUE(res.wait(1));
  t->deliver(make_job(uri, DataKind::kJson, R"({"a":1,"b":"x"})"), res.done());
  ASSERT_TRUE(res.wait(2));
  t->deliver(make_job(uri), res.done());
  ASSERT_TRUE(res.wait(3));
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(res.at(i).outcome, Outcome::kSuccess) << res.at(i).detail;
  }
  EXPECT_EQ(read_lines(file), (std::vector<std::string>{"hello world", R"({"a":1,"b":"x"})", ""}));
  t->stop();
  EXPECT_EQ(res.count(), 3u);
}

TEST(FilePluginTest, ValidateRejectsBadUris) {
  TempDir dir;
  auto t = load(kFilePlugin, "dir = \"" + dir.path() + "/\"  # trailing slash is fine\n");
  ASSERT_TRUE(t);
  const std::string base = "file://" + dir.path();
  EXPECT_TRUE(t->validate("post", base + "/a/b.log").has_value());
  EXPECT_TRUE(t->validate("put", base + "/x").has_value());
  for (const std::string& bad :
       {std::string("http://x/y"), std::string("file://host/tmp/x"), std::string("file:relative"),
        base + "/../etc/passwd", base + "/a/./b", base + "//b", base + "/", base,
        std::string("file:///etc/passwd"), base + "/a%2e", base + "/a?b"}) {
    auto v = t->validate("post", bad);
    ASSERT_FALSE(v.has_value()) << bad;
    EXPECT_EQ(v.error().code, Errc::kInvalidArgument);
    EXPECT_NE(v.error().message.find("callback.uri"), std::string::npos) << v.error().message;
  }
  EXPECT_FALSE(t->validate("post", std::string("file:///tmp/a\0b", 15)).has_value());
}

TEST(FilePluginTest, MissingDirectoryIsRetryableUntilCreated) {
  TempDir dir;
  auto t = load(kFilePlugin, "fsync = true\nmax_queue = 10\n");
  ASSERT_TRUE(t);
  const std::string file = dir.path() + "/later/out.log";
  Results res;
  t->deliver(make_job("file://" + file, DataKind::kString, "x"), res.done());
  ASSERT_TRUE(res.wait(1));
  EXPECT_EQ(res.at(0).outcome, Outcome::kRetryable);
  EXPECT_NE(res.at(0).detail.find("No such file"), std::string::npos) << res.at(0).detail;
  fs::create_directory(dir.path() + "/later");
  t->deliver(make_job("file://" + file, DataKind::kString, "x"), res.done());
  ASSERT_TRUE(res.wait(2));
  EXPECT_EQ(res.at(1).outcome, Outcome::kSuccess) << res.at(1).detail;
  EXPECT_EQ(read_lines(file), std::vector<std::string>{"x"});
  t->deliver(make_job("file://" + dir.path() + "/later", DataKind::kString, "x"), res.done());
  ASSERT_TRUE(res.wait(3));
  EXPECT_EQ(res.at(2).outcome, Outcome::kPermanent) << res.at(2).detail;  // a directory
  EXPECT_NE(res.at(2).detail.find("Is a directory"), std::string::npos) << res.at(2).detail;
}

TEST(FilePluginTest, NonRegularFilesArePermanentAndNeverHangTheWriter) {
  TempDir dir;
  auto t = load(kFilePlugin);
  ASSERT_TRUE(t);
  const std::string fifo = dir.path() + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  Results res;
  // No reader: a blocking open would hang the plugin's one writer thread for good.
  t->deliver(make_job("file://" + fifo, DataKind::kString, "x"), res.done());
  ASSERT_TRUE(res.wait(1));
  EXPECT_EQ(res.at(0).outcome, Outcome::kPermanent) << res.at(0).detail;
  // With a reader that never reads the open succeeds: not a regular file, refused as well.
  int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  t->deliver(make_job("file://" + fifo, DataKind::kString, "x"), res.done());
  ASSERT_TRUE(res.wait(2));
  EXPECT_EQ(res.at(1).outcome, Outcome::kPermanent) << res.at(1).detail;
  EXPECT_NE(res.at(1).detail.find("regular file"), std::string::npos) << res.at(1).detail;
  ::close(reader);
  // The writer is still free.
  const std::string file = dir.path() + "/out.log";
  t->deliver(make_job("file://" + file, DataKind::kString, "y"), res.done());
  ASSERT_TRUE(res.wait(3));
  EXPECT_EQ(res.at(2).outcome, Outcome::kSuccess) << res.at(2).detail;
  EXPECT_EQ(read_lines(file), std::vector<std::string>{"y"});
}

TEST(FilePluginTest, UnwritableDirectoryIsRetryable) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes anywhere";
  TempDir dir;
  auto t = load(kFilePlugin);
  ASSERT_TRUE(t);
  fs::create_directory(dir.path() + "/ro");
  fs::permissions(dir.path() + "/ro", fs::perms::owner_read | fs::perms::owner_exec);
  Results res;
  t->deliver(make_job("file://" + dir.path() + "/ro/out.log", DataKind::kString, "x"), res.done());
  ASSERT_TRUE(res.wait(1));
  EXPECT_EQ(res.at(0).outcome, Outcome::kRetryable) << res.at(0).detail;
  EXPECT_NE(res.at(0).detail.find("Permission denied"), std::string::npos) << res.at(0).detail;
}

TEST(FilePluginTest, UriOutsideDirAtDeliveryIsPermanent) {
  TempDir dir;
  auto t = load(kFilePlugin, "dir = '" + dir.path() + "'");
  ASSERT_TRUE(t);
  Results res;
  t->deliver(make_job("file:///somewhere/else.log", DataKind::kString, "x"), res.done());
  ASSERT_TRUE(res.wait(1));
  EXPECT_EQ(res.at(0).outcome, Outcome::kPermanent);
  EXPECT_NE(res.at(0).detail.find("must be below"), std::string::npos) << res.at(0).detail;
}

TEST(FilePluginTest, BadSettingsFailTheLoad) {
  std::string e = load_error(kFilePlugin, "colour = 'blue'\n");
  EXPECT_EQ(e.rfind("--transport " + kFilePlugin + ": ", 0), 0u) << e;
  EXPECT_NE(e.find("unknown key"), std::string::npos) << e;
  EXPECT_NE(e.find("colour"), std::string::npos) << e;
  e = load_error(kFilePlugin, "dir = 'relative/path'\n");
  EXPECT_NE(e.find("absolute"), std::string::npos) << e;
  e = load_error(kFilePlugin, "max_queue = 0\n");
  EXPECT_NE(e.find("max_queue"), std::string::npos) << e;
}

TEST(FilePluginTest, StopAfterManyDeliveriesCompletesEachExactlyOnce) {
  TempDir dir;
  auto t = load(kFilePlugin);
  ASSERT_TRUE(t);
  Results res;
  constexpr size_t kJobs = 500;
  for (size_t i = 0; i < kJobs; ++i) {
    t->deliver(make_job("file://" + dir.path() + "/many.log", DataKind::kString, "x"), res.done());
  }
  t->stop();
  ASSERT_EQ(res.count(), kJobs);
  size_t ok = 0;
  for (size_t i = 0; i < kJobs; ++i) {
    Outcome o = res.at(i).outcome;
    EXPECT_TRUE(o == Outcome::kSuccess || o == Outcome::kAborted);
    ok += o == Outcome::kSuccess;
  }
  EXPECT_EQ(read_lines(dir.path() + "/many.log").size(), ok);
  t->deliver(make_job("file://" + dir.path() + "/many.log"), res.done());
  ASSERT_EQ(res.count(), kJobs + 1);
  EXPECT_EQ(res.at(kJobs).outcome, Outcome::kAborted);
}

// ------------------------------------------------------------------------- loader errors

TEST(PluginLoaderTest, NonexistentPath) {
  const std::string path = "/nonexistent/libnothing.so";
  std::string e = load_error(path);
  EXPECT_EQ(e.rfind("--transport " + path + ": cannot load: ", 0), 0u) << e;
  EXPECT_NE(e.find("No such file"), std::string::npos) << e;  // dlerror()'s words
}

TEST(PluginLoaderTest, NotASharedLibrary) {
  TempDir dir;
  const std::string path = dir.path() + "/libfake.so";
  std::ofstream(path) << "this is text, not ELF\n";
  std::string e = load_error(path);
  EXPECT_EQ(e.rfind("--transport " + path + ": cannot load: ", 0), 0u) << e;
}

TEST(PluginLoaderTest, MissingEntrySymbol) {
  const std::string path = plugin_path("skyring_test_plugin_no_entry");
  EXPECT_EQ(load_error(path), "--transport " + path +
                                  ": not a Skyring transport plugin: no symbol "
                                  "'skyring_transport_plugin_entry'");
}

TEST(PluginLoaderTest, WrongAbiVersionSaysFoundAndExpected) {
  const std::string path = plugin_path("skyring_test_plugin_bad_abi");
  std::string e = load_error(path);
  EXPECT_EQ(e.rfind("--transport " + path + ": plugin ABI version 999 found, 1 expected", 0), 0u)
      << e;
}

TEST(PluginLoaderTest, InvalidName) {
  const std::string path = plugin_path("skyring_test_plugin_bad_name");
  std::string e = load_error(path);
  EXPECT_EQ(e.rfind("--transport " + path + ": invalid transport name 'Bad Name'", 0), 0u) << e;
}

TEST(PluginLoaderTest, MissingRequiredFunction) {
  const std::string path = plugin_path("skyring_test_plugin_no_deliver");
  EXPECT_EQ(load_error(path),
            "--transport " + path + ": transport 'broken' lacks required function(s): deliver");
}

TEST(PluginLoaderTest, FailingCreateGivesThePluginsMessageOnOneLine) {
  const std::string path = plugin_path("skyring_test_plugin_fail_create");
  EXPECT_EQ(load_error(path), "--transport " + path +
                                  ": transport 'broken' failed to start: backend unreachable "
                                  "(as configured) second line");
}

// ------------------------------------------------------------------------- the host side

class PluginHostTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (hooks_.release) hooks_.release(SKYRING_OUTCOME_SUCCESS);  // nothing stays held
  }
  TestHooks hooks_;
};

TEST_F(PluginHostTest, PassesItsConfigAndNameAndValidates) {
  std::vector<std::string> asked;
  auto t = load_transport_plugin(kTestPlugin, [&](std::string_view name) {
    asked.emplace_back(name);
    return std::string("answer = 42\n");
  });
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(asked, std::vector<std::string>{"test"});
  EXPECT_STREQ(hooks_.config(), "answer = 42\n");
  EXPECT_EQ((*t)->name(), "test");
  EXPECT_TRUE((*t)->validate("post", "test:ok").has_value());
  auto v = (*t)->validate("post", "http://x/");
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().message, "callback.uri must start with test:");
  v = (*t)->validate("bad", "test:ok");
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().message, "callback.method 'bad' is not supported");
  EXPECT_FALSE((*t)->validate("post", std::string("test:ok\0x", 9)));
  EXPECT_EQ((*t)->destination("test:a/b/c"), "test:a");
  EXPECT_EQ((*t)->destination("test:flat"), "test:flat");  // plugin declined: the uri
}

TEST_F(PluginHostTest, JobFieldsReachThePlugin) {
  auto t = load(kTestPlugin);
  ASSERT_TRUE(t);
  DeliveryJob j = make_job("test:echo", DataKind::kJson, R"({"k":"v"})");
  j.timer_id = "timer-9";
  j.attempt = 3;
  j.method = "put";
  j.timeout_ms = 1234;
  j.headers = {{"X-A", "1"}, {"x-b", "two"}};
  Results res;
  t->deliver(std::move(j), res.done());
  ASSERT_EQ(res.count(), 1u);  // completed inside deliver()
  EXPECT_EQ(res.at(0).outcome, Outcome::kSuccess);
  EXPECT_EQ(res.at(0).detail,
            R"(id=timer-9 attempt=3 method=put kind=2 data={"k":"v"} timeout=1234 X-A:1 x-b:two)");
  t->deliver(make_job("test:echo", DataKind::kString, "s"), res.done());
  ASSERT_EQ(res.count(), 2u);
  EXPECT_NE(res.at(1).detail.find("kind=1 data=s "), std::string::npos) << res.at(1).detail;
}

TEST_F(PluginHostTest, OutcomesMapOntoDeliveryResults) {
  auto t = load(kTestPlugin);
  ASSERT_TRUE(t);
  Results res;
  for (const char* u : {"test:ok", "test:permanent", "test:aborted", "test:weird", "test:refuse"}) {
    t->deliver(make_job(u), res.done());
  }
  ASSERT_EQ(res.count(), 5u);
  EXPECT_EQ(res.at(0).outcome, Outcome::kSuccess);
  EXPECT_EQ(res.at(1).outcome, Outcome::kPermanent);
  EXPECT_EQ(res.at(1).status, 42);
  EXPECT_EQ(res.at(1).detail, "nope");
  // Aborted is for stop(): before it, an attempt was made and failed (no retry at once).
  EXPECT_EQ(res.at(2).outcome, Outcome::kRetryable);
  EXPECT_NE(res.at(2).detail.find("aborted outside stop()"), std::string::npos) << res.at(2).detail;
  EXPECT_EQ(res.at(3).outcome, Outcome::kRetryable);
  EXPECT_NE(res.at(3).detail.find("unknown outcome 77"), std::string::npos);
  EXPECT_EQ(res.at(4).outcome, Outcome::kRetryable);
  EXPECT_EQ(res.at(4).detail, "transport plugin 'test' refused the job");
}

TEST_F(PluginHostTest, SecondCompletionAndRefusalAfterCompletionAreIgnored) {
  auto t = load(kTestPlugin);
  ASSERT_TRUE(t);
  Results res;
  t->deliver(make_job("test:twice"), res.done());
  t->deliver(make_job("test:refuse-after-done"), res.done());
  ASSERT_EQ(res.count(), 2u);
  EXPECT_EQ(res.at(0).outcome, Outcome::kSuccess);
  EXPECT_EQ(res.at(0).detail, "first");
  EXPECT_EQ(res.at(1).outcome, Outcome::kSuccess);
  EXPECT_EQ(res.at(1).detail, "done first");
  t->stop();
  EXPECT_EQ(res.count(), 2u);
}

TEST_F(PluginHostTest, CompletionFromOtherThreadsManyAtOnce) {
  auto t = load(kTestPlugin);
  ASSERT_TRUE(t);
  Results res;
  constexpr size_t kJobs = 200;
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (size_t i = 0; i < kJobs / 4; ++i) t->deliver(make_job("test:thread"), res.done());
    });
  }
  for (auto& th : callers) th.join();
  ASSERT_TRUE(res.wait(kJobs));
  for (size_t i = 0; i < kJobs; ++i) {
    EXPECT_EQ(res.at(i).outcome, Outcome::kSuccess);
    EXPECT_EQ(res.at(i).status, 200);
  }
  t->stop();
  EXPECT_EQ(res.count(), kJobs);
}

TEST_F(PluginHostTest, StopAbortsJobsThePluginKeepsAndIgnoresLateCompletions) {
  PluginTransportOptions o;
  o.stop_timeout_ms = 100;
  auto t = load(kTestPlugin, "", o);
  ASSERT_TRUE(t);
  const int stops = hooks_.stop_calls();
  Results res;
  for (int i = 0; i < 3; ++i) t->deliver(make_job("test:hold"), res.done());
  EXPECT_EQ(hooks_.held(), 3);
  EXPECT_EQ(res.count(), 0u);
  t->stop();
  ASSERT_EQ(res.count(), 3u);  // stop() returns after every job ended
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(res.at(i).outcome, Outcome::kAborted);
  EXPECT_EQ(hooks_.stop_calls(), stops + 1);
  EXPECT_EQ(hooks_.release(SKYRING_OUTCOME_SUCCESS), 3);  // late: ignored
  t->stop();                                              // idempotent
  EXPECT_EQ(hooks_.stop_calls(), stops + 1);
  t->deliver(make_job("test:ok"), res.done());
  ASSERT_EQ(res.count(), 4u);
  EXPECT_EQ(res.at(3).outcome, Outcome::kAborted);
  const int destroys = hooks_.destroy_calls();
  t.reset();
  EXPECT_EQ(hooks_.destroy_calls(), destroys + 1);
}

TEST_F(PluginHostTest, CompletionsDuringStopCountAndStopReturnsEarly) {
  PluginTransportOptions o;
  o.stop_timeout_ms = 60'000;  // a stop that waited for it would time the test out
  auto t = load(kTestPlugin, "", o);
  ASSERT_TRUE(t);
  Results res;
  t->deliver(make_job("test:hold"), res.done());
  std::thread releaser([&] {
    wait_until([&] { return hooks_.stop_calls() > 0; });
    hooks_.release(SKYRING_OUTCOME_SUCCESS);
  });
  t->stop();
  releaser.join();
  ASSERT_EQ(res.count(), 1u);
  EXPECT_EQ(res.at(0).outcome, Outcome::kSuccess);
}

TEST_F(PluginHostTest, JobNotCompletedInTimeIsReportedRetryable) {
  PluginTransportOptions o;
  o.completion_grace_ms = 0;
  auto t = load(kTestPlugin, "", o);
  ASSERT_TRUE(t);
  Results res;
  DeliveryJob j = make_job("test:hold");
  j.timeout_ms = 20;
  t->deliver(std::move(j), res.done());
  ASSERT_TRUE(res.wait(1));
  EXPECT_EQ(res.at(0).outcome, Outcome::kRetryable);
  EXPECT_NE(res.at(0).detail.find("did not complete"), std::string::npos);
  EXPECT_EQ(hooks_.release(SKYRING_OUTCOME_PERMANENT), 1);  // too late: ignored
  t->stop();
  EXPECT_EQ(res.count(), 1u);
}

TEST_F(PluginHostTest, FullTableRefusesWithRetryable) {
  PluginTransportOptions o;
  o.max_pending = 2;
  auto t = load(kTestPlugin, "", o);
  ASSERT_TRUE(t);
  Results res;
  t->deliver(make_job("test:hold"), res.done());
  t->deliver(make_job("test:hold"), res.done());
  t->deliver(make_job("test:hold"), res.done());
  ASSERT_EQ(res.count(), 1u);
  EXPECT_EQ(res.at(0).outcome, Outcome::kRetryable);
  EXPECT_NE(res.at(0).detail.find("queue full"), std::string::npos);
  EXPECT_EQ(hooks_.release(SKYRING_OUTCOME_SUCCESS), 2);
  ASSERT_EQ(res.count(), 3u);
  t->deliver(make_job("test:ok"), res.done());  // room again
  ASSERT_EQ(res.count(), 4u);
  EXPECT_EQ(res.at(3).outcome, Outcome::kSuccess);
}

TEST_F(PluginHostTest, CallbackMayDeliverAgain) {
  auto t = load(kTestPlugin);
  ASSERT_TRUE(t);
  Results res;
  auto second = res.done();
  t->deliver(make_job("test:ok"), [&, second](DeliveryResult r) mutable {
    second(std::move(r));
    t->deliver(make_job("test:ok"), second);
  });
  ASSERT_EQ(res.count(), 2u);
}

}  // namespace
}  // namespace skyring
