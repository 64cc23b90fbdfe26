#include "delivery/tcp_transport.h"
#include "delivery/results_for_tests.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace skyring {
namespace {

using delivery_tests::deliver_one;
using delivery_tests::Results;
using delivery_tests::wait_until;

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Generous: the machine may be shared and the test may run under sanitizers. Nothing waits for
// a deadline unless something is broken.
constexpr milliseconds kDeadline{10'000};
// Big enough to fill the socket buffers of both ends of a loopback connection many times over:
// a write of it to a peer that never reads cannot complete.
constexpr size_t kHugePayload = 48u << 20;

// A TCP receiver on 127.0.0.1: one thread, poll() over every connection. It records the bytes
// of each connection (in accept order) and counts accepts. kNoRead accepts and never reads.
class LineServer {
 public:
  enum class Mode { kRead, kNoRead };

  explicit LineServer(Mode mode = Mode::kRead, uint16_t port = 0) : mode_(mode) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(listen_fd_, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
        << "bind to port " << port << ": " << errno;
    EXPECT_EQ(::listen(listen_fd_, 128), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(::pipe2(wake_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { serve(); });
  }

  ~LineServer() {
    command('q');
    thread_.join();
    for (auto& [fd, index] : clients_) ::close(fd);
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  uint16_t port() const { return port_; }
  std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
  int accepts() const { return accepted_.load(); }
  int open_connections() const { return open_.load(); }

  // Everything received, per connection in accept order.
  std::vector<std::string> per_connection() {
    std::lock_guard lock(mu_);
    return received_;
  }
  std::string all_bytes() {
    std::string out;
    for (const std::string& s : per_connection()) out += s;
    return out;
  }
  size_t total_bytes() {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const std::string& s : received_) n += s.size();
    return n;
  }
  // Closes every accepted connection (returns once done).
  void close_connections() {
    const int before = closes_.load();
    command('c');
    EXPECT_TRUE(wait_until([&] { return closes_.load() > before; }));
  }

 private:
  void command(char c) { EXPECT_EQ(::write(wake_[1], &c, 1), 1); }

  void serve() {
    for (;;) {
      std::vector<pollfd> fds;
      fds.push_back({wake_[0], POLLIN, 0});
      fds.push_back({listen_fd_, POLLIN, 0});
      if (mode_ == Mode::kRead) {
        for (auto& [fd, index] : clients_) fds.push_back({fd, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[0].revents != 0) {
        char c = 0;
        if (::read(wake_[0], &c, 1) != 1 || c == 'q') return;
        for (auto& [fd, index] : clients_) ::close(fd);
        clients_.clear();
        open_.store(0);
        closes_.fetch_add(1);
        continue;
      }
      if (fds[1].revents & POLLIN) {
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          std::lock_guard lock(mu_);
          clients_[fd] = received_.size();
          received_.emplace_back();
          accepted_.fetch_add(1);
          open_.fetch_add(1);
        }
      }
      for (size_t i = 2; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        const int fd = fds[i].fd;
        char chunk[65536];
        ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
        if (n <= 0) {
          ::close(fd);
          clients_.erase(fd);
          open_.fetch_sub(1);
          continue;
        }
        std::lock_guard lock(mu_);
        received_[clients_[fd]].append(chunk, static_cast<size_t>(n));
      }
    }
  }

  const Mode mode_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0};
  std::atomic<int> open_{0};
  std::atomic<int> closes_{0};
  std::map<int, size_t> clients_;  // fd -> index in received_; server thread only
  std::mutex mu_;
  std::vector<std::string> received_;  // guarded by mu_
  std::thread thread_;
};

// A port that refuses connections: bound, never listening, so nothing else takes it.
class RefusingPort {
 public:
  RefusingPort() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~RefusingPort() { release(); }
  // Gives the port up (a LineServer may bind it next).
  void release() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  uint16_t port() const { return port_; }
  std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

DeliveryJob make_job(std::string uri, std::string data = "hello",
                     DataKind kind = DataKind::kString) {
  DeliveryJob job;
  job.timer_id = "timer-1";
  job.method = "send";
  job.uri = std::move(uri);
  job.data_kind = kind;
  job.data = std::move(data);
  job.timeout_ms = 5000;
  return job;
}

TEST(TcpTransportTest, NameIsTcp) {
  TcpTransport t;
  EXPECT_EQ(t.name(), "tcp");
}

TEST(TcpTransportTest, ValidateAcceptsHostPortUris) {
  TcpTransport t;
  for (const char* uri :
       {"tcp://127.0.0.1:9000", "tcp://[::1]:80", "tcp://localhost:1", "TCP://Example.COM:65535",
        "tcp://my-host.internal:6000", "tcp://svc_1.local:7", "tcp://10.0.0.1:080"}) {
    EXPECT_TRUE(t.validate("post", uri).has_value()) << uri;
  }
  // The method means nothing to tcp: any non-empty value is fine.
  EXPECT_TRUE(t.validate("whatever", "tcp://127.0.0.1:9").has_value());
  auto r = t.validate("", "tcp://127.0.0.1:9");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_NE(r.error().message.find("callback.method"), std::string::npos);
}

TEST(TcpTransportTest, ValidateRejectsAnythingButHostPort) {
  TcpTransport t;
  for (const char* uri : {"",
                          "tcp://",
                          "tcp:/127.0.0.1:80",
                          "tcp://127.0.0.1",
                          "tcp://127.0.0.1:",
                          "tcp://127.0.0.1:0",
                          "tcp://127.0.0.1:65536",
                          "tcp://127.0.0.1:123456",
                          "tcp://127.0.0.1:+80",
                          "tcp://127.0.0.1:80x",
                          "tcp://127.0.0.1:80/",
                          "tcp://127.0.0.1:80/path",
                          "tcp://127.0.0.1:80?q=1",
                          "tcp://127.0.0.1:80#f",
                          "tcp://user@127.0.0.1:80",
                          "tcp://user:pw@host:80",
                          "http://127.0.0.1:80",
                          "udp://127.0.0.1:80",
                          "tcp://:80",
                          "tcp://[::1:80",
                          "tcp://::1:80",
                          "tcp://[]:80",
                          "tcp://[zz]:80",
                          "tcp://999.1.1.1:80",
                          "tcp://1.2.3:80",
                          "tcp://ho st:80",
                          "tcp://.host:80",
                          "tcp://-host:80",
                          "tcp://a..b:80",
                          " tcp://h:80",
                          "tcp://h:80 "}) {
    auto r = t.validate("post", uri);
    ASSERT_FALSE(r.has_value()) << uri;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument) << uri;
    EXPECT_NE(r.error().message.find("callback.uri"), std::string::npos) << uri;
  }
}

TEST(TcpTransportTest, DestinationIsSchemeHostPort) {
  TcpTransport t;
  EXPECT_EQ(t.destination("tcp://127.0.0.1:9000"), "tcp://127.0.0.1:9000");
  EXPECT_EQ(t.destination("TCP://Example.COM:080"), "tcp://example.com:80");
  EXPECT_EQ(t.destination("tcp://[::1]:5"), "tcp://[::1]:5");
}

TEST(TcpTransportTest, StringObjectAndNoPayloadAreFramedWithANewline) {
  LineServer server;
  TcpTransport t;
  EXPECT_EQ(deliver_one(t, make_job(server.uri(), "hello world")).outcome, Outcome::kSuccess);
  EXPECT_EQ(
      deliver_one(t, make_job(server.uri(), R"({"a":1,"b":"x\ny"})", DataKind::kJson)).outcome,
      Outcome::kSuccess);
  EXPECT_EQ(deliver_one(t, make_job(server.uri(), "ignored", DataKind::kNone)).outcome,
            Outcome::kSuccess);
  // A raw newline inside a string payload is sent as it is.
  EXPECT_EQ(deliver_one(t, make_job(server.uri(), "two\nlines")).outcome, Outcome::kSuccess);
  const std::string want = "hello world\n{\"a\":1,\"b\":\"x\\ny\"}\n\ntwo\nlines\n";
  EXPECT_TRUE(wait_until([&] { return server.total_bytes() >= want.size(); }));
  EXPECT_EQ(server.all_bytes(), want);
}

TEST(TcpTransportTest, SequentialDeliveriesReuseOneConnection) {
  LineServer server;
  TcpTransport t;
  std::string want;
  for (int i = 0; i < 50; ++i) {
    const std::string data = "line " + std::to_string(i);
    ASSERT_EQ(deliver_one(t, make_job(server.uri(), data)).outcome, Outcome::kSuccess) << i;
    want += data + "\n";
  }
  EXPECT_TRUE(wait_until([&] { return server.total_bytes() >= want.size(); }));
  EXPECT_EQ(server.accepts(), 1);
  EXPECT_EQ(server.all_bytes(), want);
}

TEST(TcpTransportTest, ConcurrentDeliveriesAreBoundedPerDestination) {
  LineServer server;
  TcpTransportOptions o;
  o.max_connections_per_destination = 3;
  TcpTransport t(o);
  Results results;
  const size_t n = 200;
  std::set<std::string> want;
  for (size_t i = 0; i < n; ++i) {
    const std::string data = "job " + std::to_string(i) + std::string(2000, 'x');
    want.insert(data);
    t.deliver(make_job(server.uri(), data), results.done(i));
  }
  ASSERT_TRUE(results.wait_for(n));
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(results.result(i).outcome, Outcome::kSuccess) << results.result(i).detail;
    EXPECT_EQ(results.calls(i), 1);
  }
  // Every line arrives whole on one of the connections.
  size_t bytes = 0;
  for (const std::string& s : want) bytes += s.size() + 1;
  EXPECT_TRUE(wait_until([&] { return server.total_bytes() >= bytes; }));
  EXPECT_GE(server.accepts(), 1);
  EXPECT_LE(server.accepts(), 3);
  std::set<std::string> got;
  for (const std::string& conn : server.per_connection()) {
    size_t pos = 0;
    for (size_t nl; (nl = conn.find('\n', pos)) != std::string::npos; pos = nl + 1) {
      got.insert(conn.substr(pos, nl - pos));
    }
    EXPECT_EQ(pos, conn.size()) << "a partial line";
  }
  EXPECT_EQ(got, want);
}

TEST(TcpTransportTest, RefusedConnectionIsRetryableAndBacksOff) {
  RefusingPort refusing;
  TcpTransportOptions o;
  o.reconnect_backoff_min_ms = 60'000;  // the window cannot pass while the test runs
  o.reconnect_backoff_max_ms = 60'000;
  TcpTransport t(o);
  DeliveryResult r = deliver_one(t, make_job(refusing.uri()));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("refused"), std::string::npos) << r.detail;
  EXPECT_EQ(r.detail.find("backing off"), std::string::npos) << r.detail;
  // Within the window: no new connect, an immediate retryable failure, even once the port
  // accepts again.
  refusing.release();
  LineServer server(LineServer::Mode::kRead, refusing.port());
  r = deliver_one(t, make_job(refusing.uri()));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("backing off"), std::string::npos) << r.detail;
  EXPECT_NE(r.detail.find("refused"), std::string::npos) << r.detail;
  EXPECT_EQ(server.accepts(), 0);
  // Other destinations are not affected.
  LineServer other;
  EXPECT_EQ(deliver_one(t, make_job(other.uri())).outcome, Outcome::kSuccess);
}

// Parses the "no new connection for N ms" of a backoff failure.
int64_t backoff_left_ms(const std::string& detail) {
  const std::string marker = "no new connection for ";
  size_t at = detail.find(marker);
  if (at == std::string::npos) return -1;
  return std::stoll(detail.substr(at + marker.size()));
}

TEST(TcpTransportTest, BackoffDoublesAndResetsAfterASuccessfulConnect) {
  RefusingPort refusing;
  TcpTransportOptions o;
  o.reconnect_backoff_min_ms = 1000;
  o.reconnect_backoff_max_ms = 60'000;
  TcpTransport t(o);
  // Tries until the transport connects again (a failed connect, not a backoff answer).
  auto connect_attempt = [&] {
    DeliveryResult r;
    EXPECT_TRUE(wait_until([&] {
      r = deliver_one(t, make_job(refusing.uri()));
      return r.detail.find("backing off") == std::string::npos;
    }));
    return r;
  };
  EXPECT_EQ(deliver_one(t, make_job(refusing.uri())).outcome, Outcome::kRetryable);
  int64_t left = backoff_left_ms(deliver_one(t, make_job(refusing.uri())).detail);
  EXPECT_GT(left, 0);
  EXPECT_LE(left, 1000);
  EXPECT_NE(connect_attempt().detail.find("refused"), std::string::npos);  // second failure
  left = backoff_left_ms(deliver_one(t, make_job(refusing.uri())).detail);
  EXPECT_GT(left, 1000) << "the window did not double";
  EXPECT_LE(left, 2000);
  refusing.release();
  {
    LineServer server(LineServer::Mode::kRead, refusing.port());
    EXPECT_EQ(connect_attempt().outcome, Outcome::kSuccess);
    EXPECT_TRUE(wait_until([&] { return server.total_bytes() == 6; }));
    EXPECT_EQ(server.accepts(), 1);
  }
  // The server is gone (its connection closed): the next connect fails and the window is the
  // first one again.
  DeliveryResult r;
  EXPECT_TRUE(wait_until([&] {
    r = deliver_one(t, make_job(refusing.uri()));
    return r.detail.find("refused") != std::string::npos;
  }));
  left = backoff_left_ms(deliver_one(t, make_job(refusing.uri())).detail);
  EXPECT_GT(left, 0);
  EXPECT_LE(left, 1000) << "the window was not reset by the successful connect";
}

TEST(TcpTransportTest, IdleConnectionClosedByThePeerIsReplaced) {
  LineServer server;
  TcpTransport t;
  ASSERT_EQ(deliver_one(t, make_job(server.uri(), "first")).outcome, Outcome::kSuccess);
  EXPECT_TRUE(wait_until([&] { return server.total_bytes() >= 6; }));
  server.close_connections();
  ASSERT_EQ(deliver_one(t, make_job(server.uri(), "second")).outcome, Outcome::kSuccess);
  EXPECT_TRUE(wait_until([&] { return server.total_bytes() >= 13; }));
  EXPECT_EQ(server.accepts(), 2);
  EXPECT_EQ(server.per_connection(), (std::vector<std::string>{"first\n", "second\n"}));
}

TEST(TcpTransportTest, NonReadingPeerTimesOutWhileOtherDestinationsWork) {
  LineServer stuck(LineServer::Mode::kNoRead);
  LineServer healthy;
  TcpTransport t;
  Results results;
  DeliveryJob held = make_job(stuck.uri(), std::string(kHugePayload, 'a'));
  held.timeout_ms = 600'000;  // ends only by stop()
  t.deliver(std::move(held), results.done(0));
  ASSERT_TRUE(wait_until([&] { return stuck.accepts() == 1; }));
  // Another destination is served while the write above is stuck.
  EXPECT_EQ(deliver_one(t, make_job(healthy.uri(), "ok")).outcome, Outcome::kSuccess);
  // A second stuck write ends at its own timeout, retryable.
  DeliveryJob timed = make_job(stuck.uri(), std::string(kHugePayload, 'b'));
  timed.timeout_ms = 300;
  DeliveryResult r = deliver_one(t, std::move(timed));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("timed out"), std::string::npos) << r.detail;
  EXPECT_FALSE(results.has(0));
  t.stop();
  ASSERT_TRUE(results.has(0));
  EXPECT_EQ(results.result(0).outcome, Outcome::kAborted);
  EXPECT_EQ(results.calls(0), 1);
}

TEST(TcpTransportTest, WaitingForAConnectionCountsAgainstTheTimeout) {
  LineServer stuck(LineServer::Mode::kNoRead);
  TcpTransportOptions o;
  o.max_connections_per_destination = 1;
  TcpTransport t(o);
  Results results;
  DeliveryJob first = make_job(stuck.uri(), std::string(kHugePayload, 'a'));
  first.timeout_ms = 1500;
  t.deliver(std::move(first), results.done(0));
  DeliveryJob second = make_job(stuck.uri(), "small");
  second.timeout_ms = 100;  // all spent waiting behind the first
  t.deliver(std::move(second), results.done(1));
  ASSERT_TRUE(results.wait_for(2));
  EXPECT_EQ(results.result(0).outcome, Outcome::kRetryable);
  EXPECT_EQ(results.result(1).outcome, Outcome::kRetryable);
  EXPECT_NE(results.result(1).detail.find("waiting for a connection"), std::string::npos)
      << results.result(1).detail;
}

TEST(TcpTransportTest, StopAbortsQueuedAndInFlightJobsExactlyOnce) {
  LineServer stuck(LineServer::Mode::kNoRead);
  TcpTransportOptions o;
  o.max_connections_per_destination = 2;
  TcpTransport t(o);
  Results results;
  const size_t n = 10;  // two writing, eight waiting for a connection
  for (size_t i = 0; i < n; ++i) {
    DeliveryJob job = make_job(stuck.uri(), std::string(i < 2 ? kHugePayload : 10, 'x'));
    job.timeout_ms = 600'000;
    t.deliver(std::move(job), results.done(i));
  }
  ASSERT_TRUE(wait_until([&] { return stuck.accepts() == 2; }));
  EXPECT_EQ(results.size(), 0u);
  t.stop();
  ASSERT_EQ(results.size(), n);  // all answered before stop() returned
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(results.result(i).outcome, Outcome::kAborted) << i;
    EXPECT_EQ(results.calls(i), 1) << i;
  }
  t.stop();  // idempotent
  // After stop: refused at once, on this thread.
  bool called = false;
  t.deliver(make_job(stuck.uri()), [&](DeliveryResult r) {
    called = true;
    EXPECT_EQ(r.outcome, Outcome::kAborted);
  });
  EXPECT_TRUE(called);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(results.calls(i), 1) << i;
}

// A listener with a full accept queue (backlog 0, one connection waiting, never accepted):
// the kernel drops further SYNs, so a connect to it neither succeeds nor fails.
class HangingConnects {
 public:
  HangingConnects() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listen_fd_, 0), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    filler_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(::connect(filler_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  ~HangingConnects() {
    ::close(filler_fd_);
    ::close(listen_fd_);
  }
  std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

 private:
  int listen_fd_ = -1;
  int filler_fd_ = -1;
  uint16_t port_ = 0;
};

TEST(TcpTransportTest, StopAbortsAConnectThatHasNotFinished) {
  HangingConnects hanging;
  TcpTransportOptions o;
  o.connect_timeout_ms = 600'000;
  TcpTransport t(o);
  Results results;
  DeliveryJob job = make_job(hanging.uri());
  job.timeout_ms = 600'000;
  t.deliver(std::move(job), results.done(0));
  // Nothing can answer it but stop(); give the connect time to start.
  EXPECT_FALSE(results.wait_for(1, milliseconds(200)));
  t.stop();
  ASSERT_TRUE(results.has(0));
  EXPECT_EQ(results.calls(0), 1);
  EXPECT_EQ(results.result(0).outcome, Outcome::kAborted);
}

TEST(TcpTransportTest, ConnectTimeoutIsRetryableAndBacksOff) {
  HangingConnects hanging;
  TcpTransportOptions o;
  o.connect_timeout_ms = 200;
  o.reconnect_backoff_min_ms = 60'000;
  TcpTransport t(o);
  DeliveryResult r = deliver_one(t, make_job(hanging.uri()));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("connect to"), std::string::npos) << r.detail;
  EXPECT_NE(r.detail.find("timed out"), std::string::npos) << r.detail;
  r = deliver_one(t, make_job(hanging.uri()));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("backing off"), std::string::npos) << r.detail;
}

TEST(TcpTransportTest, FullQueueRefusesWithRetryable) {
  LineServer stuck(LineServer::Mode::kNoRead);
  TcpTransportOptions o;
  o.max_queue = 3;
  o.max_connections_per_destination = 1;
  TcpTransport t(o);
  Results results;
  for (size_t i = 0; i < 3; ++i) {
    DeliveryJob job = make_job(stuck.uri(), std::string(i == 0 ? kHugePayload : 10, 'x'));
    job.timeout_ms = 600'000;
    t.deliver(std::move(job), results.done(i));
  }
  bool called = false;
  t.deliver(make_job(stuck.uri()), [&](DeliveryResult r) {
    called = true;
    EXPECT_EQ(r.outcome, Outcome::kRetryable);
    EXPECT_NE(r.detail.find("queue full"), std::string::npos) << r.detail;
  });
  EXPECT_TRUE(called);  // on this thread, at once
  EXPECT_EQ(results.size(), 0u);
  t.stop();
  EXPECT_EQ(results.size(), 3u);
}

TEST(TcpTransportTest, TotalConnectionCapIsSharedAcrossDestinations) {
  LineServer a;
  LineServer b;
  TcpTransportOptions o;
  o.max_connections_total = 1;
  TcpTransport t(o);
  // The idle connection to a is closed to make room for b, and the other way round.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(deliver_one(t, make_job(a.uri(), "a")).outcome, Outcome::kSuccess);
    EXPECT_EQ(deliver_one(t, make_job(b.uri(), "b")).outcome, Outcome::kSuccess);
  }
  EXPECT_TRUE(wait_until([&] { return a.total_bytes() == 6 && b.total_bytes() == 6; }));
  EXPECT_EQ(a.accepts(), 3);
  EXPECT_EQ(b.accepts(), 3);
  EXPECT_TRUE(wait_until([&] { return a.open_connections() + b.open_connections() <= 1; }));
}

TEST(TcpTransportTest, HostNamesAreResolved) {
  LineServer server;
  TcpTransport t;
  const std::string uri = "tcp://localhost:" + std::to_string(server.port());
  DeliveryResult r = deliver_one(t, make_job(uri, "by name"));
  // localhost may resolve to ::1 first; the listener is on 127.0.0.1 and the connect tries
  // every address in turn.
  EXPECT_EQ(r.outcome, Outcome::kSuccess) << r.detail;
  EXPECT_TRUE(wait_until([&] { return server.total_bytes() >= 8; }));
  EXPECT_EQ(server.all_bytes(), "by name\n");
}

TEST(TcpTransportTest, CallbackMayDeliverAgain) {
  LineServer server;
  TcpTransport t;
  Results results;
  t.deliver(make_job(server.uri(), "one"), [&](DeliveryResult r) {
    results.done(0)(r);
    t.deliver(make_job(server.uri(), "two"), results.done(1));
  });
  ASSERT_TRUE(results.wait_for(2));
  EXPECT_EQ(results.result(1).outcome, Outcome::kSuccess);
  EXPECT_TRUE(wait_until([&] { return server.total_bytes() >= 8; }));
  EXPECT_EQ(server.all_bytes(), "one\ntwo\n");
}

}  // namespace
}  // namespace skyring
