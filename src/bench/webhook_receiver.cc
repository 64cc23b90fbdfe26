#include "bench/webhook_receiver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <unordered_map>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/http_wire.h"

namespace skyring::bench {
namespace {

constexpr std::string_view kOk = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

struct Conn {
  std::string in;
  std::string out;
  bool watching_out = false;
};

}  // namespace

Receiver::Receiver(std::string prefix, uint32_t measured, uint32_t warm)
    : prefix_(std::move(prefix)), seen_measured_(measured), seen_warm_(warm) {
  max_receipts_ = 2 * static_cast<size_t>(measured) + 1024;
  receipts_.reserve(static_cast<size_t>(measured) + 1024);
}

WebhookReceiver::WebhookReceiver(std::string prefix, uint32_t measured, uint32_t warm, Wire wire)
    : Receiver(std::move(prefix), measured, warm), wire_(wire) {}

Result<std::unique_ptr<WebhookReceiver>> WebhookReceiver::start(std::string prefix,
                                                                uint32_t measured, uint32_t warm,
                                                                Wire wire) {
  std::unique_ptr<WebhookReceiver> r(new WebhookReceiver(std::move(prefix), measured, warm, wire));
  r->listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (r->listen_fd_ < 0) return fail(Errc::kIo, fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(r->listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(r->listen_fd_, 1024) != 0 ||
      getsockname(r->listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    return fail(Errc::kIo, fmt::format("receiver listen: {}", std::strerror(errno)));
  }
  r->port_ = ntohs(a.sin_port);
  r->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (r->wake_fd_ < 0) return fail(Errc::kIo, fmt::format("eventfd: {}", std::strerror(errno)));
  r->thread_ = std::thread([p = r.get()] { p->loop(); });
  return r;
}

WebhookReceiver::~WebhookReceiver() {
  stop();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void WebhookReceiver::stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  ssize_t w = write(wake_fd_, &one, sizeof one);
  (void)w;
  thread_.join();
}

std::string WebhookReceiver::callback() const {
  if (wire_ == Wire::kLines) {
    return fmt::format(R"({{"transport":"tcp","method":"write","uri":"tcp://127.0.0.1:{}"}})",
                       port_);
  }
  return fmt::format(R"({{"transport":"http","method":"post","uri":"http://127.0.0.1:{}/hook"}})",
                     port_);
}

void Receiver::record(std::string_view id, std::string_view attempt, int64_t now_us) {
  ++counts_.requests;
  if (attempt != "1" && !attempt.empty()) ++counts_.retried;
  if (id.size() < prefix_.size() + 2 || id.substr(0, prefix_.size()) != prefix_) {
    ++counts_.foreign;
    return;
  }
  char kind = id[prefix_.size()];
  std::string_view digits = id.substr(prefix_.size() + 1);
  uint32_t seq = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), seq);
  std::vector<uint8_t>& seen = kind == 'd' ? seen_measured_ : seen_warm_;
  if ((kind != 'd' && kind != 'w') || ec != std::errc() || p != digits.data() + digits.size() ||
      seq >= seen.size()) {
    ++counts_.foreign;
    return;
  }
  bool first = seen[seq] == 0;
  if (seen[seq] < 255) ++seen[seq];
  if (kind == 'w') {
    ++counts_.warm_total;
    if (first) warm_unique_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (first) measured_unique_.fetch_add(1, std::memory_order_relaxed);
  if (receipts_.size() < max_receipts_) {
    receipts_.push_back(Receipt{now_us, seq});
  } else {
    ++counts_.overflow;
  }
}

void WebhookReceiver::loop() {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd_;
  epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.fd = wake_fd_;
  epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd_, &ev);
  std::unordered_map<int, Conn> conns;
  SystemClock clock;
  auto close_conn = [&](int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
    conns.erase(fd);
  };
  auto flush = [&](int fd, Conn& c) {
    while (!c.out.empty()) {
      ssize_t w = send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EAGAIN) break;
      if (w <= 0) return close_conn(fd);
      c.out.erase(0, static_cast<size_t>(w));
    }
    bool want = !c.out.empty();
    if (want != c.watching_out) {
      epoll_event e{};
      e.events = want ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
      e.data.fd = fd;
      epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
      c.watching_out = want;
    }
  };
  std::vector<epoll_event> events(256);
  char buf[65536];
  bool running = true;
  while (running) {
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 1000);
    for (int k = 0; k < n; ++k) {
      int fd = events[k].data.fd;
      if (fd == wake_fd_) {
        running = false;
        continue;
      }
      if (fd == listen_fd_) {
        while (true) {
          int c = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          accepted_.fetch_add(1, std::memory_order_relaxed);
          int one = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          epoll_event e{};
          e.events = EPOLLIN;
          e.data.fd = c;
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
          conns[c].in.reserve(4096);
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      Conn& c = it->second;
      if (events[k].events & EPOLLOUT) {
        flush(fd, c);
        if (conns.find(fd) == conns.end()) continue;
      }
      if (!(events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) {
        close_conn(fd);
        continue;
      }
      int64_t now = clock.now_us();
      c.in.append(buf, static_cast<size_t>(r));
      size_t off = 0;
      bool bad = false;
      if (wire_ == Wire::kLines) {
        for (size_t nl; (nl = c.in.find('\n', off)) != std::string::npos; off = nl + 1) {
          record(std::string_view(c.in).substr(off, nl - off), {}, now);
        }
        if (c.in.size() - off > 4096) bad = true;  // no id is that long
      }
      while (wire_ == Wire::kHttp && off < c.in.size()) {
        std::string_view rest = std::string_view(c.in).substr(off);
        MessageHead h;
        Parse p = parse_head(rest, false, &h);
        if (p == Parse::kBad) {
          bad = true;
          break;
        }
        if (p == Parse::kNeedMore || rest.size() < h.head_len + h.content_length) break;
        std::string_view head = rest.substr(0, h.head_len);
        record(header_value(head, "x-skyring-timer-id"), header_value(head, "x-skyring-attempt"),
               now);
        c.out.append(kOk);
        off += h.head_len + h.content_length;
      }
      if (bad) {
        ++counts_.bad;
        close_conn(fd);
        continue;
      }
      c.in.erase(0, off);
      flush(fd, c);
    }
  }
  for (auto& [fd, c] : conns) close(fd);
  close(ep);
}

}  // namespace skyring::bench
