#include "bench/load_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/http_wire.h"
#include "bench/options.h"

namespace skyring::bench {
namespace {

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// Non-blocking connect; the socket becomes writable when it completes.
int start_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in a = loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  return fd;
}

class LoadLoop {
 public:
  LoadLoop(const LoadOptions& o, const BuildRequest& build, const OnOutcome& done)
      : o_(o), build_(build), done_(done), conns_(o.connections) {
    reconnect_budget_ = o.connections * 4 + 64;
  }
  ~LoadLoop() {
    for (Conn& c : conns_) {
      if (c.fd >= 0) close(c.fd);
    }
    if (ep_ >= 0) close(ep_);
  }

  Result<LoadStats> run() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) return fail(Errc::kIo, fmt::format("epoll_create1: {}", std::strerror(errno)));
    for (size_t i = 0; i < conns_.size(); ++i) open(i);
    std::vector<epoll_event> events(256);
    while (true) {
      int64_t now = monotonic_us();
      if (interrupted().load()) {
        stats_.interrupted = true;
        abandon_all(now);
        break;
      }
      if (now >= o_.deadline_us) {
        stats_.deadline_hit = true;
        abandon_all(now);
        break;
      }
      if (busy_ == 0 && (!may_issue(now) || live_ == 0)) break;
      int64_t wait_us = std::min<int64_t>(50'000, o_.deadline_us - now);
      if (o_.stop_issuing_us > now) wait_us = std::min(wait_us, o_.stop_issuing_us - now);
      int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()),
                         static_cast<int>((wait_us + 999) / 1000));
      if (n < 0 && errno != EINTR) {
        return fail(Errc::kIo, fmt::format("epoll_wait: {}", std::strerror(errno)));
      }
      for (int k = 0; k < n; ++k) handle(events[k].data.u32, events[k].events);
    }
    return stats_;
  }

 private:
  enum class State { kClosed, kConnecting, kIdle, kBusy };
  struct Conn {
    int fd = -1;
    State state = State::kClosed;
    std::string out;
    size_t out_off = 0;
    std::string in;
    uint64_t seq = 0;
    int64_t sent_us = 0;
    bool watching_out = false;
  };

  bool may_issue(int64_t now) const {
    return next_seq_ < o_.max_requests && now < o_.stop_issuing_us &&
           !(o_.stop != nullptr && o_.stop->load(std::memory_order_acquire));
  }

  void watch(size_t i, bool out) {
    Conn& c = conns_[i];
    epoll_event ev{};
    ev.events = out ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
    ev.data.u32 = static_cast<uint32_t>(i);
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
    c.watching_out = out;
  }

  void open(size_t i) {
    Conn& c = conns_[i];
    c.fd = start_connect(o_.spread.empty() ? o_.port : o_.spread[i % o_.spread.size()]);
    if (c.fd < 0) return;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.u32 = static_cast<uint32_t>(i);
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
    c.watching_out = true;
    c.state = State::kConnecting;
    c.in.clear();
    c.in.reserve(4096);
    ++live_;
  }

  // Closes the connection; a request in flight on it fails. Reopens while there is work left.
  void drop(size_t i, int64_t now) {
    Conn& c = conns_[i];
    if (c.state == State::kBusy) {
      --busy_;
      ++stats_.failures;
      done_(Outcome{c.seq, 0, {}, c.sent_us, now});
    }
    if (c.fd >= 0) close(c.fd);
    c.fd = -1;
    c.state = State::kClosed;
    --live_;
    if (may_issue(now) && reconnect_budget_ > 0) {
      --reconnect_budget_;
      ++stats_.reconnects;
      open(i);
    }
  }

  void abandon_all(int64_t now) {
    for (size_t i = 0; i < conns_.size(); ++i) {
      if (conns_[i].state == State::kBusy) {
        conns_[i].state = State::kIdle;  // not dropped: no reconnect on the way out
        --busy_;
        ++stats_.failures;
        done_(Outcome{conns_[i].seq, 0, {}, conns_[i].sent_us, now});
      }
    }
  }

  void issue(size_t i, int64_t now) {
    Conn& c = conns_[i];
    if (!may_issue(now)) {
      c.state = State::kIdle;
      return;
    }
    c.out.clear();
    c.seq = next_seq_++;
    build_(c.seq, c.out);
    c.out_off = 0;
    c.state = State::kBusy;
    ++busy_;
    ++stats_.started;
    c.sent_us = monotonic_us();
    flush(i, c.sent_us);
  }

  void flush(size_t i, int64_t now) {
    Conn& c = conns_[i];
    while (c.out_off < c.out.size()) {
      ssize_t w = send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EAGAIN) {
        if (!c.watching_out) watch(i, true);
        return;
      }
      if (w <= 0) return drop(i, now);
      c.out_off += static_cast<size_t>(w);
    }
    if (c.watching_out) watch(i, false);
  }

  void handle(size_t i, uint32_t ev) {
    Conn& c = conns_[i];
    if (c.fd < 0) return;
    int64_t now = monotonic_us();
    if (c.state == State::kConnecting) {
      if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) return drop(i, now);
      watch(i, false);
      return issue(i, now);
    }
    if ((ev & EPOLLOUT) && c.state == State::kBusy) {
      flush(i, now);
      if (c.state != State::kBusy) return;  // dropped (and maybe reopened) while writing
    }
    if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    char buf[65536];
    ssize_t r = recv(c.fd, buf, sizeof buf, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) return drop(i, now);
    if (c.state != State::kBusy) return drop(i, now);  // bytes nobody asked for
    c.in.append(buf, static_cast<size_t>(r));
    MessageHead h;
    Parse p = parse_head(c.in, true, &h);
    if (p == Parse::kBad) return drop(i, now);
    if (p == Parse::kNeedMore || c.in.size() < h.head_len + h.content_length) return;
    if (c.in.size() > h.head_len + h.content_length) return drop(i, now);  // no pipelining
    now = monotonic_us();
    --busy_;
    ++stats_.responses;
    c.state = State::kIdle;
    done_(Outcome{c.seq, h.status, std::string_view(c.in).substr(h.head_len, h.content_length),
                  c.sent_us, now});
    c.in.clear();
    if (h.close) return drop(i, now);
    issue(i, now);
  }

  const LoadOptions& o_;
  const BuildRequest& build_;
  const OnOutcome& done_;
  std::vector<Conn> conns_;
  int ep_ = -1;
  uint64_t next_seq_ = 0;
  size_t busy_ = 0;
  size_t live_ = 0;
  size_t reconnect_budget_ = 0;
  LoadStats stats_;
};

}  // namespace

Result<LoadStats> run_load(const LoadOptions& options, const BuildRequest& build,
                           const OnOutcome& done) {
  if (options.connections == 0) return fail(Errc::kInvalidArgument, "no connections");
  LoadLoop loop(options, build, done);
  return loop.run();
}

Result<HttpReply> http_request(uint16_t port, std::string_view method, std::string_view path,
                               int64_t timeout_ms) {
  int64_t deadline = monotonic_us() + timeout_ms * 1000;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::kIo, fmt::format("socket: {}", std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  sockaddr_in a = loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    return fail(Errc::kIo, fmt::format("connect 127.0.0.1:{}: {}", port, std::strerror(errno)));
  }
  std::string req = fmt::format("{} {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                                method, path, port);
  if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    return fail(Errc::kIo, fmt::format("send: {}", std::strerror(errno)));
  }
  std::string in;
  char buf[65536];
  while (true) {
    MessageHead h;
    Parse p = parse_head(in, true, &h);
    if (p == Parse::kBad) return fail(Errc::kIo, "unparseable response");
    if (p == Parse::kOk && in.size() >= h.head_len + h.content_length) {
      return HttpReply{h.status, in.substr(h.head_len, h.content_length)};
    }
    int64_t left_ms = (deadline - monotonic_us()) / 1000;
    if (left_ms <= 0) return fail(Errc::kIo, fmt::format("{} {}: timed out", method, path));
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left_ms)) <= 0) continue;
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return fail(Errc::kIo, fmt::format("{} {}: connection closed", method, path));
    in.append(buf, static_cast<size_t>(r));
  }
}

}  // namespace skyring::bench
