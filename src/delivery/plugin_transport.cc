// The only file that sees dlopen and the plugin ABI's function table.
#include "delivery/plugin_transport.h"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/ranges.h>

#include "base/log.h"
#include "base/thread.h"
#include "skyring/transport_plugin.h"

namespace skyring {
namespace {

using SteadyClock = std::chrono::steady_clock;

// A completion context is a token, not a pointer: the host id in the top bits, the job's
// sequence number below. Late or repeated completions look the token up and find nothing.
static_assert(sizeof(void*) == 8, "transport plugins need a 64-bit platform");
constexpr unsigned kSeqBits = 48;
constexpr uint64_t kSeqMask = (uint64_t{1} << kSeqBits) - 1;
constexpr size_t kMaxDetail = 1024;  // bytes of a plugin's detail or log line kept
constexpr size_t kErrBuf = 512;      // errbuf handed to create() and validate()
constexpr size_t kDestBuf = 512;     // buffer handed to destination()
constexpr int64_t kDefaultJobTimeoutMs = 10'000;
constexpr size_t kMaxExpiredPerRound = 1024;  // watchdog: completions per lock hold
constexpr double kLogBurst = 20;              // plugin log lines: burst, then per second
constexpr double kLogPerSecond = 10;

void* token_ctx(uint32_t host, uint64_t seq) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>((uint64_t{host} << kSeqBits) | seq));
}

// A plugin's text: at most `max` bytes up to its NUL, one line.
std::string plugin_text(const char* s, size_t max = kMaxDetail) {
  if (s == nullptr) return {};
  std::string out(s, strnlen(s, max));
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

bool has_nul(std::string_view s) {
  return s.find('\0') != std::string_view::npos;
}

bool valid_name(std::string_view n) {
  if (n.empty() || n.size() > 32 || n[0] < 'a' || n[0] > 'z') return false;
  for (char c : n) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

DeliveryResult make_result(Outcome outcome, int status, std::string detail) {
  DeliveryResult r;
  r.outcome = outcome;
  r.status = status;
  r.detail = std::move(detail);
  return r;
}

DeliveryResult from_plugin(int outcome, int status, const char* detail) {
  std::string d = plugin_text(detail);
  switch (outcome) {
    case SKYRING_OUTCOME_SUCCESS:
      return make_result(Outcome::kSuccess, status, std::move(d));
    case SKYRING_OUTCOME_RETRYABLE:
      return make_result(Outcome::kRetryable, status, std::move(d));
    case SKYRING_OUTCOME_PERMANENT:
      return make_result(Outcome::kPermanent, status, std::move(d));
    case SKYRING_OUTCOME_ABORTED:
      return make_result(Outcome::kAborted, status, std::move(d));
    default:
      return make_result(Outcome::kRetryable, status,
                         fmt::format("plugin reported unknown outcome {}: {}", outcome, d));
  }
}

// Everything a completion from the plugin may reach: the table of open jobs of one loaded
// plugin. Shared between the transport, its watchdog and the host registry.
class Core {
 public:
  Core(std::string name, PluginTransportOptions options)
      : name_(std::move(name)), options_(options) {}

  const std::string& name() const { return name_; }
  uint32_t host_id = 0;
  skyring_transport_host host{};  // handed to create(); stable address

  // Registers a job; false (and `done` untouched) when stopping or full.
  enum class Admit { kOk, kStopping, kFull };
  Admit open(DeliveryDone& done, int64_t timeout_ms, uint64_t* seq) {
    std::lock_guard lock(mu_);
    if (stopping_) return Admit::kStopping;
    if (open_.size() >= options_.max_pending) return Admit::kFull;
    *seq = next_seq_++ & kSeqMask;
    if (*seq == 0) *seq = next_seq_++ & kSeqMask;
    auto deadline = SteadyClock::now() + std::chrono::milliseconds(timeout_ms) +
                    std::chrono::milliseconds(options_.completion_grace_ms);
    bool earliest = deadlines_.empty() || deadline < deadlines_.begin()->first;
    deadlines_.emplace(deadline, *seq);
    open_.emplace(*seq, Open{std::move(done), deadline});
    ++in_deliver_;
    if (earliest) cv_.notify_all();
    return Admit::kOk;
  }
  void deliver_returned() {
    std::lock_guard lock(mu_);
    if (--in_deliver_ == 0) cv_.notify_all();
  }

  // The one way a job ends: a token not in the table (any more) is ignored.
  void complete(uint64_t seq, DeliveryResult result) {
    DeliveryDone done;
    {
      std::lock_guard lock(mu_);
      auto it = open_.find(seq);
      if (it == open_.end()) {
        ++ignored_;
        return;
      }
      done = std::move(it->second.done);
      deadlines_.erase({it->second.deadline, seq});
      open_.erase(it);
      ++running_;
      // "Aborted" tells the engine nothing happened, so it tries again at once without counting
      // an attempt: only stop() may say that. A plugin that says it while running (gave up,
      // queue full) made an attempt that failed: retryable, with backoff.
      if (result.outcome == Outcome::kAborted && !stopping_) {
        result.outcome = Outcome::kRetryable;
        result.detail = "plugin reported aborted outside stop(): " + result.detail;
      }
    }
    call_done("plugin", done, std::move(result));
    finished(1);
  }

  uint64_t ignored() {
    std::lock_guard lock(mu_);
    return ignored_;
  }

  void watchdog();

  // stop(), step 1: no new jobs; wait for deliver() calls in progress to return.
  void begin_stop() {
    std::unique_lock lock(mu_);
    stopping_ = true;
    cv_.wait(lock, [&] { return in_deliver_ == 0; });
  }
  // stop(), step 2: after the plugin's stop(), wait (bounded) for its completions, abort the
  // rest, end the watchdog and wait until no `done` of ours runs any more.
  void finish_stop(SteadyClock::time_point deadline) {
    std::vector<DeliveryDone> rest;
    {
      std::unique_lock lock(mu_);
      cv_.wait_until(lock, deadline, [&] { return open_.empty(); });
      for (auto& [seq, o] : open_) rest.push_back(std::move(o.done));
      open_.clear();
      deadlines_.clear();
      exit_ = true;
      running_ += rest.size();
      cv_.notify_all();
    }
    if (!rest.empty()) {
      log::warn("transport plugin '{}': {} job(s) not completed when stopped; aborted", name_,
                rest.size());
    }
    for (auto& d : rest) {
      call_done("plugin", d,
                make_result(Outcome::kAborted, 0, "transport stopped before the attempt ended"));
    }
    finished(rest.size());
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return running_ == 0; });
  }

  // Plugin log lines: a token bucket keeps a chatty plugin from flooding the node's log.
  void log_line(int level, const char* message) {
    uint64_t dropped = 0;
    {
      std::lock_guard lock(log_mu_);
      auto now = SteadyClock::now();
      double secs = std::chrono::duration<double>(now - log_refill_).count();
      log_refill_ = now;
      log_tokens_ = std::min(kLogBurst, log_tokens_ + secs * kLogPerSecond);
      if (log_tokens_ < 1) {
        ++log_dropped_;
        return;
      }
      log_tokens_ -= 1;
      dropped = std::exchange(log_dropped_, 0);
    }
    log::Level lv = level <= SKYRING_LOG_DEBUG  ? log::Level::kDebug
                    : level == SKYRING_LOG_INFO ? log::Level::kInfo
                    : level == SKYRING_LOG_WARN ? log::Level::kWarn
                                                : log::Level::kError;
    if (!log::enabled(lv)) return;
    log::write(lv, fmt::format("transport plugin '{}': {}{}", name_, plugin_text(message),
                               log::Limiter::note(dropped)));
  }

 private:
  struct Open {
    DeliveryDone done;
    SteadyClock::time_point deadline;
  };
  void finished(size_t n) {
    if (n == 0) return;
    std::lock_guard lock(mu_);
    running_ -= n;
    cv_.notify_all();
  }

  const std::string name_;
  const PluginTransportOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<uint64_t, Open> open_;
  std::set<std::pair<SteadyClock::time_point, uint64_t>> deadlines_;
  uint64_t next_seq_ = 1;
  size_t in_deliver_ = 0;  // deliver() calls into the plugin in progress
  size_t running_ = 0;     // `done` calls of ours in progress
  uint64_t ignored_ = 0;   // completions for tokens not open (late or repeated)
  bool stopping_ = false;
  bool exit_ = false;
  std::mutex log_mu_;
  double log_tokens_ = kLogBurst;
  uint64_t log_dropped_ = 0;
  SteadyClock::time_point log_refill_ = SteadyClock::now();
};

void Core::watchdog() {
  log::Limiter limiter;
  std::unique_lock lock(mu_);
  while (!exit_) {
    if (deadlines_.empty()) {
      cv_.wait(lock);
      continue;
    }
    auto first = deadlines_.begin()->first;
    if (SteadyClock::now() < first) {
      cv_.wait_until(lock, first);
      continue;
    }
    std::vector<DeliveryDone> expired;
    auto now = SteadyClock::now();
    while (!deadlines_.empty() && deadlines_.begin()->first <= now &&
           expired.size() < kMaxExpiredPerRound) {
      uint64_t seq = deadlines_.begin()->second;
      deadlines_.erase(deadlines_.begin());
      auto it = open_.find(seq);
      expired.push_back(std::move(it->second.done));
      open_.erase(it);
    }
    running_ += expired.size();
    lock.unlock();
    uint64_t dropped = 0;
    if (limiter.allow(&dropped)) {
      log::warn("transport plugin '{}': {} job(s) not completed in time; reported retryable{}",
                name_, expired.size(), log::Limiter::note(dropped));
    }
    for (auto& d : expired) {
      call_done("plugin", d,
                make_result(Outcome::kRetryable, 0,
                            "transport plugin did not complete the attempt in time"));
    }
    lock.lock();
    running_ -= expired.size();
    cv_.notify_all();
  }
}

// Host ids -> cores. Never destroyed: a plugin thread may complete during process exit.
struct HostRegistry {
  std::mutex mu;
  uint32_t next = 1;
  std::unordered_map<uint32_t, std::weak_ptr<Core>> cores;
};
HostRegistry& registry() {
  static auto* r = new HostRegistry;
  return *r;
}

void register_core(const std::shared_ptr<Core>& core) {
  HostRegistry& r = registry();
  std::lock_guard lock(r.mu);
  core->host_id = r.next++;
  SKYRING_ASSERT(core->host_id < (uint32_t{1} << 16), "too many transport plugins loaded");
  r.cores.emplace(core->host_id, core);
}

void unregister_core(uint32_t host_id) {
  HostRegistry& r = registry();
  std::lock_guard lock(r.mu);
  r.cores.erase(host_id);
}

std::shared_ptr<Core> find_core(uint32_t host_id) {
  HostRegistry& r = registry();
  std::lock_guard lock(r.mu);
  auto it = r.cores.find(host_id);
  return it == r.cores.end() ? nullptr : it->second.lock();
}

// The functions the plugin calls. Nothing may unwind into C.
extern "C" void skyring_plugin_complete(void* ctx, int outcome, int status,
                                        const char* detail) noexcept {
  try {
    auto token = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ctx));
    auto core = find_core(static_cast<uint32_t>(token >> kSeqBits));
    if (core) core->complete(token & kSeqMask, from_plugin(outcome, status, detail));
  } catch (...) {
  }
}

extern "C" void skyring_plugin_log(void* ctx, int level, const char* message) noexcept {
  try {
    auto core = find_core(static_cast<uint32_t>(reinterpret_cast<uintptr_t>(ctx)));
    if (core) core->log_line(level, message);
  } catch (...) {
  }
}

class PluginTransport final : public Transport {
 public:
  PluginTransport(const skyring_transport_plugin* vt, void* state, std::shared_ptr<Core> core,
                  PluginTransportOptions options)
      : vt_(vt), state_(state), core_(std::move(core)), options_(options) {
    watchdog_ = std::thread([core = core_] {
      set_up_this_thread("sky-plugin-dog");
      core->watchdog();
    });
  }
  ~PluginTransport() override {
    stop();
    vt_->destroy(state_);
    unregister_core(core_->host_id);
  }
  PluginTransport(const PluginTransport&) = delete;
  PluginTransport& operator=(const PluginTransport&) = delete;

  std::string_view name() const override { return core_->name(); }

  Result<void> validate(std::string_view method, std::string_view uri) const override {
    if (has_nul(method)) return fail(Errc::kInvalidArgument, "callback.method contains a NUL byte");
    if (has_nul(uri)) return fail(Errc::kInvalidArgument, "callback.uri contains a NUL byte");
    std::string m(method), u(uri);
    char err[kErrBuf] = {};
    if (vt_->validate(state_, m.c_str(), u.c_str(), err, sizeof(err)) == 0) return {};
    err[sizeof(err) - 1] = '\0';
    std::string msg = plugin_text(err, sizeof(err));
    if (msg.empty()) msg = fmt::format("callback.uri is not valid for transport '{}'", name());
    return fail(Errc::kInvalidArgument, std::move(msg));
  }

  std::string destination(std::string_view uri) const override {
    if (vt_->destination == nullptr || has_nul(uri)) return std::string(uri);
    std::string u(uri);
    char buf[kDestBuf] = {};
    if (vt_->destination(state_, u.c_str(), buf, sizeof(buf)) != 0) return u;
    buf[sizeof(buf) - 1] = '\0';
    std::string key(buf, strnlen(buf, sizeof(buf)));
    return key.empty() ? u : key;
  }

  void deliver(DeliveryJob job, DeliveryDone done) override {
    if (has_nul(job.method) || has_nul(job.uri)) {
      return call_done(
          "plugin", done,
          make_result(Outcome::kPermanent, 0, "callback method or uri contains a NUL byte"));
    }
    int64_t timeout_ms = job.timeout_ms > 0 ? job.timeout_ms : kDefaultJobTimeoutMs;
    uint64_t seq = 0;
    switch (core_->open(done, timeout_ms, &seq)) {
      case Core::Admit::kStopping:
        return call_done("plugin", done, make_result(Outcome::kAborted, 0, "transport stopped"));
      case Core::Admit::kFull:
        return call_done("plugin", done,
                         make_result(Outcome::kRetryable, 0,
                                     fmt::format("transport plugin '{}': queue full "
                                                 "({} jobs open)",
                                                 name(), options_.max_pending)));
      case Core::Admit::kOk:
        break;
    }
    std::vector<skyring_header> headers;
    headers.reserve(job.headers.size());
    for (const auto& [k, v] : job.headers) {
      headers.push_back(skyring_header{k.c_str(), k.size(), v.c_str(), v.size()});
    }
    skyring_transport_job cj{};
    cj.timer_id = job.timer_id.c_str();
    cj.timer_id_len = job.timer_id.size();
    cj.attempt = job.attempt;
    cj.method = job.method.c_str();
    cj.uri = job.uri.c_str();
    cj.uri_len = job.uri.size();
    cj.data_kind = job.data_kind == DataKind::kString ? SKYRING_DATA_STRING
                   : job.data_kind == DataKind::kJson ? SKYRING_DATA_JSON
                                                      : SKYRING_DATA_NONE;
    cj.data = job.data.c_str();
    cj.data_len = job.data.size();
    cj.timeout_ms = timeout_ms;
    cj.headers = headers.empty() ? nullptr : headers.data();
    cj.header_count = headers.size();
    int rc = vt_->deliver(state_, &cj, &skyring_plugin_complete, token_ctx(core_->host_id, seq));
    core_->deliver_returned();
    if (rc != 0) {
      core_->complete(seq,
                      make_result(Outcome::kRetryable, 0,
                                  fmt::format("transport plugin '{}' refused the job", name())));
    }
  }

  void stop() override {
    std::lock_guard lock(stop_mu_);
    if (stopped_) return;
    const auto deadline = SteadyClock::now() + std::chrono::milliseconds(options_.stop_timeout_ms);
    core_->begin_stop();
    vt_->stop(state_, options_.stop_timeout_ms);
    core_->finish_stop(deadline);
    watchdog_.join();
    stopped_ = true;
  }

 private:
  const skyring_transport_plugin* vt_;
  void* state_;
  std::shared_ptr<Core> core_;
  const PluginTransportOptions options_;
  std::thread watchdog_;
  std::mutex stop_mu_;
  bool stopped_ = false;
};

std::string dl_error() {
  const char* e = dlerror();
  return e ? plugin_text(e) : std::string("unknown error");
}

}  // namespace

Result<std::unique_ptr<Transport>> load_transport_plugin(const std::string& path,
                                                         const PluginConfigLookup& config_for,
                                                         PluginTransportOptions options) {
  auto error = [&path](std::string_view msg) -> tl::unexpected<Error> {
    return fail(Errc::kInvalidArgument, fmt::format("--transport {}: {}", path, msg));
  };
  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return error(fmt::format("cannot load: {}", dl_error()));
  // Until create() ran nothing of the plugin runs: unloading is safe.
  auto unload = [handle](tl::unexpected<Error> e) {
    dlclose(handle);
    return e;
  };
  dlerror();
  void* sym = dlsym(handle, SKYRING_TRANSPORT_ENTRY);
  if (sym == nullptr) {
    return unload(error(
        fmt::format("not a Skyring transport plugin: no symbol '{}'", SKYRING_TRANSPORT_ENTRY)));
  }
  using Entry = const skyring_transport_plugin* (*)();
  const skyring_transport_plugin* vt = reinterpret_cast<Entry>(sym)();
  if (vt == nullptr) {
    return unload(error(fmt::format("{}() returned NULL", SKYRING_TRANSPORT_ENTRY)));
  }
  if (vt->abi_version != SKYRING_TRANSPORT_ABI_VERSION) {
    return unload(error(
        fmt::format("plugin ABI version {} found, {} expected (rebuild it against this Skyring's "
                    "skyring/transport_plugin.h)",
                    vt->abi_version, SKYRING_TRANSPORT_ABI_VERSION)));
  }
  std::string name = plugin_text(vt->name, 64);
  if (!valid_name(name)) {
    return unload(error(
        fmt::format("invalid transport name '{}': it must match [a-z][a-z0-9_-]{{0,31}}", name)));
  }
  std::vector<std::string_view> missing;
  if (vt->create == nullptr) missing.push_back("create");
  if (vt->validate == nullptr) missing.push_back("validate");
  if (vt->deliver == nullptr) missing.push_back("deliver");
  if (vt->stop == nullptr) missing.push_back("stop");
  if (vt->destroy == nullptr) missing.push_back("destroy");
  if (!missing.empty()) {
    return unload(error(fmt::format("transport '{}' lacks required function(s): {}", name,
                                    fmt::join(missing, ", "))));
  }

  auto core = std::make_shared<Core>(name, options);
  register_core(core);
  core->host.abi_version = SKYRING_TRANSPORT_ABI_VERSION;
  core->host.ctx = reinterpret_cast<void*>(static_cast<uintptr_t>(core->host_id));
  core->host.log = &skyring_plugin_log;
  const std::string config = config_for ? config_for(name) : std::string();
  void* state = nullptr;
  char err[kErrBuf] = {};
  if (vt->create(config.c_str(), config.size(), &core->host, &state, err, sizeof(err)) != 0) {
    // Not unloaded: a half-started plugin may have left something running.
    unregister_core(core->host_id);
    err[sizeof(err) - 1] = '\0';
    std::string msg = plugin_text(err, sizeof(err));
    return error(fmt::format("transport '{}' failed to start: {}", name,
                             msg.empty() ? "(no message)" : msg));
  }
  log::info("transport plugin '{}' loaded from {}", name, path);
  return std::unique_ptr<Transport>(
      std::make_unique<PluginTransport>(vt, state, std::move(core), options));
}

}  // namespace skyring
