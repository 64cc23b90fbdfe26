// The only file that sees libnats.
//
// Threads: libnats runs its own (connection, reconnect, async callbacks, one delivery thread
// per subscription); the bus adds one publisher thread. None of them touches cluster state:
// everything they learn is posted to the Executor.
//
// Lifetime: libnats may call a callback after natsConnection_Destroy() returns (the closed
// callback is queued on its async thread; a subscription's handler may be mid-call). So the
// callbacks never see the bus itself, only a Core held by shared_ptr: the connection's closure
// owns one reference until its closed callback, each subscription's closure until its
// completion callback. Core::stopped, set under Core::mu before the connection is closed, makes
// sure nothing is posted after stop(); tasks already posted check it again before they run.
#include "cluster/nats_bus.h"

#include <nats/nats.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/log.h"
#include "base/thread.h"
#include "delivery/nats_transport.h"

namespace skyring::cluster {
namespace {

constexpr int kReconnectBufBytes = 8 * 1024 * 1024;  // libnats' buffer while disconnected
constexpr int kSubscribeFlushMs = 2000;  // subscribe() waits at most this for the server's PONG

void open_library() {
  static std::once_flag once;
  // Never closed: nats_Close() at exit could race with callbacks of a bus still stopping.
  std::call_once(once, [] {
    if (natsStatus s = nats_Open(-1); s != NATS_OK) {
      log::error("nats: library init failed: {}", natsStatus_GetText(s));
    }
  });
}

struct Probe {
  Gauge* connected;
  Counter* published;
  Counter* dropped;
  Counter* received;
  Counter* reconnects;
};

Probe make_probe(Registry& r) {
  return Probe{
      &r.gauge("skyring_nats_connected", "1 while the NATS connection is up"),
      &r.counter("skyring_nats_published_total", "Messages handed to the NATS client"),
      &r.counter("skyring_nats_dropped_total",
                 "Messages dropped: publish queue full or NATS down with its buffer full"),
      &r.counter("skyring_nats_received_total", "Messages received on subscriptions"),
      &r.counter("skyring_nats_reconnects_total", "Reconnects to NATS"),
  };
}

// What libnats' threads may touch; outlives the bus when a callback is still due.
struct Core {
  Core(Executor& e, Probe p, std::string n) : executor(e), probe(p), name(std::move(n)) {}

  Executor& executor;
  const Probe probe;
  const std::string name;
  std::atomic<bool> connected{false};
  std::atomic<bool> stopped{false};
  std::mutex mu;                                     // orders post() against stop()
  std::vector<std::function<void(bool)>> state_fns;  // guarded by mu

  // Runs fn on the executor unless the bus stopped (now or before the task runs). `count`
  // runs first, under the same check: after stop() the Registry may be gone.
  template <typename Count>
  void post(const std::shared_ptr<Core>& self, Count count, Task fn) {
    std::lock_guard lock(mu);
    if (stopped.load()) return;
    count();
    executor.post([self, fn = std::move(fn)] {
      if (!self->stopped.load()) fn();
    });
  }

  void set_state(const std::shared_ptr<Core>& self, bool up, bool reconnect = false) {
    connected.store(up);
    auto count = [&] {
      probe.connected->set(up ? 1 : 0);
      if (reconnect) probe.reconnects->inc();
    };
    post(self, count, [self, up] {
      std::vector<std::function<void(bool)>> fns;
      {
        std::lock_guard lock(self->mu);
        fns = self->state_fns;
      }
      for (auto& fn : fns) fn(up);
    });
  }

  void stop() {
    std::lock_guard lock(mu);
    stopped.store(true);
  }
};

// The closure of every connection callback: one reference, released by the closed callback.
struct ConnClosure {
  std::shared_ptr<Core> core;
};

struct SubClosure {
  std::shared_ptr<Core> core;
  std::shared_ptr<NatsBus::Handler> handler;
};

void on_connected(natsConnection*, void* closure) {
  auto& core = static_cast<ConnClosure*>(closure)->core;
  log::info("nats: connected ({})", core->name);
  core->set_state(core, true);
}

void on_reconnected(natsConnection*, void* closure) {
  auto& core = static_cast<ConnClosure*>(closure)->core;
  log::info("nats: reconnected ({})", core->name);
  core->set_state(core, true, /*reconnect=*/true);
}

void on_disconnected(natsConnection*, void* closure) {
  auto& core = static_cast<ConnClosure*>(closure)->core;
  if (!core->stopped.load()) log::warn("nats: disconnected ({}); reconnecting", core->name);
  core->set_state(core, false);
}

void on_closed(natsConnection*, void* closure) {
  auto* c = static_cast<ConnClosure*>(closure);
  c->core->connected.store(false);  // no metric: the Registry may be gone after stop()
  delete c;                         // the last connection callback
}

void on_message(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* c = static_cast<SubClosure*>(closure);
  std::string subject(natsMsg_GetSubject(msg));
  std::string data(natsMsg_GetData(msg), static_cast<size_t>(natsMsg_GetDataLength(msg)));
  natsMsg_Destroy(msg);
  const auto& core = c->core;
  core->post(
      core, [&] { core->probe.received->inc(); },
      [h = c->handler, subject = std::move(subject), data = std::move(data)] {
        (*h)(subject, data);
      });
}

void on_subscription_complete(void* closure) {
  delete static_cast<SubClosure*>(closure);
}

struct Outgoing {
  std::string subject;
  std::string data;
};

class LibnatsBus final : public NatsBus {
 public:
  LibnatsBus(NatsOptions options, std::shared_ptr<Core> core)
      : options_(std::move(options)), core_(std::move(core)) {}
  ~LibnatsBus() override { stop(); }

  // Takes ownership of nc; starts the publisher thread.
  void run(natsConnection* nc) {
    nc_ = nc;
    publisher_ = std::thread([this] {
      set_up_this_thread("sky-events");
      publish_loop();
    });
  }

  void publish(std::string subject, std::string data, Send send) override {
    size_t bytes = subject.size() + data.size();
    std::unique_lock lock(qmu_);
    if (stopping_) {
      core_->probe.dropped->inc();
      return;
    }
    if (queue_.size() >= options_.max_queue || queue_bytes_ + bytes > options_.max_queue_bytes) {
      core_->probe.dropped->inc();
      uint64_t held = 0;
      if (enqueue_limiter_.allow(&held)) {
        log::warn("nats: publish queue full ({} messages, {} bytes): dropped a message on {}{}",
                  queue_.size(), queue_bytes_, subject, log::Limiter::note(held));
      }
      return;
    }
    queue_bytes_ += bytes;
    bool was_empty = queue_.empty();
    queue_.push_back({std::move(subject), std::move(data)});
    bool wake = was_empty || (send == Send::kAtOnce && !at_once_);
    if (send == Send::kAtOnce) at_once_ = true;
    lock.unlock();
    // The publisher waits on an empty queue, or gathers for batch_interval_ms, and takes all of
    // it at once: only the first message after it emptied, or the first kAtOnce, needs a
    // wake-up (one futex call per batch, not per event).
    if (wake) qcv_.notify_one();
  }

  void subscribe(const std::string& subject, Handler handler) override {
    std::lock_guard lock(smu_);
    if (nc_ == nullptr || core_->stopped.load()) return;
    auto* closure = new SubClosure{core_, std::make_shared<Handler>(std::move(handler))};
    natsSubscription* sub = nullptr;
    natsStatus s = natsConnection_Subscribe(&sub, nc_, subject.c_str(), on_message, closure);
    if (s != NATS_OK) {
      // Only a closed connection or an invalid subject gets here: nothing will call back.
      log::error("nats: subscribe {} failed: {}", subject, nats_error_text(s));
      delete closure;
      return;
    }
    if (natsSubscription_SetOnCompleteCB(sub, on_subscription_complete, closure) != NATS_OK) {
      // The subscription closed already: no handler call is due any more... but one may be
      // running; leak the closure rather than risk freeing it under that handler.
      log::error("nats: subscription {} closed at once", subject);
    }
    subs_.push_back(sub);
    // On a live connection, wait for the server to have the subscription (one PING round trip)
    // so that whatever any connection publishes from now on reaches it. Before the first
    // connect there is nothing to wait for: libnats sends the SUB on connecting.
    if (natsConnection_Status(nc_) == NATS_CONN_STATUS_CONNECTED) {
      if (natsStatus f = natsConnection_FlushTimeout(nc_, kSubscribeFlushMs); f != NATS_OK) {
        log::warn("nats: subscription {} not confirmed within {} ms: {}", subject,
                  kSubscribeFlushMs, nats_error_text(f));
      }
    }
  }

  void on_state(std::function<void(bool connected)> fn) override {
    std::lock_guard lock(core_->mu);
    core_->state_fns.push_back(std::move(fn));
  }

  bool connected() const override { return core_->connected.load(); }

  void stop() override {
    {
      std::lock_guard lock(qmu_);
      if (stopping_) return;  // a second stop() (or the destructor) after the first
      stopping_ = true;
      flush_deadline_us_ = monotonic_us() + options_.flush_timeout_ms * 1000;
    }
    qcv_.notify_all();
    if (publisher_.joinable()) publisher_.join();
    core_->stop();
    std::lock_guard lock(smu_);
    if (nc_ != nullptr) {
      natsConnection_Close(nc_);
      for (natsSubscription* sub : subs_) natsSubscription_Destroy(sub);
      subs_.clear();
      natsConnection_Destroy(nc_);
      nc_ = nullptr;
    }
    core_->probe.connected->set(0);
  }

 private:
  void publish_loop() {
    std::deque<Outgoing> batch;
    std::unique_lock lock(qmu_);
    for (;;) {
      qcv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping, all handed over
      if (stopping_ && monotonic_us() >= flush_deadline_us_) {
        drop_queued(lock);
        break;
      }
      batch.swap(queue_);
      queue_bytes_ = 0;
      at_once_ = false;
      lock.unlock();
      for (Outgoing& m : batch) send(m);
      batch.clear();
      lock.lock();
      // Gather for a moment before the next batch: every batch wakes this thread, libnats'
      // flusher and the server (another process). At ~10,000 events/s one wake per event cost
      // the node about 40% of its create rate in the cluster bench, and a batch every 5 ms
      // still about 20% (docs/cluster.md, "Events"). Messages wait at most this long; the first
      // one after a quiet spell goes at once.
      if (options_.batch_interval_ms > 0 && !stopping_) {
        qcv_.wait_for(lock, std::chrono::milliseconds(options_.batch_interval_ms),
                      [&] { return stopping_ || at_once_; });
      }
    }
    int64_t deadline = flush_deadline_us_;
    lock.unlock();
    // Only when connected: flushing a disconnected client would just wait out the timeout.
    int64_t left_ms = (deadline - monotonic_us()) / 1000;
    if (core_->connected.load() && left_ms > 0) {
      if (natsStatus s = natsConnection_FlushTimeout(nc_, left_ms); s != NATS_OK) {
        log::warn("nats: flush at stop: {}", natsStatus_GetText(s));
      }
    }
  }

  void drop_queued(std::unique_lock<std::mutex>& lock) {
    size_t n = queue_.size();
    core_->probe.dropped->inc(n);
    queue_.clear();
    queue_bytes_ = 0;
    lock.unlock();
    log::warn("nats: stop: {} queued messages not sent within {} ms", n, options_.flush_timeout_ms);
    lock.lock();
  }

  // A failure (NATS down and libnats' reconnect buffer full, or a closed connection) drops the
  // message: the loop never waits for NATS, so it cannot spin on it either.
  void send(const Outgoing& m) {
    natsStatus s = natsConnection_Publish(nc_, m.subject.c_str(), m.data.data(),
                                          static_cast<int>(m.data.size()));
    if (s == NATS_OK) {
      core_->probe.published->inc();
      return;
    }
    core_->probe.dropped->inc();
    uint64_t held = 0;
    if (send_limiter_.allow(&held)) {
      log::warn("nats: publish on {} failed ({}): message dropped{}", m.subject,
                natsStatus_GetText(s), log::Limiter::note(held));
    }
  }

  const NatsOptions options_;
  std::shared_ptr<Core> core_;
  natsConnection* nc_ = nullptr;  // set before the publisher starts; cleared by stop()

  std::mutex smu_;  // subscribe() against stop()
  std::vector<natsSubscription*> subs_;

  std::mutex qmu_;
  std::condition_variable qcv_;
  std::deque<Outgoing> queue_;
  size_t queue_bytes_ = 0;
  bool stopping_ = false;
  bool at_once_ = false;  // a Send::kAtOnce message waits: no gathering wait
  int64_t flush_deadline_us_ = 0;
  log::Limiter enqueue_limiter_;  // used under qmu_
  log::Limiter send_limiter_;     // publisher thread only
  std::thread publisher_;
};

std::vector<std::string> split_urls(const std::string& urls) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= urls.size()) {
    size_t end = urls.find(',', start);
    if (end == std::string::npos) end = urls.size();
    std::string url = urls.substr(start, end - start);
    size_t b = url.find_first_not_of(" \t");
    size_t e = url.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(url.substr(b, e - b + 1));
    start = end + 1;
  }
  return out;
}

struct OptionsDeleter {
  void operator()(natsOptions* o) const { natsOptions_Destroy(o); }
};

}  // namespace

Result<std::unique_ptr<NatsBus>> NatsBus::start(NatsOptions options, Executor& executor,
                                                Registry& metrics) {
  auto invalid = [&](const std::string& why) {
    return fail(Errc::kInvalidArgument, fmt::format("--nats {}: {}", options.urls, why));
  };
  std::vector<std::string> urls = split_urls(options.urls);
  if (urls.empty()) return invalid("no server URL");
  open_library();

  natsOptions* raw = nullptr;
  if (natsStatus s = natsOptions_Create(&raw); s != NATS_OK) {
    return fail(Errc::kIo, fmt::format("nats: options: {}", natsStatus_GetText(s)));
  }
  std::unique_ptr<natsOptions, OptionsDeleter> opts(raw);
  std::vector<const char*> ptrs;
  for (const auto& u : urls) ptrs.push_back(u.c_str());
  if (natsStatus s = natsOptions_SetServers(opts.get(), ptrs.data(), static_cast<int>(ptrs.size()));
      s != NATS_OK) {
    return invalid(nats_error_text(s));
  }

  auto core = std::make_shared<Core>(executor, make_probe(metrics), options.name);
  auto* closure = new ConnClosure{core};
  natsOptions* o = opts.get();
  natsStatus s = NATS_OK;
  if (!options.name.empty()) s = natsOptions_SetName(o, options.name.c_str());
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(o, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(o, options.reconnect_wait_ms);
  if (s == NATS_OK) s = natsOptions_SetTimeout(o, options.connect_timeout_ms);
  if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(o, kReconnectBufBytes);
  if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, closure);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(o, on_reconnected, closure);
  if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(o, on_disconnected, closure);
  if (s == NATS_OK) s = natsOptions_SetClosedCB(o, on_closed, closure);
  if (s != NATS_OK) {
    delete closure;
    return invalid(nats_error_text(s));
  }

  natsConnection* nc = nullptr;
  s = natsConnection_Connect(&nc, o);
  if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
    // No connection object: no callback will come.
    if (nc != nullptr)
      natsConnection_Destroy(nc);
    else
      delete closure;
    return invalid(nats_error_text(s));
  }
  if (s == NATS_OK) {
    core->connected.store(true);
    core->probe.connected->set(1);
    log::info("nats: connected ({})", options.name);
  } else {
    log::warn("nats: {} not reachable yet; connecting in the background", options.urls);
  }
  auto bus = std::make_unique<LibnatsBus>(std::move(options), std::move(core));
  bus->run(nc);
  return std::unique_ptr<NatsBus>(std::move(bus));
}

}  // namespace skyring::cluster
