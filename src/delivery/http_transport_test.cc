#include "delivery/http_transport.h"
#include "delivery/results_for_tests.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/version.h"

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

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

struct Request {
  std::string method;
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;  // as received, in order
  std::string body;

  // Every value of a header, name compared case-insensitively.
  std::vector<std::string> all(const std::string& name) const {
    std::vector<std::string> out;
    for (const auto& [k, v] : headers) {
      if (lower(k) == lower(name)) out.push_back(v);
    }
    return out;
  }
  std::optional<std::string> header(const std::string& name) const {
    auto v = all(name);
    if (v.empty()) return std::nullopt;
    return v.front();
  }
};

// A small HTTP/1.1 server on 127.0.0.1:<ephemeral>: one thread, poll() over every connection,
// keep-alive, Content-Length bodies only. kSilent reads requests and never answers.
class TestServer {
 public:
  enum class Mode { kAnswer, kSilent };

  explicit TestServer(int status = 200, Mode mode = Mode::kAnswer) : status_(status), mode_(mode) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(listen_fd_, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listen_fd_, 128), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(::pipe2(wake_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { serve(); });
  }

  ~TestServer() {
    char b = 'x';
    EXPECT_EQ(::write(wake_[1], &b, 1), 1);
    thread_.join();
    for (auto& [fd, buf] : clients_) ::close(fd);
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  uint16_t port() const { return port_; }
  std::string url(const std::string& path = "/hook") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  void set_status(int status) { status_.store(status); }
  // Every answer from now on is `raw` (bytes as given); with close_after the server closes the
  // connection right after it, without saying so in the answer.
  void set_raw_answer(std::string raw, bool close_after = false) {
    std::lock_guard lock(mu_);
    raw_ = std::move(raw);
    close_after_ = close_after;
  }
  int connections() const { return accepted_.load(); }
  size_t request_count() {
    std::lock_guard lock(mu_);
    return requests_.size();
  }
  std::vector<Request> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  Request only_request() {
    auto r = requests();
    EXPECT_EQ(r.size(), 1u);
    return r.empty() ? Request{} : r.front();
  }

 private:
  void serve() {
    for (;;) {
      std::vector<pollfd> fds;
      fds.push_back({wake_[0], POLLIN, 0});
      fds.push_back({listen_fd_, POLLIN, 0});
      for (auto& [fd, buf] : clients_) fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[0].revents != 0) return;
      if (fds[1].revents & POLLIN) {
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          clients_[fd];
          accepted_.fetch_add(1);
        }
      }
      for (size_t i = 2; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        int fd = fds[i].fd;
        char chunk[65536];
        ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
        if (n <= 0) {
          ::close(fd);
          clients_.erase(fd);
          continue;
        }
        std::string& buf = clients_[fd];
        buf.append(chunk, static_cast<size_t>(n));
        bool close_now = false;
        while (!close_now && handle_one(fd, buf, close_now)) {
        }
        if (close_now) {
          ::close(fd);
          clients_.erase(fd);
        }
      }
    }
  }

  // Parses one complete request off the front of buf and answers it; false if incomplete.
  bool handle_one(int fd, std::string& buf, bool& close_now) {
    size_t end = buf.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    Request req;
    size_t line_end = buf.find("\r\n");
    std::string line = buf.substr(0, line_end);
    size_t sp1 = line.find(' ');
    size_t sp2 = line.find(' ', sp1 + 1);
    req.method = line.substr(0, sp1);
    req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    size_t content_length = 0;
    size_t pos = line_end + 2;
    while (pos < end) {
      size_t eol = buf.find("\r\n", pos);
      std::string h = buf.substr(pos, eol - pos);
      size_t colon = h.find(':');
      std::string name = h.substr(0, colon);
      std::string value = colon + 1 < h.size() ? h.substr(colon + 1) : "";
      while (!value.empty() && value.front() == ' ') value.erase(0, 1);
      if (lower(name) == "content-length") content_length = std::stoul(value);
      req.headers.emplace_back(name, value);
      pos = eol + 2;
    }
    size_t body_start = end + 4;
    if (buf.size() < body_start + content_length) return false;
    req.body = buf.substr(body_start, content_length);
    buf.erase(0, body_start + content_length);
    const bool head = req.method == "HEAD";
    {
      std::lock_guard lock(mu_);
      requests_.push_back(std::move(req));
    }
    if (mode_ == Mode::kSilent) return true;
    {
      std::lock_guard lock(mu_);
      if (!raw_.empty()) {
        ::send(fd, raw_.data(), raw_.size(), MSG_NOSIGNAL);
        close_now = close_after_;
        return true;
      }
    }
    const int status = status_.load();
    const bool body = !head && status != 204 && status != 304;
    std::string response = "HTTP/1.1 " + std::to_string(status) + " Test\r\n";
    response += body ? "Content-Length: 2\r\n\r\nok" : "Content-Length: 0\r\n\r\n";
    if (head)
      response = "HTTP/1.1 " + std::to_string(status) + " Test\r\nContent-Length: 2\r\n\r\n";
    ::send(fd, response.data(), response.size(), MSG_NOSIGNAL);
    return true;
  }

  std::atomic<int> status_;
  const Mode mode_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0};
  std::map<int, std::string> clients_;  // server thread only
  std::mutex mu_;
  std::vector<Request> requests_;
  std::string raw_;           // guarded by mu_
  bool close_after_ = false;  // guarded by mu_
  std::thread thread_;
};

// A port with a bound socket that never listens: connecting to it is refused, and nothing else
// can take the port while the test runs.
class RefusingPort {
 public:
  RefusingPort() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~RefusingPort() { ::close(fd_); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/"; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

DeliveryJob make_job(std::string uri, std::string method = "post") {
  DeliveryJob job;
  job.timer_id = "timer-1";
  job.attempt = 1;
  job.method = std::move(method);
  job.uri = std::move(uri);
  job.timeout_ms = 5000;
  return job;
}

TEST(HttpTransportTest, NameIsHttp) {
  HttpTransport t;
  EXPECT_EQ(t.name(), "http");
}

TEST(HttpTransportTest, ValidateAcceptsEveryMethodAndHttpUris) {
  HttpTransport t;
  for (const char* m : {"post", "put", "patch", "delete", "get", "options", "head"}) {
    EXPECT_TRUE(t.validate(m, "http://example.com/hook").has_value()) << m;
  }
  for (const char* uri :
       {"http://example.com", "https://example.com:8443/a?b=c", "HTTP://Example.COM/x",
        "http://127.0.0.1:1/", "http://[::1]:8080/", "https://user:pw@example.com/"}) {
    EXPECT_TRUE(t.validate("post", uri).has_value()) << uri;
  }
}

TEST(HttpTransportTest, ValidateRejectsOtherMethods) {
  HttpTransport t;
  for (const char* m : {"", "trace", "connect", "POST", "postt", "push"}) {
    auto r = t.validate(m, "http://example.com/");
    ASSERT_FALSE(r.has_value()) << m;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_EQ(r.error().message,
              "callback.method must be one of post, put, patch, delete, get, options, head");
  }
}

TEST(HttpTransportTest, ValidateRejectsNonHttpUris) {
  HttpTransport t;
  for (const char* uri : {"", "example.com", "/hook", "ftp://example.com/", "tcp://h:1",
                          "http:///nohost", "http:nohost", "http://a b/", "https://h:99999/",
                          "http://h:0/", "http://h:12x/", "http://h:1x"}) {
    auto r = t.validate("post", uri);
    ASSERT_FALSE(r.has_value()) << uri;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_EQ(r.error().message, "callback.uri must be an http or https URL");
  }
}

TEST(HttpTransportTest, DestinationIsSchemeHostPort) {
  HttpTransport t;
  EXPECT_EQ(t.destination("http://example.com/a/b?c"), "http://example.com:80");
  EXPECT_EQ(t.destination("https://Example.COM/"), "https://example.com:443");
  EXPECT_EQ(t.destination("HTTP://example.com:8080"), "http://example.com:8080");
  EXPECT_EQ(t.destination("http://u:p@[::1]:9/x"), "http://[::1]:9");
  EXPECT_EQ(t.destination("not a uri"), "not a uri");
  EXPECT_EQ(t.destination("ftp://example.com/"), "ftp://example.com/");
}

TEST(HttpTransportTest, StringBodyIsSentAsTextPlain) {
  TestServer server;
  HttpTransport t;
  DeliveryJob job = make_job(server.url("/s"));
  job.data_kind = DataKind::kString;
  job.data = "hello, world";
  DeliveryResult r = deliver_one(t, job);
  EXPECT_EQ(r.outcome, Outcome::kSuccess);
  EXPECT_EQ(r.status, 200);
  Request req = server.only_request();
  EXPECT_EQ(req.method, "POST");
  EXPECT_EQ(req.target, "/s");
  EXPECT_EQ(req.body, "hello, world");
  EXPECT_EQ(req.header("Content-Type"), "text/plain; charset=utf-8");
  EXPECT_EQ(req.all("Content-Type").size(), 1u);
}

TEST(HttpTransportTest, JsonBodyIsSentAsApplicationJson) {
  TestServer server;
  HttpTransport t;
  DeliveryJob job = make_job(server.url(), "put");
  job.data_kind = DataKind::kJson;
  job.data = R"({"a":1,"b":[true,null]})";
  EXPECT_EQ(deliver_one(t, job).outcome, Outcome::kSuccess);
  Request req = server.only_request();
  EXPECT_EQ(req.method, "PUT");
  EXPECT_EQ(req.body, R"({"a":1,"b":[true,null]})");
  EXPECT_EQ(req.header("Content-Type"), "application/json");
}

TEST(HttpTransportTest, LargeBodyIsSentWithoutExpectContinue) {
  TestServer server;
  HttpTransport t;
  DeliveryJob job = make_job(server.url());
  job.data_kind = DataKind::kString;
  job.data = std::string(2 << 20, 'x');  // curl would ask for 100-continue above 1 MiB
  EXPECT_EQ(deliver_one(t, job).outcome, Outcome::kSuccess);
  // No Expect header: a 100-continue wait (the test server never sends 100) cannot happen.
  Request req = server.only_request();
  EXPECT_EQ(req.body.size(), job.data.size());
  EXPECT_FALSE(req.header("Expect").has_value());
}

TEST(HttpTransportTest, NoBodyWhenDataIsAbsent) {
  TestServer server;
  HttpTransport t;
  for (const char* m : {"post", "put", "patch", "delete", "get", "options"}) {
    EXPECT_EQ(deliver_one(t, make_job(server.url(), m)).outcome, Outcome::kSuccess) << m;
  }
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 6u);
  for (const Request& req : reqs) {
    EXPECT_EQ(req.body, "") << req.method;
    EXPECT_FALSE(req.header("Content-Type").has_value()) << req.method;
    auto length = req.header("Content-Length");
    EXPECT_TRUE(!length || *length == "0") << req.method;
  }
}

TEST(HttpTransportTest, SendsSkyringHeadersThenCustomHeaders) {
  TestServer server;
  HttpTransport t;
  DeliveryJob job = make_job(server.url());
  job.timer_id = "order-42";
  job.attempt = 3;
  job.headers = {{"Authorization", "Bearer abc"},
                 {"X-Empty", ""},
                 {"x-skyring-attempt", "99"},  // ours cannot be overridden
                 {"Content-Length", "1000"},   // nor the message framing
                 {"X-Trace", "t-1"}};
  EXPECT_EQ(deliver_one(t, job).outcome, Outcome::kSuccess);
  Request req = server.only_request();
  EXPECT_EQ(req.header("User-Agent"), std::string("skyring/") + kVersion);
  EXPECT_EQ(req.header("X-Skyring-Timer-Id"), "order-42");
  EXPECT_EQ(req.header("Idempotency-Key"), "order-42");
  EXPECT_EQ(req.all("X-Skyring-Attempt"), std::vector<std::string>{"3"});
  EXPECT_EQ(req.header("Authorization"), "Bearer abc");
  EXPECT_EQ(req.header("X-Empty"), "");
  EXPECT_EQ(req.header("X-Trace"), "t-1");
  EXPECT_EQ(req.header("Content-Length"), "0");
  EXPECT_EQ(req.all("User-Agent").size(), 1u);
  EXPECT_FALSE(req.header("Expect").has_value());
  // Ours come first, custom ones after them in the order given.
  auto index = [&](const std::string& name) {
    for (size_t i = 0; i < req.headers.size(); ++i) {
      if (lower(req.headers[i].first) == lower(name)) return i;
    }
    return req.headers.size();
  };
  EXPECT_LT(index("User-Agent"), index("X-Skyring-Timer-Id"));
  EXPECT_LT(index("X-Skyring-Timer-Id"), index("Idempotency-Key"));
  EXPECT_LT(index("Idempotency-Key"), index("X-Skyring-Attempt"));
  EXPECT_LT(index("X-Skyring-Attempt"), index("Authorization"));
  EXPECT_LT(index("Authorization"), index("X-Empty"));
  EXPECT_LT(index("X-Empty"), index("X-Trace"));
  EXPECT_LT(index("X-Trace"), req.headers.size());
}

TEST(HttpTransportTest, SendsEveryMethodWithItsBody) {
  TestServer server;
  HttpTransport t;
  const std::vector<std::pair<std::string, std::string>> methods = {
      {"post", "POST"},     {"put", "PUT"}, {"patch", "PATCH"},
      {"delete", "DELETE"}, {"get", "GET"}, {"options", "OPTIONS"}};
  for (const auto& [m, wire] : methods) {
    DeliveryJob job = make_job(server.url("/" + m), m);
    job.data_kind = DataKind::kString;
    job.data = "body-" + m;
    DeliveryResult r = deliver_one(t, job);
    EXPECT_EQ(r.outcome, Outcome::kSuccess) << m << ": " << r.detail;
    EXPECT_EQ(r.status, 200) << m;
  }
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), methods.size());
  for (size_t i = 0; i < methods.size(); ++i) {
    EXPECT_EQ(reqs[i].method, methods[i].second);
    EXPECT_EQ(reqs[i].target, "/" + methods[i].first);
    EXPECT_EQ(reqs[i].body, "body-" + methods[i].first) << methods[i].second;
  }
}

TEST(HttpTransportTest, HeadNeverSendsABodyNorWaitsForOne) {
  TestServer server;  // answers HEAD with "Content-Length: 2" and no body, as HTTP says
  HttpTransport t;
  DeliveryJob with_data = make_job(server.url(), "head");
  with_data.data_kind = DataKind::kJson;
  with_data.data = "{}";
  for (const DeliveryJob& job : {make_job(server.url(), "head"), with_data}) {
    DeliveryResult r = deliver_one(t, job);
    EXPECT_EQ(r.outcome, Outcome::kSuccess) << r.detail;
    EXPECT_EQ(r.status, 200);
  }
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  for (const Request& req : reqs) {
    EXPECT_EQ(req.method, "HEAD");
    EXPECT_EQ(req.body, "");
    EXPECT_FALSE(req.header("Content-Type").has_value());
    EXPECT_FALSE(req.header("Content-Length").has_value());
  }
  EXPECT_EQ(server.connections(), 1);  // the connection stayed usable
}

TEST(HttpTransportTest, Any2xxIsSuccess) {
  TestServer server;
  HttpTransport t;
  for (int status : {200, 201, 202, 204, 299}) {
    server.set_status(status);
    DeliveryResult r = deliver_one(t, make_job(server.url()));
    EXPECT_EQ(r.outcome, Outcome::kSuccess) << status;
    EXPECT_EQ(r.status, status);
    EXPECT_EQ(r.detail, "");
  }
}

TEST(HttpTransportTest, ServerErrorsTimeoutAndTooManyRequestsAreRetryable) {
  TestServer server;
  HttpTransport t;
  for (int status : {500, 502, 503, 599, 408, 429}) {
    server.set_status(status);
    DeliveryResult r = deliver_one(t, make_job(server.url()));
    EXPECT_EQ(r.outcome, Outcome::kRetryable) << status;
    EXPECT_EQ(r.status, status);
    EXPECT_EQ(r.detail, "HTTP " + std::to_string(status));
  }
}

TEST(HttpTransportTest, OtherStatusesArePermanent) {
  TestServer server;
  HttpTransport t;
  for (int status : {400, 401, 403, 404, 410, 301, 302}) {
    server.set_status(status);
    DeliveryResult r = deliver_one(t, make_job(server.url()));
    EXPECT_EQ(r.outcome, Outcome::kPermanent) << status;
    EXPECT_EQ(r.status, status);
    EXPECT_EQ(r.detail, "HTTP " + std::to_string(status));
  }
  EXPECT_EQ(server.request_count(), 7u);  // redirects are not followed
}

TEST(HttpTransportTest, ConnectionRefusedIsRetryable) {
  RefusingPort port;
  HttpTransport t;
  DeliveryResult r = deliver_one(t, make_job(port.url()));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.detail, "Couldn't connect to server");
}

TEST(HttpTransportTest, SilentDestinationTimesOutAsRetryable) {
  TestServer server(200, TestServer::Mode::kSilent);
  HttpTransport t;
  DeliveryJob job = make_job(server.url());
  job.timeout_ms = 300;
  const auto start = Clock::now();
  DeliveryResult r = deliver_one(t, job);
  const auto elapsed = Clock::now() - start;
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.detail, "Timeout was reached");
  EXPECT_GE(elapsed, milliseconds(250));  // one-sided: never before the timeout
  EXPECT_EQ(server.request_count(), 1u);
}

TEST(HttpTransportTest, SequentialJobsReuseOneConnection) {
  TestServer server;
  HttpTransport t;
  for (int i = 0; i < 20; ++i) {
    DeliveryJob job = make_job(server.url());
    job.data_kind = DataKind::kJson;
    job.data = "{\"i\":" + std::to_string(i) + "}";
    ASSERT_EQ(deliver_one(t, job).outcome, Outcome::kSuccess) << i;
  }
  EXPECT_EQ(server.request_count(), 20u);
  EXPECT_LE(server.connections(), 2);
}

TEST(HttpTransportTest, PerHostLimitQueuesTransfersOnPooledConnections) {
  TestServer server;
  HttpTransportOptions options;
  options.max_connections_per_host = 1;
  Results results;
  HttpTransport t(options);
  for (size_t i = 0; i < 8; ++i) t.deliver(make_job(server.url()), results.done(i));
  ASSERT_TRUE(results.wait_for(8));
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(results.result(i).outcome, Outcome::kSuccess) << i;
  EXPECT_EQ(server.connections(), 1);
}

TEST(HttpTransportTest, SlowDestinationDoesNotDelayAFastOne) {
  TestServer slow(200, TestServer::Mode::kSilent);
  TestServer fast;
  Results results;
  HttpTransport t;
  constexpr size_t kSlow = 4;
  for (size_t i = 0; i < kSlow; ++i) {
    DeliveryJob job = make_job(slow.url());
    job.timeout_ms = 3000;
    t.deliver(std::move(job), results.done(i));
  }
  // The slow requests are really in flight before the fast one goes out.
  ASSERT_TRUE(wait_until([&] { return slow.request_count() == kSlow; }));
  t.deliver(make_job(fast.url()), results.done(kSlow));
  ASSERT_TRUE(wait_until([&] { return results.has(kSlow); }));
  EXPECT_EQ(results.result(kSlow).outcome, Outcome::kSuccess);
  EXPECT_EQ(results.size(), 1u);  // every slow one is still waiting: the fast one passed them
  ASSERT_TRUE(results.wait_for(kSlow + 1));
  for (size_t i = 0; i < kSlow; ++i) {
    EXPECT_EQ(results.result(i).outcome, Outcome::kRetryable);
    EXPECT_EQ(results.result(i).detail, "Timeout was reached");
  }
}

TEST(HttpTransportTest, FullQueueRefusesWithRetryable) {
  TestServer server(200, TestServer::Mode::kSilent);
  HttpTransportOptions options;
  options.max_queue = 2;
  Results results;
  HttpTransport t(options);
  for (size_t i = 0; i < 5; ++i) {
    DeliveryJob job = make_job(server.url());
    job.timeout_ms = 30'000;
    t.deliver(std::move(job), results.done(i));
  }
  // Refusals are answered inside deliver(), before it returns.
  for (size_t i = 2; i < 5; ++i) {
    ASSERT_TRUE(results.has(i)) << i;
    EXPECT_EQ(results.result(i).outcome, Outcome::kRetryable);
    EXPECT_EQ(results.result(i).detail, "delivery queue full");
  }
  EXPECT_FALSE(results.has(0));
  EXPECT_FALSE(results.has(1));
  t.stop();
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(results.calls(i), 1);
    EXPECT_EQ(results.result(i).outcome, Outcome::kAborted);
  }
}

TEST(HttpTransportTest, CompletedJobsFreeQueueSpace) {
  TestServer server;
  HttpTransportOptions options;
  options.max_queue = 1;
  HttpTransport t(options);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(deliver_one(t, make_job(server.url())).outcome, Outcome::kSuccess) << i;
  }
}

TEST(HttpTransportTest, StopAbortsQueuedAndInFlightJobsExactlyOnce) {
  TestServer server(200, TestServer::Mode::kSilent);
  Results results;
  constexpr size_t kJobs = 10;
  {
    HttpTransport t;
    for (size_t i = 0; i < kJobs; ++i) {
      DeliveryJob job = make_job(server.url());
      job.timeout_ms = 60'000;
      t.deliver(std::move(job), results.done(i));
    }
    ASSERT_TRUE(wait_until([&] { return server.request_count() >= 3; }));
    t.stop();
    // stop() returned: every job is done and nothing runs any more.
    for (size_t i = 0; i < kJobs; ++i) {
      EXPECT_EQ(results.calls(i), 1) << i;
      EXPECT_EQ(results.result(i).outcome, Outcome::kAborted) << i;
    }
    t.stop();  // idempotent
    t.deliver(make_job(server.url()), results.done(kJobs));
    ASSERT_TRUE(results.has(kJobs));  // answered inside deliver()
    EXPECT_EQ(results.result(kJobs).outcome, Outcome::kAborted);
  }
  for (size_t i = 0; i <= kJobs; ++i) EXPECT_EQ(results.calls(i), 1) << i;
}

TEST(HttpTransportTest, ConcurrentDeliverAndStopCallEveryDoneExactlyOnce) {
  TestServer server;
  Results results;
  constexpr size_t kThreads = 4;
  constexpr size_t kPerThread = 100;
  HttpTransport t;
  std::atomic<size_t> submitted{0};
  std::vector<std::thread> producers;
  for (size_t p = 0; p < kThreads; ++p) {
    producers.emplace_back([&, p] {
      for (size_t i = 0; i < kPerThread; ++i) {
        t.deliver(make_job(server.url()), results.done(p * kPerThread + i));
        submitted.fetch_add(1);
      }
    });
  }
  ASSERT_TRUE(wait_until([&] { return submitted.load() >= kThreads * kPerThread / 4; }));
  t.stop();
  for (auto& th : producers) th.join();
  ASSERT_TRUE(results.wait_for(kThreads * kPerThread));
  for (size_t i = 0; i < kThreads * kPerThread; ++i) {
    EXPECT_EQ(results.calls(i), 1) << i;
    Outcome o = results.result(i).outcome;
    EXPECT_TRUE(o == Outcome::kSuccess || o == Outcome::kAborted) << i;
  }
}

TEST(HttpTransportTest, DestructorAbortsInFlightJobs) {
  TestServer server(200, TestServer::Mode::kSilent);
  Results results;
  {
    HttpTransport t;
    t.deliver(make_job(server.url()), results.done(0));
    ASSERT_TRUE(wait_until([&] { return server.request_count() == 1; }));
  }
  EXPECT_EQ(results.calls(0), 1);
  EXPECT_EQ(results.result(0).outcome, Outcome::kAborted);
}

TEST(HttpTransportTest, CallbackMayDeliverAgain) {
  TestServer server;
  Results results;
  HttpTransport t;
  t.deliver(make_job(server.url()), [&](DeliveryResult r) {
    results.done(0)(std::move(r));
    t.deliver(make_job(server.url()), results.done(1));  // no lock of the transport is held
  });
  ASSERT_TRUE(results.wait_for(2));
  EXPECT_EQ(results.result(0).outcome, Outcome::kSuccess);
  EXPECT_EQ(results.result(1).outcome, Outcome::kSuccess);
  EXPECT_EQ(server.request_count(), 2u);
}

}  // namespace

// The plain-http client (http:// destinations) below: the answers a real server may give.

TEST(HttpTransportTest, HostHeaderNamesTheDestinationUnlessTheJobSetsOne) {
  TestServer server;
  HttpTransport t;
  EXPECT_EQ(deliver_one(t, make_job(server.url())).outcome, Outcome::kSuccess);
  DeliveryJob job = make_job(server.url());
  job.headers = {{"host", "hooks.example.test"}};
  EXPECT_EQ(deliver_one(t, job).outcome, Outcome::kSuccess);
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].all("Host"),
            std::vector<std::string>{"127.0.0.1:" + std::to_string(server.port())});
  EXPECT_EQ(reqs[1].all("Host"), std::vector<std::string>{"hooks.example.test"});
}

TEST(HttpTransportTest, QueryIsPartOfTheTarget) {
  TestServer server;
  HttpTransport t;
  EXPECT_EQ(deliver_one(t, make_job(server.url("/a/b?x=1&y=%20"))).outcome, Outcome::kSuccess);
  EXPECT_EQ(server.only_request().target, "/a/b?x=1&y=%20");
  EXPECT_EQ(deliver_one(t, make_job("http://127.0.0.1:" + std::to_string(server.port()))).outcome,
            Outcome::kSuccess);
  EXPECT_EQ(server.requests().back().target, "/");
}

TEST(HttpTransportTest, IdleConnectionClosedByTheServerIsReplacedWithoutARepeat) {
  TestServer server;
  // A keep-alive answer, then the server drops the connection (as an idle timeout would).
  server.set_raw_answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
  HttpTransport t;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(wait_until([&] { return server.connections() == i; }));
    DeliveryResult r = deliver_one(t, make_job(server.url()));
    EXPECT_EQ(r.outcome, Outcome::kSuccess) << i << ": " << r.detail;
  }
  EXPECT_EQ(server.request_count(), 5u);  // each job reached the server exactly once
  EXPECT_EQ(server.connections(), 5);
}

TEST(HttpTransportTest, ConnectionCloseAndHttp10AnswersAreNotReused) {
  TestServer server;
  HttpTransport t;
  server.set_raw_answer("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(deliver_one(t, make_job(server.url())).outcome, Outcome::kSuccess);
  EXPECT_EQ(deliver_one(t, make_job(server.url())).outcome, Outcome::kSuccess);
  server.set_raw_answer("HTTP/1.0 204 No Content\r\n\r\n");
  EXPECT_EQ(deliver_one(t, make_job(server.url())).outcome, Outcome::kSuccess);
  EXPECT_EQ(deliver_one(t, make_job(server.url())).outcome, Outcome::kSuccess);
  EXPECT_EQ(server.request_count(), 4u);
  EXPECT_EQ(server.connections(), 4);
}

TEST(HttpTransportTest, ChunkedAndInformationalAnswersKeepTheConnection) {
  TestServer server;
  HttpTransport t;
  server.set_raw_answer(
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  for (int i = 0; i < 3; ++i) {
    DeliveryResult r = deliver_one(t, make_job(server.url()));
    EXPECT_EQ(r.outcome, Outcome::kSuccess) << r.detail;
    EXPECT_EQ(r.status, 202);
  }
  EXPECT_EQ(server.connections(), 1);
}

TEST(HttpTransportTest, GarbageOrTruncatedAnswersAreRetryable) {
  TestServer server;
  HttpTransport t;
  server.set_raw_answer("SMTP ready\r\n\r\n");
  DeliveryResult r = deliver_one(t, make_job(server.url()));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_EQ(r.status, 0);
  server.set_raw_answer("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", true);
  r = deliver_one(t, make_job(server.url()));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_EQ(r.detail, "Failure when receiving data from the peer");
  server.set_raw_answer("", false);
  EXPECT_EQ(deliver_one(t, make_job(server.url())).outcome, Outcome::kSuccess);  // recovered
}

// More destinations than the total connection cap: idle connections of one destination are
// closed to make room for another, and requests waiting for room are sent once some frees up.
TEST(HttpTransportTest, TotalConnectionCapIsSharedAcrossDestinations) {
  constexpr size_t kServers = 4;
  constexpr size_t kPerServer = 15;
  std::vector<std::unique_ptr<TestServer>> servers;
  for (size_t i = 0; i < kServers; ++i) servers.push_back(std::make_unique<TestServer>());
  HttpTransportOptions options;
  options.max_connections_total = 2;
  options.max_connections_per_host = 2;
  Results results;
  HttpTransport t(options);
  for (size_t j = 0; j < kPerServer; ++j) {
    for (size_t i = 0; i < kServers; ++i) {
      t.deliver(make_job(servers[i]->url()), results.done(j * kServers + i));
    }
  }
  ASSERT_TRUE(results.wait_for(kServers * kPerServer));
  for (size_t k = 0; k < kServers * kPerServer; ++k) {
    EXPECT_EQ(results.calls(k), 1) << k;
    EXPECT_EQ(results.result(k).outcome, Outcome::kSuccess)
        << k << ": " << results.result(k).detail;
  }
  for (auto& s : servers) EXPECT_EQ(s->request_count(), kPerServer);
  // Sequential jobs to alternating destinations reuse or evict, never pile up connections.
  for (int round = 0; round < 3; ++round) {
    for (auto& s : servers)
      EXPECT_EQ(deliver_one(t, make_job(s->url())).outcome, Outcome::kSuccess);
  }
}

// Requests waiting for a pooled connection count that wait against their timeout.
TEST(HttpTransportTest, TimeWaitingForAConnectionCountsAgainstTheTimeout) {
  TestServer server(200, TestServer::Mode::kSilent);
  HttpTransportOptions options;
  options.max_connections_per_host = 1;
  Results results;
  HttpTransport t(options);
  constexpr size_t kJobs = 10;
  const auto start = Clock::now();
  for (size_t i = 0; i < kJobs; ++i) {
    DeliveryJob job = make_job(server.url());
    job.timeout_ms = 2000;
    t.deliver(std::move(job), results.done(i));
  }
  ASSERT_TRUE(results.wait_for(kJobs));
  // One timeout for all of them, not one after another (which would take 20 s): the bound is
  // half of that, far from what a loaded machine adds to a 2 s wait.
  EXPECT_LT(Clock::now() - start, milliseconds(10'000));
  for (size_t i = 0; i < kJobs; ++i) {
    EXPECT_EQ(results.result(i).outcome, Outcome::kRetryable) << i;
    EXPECT_EQ(results.result(i).detail, "Timeout was reached") << i;
  }
  // At most the one that held the connection and the one just behind it (whose deadline,
  // microseconds later, had not quite passed when the connection freed) were sent.
  EXPECT_LE(server.request_count(), 2u);
}

// Bytes nobody asked for on an idle connection (here a second answer after the first) are
// never taken for the next request's answer: that connection is not reused.
TEST(HttpTransportTest, IdleConnectionWithUnaskedBytesIsNotReused) {
  TestServer server;
  server.set_raw_answer(
      "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
      "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n");
  HttpTransport t;
  for (int i = 0; i < 3; ++i) {
    DeliveryResult r = deliver_one(t, make_job(server.url()));
    EXPECT_EQ(r.outcome, Outcome::kSuccess) << i << ": " << r.detail;
    EXPECT_EQ(r.status, 200) << i;
  }
  EXPECT_EQ(server.request_count(), 3u);
  EXPECT_EQ(server.connections(), 3);
}

TEST(HttpTransportTest, HopByHopJobHeadersAreNotSent) {
  TestServer server;
  HttpTransport t;
  DeliveryJob job = make_job(server.url());
  job.headers = {{"Connection", "close"},
                 {"Upgrade", "h2c"},
                 {"TE", "trailers"},
                 {"Keep-Alive", "timeout=1"},
                 {"X-Kept", "yes"}};
  EXPECT_EQ(deliver_one(t, job).outcome, Outcome::kSuccess);
  Request req = server.only_request();
  for (const char* name : {"Connection", "Upgrade", "TE", "Keep-Alive"}) {
    EXPECT_FALSE(req.header(name).has_value()) << name;
  }
  EXPECT_EQ(req.header("X-Kept"), "yes");
}

// A destination cannot make the node buffer without bound: an endless head or chunk line is
// a retryable failure once it outgrows the connection's buffer.
TEST(HttpTransportTest, EndlessAnswerHeadOrChunkLineIsRetryable) {
  TestServer server;
  HttpTransport t;
  const std::string endless(300 * 1024, 'a');
  for (const std::string& raw :
       {"HTTP/1.1 200 OK\r\nX-Big: " + endless,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + endless}) {
    server.set_raw_answer(raw);
    DeliveryJob job = make_job(server.url());
    job.timeout_ms = 5000;
    DeliveryResult r = deliver_one(t, job);
    EXPECT_EQ(r.outcome, Outcome::kRetryable);
    EXPECT_EQ(r.detail, "Failure when receiving data from the peer");
  }
}

// IP-literal http:// destinations take the plain client; the rest take libcurl, which adds
// "Accept: */*" (and Basic authentication for user info) and speaks TLS for https.
TEST(HttpTransportTest, NamesUserInfoAndHttpsGoThroughCurl) {
  TestServer server;
  HttpTransport t;
  const std::string port = std::to_string(server.port());
  EXPECT_EQ(deliver_one(t, make_job(server.url())).outcome, Outcome::kSuccess);
  EXPECT_EQ(deliver_one(t, make_job("http://localhost:" + port + "/hook")).outcome,
            Outcome::kSuccess);
  EXPECT_EQ(deliver_one(t, make_job("http://user:pw@127.0.0.1:" + port + "/hook")).outcome,
            Outcome::kSuccess);
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_FALSE(reqs[0].header("Accept").has_value());
  EXPECT_EQ(reqs[1].header("Accept"), "*/*");
  EXPECT_EQ(reqs[2].header("Authorization"), "Basic dXNlcjpwdw==");
  DeliveryJob tls = make_job("https://127.0.0.1:" + port + "/hook");
  tls.timeout_ms = 300;  // a TLS hello is no HTTP request: the server never answers it
  DeliveryResult r = deliver_one(t, tls);
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_EQ(server.request_count(), 3u);
}

}  // namespace skyring
