// HttpServer over a real socket on 127.0.0.1, driven by the IoLoop on the test thread.
#include "http/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "base/clock.h"
#include "base/metrics.h"
#include "http/io_loop.h"

namespace skyring {
namespace {

// Sends `request` on a new connection to 127.0.0.1:port from another thread while the loop
// runs, and returns what came back until the server closed (or 10 s passed).
std::string exchange(IoLoop& loop, uint16_t port, const std::string& request) {
  std::atomic<bool> done{false};
  std::string out;
  std::thread client([&] {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      send(fd, request.data(), request.size(), MSG_NOSIGNAL);
      char buf[4096];
      for (int i = 0; i < 1000; ++i) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        out.append(buf, static_cast<size_t>(n));
      }
    }
    close(fd);
    done = true;
  });
  loop.run_until([&] { return done.load(); }, 15'000);
  client.join();
  return out;
}

// A handler that throws (it must not; errors are values) ends only its own connection: the
// connection's bookkeeping is undone and the server goes on.
TEST(HttpServer, ExceptionInASessionKeepsTheBookkeeping) {
  SystemClock clock;
  IoLoop loop(clock);
  Registry metrics;
  HttpServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  HttpServer server(
      loop, o,
      [](const ApiRequest& r, Api::Done done) {
        if (r.target == "/throw") throw std::runtime_error("handler failed");
        ApiResponse ok;
        ok.body = "{}";
        done(std::move(ok));
      },
      metrics);
  auto port = server.bind();
  ASSERT_TRUE(port.has_value());
  ASSERT_TRUE(server.start().has_value());

  std::string out = exchange(loop, *port, "GET /throw HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(out, "");  // closed without an answer
  EXPECT_TRUE(loop.run_until([&] { return server.connections() == 0; }, 10'000))
      << server.connections() << " connection(s) still listed";
  EXPECT_NE(metrics.render().find("\nskyring_http_connections 0\n"), std::string::npos)
      << metrics.render();

  out = exchange(loop, *port, "GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(out.rfind("HTTP/1.1 200", 0), 0u) << out;
  EXPECT_TRUE(loop.run_until([&] { return server.connections() == 0; }, 10'000));

  server.stop_accepting();
  EXPECT_TRUE(loop.run_until([&] { return server.drained(); }, 10'000));
}

}  // namespace
}  // namespace skyring
