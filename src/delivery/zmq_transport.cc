// The only file that sees libzmq (through cppzmq). cppzmq throws zmq::error_t; every call that
// can throw is caught here and becomes a DeliveryResult or a log line.
#include "delivery/zmq_transport.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <zmq.hpp>

#include "base/ascii.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/thread.h"

namespace skyring {
namespace {

constexpr std::string_view kTopic = "timeout";
// The loop's longest sleep when nothing is due; deliver()/stop() cut it short via the eventfd.
constexpr int64_t kMaxPollMs = 1000;
// Messages read from one socket (subscriptions, monitor events) per loop turn: a chatty peer
// cannot starve the others.
constexpr int kMaxReadsPerTurn = 256;
constexpr size_t kMaxIpcPath = 107;  // sun_path holds 108 bytes with the terminating NUL
// libzmq gives up on an endpoint for good after a protocol error (a peer of the wrong socket
// type, or not speaking ZMTP): DISCONNECTED is then not followed by CONNECT_RETRIED. A socket
// left that way this long is replaced by a new one, which connects afresh.
constexpr int64_t kReopenAfterUs = 1'000'000;
constexpr int kMonitorEvents =
    ZMQ_EVENT_CONNECTED | ZMQ_EVENT_CONNECT_DELAYED | ZMQ_EVENT_CONNECT_RETRIED |
    ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
    ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;

enum class Kind { kPush, kPub };

std::optional<Kind> parse_method(std::string_view method) {
  const std::string m = ascii_lower(method);
  if (m == "push") return Kind::kPush;
  if (m == "pub") return Kind::kPub;
  return std::nullopt;
}

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && ascii_lower(s.substr(0, prefix.size())) == prefix;
}

bool host_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

bool ipv6_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' ||
         c == '.';
}

// The endpoint libzmq connects to, normalised, or nullopt when the uri is not one we accept.
struct Endpoint {
  std::string text;
  bool ipv6 = false;  // an IPv6 literal: the socket needs ZMQ_IPV6
};

std::optional<Endpoint> parse_tcp(std::string_view rest) {
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view host = rest.substr(0, colon);
  std::string_view port = rest.substr(colon + 1);
  std::optional<uint16_t> n = parse_port(port);
  if (!n) return std::nullopt;
  Endpoint e;
  if (!host.empty() && host.front() == '[') {
    if (host.size() < 4 || host.back() != ']') return std::nullopt;
    for (char c : host.substr(1, host.size() - 2)) {
      if (!ipv6_char(c)) return std::nullopt;
    }
    e.ipv6 = true;
  } else {
    if (host.empty() || host.size() > 253) return std::nullopt;
    for (char c : host) {
      if (!host_name_char(c)) return std::nullopt;  // also refuses `*` and `src;host`
    }
  }
  e.text = fmt::format("tcp://{}:{}", ascii_lower(host), *n);
  return e;
}

std::optional<Endpoint> parse_endpoint(std::string_view uri) {
  if (starts_with_ci(uri, "tcp://")) return parse_tcp(uri.substr(6));
  if (starts_with_ci(uri, "ipc://")) {
    std::string_view path = uri.substr(6);
    if (path.empty() || path.size() > kMaxIpcPath || path == "*" ||
        path.find('\0') != std::string_view::npos) {
      return std::nullopt;
    }
    return Endpoint{"ipc://" + std::string(path), false};
  }
  return std::nullopt;
}

DeliveryResult result(Outcome outcome, std::string detail = {}) {
  DeliveryResult r;
  r.outcome = outcome;
  r.detail = std::move(detail);
  return r;
}

int64_t deadline_after_ms(int64_t now_us, int64_t ms) {
  return now_us + std::max<int64_t>(ms, 0) * 1000;
}

}  // namespace

// Everything below `transport thread only` is touched by the loop thread alone (and by the
// destructor once that thread is joined); the rest is guarded by mu_ or immutable.
class ZmqTransport::Loop {
 public:
  explicit Loop(ZmqTransportOptions options);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void deliver(DeliveryJob job, Kind kind, Endpoint endpoint, DeliveryDone done);
  void stop();

 private:
  struct Queued {
    DeliveryJob job;
    DeliveryDone done;
    Kind kind;
    Endpoint endpoint;
  };
  struct Waiting {
    DeliveryJob job;
    DeliveryDone done;
    int64_t deadline_us;
  };
  // One connected socket and the attempts waiting for it to become ready, oldest first.
  struct Dest {
    Kind kind = Kind::kPush;
    std::string key;
    Endpoint endpoint;
    zmq::socket_t sock;
    zmq::socket_t monitor;   // connection events of `sock`
    bool connected = false;  // a peer finished its handshake and has not gone away
    // When the connection ended without libzmq scheduling a reconnect (0: it is retrying).
    int64_t dead_since_us = 0;
    // pub: which prefixes of "timeout" ("", "t", ..., "timeout") a subscriber holds. An XPUB
    // passes on the first subscription to a prefix and the unsubscription of the last one.
    std::array<bool, kTopic.size() + 1> subscribed{};
    std::deque<Waiting> waiting;
    uint64_t last_used = 0;
  };

  void run();
  void accept(Queued q);
  Dest* open(Kind kind, const Endpoint& endpoint, std::string key, std::string* error);
  // Replaces the sockets libzmq stopped reconnecting; their waiting attempts move over.
  void reopen_dead(int64_t now_us);
  bool evict_one();
  void close(Dest& d);
  // Sends the waiting attempts of `d` while it is ready; the rest keep waiting.
  void flush(Dest& d);
  enum class Sent { kOk, kNotReady, kFailed };
  Sent send(Dest& d, const DeliveryJob& job, std::string* error);
  bool has_subscriber(const Dest& d) const;
  std::string not_ready_reason(const Dest& d) const;
  void read_monitor(Dest& d);
  void read_subscriptions(Dest& d);
  void expire(int64_t now_us);
  int poll_timeout_ms(int64_t now_us) const;
  void poll_once();
  void complete(DeliveryDone& done, DeliveryResult r);
  void shutdown(std::deque<Queued> queued);
  void log_failure(std::string_view what, std::string_view detail);

  const ZmqTransportOptions options_;
  const int wake_fd_;

  std::mutex mu_;
  std::deque<Queued> queue_;  // guarded by mu_
  size_t outstanding_ = 0;    // guarded by mu_: queued + waiting, bounded by max_queue
  bool stopping_ = false;     // guarded by mu_

  std::mutex join_mu_;  // serialises concurrent stop() calls around join()
  std::thread thread_;
  std::thread::id thread_id_;

  // transport thread only.
  std::optional<zmq::context_t> ctx_;
  std::string ctx_error_;  // why ctx_ is empty
  std::unordered_map<std::string, std::unique_ptr<Dest>> dests_;
  uint64_t tick_ = 0;  // LRU clock
  uint64_t monitor_seq_ = 0;
  log::Limiter failure_log_;
};

ZmqTransport::Loop::Loop(ZmqTransportOptions options)
    : options_(options), wake_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  SKYRING_ASSERT(wake_fd_ >= 0, "eventfd for the zmq transport failed");
  try {
    ctx_.emplace();
    // Each destination takes one socket, a push one a monitor pair more.
    ctx_->set(zmq::ctxopt::max_sockets,
              static_cast<int>(std::max<size_t>(1024, options_.max_sockets * 3 + 16)));
    ctx_->set(zmq::ctxopt::blocky, 0);
  } catch (const zmq::error_t& e) {
    ctx_.reset();
    ctx_error_ = fmt::format("zmq context unavailable: {}", e.what());
    log::error("zmq transport: {}", ctx_error_);
  }
  try {
    thread_ = std::thread([this] {
      set_up_this_thread("sky-zmq");
      run();
    });
  } catch (...) {
    SKYRING_ASSERT(false, "cannot start the zmq transport thread");
  }
  thread_id_ = thread_.get_id();
}

ZmqTransport::Loop::~Loop() {
  SKYRING_ASSERT(std::this_thread::get_id() != thread_id_,
                 "ZmqTransport destroyed from its own delivery callback");
  stop();
  ::close(wake_fd_);
}

void ZmqTransport::Loop::deliver(DeliveryJob job, Kind kind, Endpoint endpoint, DeliveryDone done) {
  SKYRING_ASSERT(static_cast<bool>(done), "deliver() needs a callback");
  std::optional<DeliveryResult> rejected;
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      rejected = result(Outcome::kAborted, "transport stopped");
    } else if (outstanding_ >= options_.max_queue) {
      rejected = result(Outcome::kRetryable, "delivery queue full");
    } else {
      // Only the first job after the loop emptied the queue needs to wake it.
      wake = queue_.empty();
      queue_.push_back(Queued{std::move(job), std::move(done), kind, std::move(endpoint)});
      ++outstanding_;
    }
  }
  if (rejected) {
    call_done("zmq", done, std::move(*rejected));
  } else if (wake) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));  // EAGAIN: already awake
  }
}

void ZmqTransport::Loop::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  // From inside a callback the loop cannot be joined; it finishes once the callback returns.
  if (std::this_thread::get_id() == thread_id_) return;
  std::lock_guard lock(join_mu_);
  if (thread_.joinable()) thread_.join();
}

void ZmqTransport::Loop::run() {
  for (;;) {
    std::deque<Queued> batch;
    bool stopping = false;
    {
      std::lock_guard lock(mu_);
      batch.swap(queue_);
      stopping = stopping_;
    }
    if (stopping) return shutdown(std::move(batch));
    try {
      for (Queued& q : batch) accept(std::move(q));
      poll_once();
      const int64_t now = monotonic_us();
      expire(now);
      reopen_dead(now);
    } catch (const std::exception& e) {
      // The zmq calls are caught where they are made; what is left is allocation failure,
      // which must not end delivery for good (the loop goes on; waiting jobs expire).
      log::error("zmq transport: loop step threw: {}", e.what());
    }
  }
}

void ZmqTransport::Loop::accept(Queued q) {
  if (!ctx_) return complete(q.done, result(Outcome::kRetryable, ctx_error_));
  std::string key = (q.kind == Kind::kPush ? "push " : "pub ") + q.endpoint.text;
  Dest* d = nullptr;
  if (auto it = dests_.find(key); it != dests_.end()) {
    d = it->second.get();
  } else {
    std::string error;
    d = open(q.kind, q.endpoint, std::move(key), &error);
    if (d == nullptr) {
      log_failure("cannot open a socket", error);
      return complete(q.done, result(Outcome::kRetryable, std::move(error)));
    }
  }
  d->last_used = ++tick_;
  const int64_t now = monotonic_us();
  const int64_t wait_ms = q.job.timeout_ms > 0
                              ? std::min(options_.send_timeout_ms, q.job.timeout_ms)
                              : options_.send_timeout_ms;
  // Order per destination: a job never overtakes one already waiting.
  d->waiting.push_back(
      Waiting{std::move(q.job), std::move(q.done), deadline_after_ms(now, wait_ms)});
  flush(*d);
  if (wait_ms <= 0) expire(now);
}

ZmqTransport::Loop::Dest* ZmqTransport::Loop::open(Kind kind, const Endpoint& endpoint,
                                                   std::string key, std::string* error) {
  if (dests_.size() >= options_.max_sockets && !evict_one()) {
    *error =
        fmt::format("too many zmq destinations waiting (max_sockets {})", options_.max_sockets);
    return nullptr;
  }
  auto d = std::make_unique<Dest>();
  d->kind = kind;
  d->key = std::move(key);
  d->endpoint = endpoint;
  try {
    d->sock =
        zmq::socket_t(*ctx_, kind == Kind::kPush ? zmq::socket_type::push : zmq::socket_type::xpub);
    d->sock.set(zmq::sockopt::sndhwm, options_.sndhwm);
    d->sock.set(zmq::sockopt::linger, options_.linger_ms);
    d->sock.set(zmq::sockopt::immediate, true);
    d->sock.set(zmq::sockopt::sndtimeo, 0);
    d->sock.set(zmq::sockopt::reconnect_ivl, options_.reconnect_ivl_ms);
    d->sock.set(zmq::sockopt::reconnect_ivl_max, options_.reconnect_ivl_max_ms);
    d->sock.set(zmq::sockopt::connect_timeout, options_.connect_timeout_ms);
    d->sock.set(zmq::sockopt::tcp_keepalive, 1);
    if (options_.heartbeat_ivl_ms > 0) {
      d->sock.set(zmq::sockopt::heartbeat_ivl, options_.heartbeat_ivl_ms);
      d->sock.set(zmq::sockopt::heartbeat_timeout, options_.heartbeat_ivl_ms * 3);
    }
    if (endpoint.ipv6) d->sock.set(zmq::sockopt::ipv6, true);
    // The monitor comes first so that the events of the first connection are seen.
    const std::string name = fmt::format("inproc://skyring-zmq-monitor-{}", ++monitor_seq_);
    if (zmq_socket_monitor(d->sock.handle(), name.c_str(), kMonitorEvents) != 0) {
      throw zmq::error_t();
    }
    d->monitor = zmq::socket_t(*ctx_, zmq::socket_type::pair);
    d->monitor.set(zmq::sockopt::linger, 0);
    d->monitor.connect(name);
    d->sock.connect(endpoint.text);
  } catch (const zmq::error_t& e) {
    *error = fmt::format("zmq socket for {}: {}", endpoint.text, e.what());
    close(*d);
    return nullptr;
  }
  Dest* raw = d.get();
  dests_.emplace(raw->key, std::move(d));
  return raw;
}

bool ZmqTransport::Loop::evict_one() {
  auto victim = dests_.end();
  for (auto it = dests_.begin(); it != dests_.end(); ++it) {
    if (!it->second->waiting.empty()) continue;  // closing it would fail its attempts
    if (victim == dests_.end() || it->second->last_used < victim->second->last_used) victim = it;
  }
  if (victim == dests_.end()) return false;
  close(*victim->second);
  dests_.erase(victim);
  return true;
}

void ZmqTransport::Loop::close(Dest& d) {
  try {
    if (d.monitor) {
      zmq_socket_monitor(d.sock.handle(), nullptr, 0);
      d.monitor.close();
    }
    if (d.sock) d.sock.close();  // what it holds flushes for linger_ms in libzmq's I/O thread
  } catch (const zmq::error_t& e) {
    log::warn("zmq transport: closing the socket for {}: {}", d.endpoint.text, e.what());
  }
}

ZmqTransport::Loop::Sent ZmqTransport::Loop::send(Dest& d, const DeliveryJob& job,
                                                  std::string* error) {
  if (d.kind == Kind::kPub && !has_subscriber(d)) return Sent::kNotReady;
  try {
    // A multipart message is atomic: once the first frame is accepted the second is too.
    if (!d.sock.send(zmq::buffer(kTopic.data(), kTopic.size()),
                     zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
      return Sent::kNotReady;  // EAGAIN: no completed connection, or the pipe is full
    }
    const std::string_view payload =
        job.data_kind == DataKind::kNone ? std::string_view() : std::string_view(job.data);
    if (!d.sock.send(zmq::buffer(payload.data(), payload.size()), zmq::send_flags::dontwait)) {
      *error = "zmq refused the payload frame";  // cannot happen: see above
      return Sent::kFailed;
    }
  } catch (const zmq::error_t& e) {
    *error = fmt::format("zmq send to {}: {}", d.endpoint.text, e.what());
    return Sent::kFailed;
  }
  return Sent::kOk;
}

void ZmqTransport::Loop::flush(Dest& d) {
  while (!d.waiting.empty()) {
    std::string error;
    const Sent s = send(d, d.waiting.front().job, &error);
    if (s == Sent::kNotReady) return;
    Waiting w = std::move(d.waiting.front());
    d.waiting.pop_front();
    if (s == Sent::kOk) {
      complete(w.done, result(Outcome::kSuccess));
    } else {
      log_failure("send failed", error);
      complete(w.done, result(Outcome::kRetryable, std::move(error)));
    }
  }
}

bool ZmqTransport::Loop::has_subscriber(const Dest& d) const {
  return std::any_of(d.subscribed.begin(), d.subscribed.end(), [](bool b) { return b; });
}

std::string ZmqTransport::Loop::not_ready_reason(const Dest& d) const {
  const std::string& at = d.endpoint.text;
  if (d.dead_since_us != 0) {
    return fmt::format("connection to {} failed (a peer of the wrong socket type, or not zmq?)",
                       at);
  }
  if (d.kind == Kind::kPub) return fmt::format("no subscriber connected to {}", at);
  if (d.connected) return fmt::format("peer not reading (high-water mark reached) at {}", at);
  return fmt::format("no connected peer at {}", at);
}

void ZmqTransport::Loop::read_monitor(Dest& d) {
  for (int i = 0; i < kMaxReadsPerTurn; ++i) {
    zmq::message_t event;
    zmq::message_t address;
    try {
      if (!d.monitor.recv(event, zmq::recv_flags::dontwait)) return;
      if (event.more()) (void)d.monitor.recv(address, zmq::recv_flags::dontwait);
    } catch (const zmq::error_t& e) {
      log_failure("monitor read failed", e.what());
      return;
    }
    if (event.size() < sizeof(uint16_t)) continue;
    uint16_t id = 0;
    std::memcpy(&id, event.data(), sizeof(id));
    // One endpoint per socket, so at most one connection at a time: a flag, not a count.
    switch (id) {
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        d.connected = true;
        d.dead_since_us = 0;
        break;
      case ZMQ_EVENT_CONNECTED:
      case ZMQ_EVENT_CONNECT_DELAYED:
      case ZMQ_EVENT_CONNECT_RETRIED:
        d.dead_since_us = 0;
        break;
      case ZMQ_EVENT_DISCONNECTED:
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        d.connected = false;
        if (d.dead_since_us == 0) d.dead_since_us = monotonic_us();
        break;
      default:
        break;
    }
  }
}

void ZmqTransport::Loop::read_subscriptions(Dest& d) {
  for (int i = 0; i < kMaxReadsPerTurn; ++i) {
    zmq::message_t msg;
    try {
      if (!d.sock.recv(msg, zmq::recv_flags::dontwait)) return;
    } catch (const zmq::error_t& e) {
      log_failure("subscription read failed", e.what());
      return;
    }
    if (msg.size() < 1) continue;
    const auto* bytes = static_cast<const char*>(msg.data());
    const std::string_view prefix(bytes + 1, msg.size() - 1);
    if ((bytes[0] != 0 && bytes[0] != 1) || prefix.size() > kTopic.size() ||
        kTopic.substr(0, prefix.size()) != prefix) {
      continue;  // not a subscription, or one that never matches our topic
    }
    d.subscribed[prefix.size()] = bytes[0] == 1;
  }
}

void ZmqTransport::Loop::expire(int64_t now_us) {
  for (auto& [key, d] : dests_) {
    const bool any_late =
        std::any_of(d->waiting.begin(), d->waiting.end(),
                    [now_us](const Waiting& w) { return w.deadline_us <= now_us; });
    if (!any_late) continue;
    std::deque<Waiting> keep;
    std::vector<Waiting> late;
    for (Waiting& w : d->waiting) {
      if (w.deadline_us <= now_us) {
        late.push_back(std::move(w));
      } else {
        keep.push_back(std::move(w));
      }
    }
    d->waiting.swap(keep);
    const std::string reason = not_ready_reason(*d);
    log_failure("attempt failed", reason);
    for (Waiting& w : late) complete(w.done, result(Outcome::kRetryable, reason));
  }
}

void ZmqTransport::Loop::reopen_dead(int64_t now_us) {
  std::vector<std::string> dead;
  for (const auto& [key, d] : dests_) {
    // Only for an attempt: a dead endpoint nobody sends to costs nothing until it is evicted.
    if (d->dead_since_us != 0 && !d->waiting.empty() &&
        now_us - d->dead_since_us >= kReopenAfterUs) {
      dead.push_back(key);
    }
  }
  for (const std::string& key : dead) {
    auto it = dests_.find(key);
    std::unique_ptr<Dest> old = std::move(it->second);
    dests_.erase(it);
    close(*old);
    log_failure("connection ended without a reconnect, opening a new socket", old->key);
    std::string error;
    Dest* d = open(old->kind, old->endpoint, old->key, &error);
    if (d == nullptr) {
      log_failure("cannot open a socket", error);
      for (Waiting& w : old->waiting) complete(w.done, result(Outcome::kRetryable, error));
      continue;
    }
    d->last_used = old->last_used;
    d->waiting = std::move(old->waiting);
    flush(*d);
  }
}

int ZmqTransport::Loop::poll_timeout_ms(int64_t now_us) const {
  int64_t next = now_us + kMaxPollMs * 1000;
  for (const auto& [key, d] : dests_) {
    for (const Waiting& w : d->waiting) next = std::min(next, w.deadline_us);
    if (d->dead_since_us != 0 && !d->waiting.empty()) {
      next = std::min(next, d->dead_since_us + kReopenAfterUs);
    }
  }
  // Rounded up: waking before the deadline would only poll again.
  return static_cast<int>(std::max<int64_t>(0, (next - now_us + 999) / 1000));
}

void ZmqTransport::Loop::poll_once() {
  std::vector<zmq_pollitem_t> items;
  std::vector<Dest*> owners;  // owners[i] for items[i + 1]
  items.reserve(1 + dests_.size() * 2);
  owners.reserve(dests_.size() * 2);
  items.push_back(zmq_pollitem_t{nullptr, wake_fd_, ZMQ_POLLIN, 0});
  for (auto& [key, d] : dests_) {
    items.push_back(zmq_pollitem_t{d->monitor.handle(), 0, ZMQ_POLLIN, 0});
    owners.push_back(d.get());
    if (d->kind == Kind::kPub) {
      items.push_back(zmq_pollitem_t{d->sock.handle(), 0, ZMQ_POLLIN, 0});  // subscriptions
      owners.push_back(d.get());
    } else if (!d->waiting.empty()) {
      // POLLOUT only while something waits: an idle writable socket would wake us forever.
      items.push_back(zmq_pollitem_t{d->sock.handle(), 0, ZMQ_POLLOUT, 0});
      owners.push_back(d.get());
    }
  }
  const int rc =
      zmq_poll(items.data(), static_cast<int>(items.size()), poll_timeout_ms(monotonic_us()));
  if (rc < 0) {
    if (zmq_errno() != EINTR) {
      log_failure("zmq_poll failed", zmq_strerror(zmq_errno()));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // do not spin on a bad poll
    }
    return;
  }
  if (items[0].revents & ZMQ_POLLIN) {
    uint64_t count = 0;
    [[maybe_unused]] ssize_t n = ::read(wake_fd_, &count, sizeof(count));
  }
  for (size_t i = 1; i < items.size(); ++i) {
    if (items[i].revents == 0) continue;
    Dest& d = *owners[i - 1];
    if (items[i].socket == d.monitor.handle()) {
      read_monitor(d);
    } else if (d.kind == Kind::kPub) {
      read_subscriptions(d);
    }
    flush(d);
  }
}

void ZmqTransport::Loop::complete(DeliveryDone& done, DeliveryResult r) {
  {
    std::lock_guard lock(mu_);
    --outstanding_;
  }
  call_done("zmq", done, std::move(r));
}

void ZmqTransport::Loop::shutdown(std::deque<Queued> queued) {
  std::vector<DeliveryDone> aborted;
  for (Queued& q : queued) aborted.push_back(std::move(q.done));
  for (auto& [key, d] : dests_) {
    for (Waiting& w : d->waiting) aborted.push_back(std::move(w.done));
    d->waiting.clear();
    close(*d);
  }
  dests_.clear();
  if (!aborted.empty())
    log::debug("zmq transport: stopping, {} deliveries aborted", aborted.size());
  for (DeliveryDone& done : aborted) complete(done, result(Outcome::kAborted, "transport stopped"));
  if (ctx_) {
    try {
      ctx_->close();  // returns once every socket's linger has run out
    } catch (const zmq::error_t& e) {
      log::warn("zmq transport: terminating the context: {}", e.what());
    }
    ctx_.reset();
  }
}

void ZmqTransport::Loop::log_failure(std::string_view what, std::string_view detail) {
  if (uint64_t dropped = 0; failure_log_.allow(&dropped)) {
    log::warn("zmq transport: {}: {}{}", what, detail, log::Limiter::note(dropped));
  }
}

ZmqTransport::ZmqTransport(ZmqTransportOptions options) : loop_(std::make_unique<Loop>(options)) {}

ZmqTransport::~ZmqTransport() {
  stop();
}

Result<void> ZmqTransport::validate(std::string_view method, std::string_view uri) const {
  if (!parse_method(method)) {
    return fail(Errc::kInvalidArgument, "callback.method must be push or pub");
  }
  if (!parse_endpoint(uri)) {
    return fail(Errc::kInvalidArgument,
                "callback.uri must be a zmq endpoint to connect to: tcp://host:port or ipc://path");
  }
  return {};
}

std::string ZmqTransport::destination(std::string_view uri) const {
  std::optional<Endpoint> e = parse_endpoint(uri);
  return e ? e->text : std::string(uri);
}

void ZmqTransport::deliver(DeliveryJob job, DeliveryDone done) {
  std::optional<Kind> kind = parse_method(job.method);
  std::optional<Endpoint> endpoint = parse_endpoint(job.uri);
  if (!kind || !endpoint) {
    // validate() refused these at the API; a stored timer from elsewhere can still carry one.
    return call_done("zmq", done,
                     result(Outcome::kPermanent, !kind ? "callback.method must be push or pub"
                                                       : "callback.uri is not a zmq endpoint"));
  }
  loop_->deliver(std::move(job), *kind, std::move(*endpoint), std::move(done));
}

void ZmqTransport::stop() {
  loop_->stop();
}

}  // namespace skyring
