#include "http/server.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <exception>
#include <list>

#include <fmt/format.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "base/clock.h"
#include "base/log.h"
#include "base/version.h"
#include "http/api_request.h"
#include "http/io_loop_impl.h"

namespace skyring {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

namespace {

enum class AcceptFailure {
  kConnection,  // one connection failed (reset before it was accepted): take the next one
  kResources,   // out of descriptors or kernel memory: retrying at once cannot succeed
  kOther,       // unexpected: do not retry in a hot loop either
};

AcceptFailure classify(const beast::error_code& ec) {
  if (ec.category() != boost::system::system_category()) return AcceptFailure::kOther;
  switch (ec.value()) {
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
      return AcceptFailure::kResources;
    case ECONNABORTED:
    case ECONNRESET:
    case EPROTO:
    case EPERM:
    case EINTR:
    case EAGAIN:
      return AcceptFailure::kConnection;
    default:
      return AcceptFailure::kOther;
  }
}

// Completes an operation at most once (a handler that answered and then threw).
template <typename Handler>
struct OnceHandler {
  explicit OnceHandler(Handler h) : handler(std::move(h)) {}
  void operator()(std::exception_ptr e, ApiResponse r) {
    if (called) return;
    called = true;
    handler(e, std::move(r));
  }
  Handler handler;
  bool called = false;
};

}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  // Timeouts are deadlines checked by one sweeper timer, not a timer per read and write.
  struct Conn {
    tcp::socket* socket = nullptr;
    bool busy = false;
    int64_t deadline_us = 0;  // monotonic; the sweeper cancels the socket's I/O after it
  };

  // A connection's entry in `conns` and the open gauge, undone however its session ends (an
  // exception included): the sweeper must never see the socket of a finished session.
  class ConnEntry {
   public:
    ConnEntry(Impl& impl, tcp::socket& socket)
        : impl_(impl), it_(impl.conns.insert(impl.conns.end(), Conn{&socket, false, 0})) {
      impl_.open.set(static_cast<int64_t>(impl_.conns.size()));
    }
    ~ConnEntry() {
      impl_.conns.erase(it_);
      impl_.open.set(static_cast<int64_t>(impl_.conns.size()));
    }
    ConnEntry(const ConnEntry&) = delete;
    ConnEntry& operator=(const ConnEntry&) = delete;
    Conn& conn() { return *it_; }

   private:
    Impl& impl_;
    std::list<Conn>::iterator it_;
  };

  // Bytes of one request body taken from the node-wide budget, given back when it dies (after
  // the request was answered, or however the session ends).
  class BodyReservation {
   public:
    BodyReservation() = default;
    ~BodyReservation() {
      if (impl_ != nullptr) impl_->release_body(bytes_);
    }
    BodyReservation(const BodyReservation&) = delete;
    BodyReservation& operator=(const BodyReservation&) = delete;
    // False (nothing taken) if `bytes` more do not fit.
    bool take(Impl& impl, size_t bytes) {
      if (!impl.reserve_body(bytes)) return false;
      impl_ = &impl;
      bytes_ = bytes;
      return true;
    }

   private:
    Impl* impl_ = nullptr;
    size_t bytes_ = 0;
  };

  using Parser = HttpRequestParser;

  Impl(IoLoop& l, HttpServerOptions o, HttpHandler h, Registry& m)
      : loop(l),
        options(std::move(o)),
        handler(std::move(h)),
        acceptor(l.impl().io),
        accept_pause(l.impl().io),
        accepted(m.counter("skyring_http_connections_total", "HTTP connections accepted")),
        rejected(m.counter("skyring_http_connections_rejected_total",
                           "HTTP connections closed at once: over the connection limit")),
        accept_errors(m.counter("skyring_http_accept_errors_total",
                                "accept() failures (out of descriptors or memory, or other)")),
        accept_pauses(m.counter("skyring_http_accept_pauses_total",
                                "Times accepting paused after an accept() failure")),
        body_rejected(m.counter("skyring_http_body_budget_rejections_total",
                                "Requests answered 503: their body did not fit the body buffer")),
        requests(m.counter("skyring_http_requests_total", "HTTP requests answered")),
        open(m.gauge("skyring_http_connections", "Open HTTP connections")),
        body_bytes(m.gauge("skyring_http_body_buffer_bytes",
                           "Bytes of request bodies reserved (being read or handled)")) {}

  asio::awaitable<void> accept_loop() {
    auto self = shared_from_this();
    for (;;) {
      auto [ec, sock] = co_await acceptor.async_accept(kTuple);
      if (ec) {
        if (!acceptor.is_open() || stopping) co_return;
        if (!co_await after_accept_error(ec)) co_return;
        continue;
      }
      if (conns.size() >= options.max_connections) {
        rejected.inc();
        beast::error_code ignored;
        sock.close(ignored);
        continue;
      }
      accepted.inc();
      asio::co_spawn(loop.impl().io, session(std::move(sock)),
                     [self](std::exception_ptr e) { self->after_session_exception(e); });
    }
  }

  // Counts and (rate-limited) logs a failed accept, then pauses unless only one connection
  // failed. False when the server stopped meanwhile.
  asio::awaitable<bool> after_accept_error(const beast::error_code& ec) {
    accept_errors.inc();
    AcceptFailure kind = classify(ec);
    uint64_t dropped = 0;
    if (accept_log.allow(&dropped)) {
      if (kind == AcceptFailure::kConnection) {
        log::warn("accept failed: {}{}", ec.message(), log::Limiter::note(dropped));
      } else {
        log::warn("accept failed: {}; not accepting for {} ms{}", ec.message(),
                  options.accept_pause_ms, log::Limiter::note(dropped));
      }
    }
    if (kind == AcceptFailure::kConnection) co_return true;
    accept_pauses.inc();
    accept_pause.expires_after(std::chrono::milliseconds(options.accept_pause_ms));
    co_await accept_pause.async_wait(kTuple);  // cancelled by stop_accepting()
    co_return !stopping && acceptor.is_open();
  }

  // A session must not throw (errors are values); if one does anyway its ConnEntry and
  // BodyReservation were undone on the way out, and the node goes on.
  void after_session_exception(std::exception_ptr e) {
    if (!e) return;
    uint64_t dropped = 0;
    if (!session_log.allow(&dropped)) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      log::error("HTTP connection ended by an exception: {}{}", x.what(),
                 log::Limiter::note(dropped));
    } catch (...) {
      log::error("HTTP connection ended by an exception{}", log::Limiter::note(dropped));
    }
  }

  bool reserve_body(size_t bytes) {
    if (bytes >
        options.max_body_buffer_bytes - std::min(body_in_use, options.max_body_buffer_bytes))
      return false;
    body_in_use += bytes;
    body_bytes.set(static_cast<int64_t>(body_in_use));
    return true;
  }
  void release_body(size_t bytes) {
    body_in_use -= std::min(bytes, body_in_use);
    body_bytes.set(static_cast<int64_t>(body_in_use));
  }

  void arm_deadline(Conn& c, int64_t ms) { c.deadline_us = monotonic_us() + ms * 1000; }

  asio::awaitable<void> sweep() {
    auto self = shared_from_this();
    asio::steady_timer timer(loop.impl().io);
    int64_t period_ms = std::clamp<int64_t>(options.idle_timeout_ms / 4, 10, 1000);
    for (;;) {
      timer.expires_after(std::chrono::milliseconds(period_ms));
      auto [ec] = co_await timer.async_wait(kTuple);
      if (ec) co_return;
      int64_t now = monotonic_us();
      for (Conn& c : conns) {
        if (c.deadline_us != 0 && now > c.deadline_us) {
          beast::error_code ignored;
          c.socket->cancel(ignored);
          c.deadline_us = 0;
        }
      }
      if (stopping && conns.empty()) co_return;
    }
  }

  // Responses are serialized by hand into one buffer: cheaper than building a Beast message
  // and the shapes are few and fixed.
  asio::awaitable<void> write_response(Conn& conn, ApiResponse r, bool keep_alive, bool head,
                                       unsigned version, bool& ok) {
    std::string out;
    out.reserve(256 + r.body.size());
    auto reason = http::obsolete_reason(static_cast<http::status>(r.status));
    fmt::format_to(std::back_inserter(out), "HTTP/{}.{} {} {}\r\nServer: skyring/{}\r\n",
                   version / 10, version % 10, r.status,
                   std::string_view(reason.data(), reason.size()), kVersion);
    fmt::format_to(std::back_inserter(out), "Content-Type: {}\r\nContent-Length: {}\r\n",
                   r.content_type, r.body.size());
    for (auto& [k, v] : r.headers) fmt::format_to(std::back_inserter(out), "{}: {}\r\n", k, v);
    if (!keep_alive) {
      out += "Connection: close\r\n";
    } else if (version == 10) {
      out += "Connection: keep-alive\r\n";
    }
    out += "\r\n";
    if (!head) out += r.body;
    arm_deadline(conn, options.idle_timeout_ms);
    auto [ec, n] = co_await asio::async_write(*conn.socket, asio::buffer(out), kTuple);
    requests.inc();
    ok = !ec;
  }

  // Answers an error and closes. With drain, the request body the client may still be sending
  // is read and dropped first (bounded in bytes and time): a client that sends its whole body
  // before reading would otherwise see a reset instead of the answer.
  asio::awaitable<void> reject(Conn& conn, int status, std::string msg, bool drain) {
    bool ok = true;
    co_await write_response(conn, Api::error(status, msg), false, false, 11, ok);
    if (!drain || !ok) co_return;
    beast::error_code ignored;
    conn.socket->shutdown(tcp::socket::shutdown_send, ignored);
    arm_deadline(conn, 2000);
    size_t drained = 0;
    while (drained < 64 * options.max_body_bytes) {
      auto [rec, got] = co_await conn.socket->async_read_some(asio::buffer(drain_sink), kTuple);
      if (rec) break;
      drained += got;
    }
  }

  // Reads one request: the header, then its body if the body buffer has room for it. False
  // when the connection is to be closed (an error answer, if any, was written).
  asio::awaitable<bool> read_request(Conn& conn, beast::flat_buffer& buffer, Parser& parser,
                                     BodyReservation& body) {
    tcp::socket& stream = *conn.socket;
    arm_deadline(conn, options.idle_timeout_ms);
    auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, kTuple);
    if (!ec && !parser.is_done()) {
      conn.busy = true;
      // Content-Length was checked against the body limit with the header; a chunked body
      // may grow to the limit.
      auto length = parser.content_length();
      size_t need = length ? static_cast<size_t>(*length) : options.max_body_bytes;
      if (!body.take(*this, need)) {
        body_rejected.inc();
        co_await reject(conn, 503,
                        fmt::format("request bodies being received fill the node's body buffer "
                                    "({} bytes); retry later",
                                    options.max_body_buffer_bytes),
                        true);
        co_return false;
      }
      if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
        http::response<http::empty_body> cont{http::status::continue_, parser.get().version()};
        std::tie(ec, std::ignore) = co_await http::async_write(stream, cont, kTuple);
      }
      // Usually the whole body came with the header: parse it from the buffer directly
      // instead of starting another read operation.
      if (!ec && length && buffer.size() >= *length) {
        size_t used = parser.put(buffer.data(), ec);
        buffer.consume(used);
      }
      if (!ec && !parser.is_done()) {
        std::tie(ec, n) = co_await http::async_read(stream, buffer, parser, kTuple);
      }
    }
    if (!ec) {
      conn.busy = true;
      co_return true;
    }
    // Answer what the client can fix; drop connections that went away or stalled.
    if (ec == http::error::body_limit) {
      co_await reject(conn, 413,
                      fmt::format("body is larger than {} bytes", options.max_body_bytes), true);
    } else if (ec == http::error::header_limit) {
      co_await reject(conn, 431,
                      fmt::format("headers are larger than {} bytes", options.max_header_bytes),
                      false);
    } else if (ec.category() == beast::error_code(http::error::end_of_stream).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message) {
      co_await reject(conn, 400, fmt::format("malformed HTTP request: {}", ec.message()), false);
    }
    co_return false;
  }

  // Hands a complete request to the handler and writes its answer. False when the
  // connection is to be closed.
  asio::awaitable<bool> answer(Conn& conn, const http::request<http::string_body>& req) {
    conn.deadline_us = 0;  // the answer may wait for storage; no timeout while we owe one
    ApiRequest areq = to_api_request(req);
    // A handler that throws (it must not: errors are values) resumes this coroutine with the
    // exception, so it unwinds the session (ConnEntry, BodyReservation) instead of escaping
    // through the io_context and stopping the node.
    ApiResponse resp = co_await asio::async_initiate<decltype(asio::use_awaitable),
                                                     void(std::exception_ptr, ApiResponse)>(
        [this, &areq](auto h) {
          auto once = std::make_shared<OnceHandler<decltype(h)>>(std::move(h));
          try {
            handler(areq, [once](ApiResponse r) { (*once)(nullptr, std::move(r)); });
          } catch (...) {
            (*once)(std::current_exception(), ApiResponse{});
          }
        },
        asio::use_awaitable);
    bool keep = req.keep_alive() && !stopping;
    bool ok = true;
    co_await write_response(conn, std::move(resp), keep, req.method() == http::verb::head,
                            req.version(), ok);
    conn.busy = false;
    co_return ok&& keep;
  }

  asio::awaitable<void> session(tcp::socket sock) {
    auto self = shared_from_this();
    beast::error_code opt_ec;
    sock.set_option(tcp::no_delay(true), opt_ec);
    ConnEntry entry(*this, sock);
    beast::flat_buffer buffer;
    while (!stopping) {
      Parser parser;
      limit_request_parser(parser, options.max_header_bytes, options.max_body_bytes);
      BodyReservation body;
      if (!co_await read_request(entry.conn(), buffer, parser, body)) break;
      if (!co_await answer(entry.conn(), parser.get())) break;
    }
    beast::error_code ignored;
    sock.shutdown(tcp::socket::shutdown_send, ignored);
    sock.close(ignored);
  }

  IoLoop& loop;
  HttpServerOptions options;
  HttpHandler handler;
  tcp::acceptor acceptor;
  asio::steady_timer accept_pause;
  std::list<Conn> conns;
  bool stopping = false;
  size_t body_in_use = 0;  // bytes reserved by BodyReservations
  log::Limiter accept_log;
  log::Limiter session_log;
  // Rejected bodies are read into one shared buffer and dropped (one thread; never read).
  std::array<char, 64 * 1024> drain_sink{};
  Counter& accepted;
  Counter& rejected;
  Counter& accept_errors;
  Counter& accept_pauses;
  Counter& body_rejected;
  Counter& requests;
  Gauge& open;
  Gauge& body_bytes;
};

HttpServer::HttpServer(IoLoop& loop, HttpServerOptions options, HttpHandler handler,
                       Registry& metrics)
    : impl_(std::make_shared<Impl>(loop, std::move(options), std::move(handler), metrics)) {}

HttpServer::~HttpServer() = default;

Result<uint16_t> HttpServer::bind() {
  beast::error_code ec;
  auto addr = asio::ip::make_address(impl_->options.host, ec);
  if (ec)
    return fail(Errc::kInvalidArgument,
                fmt::format("--host {} is not an IP address", impl_->options.host));
  tcp::endpoint ep(addr, impl_->options.port);
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (ec) {
    return fail(Errc::kIo, fmt::format("cannot listen on {}:{}: {}", impl_->options.host,
                                       impl_->options.port, ec.message()));
  }
  return a.local_endpoint().port();
}

Result<void> HttpServer::start() {
  beast::error_code ec;
  impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail(Errc::kIo, fmt::format("cannot listen: {}", ec.message()));
  asio::co_spawn(impl_->loop.impl().io, impl_->accept_loop(), asio::detached);
  asio::co_spawn(impl_->loop.impl().io, impl_->sweep(), asio::detached);
  return {};
}

void HttpServer::stop_accepting() {
  impl_->stopping = true;
  beast::error_code ec;
  impl_->acceptor.close(ec);
  impl_->accept_pause.cancel();
  for (auto& c : impl_->conns) {
    if (!c.busy) c.socket->cancel(ec);
  }
}

bool HttpServer::drained() const {
  return impl_->conns.empty();
}
size_t HttpServer::connections() const {
  return impl_->conns.size();
}

}  // namespace skyring
