// The only file of the tcp transport that sees Asio (tcp_transport.h explains the design).
#include "delivery/tcp_transport.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio.hpp>

#include "base/ascii.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/thread.h"

namespace skyring {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

constexpr std::string_view kScheme = "tcp://";
constexpr size_t kMaxHostLength = 253;
// How often destinations without connections, waiting jobs or a live backoff are forgotten.
constexpr auto kSweepPeriod = std::chrono::seconds(1);

struct TcpUri {
  std::string host;  // lower case; an IPv6 literal keeps its brackets
  uint16_t port = 0;
  std::optional<asio::ip::address> address;  // set when host is an IP literal
};

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
}

// tcp://host:port and nothing else. Hand-written: there is no path, query or user info to
// parse, only to refuse.
std::optional<TcpUri> parse_tcp_uri(std::string_view text) {
  if (text.size() <= kScheme.size()) return std::nullopt;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (ascii_lower(text[i]) != kScheme[i]) return std::nullopt;
  }
  std::string_view rest = text.substr(kScheme.size());
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  std::string_view port = rest.substr(colon + 1);
  std::optional<uint16_t> n = parse_port(port);
  if (!n) return std::nullopt;
  TcpUri out;
  out.port = *n;
  for (char c : rest.substr(0, colon)) out.host += ascii_lower(c);
  error_code ec;
  if (out.host.front() == '[') {
    if (out.host.size() < 3 || out.host.back() != ']') return std::nullopt;
    auto v6 = asio::ip::make_address_v6(out.host.substr(1, out.host.size() - 2), ec);
    if (ec) return std::nullopt;
    out.address = v6;
    return out;
  }
  if (out.host.size() > kMaxHostLength) return std::nullopt;
  bool digits_and_dots = true;
  for (char c : out.host) {
    if (!name_char(c)) return std::nullopt;  // '/', '@', '?', '#', ':', space, ...
    digits_and_dots = digits_and_dots && ((c >= '0' && c <= '9') || c == '.');
  }
  if (digits_and_dots) {
    // Never a name: it is an IPv4 address or nothing ("999.1.1.1", "1.2.3").
    auto v4 = asio::ip::make_address_v4(out.host, ec);
    if (ec) return std::nullopt;
    out.address = v4;
    return out;
  }
  if (out.host.front() == '.' || out.host.front() == '-' ||
      out.host.find("..") != std::string::npos)
    return std::nullopt;
  return out;
}

DeliveryResult failure(Outcome outcome, std::string detail) {
  DeliveryResult r;
  r.outcome = outcome;
  r.detail = std::move(detail);
  return r;
}

DeliveryResult aborted() {
  return failure(Outcome::kAborted, "transport stopped");
}

}  // namespace

class TcpTransport::Impl {
 public:
  explicit Impl(TcpTransportOptions options)
      : options_(options), work_(asio::make_work_guard(io_)), sweep_timer_(io_) {
    SKYRING_ASSERT(
        options_.max_connections_per_destination > 0 && options_.max_connections_total > 0,
        "tcp transport: connection limits must be positive");
    schedule_sweep();
    try {
      thread_ = std::thread([this] {
        set_up_this_thread("sky-tcp");
        run();
      });
    } catch (...) {
      SKYRING_ASSERT(false, "cannot start the tcp transport thread");
    }
    thread_id_ = thread_.get_id();
  }

  ~Impl() {
    SKYRING_ASSERT(std::this_thread::get_id() != thread_id_,
                   "TcpTransport destroyed from its own delivery callback");
    stop();
  }

  void deliver(DeliveryJob job, DeliveryDone done) {
    SKYRING_ASSERT(static_cast<bool>(done), "deliver() needs a callback");
    std::optional<TcpUri> uri = parse_tcp_uri(job.uri);
    if (!uri) {
      return call_done("tcp", done,
                       failure(Outcome::kPermanent, "callback.uri is not tcp://host:port"));
    }
    Job j;
    if (job.data_kind != DataKind::kNone) j.wire = std::move(job.data);
    j.wire.push_back('\n');
    j.timeout_ms = job.timeout_ms > 0 ? job.timeout_ms : options_.default_timeout_ms;
    j.uri = std::move(*uri);
    j.done = std::move(done);
    DeliveryResult rejected;
    {
      std::lock_guard lock(mu_);
      if (stopping_) {
        rejected = aborted();
      } else if (outstanding_ >= options_.max_queue) {
        rejected = failure(Outcome::kRetryable, "delivery queue full");
      } else {
        ++outstanding_;
        // Posted under the lock: stop() posts its abort after setting stopping_, so every job
        // accepted here reaches the loop before the abort does.
        asio::post(io_, [this, j = std::move(j)]() mutable { dispatch(std::move(j)); });
        return;
      }
    }
    call_done("tcp", j.done, std::move(rejected));
  }

  void stop() {
    {
      std::lock_guard lock(mu_);
      if (!stopping_) {
        stopping_ = true;
        asio::post(io_, [this] { abort_everything(); });
      }
    }
    if (std::this_thread::get_id() == thread_id_) return;  // joined by a later stop()
    std::lock_guard lock(join_mu_);
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Job {
    TcpUri uri;
    std::string wire;  // payload + '\n'
    int64_t timeout_ms = 0;
    int64_t deadline_us = 0;  // set on arrival at the loop
    DeliveryDone done;
  };
  struct Dest;
  enum class ConnState { kConnecting, kBusy, kIdle, kClosed };
  struct Conn {
    Conn(asio::io_context& io, Dest* d) : socket(io), resolver(io), timer(io), dest(d) {}
    tcp::socket socket;
    tcp::resolver resolver;
    asio::steady_timer timer;  // connect/attempt deadline while busy, idle timeout while idle
    uint64_t arm_id = 0;       // which arming of `timer` is current
    Dest* dest;
    ConnState state = ConnState::kConnecting;
    bool peer_gone = false;  // the liveness read returned: never reuse
    bool has_job = false;    // `job` not completed yet
    Job job;
    std::array<char, 64> read_buf{};
  };
  struct Dest {
    std::string key;  // "host:port"
    std::deque<Job> waiting;
    std::vector<std::shared_ptr<Conn>> idle;
    size_t conns = 0;
    int64_t backoff_ms = 0;  // current window; 0: the last connect succeeded (or none failed)
    int64_t backoff_until_us = 0;
    std::string last_connect_error;
  };

  void run() {
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        // Handlers do not throw by design; a bad_alloc must not end delivery for good.
        log::error("tcp transport: loop handler threw: {}", e.what());
      }
    }
  }

  // Loop thread only, from here on.

  void dispatch(Job job) {
    if (stopped_) return complete(job, aborted());
    job.deadline_us = monotonic_us() + job.timeout_ms * 1000;
    Dest& d = dest_for(job.uri);
    d.waiting.push_back(std::move(job));
    serve_waiting(d);
  }

  Dest& dest_for(const TcpUri& u) {
    std::string key = u.host;
    key += ':';
    key += std::to_string(u.port);
    auto it = dests_.find(key);
    if (it != dests_.end()) return *it->second;
    auto d = std::make_unique<Dest>();
    d->key = key;
    return *dests_.emplace(std::move(key), std::move(d)).first->second;
  }

  // Starts the waiting jobs of `d` that can start: on an idle connection, or on a new one below
  // the limits. Jobs past their deadline, and jobs that need a new connection during a reconnect
  // backoff, are answered on the way. FIFO: a job that must wait keeps the ones behind it.
  void serve_waiting(Dest& d) {
    while (!d.waiting.empty()) {
      const int64_t now = monotonic_us();
      std::optional<DeliveryResult> fail_now;
      std::shared_ptr<Conn> c;
      if (now >= d.waiting.front().deadline_us) {
        fail_now = failure(Outcome::kRetryable, "timed out waiting for a connection");
      } else {
        c = take_idle(d);
      }
      if (!fail_now && !c) {
        if (now < d.backoff_until_us) {
          fail_now =
              failure(Outcome::kRetryable,
                      fmt::format("{}; backing off, no new connection for {} ms",
                                  d.last_connect_error, (d.backoff_until_us - now + 999) / 1000));
        } else if (d.conns >= options_.max_connections_per_destination) {
          return;  // a connection of d serves it when its current write ends
        } else if (!make_room()) {
          starved_ = true;  // waits for room under max_connections_total
          return;
        } else {
          c = open(d);
        }
      }
      Job job = std::move(d.waiting.front());
      d.waiting.pop_front();
      if (fail_now) {
        complete(job, std::move(*fail_now));
      } else {
        start(std::move(c), std::move(job));
      }
    }
  }

  // An idle connection of `d` that still looks alive; dead ones found on the way are closed.
  std::shared_ptr<Conn> take_idle(Dest& d) {
    while (!d.idle.empty()) {
      std::shared_ptr<Conn> c = std::move(d.idle.back());
      d.idle.pop_back();
      if (!c->peer_gone && alive(*c)) return c;
      release(*c);
    }
    return nullptr;
  }

  // The liveness read may not have run yet for a FIN or reset that already arrived: peek.
  static bool alive(Conn& c) {
    if (!c.socket.is_open()) return false;
    char byte = 0;
    ssize_t n = ::recv(c.socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  // Below the total limit, or an idle connection of some destination closed to get there.
  bool make_room() {
    if (total_ < options_.max_connections_total) return true;
    for (auto& [key, d] : dests_) {
      if (d->idle.empty()) continue;
      std::shared_ptr<Conn> c = std::move(d->idle.back());
      d->idle.pop_back();
      release(*c);
      return true;
    }
    return false;
  }

  std::shared_ptr<Conn> open(Dest& d) {
    auto c = std::make_shared<Conn>(io_, &d);
    ++d.conns;
    ++total_;
    all_.emplace(c.get(), c);
    return c;
  }

  // Bookkeeping of a connection that is done for; its pending operations complete with
  // operation_aborted and find it closed. Callers serve waiting jobs afterwards (after_close).
  void release(Conn& c) {
    if (c.state == ConnState::kClosed) return;
    c.state = ConnState::kClosed;
    shut(c);
    --c.dest->conns;
    --total_;
    all_.erase(&c);  // may drop the last owner: `c` is not used by the caller after this
  }

  static void shut(Conn& c) {
    error_code ec;
    c.socket.close(ec);
    c.resolver.cancel();
    c.timer.cancel();
  }

  // A connection of `d` closed: its waiting jobs may open a new one, and so may the jobs of
  // destinations that waited for room under max_connections_total.
  void after_close(Dest& d) {
    if (stopped_) return;
    serve_waiting(d);
    if (starved_) wake_starved();
  }

  void wake_starved() {
    starved_ = false;
    for (auto& [key, d] : dests_) {
      if (d->waiting.empty()) continue;
      serve_waiting(*d);
      if (starved_) return;  // no room left for anyone
    }
  }

  void arm(const std::shared_ptr<Conn>& c, int64_t at_us) {
    const uint64_t id = ++c->arm_id;
    const int64_t delay_us = std::max<int64_t>(at_us - monotonic_us(), 0);
    c->timer.expires_after(std::chrono::microseconds(delay_us));
    c->timer.async_wait([this, c, id](const error_code& ec) {
      if (ec || id != c->arm_id || c->state == ConnState::kClosed) return;
      on_timer(c);
    });
  }

  void on_timer(const std::shared_ptr<Conn>& c) {
    if (c->state == ConnState::kIdle) {
      auto& idle = c->dest->idle;
      idle.erase(std::remove(idle.begin(), idle.end(), c), idle.end());
      Dest& d = *c->dest;
      release(*c);
      return after_close(d);
    }
    // The attempt's time is up. Answer now rather than when the pending operation returns: a
    // hanging name lookup returns only when getaddrinfo does. Its handler releases the slot.
    const bool connecting = c->state == ConnState::kConnecting;
    if (connecting) note_connect_failure(*c->dest, "connect timed out");
    finish(*c, failure(Outcome::kRetryable,
                       connecting ? fmt::format("connect to {} timed out", c->dest->key)
                                  : fmt::format("write to {} timed out (the peer is not reading)",
                                                c->dest->key)));
    shut(*c);
  }

  void start(std::shared_ptr<Conn> c, Job job) {
    c->job = std::move(job);
    c->has_job = true;
    if (c->state == ConnState::kIdle) {
      c->state = ConnState::kBusy;
      arm(c, c->job.deadline_us);
      return write(std::move(c));
    }
    c->state = ConnState::kConnecting;
    arm(c, std::min(c->job.deadline_us, monotonic_us() + options_.connect_timeout_ms * 1000));
    if (c->job.uri.address) {
      tcp::endpoint ep(*c->job.uri.address, c->job.uri.port);
      c->socket.async_connect(ep, [this, c](const error_code& ec) { on_connect(c, ec); });
      return;
    }
    c->resolver.async_resolve(
        c->job.uri.host, std::to_string(c->job.uri.port),
        [this, c](const error_code& ec, tcp::resolver::results_type results) {
          if (ec || c->state == ConnState::kClosed || !c->has_job || stopped_) {
            return on_connect(c, ec ? ec : asio::error::operation_aborted, true);
          }
          asio::async_connect(
              c->socket, results,
              [this, c](const error_code& cec, const tcp::endpoint&) { on_connect(c, cec); });
        });
  }

  void on_connect(const std::shared_ptr<Conn>& c, error_code ec, bool resolving = false) {
    Dest& d = *c->dest;
    if (ec || !c->has_job || stopped_ || c->state == ConnState::kClosed) {
      if (stopped_) {
        finish(*c, aborted());
      } else if (c->has_job) {  // a real failure, not our own timeout or abort
        const std::string what = resolving
                                     ? fmt::format("cannot resolve {}: {}", d.key, ec.message())
                                     : fmt::format("connect to {} failed: {}", d.key, ec.message());
        note_connect_failure(d, what);
        finish(*c, failure(Outcome::kRetryable, what));
      }
      release(*c);
      return after_close(d);
    }
    d.backoff_ms = 0;
    d.backoff_until_us = 0;
    error_code oec;
    c->socket.set_option(tcp::no_delay(true), oec);
    if (options_.keepalive) set_keepalive(c->socket);
    c->state = ConnState::kBusy;
    watch(c);
    arm(c, c->job.deadline_us);
    write(c);
  }

  void set_keepalive(tcp::socket& s) {
    error_code ec;
    s.set_option(asio::socket_base::keep_alive(true), ec);
    const int fd = s.native_handle();
    int v = options_.keepalive_idle_s;
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, sizeof(v));
    v = options_.keepalive_interval_s;
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &v, sizeof(v));
    v = options_.keepalive_count;
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &v, sizeof(v));
  }

  // The liveness read, pending for the connection's whole life: nothing is expected from the
  // peer, so whatever completes it (EOF, reset, data) retires the connection.
  void watch(const std::shared_ptr<Conn>& c) {
    c->socket.async_read_some(asio::buffer(c->read_buf), [this, c](const error_code&, size_t) {
      if (c->state == ConnState::kClosed) return;
      c->peer_gone = true;
      if (c->state != ConnState::kIdle) return;  // the current write decides; never reused
      auto& idle = c->dest->idle;
      idle.erase(std::remove(idle.begin(), idle.end(), c), idle.end());
      Dest& d = *c->dest;
      release(*c);
      after_close(d);
    });
  }

  void write(std::shared_ptr<Conn> c) {
    asio::async_write(c->socket, asio::buffer(c->job.wire),
                      [this, c](const error_code& ec, size_t) { on_written(c, ec); });
  }

  void on_written(const std::shared_ptr<Conn>& c, const error_code& ec) {
    Dest& d = *c->dest;
    if (ec || !c->has_job || stopped_ || c->state == ConnState::kClosed) {
      if (stopped_) {
        finish(*c, aborted());
      } else {
        finish(*c, failure(Outcome::kRetryable,
                           fmt::format("write to {} failed: {}", d.key, ec.message())));
      }
      release(*c);
      return after_close(d);
    }
    finish(*c, DeliveryResult{Outcome::kSuccess, 0, {}});
    if (stopped_ || c->state == ConnState::kClosed) return;  // the callback called stop()
    if (c->peer_gone) {
      release(*c);
      return after_close(d);
    }
    // Next waiting job of this destination on this connection, else idle (or give the slot to
    // a destination waiting for room).
    c->state = ConnState::kIdle;
    ++c->arm_id;  // the attempt deadline no longer applies
    d.idle.push_back(c);
    serve_waiting(d);
    if (c->state != ConnState::kIdle) return;  // taken by a waiting job
    if (starved_) {
      d.idle.erase(std::remove(d.idle.begin(), d.idle.end(), c), d.idle.end());
      release(*c);
      return wake_starved();
    }
    arm(c, monotonic_us() + options_.idle_timeout_ms * 1000);
  }

  void note_connect_failure(Dest& d, std::string what) {
    d.backoff_ms = d.backoff_ms == 0
                       ? options_.reconnect_backoff_min_ms
                       : std::min(d.backoff_ms * 2, options_.reconnect_backoff_max_ms);
    d.backoff_until_us = monotonic_us() + d.backoff_ms * 1000;
    uint64_t dropped = 0;
    if (connect_log_.allow(&dropped)) {
      log::warn("tcp transport: {}; backing off {} ms{}", what, d.backoff_ms,
                log::Limiter::note(dropped));
    }
    d.last_connect_error = std::move(what);
  }

  // Answers the connection's job unless that already happened (timeout, abort).
  void finish(Conn& c, DeliveryResult result) {
    if (!c.has_job) return;
    c.has_job = false;
    complete(c.job, std::move(result));
  }

  void complete(Job& job, DeliveryResult result) {
    {
      std::lock_guard lock(mu_);
      --outstanding_;
    }
    DeliveryDone done = std::move(job.done);
    job.wire = std::string();  // a pooled connection does not keep a large payload alive
    call_done("tcp", done, std::move(result));
  }

  // Destinations are erased only here, never while a handler may hold one: a Dest with
  // connections or waiting jobs stays, and so does one whose backoff may still double.
  void schedule_sweep() {
    sweep_timer_.expires_after(kSweepPeriod);
    sweep_timer_.async_wait([this](const error_code& ec) {
      if (ec || stopped_) return;
      const int64_t now = monotonic_us();
      const int64_t keep_us = options_.reconnect_backoff_max_ms * 1000;
      for (auto it = dests_.begin(); it != dests_.end();) {
        const Dest& d = *it->second;
        if (d.conns == 0 && d.waiting.empty() && now > d.backoff_until_us + keep_us) {
          it = dests_.erase(it);
        } else {
          ++it;
        }
      }
      schedule_sweep();
    });
  }

  void abort_everything() {
    stopped_ = true;
    sweep_timer_.cancel();
    size_t count = 0;
    for (auto& [key, d] : dests_) {
      std::deque<Job> waiting = std::move(d->waiting);
      d->waiting.clear();
      count += waiting.size();
      for (Job& j : waiting) complete(j, aborted());
      std::vector<std::shared_ptr<Conn>> idle = std::move(d->idle);
      d->idle.clear();
      for (auto& c : idle) release(*c);
    }
    // Busy and connecting: answered now; their handlers then find the socket closed and
    // release the connection.
    std::vector<std::shared_ptr<Conn>> busy;
    for (auto& [ptr, c] : all_) busy.push_back(c);
    for (auto& c : busy) {
      if (c->has_job) ++count;
      finish(*c, aborted());
      shut(*c);
    }
    if (count > 0) log::debug("tcp transport: stopping, {} deliveries aborted", count);
    work_.reset();  // io_.run() returns once the last handler has run
  }

  const TcpTransportOptions options_;
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_;

  std::mutex mu_;
  size_t outstanding_ = 0;  // guarded by mu_
  bool stopping_ = false;   // guarded by mu_

  std::mutex join_mu_;
  std::thread thread_;
  std::thread::id thread_id_;

  // Loop thread only.
  asio::steady_timer sweep_timer_;
  std::unordered_map<std::string, std::unique_ptr<Dest>> dests_;
  std::unordered_map<Conn*, std::shared_ptr<Conn>> all_;  // every counted connection
  size_t total_ = 0;
  bool stopped_ = false;
  bool starved_ = false;  // a job waits for room under max_connections_total
  log::Limiter connect_log_;
};

TcpTransport::TcpTransport(TcpTransportOptions options) : impl_(std::make_unique<Impl>(options)) {}

TcpTransport::~TcpTransport() = default;

Result<void> TcpTransport::validate(std::string_view method, std::string_view uri) const {
  if (method.empty()) {
    return fail(Errc::kInvalidArgument,
                "callback.method must be a non-empty string (tcp ignores its value)");
  }
  if (!parse_tcp_uri(uri)) {
    return fail(Errc::kInvalidArgument,
                "callback.uri must be tcp://host:port (host: an IP address or a name, port "
                "1-65535; no path, query or user info)");
  }
  return {};
}

std::string TcpTransport::destination(std::string_view uri) const {
  std::optional<TcpUri> u = parse_tcp_uri(uri);
  if (!u) return std::string(uri);
  return fmt::format("tcp://{}:{}", u->host, u->port);
}

void TcpTransport::deliver(DeliveryJob job, DeliveryDone done) {
  impl_->deliver(std::move(job), std::move(done));
}

void TcpTransport::stop() {
  impl_->stop();
}

}  // namespace skyring
