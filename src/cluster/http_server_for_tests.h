// A small HTTP/1.1 server for the cluster tests (a peer standing in for another node): plain
// sockets on 127.0.0.1:<ephemeral>, one thread polling every connection, keep-alive,
// Content-Length bodies only. The test gives a handler that turns each request into the raw
// bytes of its answer, or into silence.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace skyring::testing {

struct TestHttpRequest {
  std::string method;
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;  // as received, in order
  std::string body;

  // The first value of a header, name compared case-insensitively.
  std::optional<std::string> header(std::string_view name) const {
    for (const auto& [k, v] : headers) {
      if (k.size() == name.size() &&
          std::equal(k.begin(), k.end(), name.begin(), [](char a, char b) {
            return std::tolower(static_cast<unsigned char>(a)) ==
                   std::tolower(static_cast<unsigned char>(b));
          }))
        return v;
    }
    return std::nullopt;
  }
};

struct TestHttpAnswer {
  std::string raw;           // bytes written as they are; empty: no answer at all
  bool close_after = false;  // close the connection after writing
};

// "HTTP/1.1 <status> Test" with the headers given, Content-Length and the body.
inline std::string test_http_answer(int status, std::string_view body,
                                    std::vector<std::pair<std::string, std::string>> headers = {}) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " Test\r\n";
  for (const auto& [k, v] : headers) out += k + ": " + v + "\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  out += body;
  return out;
}

class HttpServerForTests {
 public:
  using Handler = std::function<TestHttpAnswer(const TestHttpRequest&)>;

  explicit HttpServerForTests(Handler handler) : handler_(std::move(handler)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(listen_fd_, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listen_fd_, 128), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(::pipe2(wake_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { serve(); });
  }

  ~HttpServerForTests() {
    char b = 'x';
    EXPECT_EQ(::write(wake_[1], &b, 1), 1);
    thread_.join();
    for (auto& [fd, buf] : clients_) ::close(fd);
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }
  HttpServerForTests(const HttpServerForTests&) = delete;
  HttpServerForTests& operator=(const HttpServerForTests&) = delete;

  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int connections() const { return accepted_.load(); }
  std::vector<TestHttpRequest> requests() {
    std::lock_guard lock(mu_);
    return requests_;
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
        bool close_now = n <= 0;
        if (!close_now) {
          std::string& buf = clients_[fd];
          buf.append(chunk, static_cast<size_t>(n));
          while (!close_now && handle_one(fd, buf, close_now)) {
          }
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
    TestHttpRequest req;
    size_t line_end = buf.find("\r\n");
    std::string line = buf.substr(0, line_end);
    size_t sp1 = line.find(' ');
    size_t sp2 = line.find(' ', sp1 + 1);
    req.method = line.substr(0, sp1);
    req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    size_t content_length = 0;
    for (size_t pos = line_end + 2; pos < end;) {
      size_t eol = buf.find("\r\n", pos);
      std::string h = buf.substr(pos, eol - pos);
      size_t colon = h.find(':');
      std::string name = h.substr(0, colon);
      std::string value = colon + 1 < h.size() ? h.substr(colon + 1) : "";
      while (!value.empty() && value.front() == ' ') value.erase(0, 1);
      req.headers.emplace_back(name, value);
      pos = eol + 2;
    }
    if (auto cl = req.header("content-length")) content_length = std::stoul(*cl);
    size_t body_start = end + 4;
    if (buf.size() < body_start + content_length) return false;
    req.body = buf.substr(body_start, content_length);
    buf.erase(0, body_start + content_length);
    TestHttpAnswer answer = handler_(req);
    {
      std::lock_guard lock(mu_);
      requests_.push_back(std::move(req));
    }
    if (!answer.raw.empty()) ::send(fd, answer.raw.data(), answer.raw.size(), MSG_NOSIGNAL);
    close_now = answer.close_after;
    return true;
  }

  Handler handler_;  // server thread only
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0};
  std::map<int, std::string> clients_;  // server thread only
  std::mutex mu_;
  std::vector<TestHttpRequest> requests_;  // guarded by mu_
  std::thread thread_;
};

// A port with a bound socket that never listens: connecting to it is refused, and nothing
// else can take the port while the test runs.
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
  RefusingPort(const RefusingPort&) = delete;
  RefusingPort& operator=(const RefusingPort&) = delete;
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

}  // namespace skyring::testing
