// HttpServer: HTTP/1.1 over Boost.Beast with C++20 coroutines, one coroutine per connection,
// all on the IoLoop thread. It turns requests into ApiRequest, hands them to the handler and
// writes its ApiResponse back; it knows nothing about timers.
//
// Limits (all configurable): connections (beyond the cap a new connection is closed at once),
// header bytes (431), body bytes (413), idle/read time per request (the connection is closed),
// and the bytes of request bodies buffered node-wide: a body's size (Content-Length, or the
// body limit when chunked) is reserved before it is read and released when its request is
// answered; a request that does not fit is answered 503 with Retry-After and closed.
// Keep-alive by default; "Expect: 100-continue" is answered.
//
// Accept errors: out of descriptors or kernel memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the
// listener pauses for accept_pause_ms instead of retrying in a hot loop (new connections wait
// in the kernel's backlog meanwhile); errors of one connection (aborted before accept) are
// skipped at once; any other error pauses too. Either kind is counted in
// skyring_http_accept_errors_total and logged at most once a second with the number of
// occurrences not logged.
//
// Stop: stop_accepting() closes the listener and every idle connection; requests in progress
// finish and their connections close after the response. drained() is true when none is left.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "api/api.h"
#include "base/metrics.h"
#include "base/result.h"
#include "http/io_loop.h"

namespace skyring {

struct HttpServerOptions {
  std::string host = "0.0.0.0";
  uint16_t port = 3000;
  size_t max_connections = 10'000;
  size_t max_header_bytes = 8 * 1024;
  size_t max_body_bytes = 1024 * 1024;
  int64_t idle_timeout_ms = 60'000;
  // Request bodies buffered at once, over all connections (bytes reserved before reading).
  size_t max_body_buffer_bytes = 256 * 1024 * 1024;
  // How long accepting stops after accept() failed for lack of descriptors or memory.
  int64_t accept_pause_ms = 100;
};

using HttpHandler = std::function<void(const ApiRequest&, Api::Done)>;

class HttpServer {
 public:
  HttpServer(IoLoop& loop, HttpServerOptions options, HttpHandler handler, Registry& metrics);
  ~HttpServer();

  // Claims the address (nothing is accepted yet); returns the bound port (useful with port 0).
  Result<uint16_t> bind();
  // Listens and starts accepting.
  Result<void> start();
  void stop_accepting();
  bool drained() const;
  size_t connections() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace skyring
