#include "delivery/plain_http_client.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <sys/socket.h>

#include <cerrno>
#include <exception>

#include <boost/asio.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "base/clock.h"
#include "base/log.h"
#include "base/result.h"
#include "base/thread.h"

namespace skyring {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

constexpr size_t kMaxHeaderBytes = 64 * 1024;  // of one answer's head
// Read buffer of a connection: the head, one chunk-size line or trailer, and a read's worth of
// body. Beast needs these whole in the buffer; a server that never ends one gets kReceive
// instead of growing it.
constexpr size_t kMaxBufferBytes = kMaxHeaderBytes + 64 * 1024;
constexpr int kMaxInformational = 8;  // 1xx answers skipped before the real one

// Reads an answer's body and keeps nothing of it.
struct DiscardBody {
  struct value_type {};
  struct reader {
    template <bool isRequest, class Fields>
    reader(http::header<isRequest, Fields>&, value_type&) {}
    void init(const boost::optional<std::uint64_t>&, beast::error_code& ec) { ec = {}; }
    template <class ConstBufferSequence>
    std::size_t put(const ConstBufferSequence& buffers, beast::error_code& ec) {
      ec = {};
      return asio::buffer_size(buffers);
    }
    void finish(beast::error_code& ec) { ec = {}; }
  };
};

PlainReply failed(std::string error) {
  return PlainReply{PlainReply::Kind::kFailed, 0, std::move(error)};
}

PlainReply aborted() {
  return PlainReply{PlainReply::Kind::kAborted, 0, "transport stopped"};
}

// The texts curl gives for the same failures, so last_error reads the same for every URI.
constexpr const char* kTimeout = "Timeout was reached";
constexpr const char* kConnect = "Couldn't connect to server";
constexpr const char* kNotLiteral = "host is not an IP address";
constexpr const char* kSend = "Failure when sending data to the peer";
constexpr const char* kNothing = "Server returned nothing (no headers, no data)";
constexpr const char* kReceive = "Failure when receiving data from the peer";

}  // namespace

class PlainHttpClient::Impl {
 public:
  explicit Impl(PlainHttpOptions options) : options_(options), work_(asio::make_work_guard(io_)) {
    thread_ = std::thread([this] {
      set_up_this_thread("sky-http-ip");
      io_.run();
    });
    thread_id_ = thread_.get_id();
  }

  ~Impl() {
    SKYRING_ASSERT(std::this_thread::get_id() != thread_id_,
                   "PlainHttpClient destroyed from its own callback");
    stop();
  }

  void send(PlainRequest request, PlainDone done) {
    SKYRING_ASSERT(static_cast<bool>(done), "send() needs a callback");
    PlainReply rejected;
    {
      std::lock_guard lock(mu_);
      if (stopping_) {
        rejected = aborted();
      } else if (outstanding_ >= options_.max_queue) {
        rejected = PlainReply{PlainReply::Kind::kRefused, 0, "delivery queue full"};
      } else {
        ++outstanding_;
        // Posted under the lock: stop() posts its abort after setting stopping_, so every job
        // accepted here reaches the loop before the loop can finish.
        asio::post(io_, [this, job = Job{std::move(request), std::move(done), 0}]() mutable {
          dispatch(std::move(job));
        });
        return;
      }
    }
    done(std::move(rejected));
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
    PlainRequest req;
    PlainDone done;
    int64_t deadline_us = 0;  // set on arrival: waiting for a connection counts
  };
  struct Host;
  struct Conn {
    explicit Conn(asio::io_context& io, Host* h)
        : stream(io), buffer(kMaxBufferBytes), idle_timer(io), host(h) {}
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    asio::steady_timer idle_timer;
    Host* host;
    bool connected = false;
  };
  struct Host {
    std::string key;   // "host:port", its key in hosts_
    std::string name;  // without IPv6 brackets
    uint16_t port = 0;
    asio::ip::address address;
    bool valid = false;  // `name` is an IP address
    std::deque<Job> waiting;
    std::vector<std::shared_ptr<Conn>> idle;
    size_t conns = 0;
  };

  // Loop thread only, from here on.

  void dispatch(Job job) {
    if (stopped_) return complete(job, aborted());
    // The timeout counts from here: time spent waiting for a connection is part of it.
    job.deadline_us = monotonic_us() + std::max<int64_t>(job.req.timeout_ms, 1) * 1000;
    Host& h = host_for(job.req.host, job.req.port);
    if (!h.valid) {
      complete(job, failed(kNotLiteral));
      return forget_if_unused(h);
    }
    while (!h.idle.empty()) {
      std::shared_ptr<Conn> c = std::move(h.idle.back());
      h.idle.pop_back();
      c->idle_timer.cancel();
      if (reusable(*c)) return run(std::move(c), std::move(job));
      close(*c);  // the server closed it, or sent something unasked for
    }
    if (h.conns < options_.max_connections_per_host) {
      if (make_room()) return run(open(h), std::move(job));
      starved_ = true;  // waits for room under max_connections_total
    }
    h.waiting.push_back(std::move(job));
  }

  Host& host_for(const std::string& host, uint16_t port) {
    std::string key = host;
    key += ':';
    key += std::to_string(port);
    auto it = hosts_.find(key);
    if (it != hosts_.end()) return *it->second;
    auto h = std::make_unique<Host>();
    h->key = key;
    h->name = host.size() >= 2 && host.front() == '[' && host.back() == ']'
                  ? host.substr(1, host.size() - 2)
                  : host;
    h->port = port;
    beast::error_code ec;
    h->address = asio::ip::make_address(h->name, ec);
    h->valid = !ec;
    return *hosts_.emplace(std::move(key), std::move(h)).first->second;
  }

  // Below the total limit, or an idle connection of some destination closed to get there.
  bool make_room() {
    if (total_ < options_.max_connections_total) return true;
    for (auto& [key, h] : hosts_) {
      if (h->idle.empty()) continue;
      std::shared_ptr<Conn> c = std::move(h->idle.back());
      h->idle.pop_back();
      close(*c);
      // Erasing ends this loop; a caller iterating hosts_ itself is at a host with waiting
      // requests, which has no idle connection and so is never the one erased here.
      forget_if_unused(*h);
      return true;
    }
    return false;
  }

  std::shared_ptr<Conn> open(Host& h) {
    auto c = std::make_shared<Conn>(io_, &h);
    ++h.conns;
    ++total_;
    all_.emplace(c.get(), c);
    return c;
  }

  void close(Conn& c) {
    beast::error_code ec;
    c.stream.socket().close(ec);
    c.idle_timer.cancel();
    c.connected = false;
    --c.host->conns;
    --total_;
    all_.erase(&c);  // may drop the last reference: `c` is not used after this
  }

  // A Host is kept while it has connections or waiting requests, so hosts_ does not grow
  // with every destination ever seen. Call only where no reference to `h` is used afterwards.
  void forget_if_unused(Host& h) {
    if (h.conns != 0 || !h.waiting.empty() || !h.idle.empty()) return;
    const std::string key = h.key;  // erase() must not be handed the dying element's own key
    hosts_.erase(key);
  }

  // An idle connection may have died, or received bytes nobody asked for (an answer after
  // the one we read, a "408" before the server closed it): check before sending on it.
  static bool reusable(Conn& c) {
    if (c.buffer.size() != 0 || !c.stream.socket().is_open()) return false;
    char byte = 0;
    ssize_t n = ::recv(c.stream.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  // The next waiting request of `h` whose deadline has not passed; expired ones are answered
  // with a timeout on the way.
  bool pop_waiting(Host& h, Job& out) {
    while (!h.waiting.empty()) {
      Job j = std::move(h.waiting.front());
      h.waiting.pop_front();
      if (monotonic_us() < j.deadline_us) {
        out = std::move(j);
        return true;
      }
      complete(j, failed(kTimeout));
    }
    return false;
  }

  void run(std::shared_ptr<Conn> c, Job job) {
    asio::co_spawn(io_, exchange(std::move(c), std::move(job)), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::error("http client: exchange threw: {}", ex.what());
      } catch (...) {
      }
      SKYRING_ASSERT(false, "an HTTP exchange threw (its request would never be answered)");
    });
  }

  asio::awaitable<void> exchange(std::shared_ptr<Conn> c, Job job) {
    bool keep = false;
    PlainReply reply;
    for (int attempt = 0;; ++attempt) {
      const bool reused = c->connected;
      bool got_bytes = false;
      bool timed_out = false;
      reply = co_await exchange_once(*c, job, keep, got_bytes, timed_out);
      if (reply.kind == PlainReply::Kind::kFailed && reused && !got_bytes && !timed_out &&
          attempt == 0 && !stopped_ && monotonic_us() < job.deadline_us) {
        continue;  // the idle connection had died: once more on a fresh one
      }
      break;
    }
    if (stopped_) reply = aborted();
    Host& h = *c->host;
    complete(job, std::move(reply));
    if (stopped_) co_return;  // abort_everything closes what is left
    // forget_if_unused(h) comes before wake_starved(): the latter may close h's last idle
    // connection to make room, and erase h with it.
    if (!keep) {
      close(*c);
      next_for(h);
      forget_if_unused(h);
      if (starved_) wake_starved();
      co_return;
    }
    Job next;
    if (pop_waiting(h, next)) {
      run(std::move(c), std::move(next));
      co_return;
    }
    if (starved_) {
      // Another destination waits for a connection slot: give it this one.
      close(*c);
      forget_if_unused(h);
      wake_starved();
      co_return;
    }
    park(std::move(c));
  }

  // One request and its answer on `c`, connecting first when needed. On failure `c` is left
  // closed (not connected); `keep` says whether the answer allows another request on it.
  asio::awaitable<PlainReply> exchange_once(Conn& c, Job& job, bool& keep, bool& got_bytes,
                                            bool& timed_out) {
    keep = false;
    // An exchange spawned just before stop() may start after abort_everything() closed the
    // sockets: it must not open a new one (stop() would wait for its whole timeout).
    if (stopped_) co_return aborted();
    beast::tcp_stream& s = c.stream;
    auto remaining = [&] {
      return std::chrono::microseconds(std::max<int64_t>(job.deadline_us - monotonic_us(), 0));
    };
    if (!c.connected) {
      beast::error_code ec;
      c.buffer.clear();
      s.socket().close(ec);
      s.expires_after(std::min<std::chrono::microseconds>(
          remaining(), std::chrono::milliseconds(options_.connect_timeout_ms)));
      auto [cec] = co_await s.async_connect(tcp::endpoint(c.host->address, c.host->port), kTuple);
      if (cec) {
        s.socket().close(ec);
        timed_out = cec == beast::error::timeout;
        co_return failed(timed_out ? kTimeout : kConnect);
      }
      s.socket().set_option(tcp::no_delay(true), ec);
      c.connected = true;
      if (stopped_) co_return aborted();  // connected while stop() closed the others
    }
    s.expires_after(remaining());
    auto [wec, written] = co_await asio::async_write(s, asio::buffer(job.req.wire), kTuple);
    if (wec) {
      c.connected = false;
      timed_out = wec == beast::error::timeout;
      co_return failed(timed_out ? kTimeout : kSend);
    }
    for (int informational = 0;; ++informational) {
      http::response_parser<DiscardBody> parser;
      parser.header_limit(kMaxHeaderBytes);
      parser.body_limit(
          std::numeric_limits<std::uint64_t>::max());  // discarded; the deadline bounds it
      if (job.req.head) parser.skip(true);
      auto [rec, read] = co_await http::async_read(s, c.buffer, parser, kTuple);
      got_bytes = got_bytes || parser.got_some();
      if (rec) {
        c.connected = false;
        timed_out = rec == beast::error::timeout;
        if (timed_out) co_return failed(kTimeout);
        co_return failed(got_bytes ? kReceive : kNothing);
      }
      const int status = static_cast<int>(parser.get().result_int());
      if (status >= 100 && status < 200 && status != 101) {
        // 100 Continue, 103 Early Hints: the real answer follows.
        if (informational < kMaxInformational) continue;
        c.connected = false;
        co_return failed(kReceive);
      }
      keep = parser.keep_alive() && status != 101;
      if (!keep) c.connected = false;
      co_return PlainReply{PlainReply::Kind::kStatus, status, {}};
    }
  }

  void park(std::shared_ptr<Conn> c) {
    c->idle_timer.expires_after(std::chrono::milliseconds(options_.idle_timeout_ms));
    c->idle_timer.async_wait([this, weak = std::weak_ptr<Conn>(c)](const beast::error_code& ec) {
      if (ec) return;
      std::shared_ptr<Conn> c = weak.lock();
      if (!c) return;  // a connection taken from the idle list is no longer found below
      auto& idle = c->host->idle;
      auto it = std::find(idle.begin(), idle.end(), c);
      if (it == idle.end()) return;
      idle.erase(it);
      Host& h = *c->host;
      close(*c);
      forget_if_unused(h);  // before wake_starved(), which may erase h itself
      if (starved_) wake_starved();
    });
    c->host->idle.push_back(std::move(c));
  }

  // A connection of `h` closed: its next waiting request may open a new one.
  void next_for(Host& h) {
    if (h.waiting.empty() || h.conns >= options_.max_connections_per_host) return;
    if (!make_room()) {
      starved_ = true;
      return;
    }
    Job next;
    if (pop_waiting(h, next)) run(open(h), std::move(next));
  }

  // Room under max_connections_total appeared: start requests that waited for it, in
  // destination order, until the room is used up again.
  void wake_starved() {
    starved_ = false;
    for (auto& [key, h] : hosts_) {
      while (!h->waiting.empty() && h->conns < options_.max_connections_per_host) {
        if (!make_room()) {
          starved_ = true;
          return;
        }
        Job next;
        if (pop_waiting(*h, next)) run(open(*h), std::move(next));
      }
    }
  }

  void abort_everything() {
    stopped_ = true;
    for (auto& [key, h] : hosts_) {
      std::deque<Job> waiting = std::move(h->waiting);
      h->waiting.clear();
      for (Job& j : waiting) complete(j, aborted());
      std::vector<std::shared_ptr<Conn>> idle = std::move(h->idle);
      h->idle.clear();
      for (auto& c : idle) close(*c);
    }
    // Busy connections: closing cancels their operations; each exchange then answers kAborted.
    std::vector<std::shared_ptr<Conn>> busy;
    for (auto& [ptr, c] : all_) busy.push_back(c);
    for (auto& c : busy) {
      beast::error_code ec;
      c->stream.socket().close(ec);
    }
    work_.reset();  // io_.run() returns once the last exchange has answered
  }

  void complete(Job& job, PlainReply reply) {
    {
      std::lock_guard lock(mu_);
      --outstanding_;
    }
    PlainDone done = std::move(job.done);
    done(std::move(reply));  // never throws: see PlainDone
  }

  const PlainHttpOptions options_;
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_;

  std::mutex mu_;
  size_t outstanding_ = 0;  // guarded by mu_
  bool stopping_ = false;   // guarded by mu_

  std::mutex join_mu_;
  std::thread thread_;
  std::thread::id thread_id_;

  // Loop thread only.
  std::unordered_map<std::string, std::unique_ptr<Host>> hosts_;
  std::unordered_map<Conn*, std::shared_ptr<Conn>> all_;  // every open connection
  size_t total_ = 0;
  bool stopped_ = false;
  bool starved_ = false;  // a request waits for room under max_connections_total
};

PlainHttpClient::PlainHttpClient(PlainHttpOptions options)
    : impl_(std::make_unique<Impl>(options)) {}

PlainHttpClient::~PlainHttpClient() = default;

void PlainHttpClient::send(PlainRequest request, PlainDone done) {
  impl_->send(std::move(request), std::move(done));
}

void PlainHttpClient::stop() {
  impl_->stop();
}

}  // namespace skyring
