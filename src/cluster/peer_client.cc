// The only cluster file that sees Asio/Beast.
//
// Shape (one io_context on the client's thread; everything below runs there):
//   * A Call is one accepted request: its serialised bytes, its callback and a deadline timer
//     started on arrival (time spent waiting for a connection counts). The timer answers the
//     call itself and closes its connection, so no operation (a hanging resolve included)
//     can hold a call past its timeout. A call is answered exactly once (finish()).
//   * A Peer is one address: its resolved endpoints (names are resolved with async_resolve
//     and cached for kResolveTtlMs; IP literals never), its idle connections and its FIFO of
//     waiting calls. A Peer is forgotten once it has neither connections nor waiting calls.
//   * A connection carries one exchange at a time (a coroutine): connect when needed, write,
//     read the whole answer. After an answer that allows keep-alive it serves the next
//     waiting call of its peer or goes idle (closed after idle_timeout_ms).
//
// Kinds: nothing written (resolve or connect failed, deadline or stop() before the write
// began) -> kNotSent; the write began -> kFailed unless a complete answer came. One exception:
// when the write itself fails on a reused connection (EPIPE/ECONNRESET: the peer had closed
// the idle connection), the request cannot have arrived whole, so it is sent once more on a
// fresh connection. An idle connection is checked before reuse (a FIN or stray bytes waiting
// on it: closed instead), which catches most closed ones before anything is written.
#include "cluster/peer_client.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <boost/asio.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "base/ascii.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/result.h"
#include "base/thread.h"
#include "cluster/wire.h"

namespace skyring::cluster {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

constexpr size_t kMaxHeaderBytes = 64 * 1024;  // of one answer's head
// Read buffer of a connection: the head, a chunk-size line, and a read's worth of body (the
// body itself goes into the parser, bounded by max_response_bytes).
constexpr size_t kMaxBufferBytes = kMaxHeaderBytes + 64 * 1024;
constexpr int64_t kResolveTtlMs = 10'000;  // a resolved name is used this long
constexpr int kMaxInformational = 8;       // 1xx answers skipped before the real one

bool hop_by_hop(std::string_view name) {
  for (std::string_view h : {"connection", "keep-alive", "transfer-encoding", "content-length",
                             "upgrade", "te", "proxy-connection"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

// RFC 9110 token characters (method, header name).
bool token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    if (c <= 0x20 || c >= 0x7f ||
        std::string_view("\"(),/:;<=>?@[\\]{}").find(static_cast<char>(c)) !=
            std::string_view::npos) {
      return false;
    }
  }
  return true;
}

// No control characters (CR and LF above all: they would split the request).
bool field_text(std::string_view s, bool allow_space) {
  for (unsigned char c : s) {
    if (c == 0x7f || (c < 0x20 && c != '\t') || (!allow_space && (c == ' ' || c == '\t')))
      return false;
  }
  return true;
}

// "host:port", "[v6]:port". False if malformed.
bool split_address(const std::string& address, std::string* host, std::string* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) return false;
  std::string h = address.substr(0, colon);
  std::string p = address.substr(colon + 1);
  if (h.front() == '[') {
    if (h.size() < 3 || h.back() != ']') return false;
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != std::string::npos) {
    return false;  // a bare IPv6 literal is ambiguous
  }
  if (!parse_port(p)) return false;
  *host = std::move(h);
  *port = std::move(p);
  return true;
}

// The request line, Host, Content-Length, the caller's headers and the body, or an error
// message when something would not make a well-formed request. Headers the client owns
// (Host, Content-Length, and the hop-by-hop ones) are not taken from the caller.
Result<std::string> serialise(const PeerRequest& r) {
  if (!token(r.method)) return fail(Errc::kInvalidArgument, "invalid method");
  if (r.target.empty() || r.target.front() != '/' || !field_text(r.target, false))
    return fail(Errc::kInvalidArgument, "invalid target");
  std::string out;
  out.reserve(128 + r.target.size() + r.body.size());
  fmt::format_to(std::back_inserter(out), "{} {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
                 r.method, r.target, r.address, r.body.size());
  for (const auto& [name, value] : r.headers) {
    if (!token(name) || !field_text(value, true))
      return fail(Errc::kInvalidArgument, "invalid header");
    if (hop_by_hop(name) || iequals(name, "host")) continue;
    fmt::format_to(std::back_inserter(out), "{}: {}\r\n", name, value);
  }
  out += "\r\n";
  out += r.body;
  return out;
}

PeerResponse response(PeerResponse::Kind kind, std::string error) {
  PeerResponse r;
  r.kind = kind;
  r.error = std::move(error);
  return r;
}

}  // namespace

class PeerClient::Impl {
 public:
  Impl(PeerClientOptions options, asio::io_context* shared)
      : options_(options),
        io_(shared != nullptr ? *shared : own_io_),
        shared_(shared != nullptr),
        work_(asio::make_work_guard(own_io_)) {
    if (shared_) {
      work_.reset();  // the owner's loop runs us; no thread of our own
      thread_id_ = std::this_thread::get_id();
      return;
    }
    thread_ = std::thread([this] {
      set_up_this_thread("sky-peer");
      io_.run();
    });
    thread_id_ = thread_.get_id();
  }

  // Shared loop: nothing is left that could call back into this object.
  bool idle() const { return all_.empty() && inflight_.empty(); }

  ~Impl() {
    SKYRING_ASSERT(shared_ || std::this_thread::get_id() != thread_id_,
                   "PeerClient destroyed from its own callback");
    stop();
  }

  void send(PeerRequest request, std::function<void(PeerResponse)> done) {
    SKYRING_ASSERT(static_cast<bool>(done), "send() needs a callback");
    PeerResponse refused;
    {
      std::lock_guard lock(mu_);
      if (stopping_) {
        refused = response(PeerResponse::Kind::kRefused, "peer client stopped");
      } else if (outstanding_ >= options_.max_queue) {
        refused = response(PeerResponse::Kind::kRefused,
                           fmt::format("peer request queue full ({})", options_.max_queue));
      } else {
        ++outstanding_;
        // Posted under the lock: stop() posts its abort after setting stopping_, so every
        // call accepted here reaches the loop before the abort.
        asio::post(io_, [this, r = std::move(request), d = std::move(done)]() mutable {
          dispatch(std::move(r), std::move(d));
        });
        return;
      }
    }
    done(std::move(refused));
  }

  void stop() {
    if (shared_) {
      // On the owner's loop thread: answered now; the exchanges end as the loop runs on.
      bool first = false;
      {
        std::lock_guard lock(mu_);
        first = !stopping_;
        stopping_ = true;
      }
      if (first) abort_everything();
      return;
    }
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
  struct Conn;
  struct Call {
    explicit Call(asio::io_context& io) : deadline(io) {}
    std::string address;
    std::string wire;
    bool head = false;
    int64_t timeout_ms = 0;
    std::function<void(PeerResponse)> done;  // empty once answered
    asio::steady_timer deadline;
    bool write_began = false;
    Conn* conn = nullptr;  // while an exchange runs for it
    bool finished() const { return !done; }
  };
  struct Peer {
    explicit Peer(asio::io_context& io) : resolver(io) {}
    std::string address;  // key in peers_
    std::string host, port;
    bool literal = false;
    std::vector<tcp::endpoint> endpoints;
    int64_t resolved_until_us = 0;
    bool resolving = false;
    tcp::resolver resolver;
    std::deque<std::shared_ptr<Call>> waiting;  // answered calls are skipped when popped
    std::vector<std::shared_ptr<Conn>> idle;
    size_t conns = 0;  // open, connecting or busy
  };
  struct Conn {
    Conn(asio::io_context& io, Peer* p) : socket(io), buffer(kMaxBufferBytes), timer(io), peer(p) {}
    tcp::socket socket;
    beast::flat_buffer buffer;
    asio::steady_timer timer;  // connect timeout while connecting, idle timeout while idle
    Peer* peer;
    bool connected = false;
    bool connect_timed_out = false;
  };

  // Loop thread only, from here on.

  void dispatch(PeerRequest request, std::function<void(PeerResponse)> done) {
    auto call = std::make_shared<Call>(io_);
    call->done = std::move(done);
    if (stopped_)
      return finish(*call, response(PeerResponse::Kind::kRefused, "peer client stopped"));
    call->timeout_ms = std::max<int64_t>(request.timeout_ms, 1);
    call->head = request.method == "HEAD";
    auto wire = serialise(request);
    if (!wire) return finish(*call, response(PeerResponse::Kind::kNotSent, wire.error().message));
    call->wire = std::move(*wire);
    call->address = std::move(request.address);
    Peer* peer = peer_for(call->address);
    if (peer == nullptr) {
      return finish(*call, response(PeerResponse::Kind::kNotSent,
                                    fmt::format("invalid peer address '{}'", call->address)));
    }
    call->deadline.expires_after(std::chrono::milliseconds(call->timeout_ms));
    call->deadline.async_wait([this, call](const beast::error_code& ec) {
      if (!ec) expire(*call);
    });
    peer->waiting.push_back(std::move(call));
    pump(*peer);
  }

  Peer* peer_for(const std::string& address) {
    auto it = peers_.find(address);
    if (it != peers_.end()) return it->second.get();
    std::string host, port;
    if (!split_address(address, &host, &port)) return nullptr;
    auto p = std::make_unique<Peer>(io_);
    p->address = address;
    beast::error_code ec;
    auto ip = asio::ip::make_address(host, ec);
    if (!ec) {
      p->literal = true;
      p->endpoints.emplace_back(ip, static_cast<uint16_t>(std::stoi(port)));
    }
    p->host = std::move(host);
    p->port = std::move(port);
    return peers_.emplace(address, std::move(p)).first->second.get();
  }

  // Starts waiting calls of `p` on idle connections or new ones, up to the limit.
  void pump(Peer& p) {
    while (!p.waiting.empty()) {
      if (p.waiting.front()->finished()) {
        p.waiting.pop_front();
        continue;
      }
      std::shared_ptr<Conn> c;
      while (!c && !p.idle.empty()) {
        c = std::move(p.idle.back());
        p.idle.pop_back();
        c->timer.cancel();
        if (!reusable(*c)) {
          close(*c);
          c.reset();
        }
      }
      if (!c) {
        if (p.conns >= options_.max_connections_per_peer) return;
        if (!p.literal && monotonic_us() >= p.resolved_until_us) return resolve(p);
        c = open(p);
      }
      std::shared_ptr<Call> call = std::move(p.waiting.front());
      p.waiting.pop_front();
      run(std::move(c), std::move(call));
    }
  }

  void resolve(Peer& p) {
    if (p.resolving) return;
    p.resolving = true;
    p.resolver.async_resolve(
        p.host, p.port,
        [this, address = p.address](const beast::error_code& ec, tcp::resolver::results_type rs) {
          auto it = peers_.find(address);
          if (it == peers_.end()) return;  // stopped
          Peer& p = *it->second;
          p.resolving = false;
          if (stopped_) return;
          if (!ec) {
            p.endpoints.clear();
            for (const auto& e : rs) p.endpoints.push_back(e.endpoint());
          }
          if (ec || p.endpoints.empty()) {
            // Not cached: the next request asks again.
            std::string error = fmt::format("cannot resolve {}: {}", p.host,
                                            ec ? ec.message() : std::string("no address"));
            std::deque<std::shared_ptr<Call>> waiting = std::move(p.waiting);
            p.waiting.clear();
            for (auto& call : waiting) {
              if (!call->finished()) finish(*call, response(PeerResponse::Kind::kNotSent, error));
            }
            return forget_if_unused(p);
          }
          p.resolved_until_us = monotonic_us() + kResolveTtlMs * 1000;
          pump(p);
        });
  }

  std::shared_ptr<Conn> open(Peer& p) {
    auto c = std::make_shared<Conn>(io_, &p);
    ++p.conns;
    all_.emplace(c.get(), c);
    return c;
  }

  void close(Conn& c) {
    beast::error_code ec;
    c.socket.close(ec);
    c.timer.cancel();
    c.connected = false;
    --c.peer->conns;
    all_.erase(&c);  // may drop the last reference: `c` is not used after this
  }

  // Call only where no reference to `p` is used afterwards.
  void forget_if_unused(Peer& p) {
    while (!p.waiting.empty() && p.waiting.front()->finished()) p.waiting.pop_front();
    if (p.conns != 0 || !p.waiting.empty() || p.resolving) return;
    const std::string key = p.address;  // erase() must not be handed the dying element's key
    peers_.erase(key);
  }

  // An idle connection may have been closed by the peer, or received bytes nobody asked for.
  static bool reusable(Conn& c) {
    if (c.buffer.size() != 0 || !c.socket.is_open()) return false;
    char byte = 0;
    ssize_t n = ::recv(c.socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  void run(std::shared_ptr<Conn> c, std::shared_ptr<Call> call) {
    call->conn = c.get();
    inflight_.insert(call);
    asio::co_spawn(io_, exchange(std::move(c), std::move(call)), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::error("peer client: exchange threw: {}", ex.what());
      } catch (...) {
      }
      SKYRING_ASSERT(false, "a peer exchange threw (its request would never be answered)");
    });
  }

  asio::awaitable<void> exchange(std::shared_ptr<Conn> c, std::shared_ptr<Call> call) {
    bool keep = false;
    PeerResponse r;
    for (int attempt = 0;; ++attempt) {
      const bool reused = c->connected;
      bool write_failed = false;
      r = co_await exchange_once(*c, *call, keep, write_failed);
      if (write_failed && reused && attempt == 0 && !call->finished() && !stopped_) {
        call->write_began = false;  // it cannot have arrived whole: as if never sent
        continue;
      }
      break;
    }
    call->conn = nullptr;
    inflight_.erase(call);
    if (!call->finished()) finish(*call, std::move(r));
    if (stopped_) co_return;  // abort_everything() closed the sockets
    release(std::move(c), keep);
  }

  // One request and its answer on `c`, connecting first when needed. On failure `c` is left
  // closed; `keep` says whether the answer allows another request on it.
  asio::awaitable<PeerResponse> exchange_once(Conn& c, Call& call, bool& keep, bool& write_failed) {
    keep = false;
    if (stopped_ || call.finished()) co_return PeerResponse{};
    if (!c.connected) {
      beast::error_code ignored;
      c.buffer.clear();
      c.socket.close(ignored);
      c.connect_timed_out = false;
      c.timer.expires_after(std::chrono::milliseconds(options_.connect_timeout_ms));
      c.timer.async_wait([&c](const beast::error_code& ec) {
        if (ec) return;
        c.connect_timed_out = true;
        beast::error_code ignored;
        c.socket.close(ignored);
      });
      auto [ec, ep] = co_await asio::async_connect(c.socket, c.peer->endpoints, kTuple);
      c.timer.cancel();
      if (ec) {
        c.socket.close(ignored);
        co_return response(PeerResponse::Kind::kNotSent,
                           c.connect_timed_out ? fmt::format("connect timed out after {} ms",
                                                             options_.connect_timeout_ms)
                                               : fmt::format("connect: {}", ec.message()));
      }
      c.socket.set_option(tcp::no_delay(true), ignored);
      c.connected = true;
      if (stopped_ || call.finished()) co_return PeerResponse{};
    }
    call.write_began = true;
    auto [wec, written] = co_await asio::async_write(c.socket, asio::buffer(call.wire), kTuple);
    if (wec) {
      fail_conn(c);
      write_failed = wec == asio::error::broken_pipe || wec == asio::error::connection_reset;
      co_return response(PeerResponse::Kind::kFailed, fmt::format("send: {}", wec.message()));
    }
    for (int informational = 0;; ++informational) {
      http::response_parser<http::string_body> parser;
      parser.header_limit(kMaxHeaderBytes);
      parser.body_limit(options_.max_response_bytes);
      if (call.head) parser.skip(true);
      auto [rec, n] = co_await http::async_read(c.socket, c.buffer, parser, kTuple);
      if (rec) {
        fail_conn(c);
        std::string what =
            rec == http::error::body_limit
                ? fmt::format("answer larger than {} bytes", options_.max_response_bytes)
            : rec == http::error::end_of_stream || rec == asio::error::eof
                ? std::string("connection closed before an answer")
                : fmt::format("receive: {}", rec.message());
        co_return response(PeerResponse::Kind::kFailed, std::move(what));
      }
      auto& msg = parser.get();
      const int status = static_cast<int>(msg.result_int());
      if (status >= 100 && status < 200) {
        if (status != 101 && informational < kMaxInformational) continue;
        fail_conn(c);
        co_return response(PeerResponse::Kind::kFailed,
                           fmt::format("unexpected informational answer {}", status));
      }
      keep = parser.keep_alive();
      if (!keep) fail_conn(c);
      PeerResponse r;
      r.kind = PeerResponse::Kind::kAnswered;
      r.status = status;
      for (const auto& f : msg) {
        std::string_view name(f.name_string().data(), f.name_string().size());
        if (hop_by_hop(name)) continue;
        r.headers.emplace_back(std::string(name), std::string(f.value().data(), f.value().size()));
      }
      r.body = std::move(msg.body());
      co_return r;
    }
  }

  // The connection is not usable any more; its slot stays taken until release().
  static void fail_conn(Conn& c) {
    beast::error_code ignored;
    c.socket.close(ignored);
    c.connected = false;
  }

  // After an exchange: the connection serves the next waiting call, goes idle, or closes.
  void release(std::shared_ptr<Conn> c, bool keep) {
    Peer& p = *c->peer;
    // Bytes left in the buffer were never asked for: the connection is out of step.
    if (keep && c->connected && c->buffer.size() == 0) {
      while (!p.waiting.empty()) {
        std::shared_ptr<Call> next = std::move(p.waiting.front());
        p.waiting.pop_front();
        if (!next->finished()) return run(std::move(c), std::move(next));
      }
      return park(std::move(c));
    }
    close(*c);
    pump(p);
    forget_if_unused(p);
  }

  void park(std::shared_ptr<Conn> c) {
    c->timer.expires_after(std::chrono::milliseconds(options_.idle_timeout_ms));
    c->timer.async_wait([this, weak = std::weak_ptr<Conn>(c)](const beast::error_code& ec) {
      if (ec) return;
      std::shared_ptr<Conn> c = weak.lock();
      if (!c) return;
      auto& idle = c->peer->idle;
      auto it = std::find(idle.begin(), idle.end(), c);
      if (it == idle.end()) return;  // taken meanwhile
      idle.erase(it);
      Peer& p = *c->peer;
      close(*c);
      forget_if_unused(p);
    });
    c->peer->idle.push_back(std::move(c));
  }

  // The deadline of a call passed: it is answered now, whatever its exchange is doing.
  void expire(Call& call) {
    if (call.finished()) return;
    std::string error = fmt::format("no answer within {} ms", call.timeout_ms);
    if (call.conn != nullptr) fail_conn(*call.conn);  // its exchange ends and releases it
    finish(call,
           response(call.write_began ? PeerResponse::Kind::kFailed : PeerResponse::Kind::kNotSent,
                    std::move(error)));
  }

  void abort_everything() {
    stopped_ = true;
    for (auto& [key, p] : peers_) {
      std::deque<std::shared_ptr<Call>> waiting = std::move(p->waiting);
      p->waiting.clear();
      for (auto& call : waiting) {
        if (!call->finished())
          finish(*call, response(PeerResponse::Kind::kRefused, "peer client stopped"));
      }
      p->resolver.cancel();
    }
    std::vector<std::shared_ptr<Call>> inflight(inflight_.begin(), inflight_.end());
    for (auto& call : inflight) {
      if (call->finished()) continue;
      finish(*call, response(call->write_began ? PeerResponse::Kind::kFailed
                                               : PeerResponse::Kind::kNotSent,
                             "peer client stopped"));
    }
    for (auto& [ptr, c] : all_) {
      beast::error_code ignored;
      c->socket.close(ignored);
      c->timer.cancel();
    }
    // Every call is answered. Exchanges, idle timers and a resolve that may still be running
    // hold nothing anyone waits for: the loop ends now and ~io_context destroys them (a
    // shared loop runs on: they end there, see idle()).
    if (shared_) return;
    work_.reset();
    io_.stop();
  }

  void finish(Call& call, PeerResponse r) {
    call.deadline.cancel();
    auto done = std::move(call.done);
    call.done = nullptr;
    {
      std::lock_guard lock(mu_);
      --outstanding_;
    }
    done(std::move(r));
  }

  const PeerClientOptions options_;
  asio::io_context own_io_{1};
  asio::io_context& io_;
  const bool shared_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;

  std::mutex mu_;
  size_t outstanding_ = 0;  // guarded by mu_
  bool stopping_ = false;   // guarded by mu_

  std::mutex join_mu_;
  std::thread thread_;
  std::thread::id thread_id_;

  // Loop thread only (and the destructor, after the join).
  bool stopped_ = false;
  std::unordered_map<std::string, std::unique_ptr<Peer>> peers_;
  std::unordered_map<Conn*, std::shared_ptr<Conn>> all_;  // every connection with a slot
  std::unordered_set<std::shared_ptr<Call>> inflight_;
};

PeerClient::PeerClient(PeerClientOptions options, boost::asio::io_context* loop)
    : impl_(std::make_unique<Impl>(options, loop)) {}

bool PeerClient::idle() const {
  return impl_->idle();
}

PeerClient::~PeerClient() = default;

void PeerClient::send(PeerRequest request, std::function<void(PeerResponse)> done) {
  impl_->send(std::move(request), std::move(done));
}

void PeerClient::stop() {
  impl_->stop();
}

}  // namespace skyring::cluster
