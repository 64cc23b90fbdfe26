#include "http/server.h"

#include <algorithm>
#include <list>

#include <fmt/format.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "base/clock.h"
#include "base/log.h"
#include "base/version.h"
#include "http/io_loop_impl.h"

namespace skyring {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  // Timeouts are deadlines checked by one sweeper timer, not a timer per read and write.
  struct Conn {
    tcp::socket* socket = nullptr;
    bool busy = false;
    int64_t deadline_us = 0;  // monotonic; the sweeper cancels the socket's I/O after it
  };

  Impl(IoLoop& l, HttpServerOptions o, HttpHandler h, Registry& m)
      : loop(l),
        options(std::move(o)),
        handler(std::move(h)),
        acceptor(l.impl().io),
        accepted(m.counter("skyring_http_connections_total", "HTTP connections accepted")),
        rejected(m.counter("skyring_http_connections_rejected_total",
                           "HTTP connections closed at once: over the connection limit")),
        requests(m.counter("skyring_http_requests_total", "HTTP requests answered")),
        open(m.gauge("skyring_http_connections", "Open HTTP connections")) {}

  asio::awaitable<void> accept_loop() {
    auto self = shared_from_this();
    for (;;) {
      auto [ec, sock] = co_await acceptor.async_accept(kTuple);
      if (ec) {
        if (!acceptor.is_open() || stopping) co_return;
        log::warn("accept failed: {}", ec.message());
        continue;
      }
      if (conns.size() >= options.max_connections) {
        rejected.inc();
        beast::error_code ignored;
        sock.close(ignored);
        continue;
      }
      accepted.inc();
      asio::co_spawn(loop.impl().io, session(std::move(sock)), asio::detached);
    }
  }

  // Responses are serialized by hand into one buffer: cheaper than building a Beast message
  // and the shapes are few and fixed.
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

  asio::awaitable<void> session(tcp::socket sock) {
    auto self = shared_from_this();
    tcp::socket& stream = sock;
    beast::error_code opt_ec;
    stream.set_option(tcp::no_delay(true), opt_ec);
    auto it = conns.insert(conns.end(), Conn{&stream, false, 0});
    open.set(static_cast<int64_t>(conns.size()));
    beast::flat_buffer buffer;
    while (!stopping) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(options.max_header_bytes));
      parser.body_limit(options.max_body_bytes);
      arm_deadline(*it, options.idle_timeout_ms);
      auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, kTuple);
      bool ok = true;
      if (!ec) {
        it->busy = true;
        auto& hdr = parser.get();
        if (beast::iequals(hdr[http::field::expect], "100-continue")) {
          http::response<http::empty_body> cont{http::status::continue_, hdr.version()};
          std::tie(ec, std::ignore) = co_await http::async_write(stream, cont, kTuple);
        }
        if (!ec && !parser.is_done()) {
          // Usually the whole body came with the header: parse it from the buffer directly
          // instead of starting another read operation.
          auto length = parser.content_length();
          if (length && buffer.size() >= *length) {
            size_t used = parser.put(buffer.data(), ec);
            buffer.consume(used);
          }
          if (!ec && !parser.is_done()) {
            std::tie(ec, n) = co_await http::async_read(stream, buffer, parser, kTuple);
          }
        }
      }
      if (ec) {
        // Answer what the client can fix; drop connections that went away or stalled.
        int status = 0;
        std::string msg;
        if (ec == http::error::body_limit) {
          status = 413;
          msg = fmt::format("body is larger than {} bytes", options.max_body_bytes);
        } else if (ec == http::error::header_limit) {
          status = 431;
          msg = fmt::format("headers are larger than {} bytes", options.max_header_bytes);
        } else if (ec.category() == beast::error_code(http::error::end_of_stream).category() &&
                   ec != http::error::end_of_stream && ec != http::error::partial_message) {
          status = 400;
          msg = fmt::format("malformed HTTP request: {}", ec.message());
        }
        if (status != 0) {
          co_await write_response(*it, Api::error(status, msg), false, false, 11, ok);
        }
        if (status == 413 && ok) {
          // A client that sends its whole body before reading would see a reset instead of
          // the 413 if we closed with its body unread: read and drop it, bounded in bytes
          // and time.
          beast::error_code ignored;
          stream.shutdown(tcp::socket::shutdown_send, ignored);
          arm_deadline(*it, 2000);
          std::vector<char> sink(64 * 1024);
          size_t drained = 0;
          while (drained < 64 * options.max_body_bytes) {
            auto [rec, got] = co_await stream.async_read_some(asio::buffer(sink), kTuple);
            if (rec) break;
            drained += got;
          }
        }
        break;
      }
      auto& req = parser.get();
      it->deadline_us = 0;  // the answer may wait for storage; no timeout while we owe one
      ApiRequest areq;
      areq.method = std::string_view(req.method_string().data(), req.method_string().size());
      areq.target = std::string_view(req.target().data(), req.target().size());
      auto tid = req["x-timer-id"];
      areq.timer_id = std::string_view(tid.data(), tid.size());
      areq.body = req.body();
      ApiResponse resp =
          co_await asio::async_initiate<decltype(asio::use_awaitable), void(ApiResponse)>(
              [this, &areq](auto h) {
                auto shared = std::make_shared<decltype(h)>(std::move(h));
                handler(areq, [shared](ApiResponse r) { (*shared)(std::move(r)); });
              },
              asio::use_awaitable);
      bool keep = req.keep_alive() && !stopping;
      co_await write_response(*it, std::move(resp), keep, req.method() == http::verb::head,
                              req.version(), ok);
      it->busy = false;
      if (!ok || !keep) break;
    }
    beast::error_code ignored;
    stream.shutdown(tcp::socket::shutdown_send, ignored);
    stream.close(ignored);
    conns.erase(it);
    open.set(static_cast<int64_t>(conns.size()));
  }

  IoLoop& loop;
  HttpServerOptions options;
  HttpHandler handler;
  tcp::acceptor acceptor;
  std::list<Conn> conns;
  bool stopping = false;
  Counter& accepted;
  Counter& rejected;
  Counter& requests;
  Gauge& open;
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
