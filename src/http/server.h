// HttpServer: HTTP/1.1 over Boost.Beast with C++20 coroutines, one coroutine per connection,
// all on the IoLoop thread. It turns requests into ApiRequest, hands them to the handler and
// writes its ApiResponse back; it knows nothing about timers.
//
// Limits (all configurable): connections (beyond the cap a new connection is closed at once),
// header bytes (431), body bytes (413), idle/read time per request (the connection is closed).
// Keep-alive by default; "Expect: 100-continue" is answered.
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
