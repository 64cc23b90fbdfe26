#include "bench/nats_child.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/node_process.h"
#include "bench/options.h"

namespace skyring::bench {
namespace {

void sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

}  // namespace

Result<uint16_t> free_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::kIo, fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  if (rc == 0) rc = getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  if (rc != 0) return fail(Errc::kIo, fmt::format("bind: {}", std::strerror(errno)));
  return ntohs(a.sin_port);
}

bool port_accepts(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

std::string find_nats_server(const std::string& given) {
  if (!given.empty()) return given;
  std::vector<std::string> dirs;
  if (const char* path = getenv("PATH")) {
    std::string p = path;
    size_t start = 0;
    while (start <= p.size()) {
      size_t end = p.find(':', start);
      if (end == std::string::npos) end = p.size();
      if (end > start) dirs.push_back(p.substr(start, end - start));
      start = end + 1;
    }
  }
  dirs.insert(dirs.end(), {"/usr/sbin", "/usr/bin", "/usr/local/bin"});
  for (const std::string& d : dirs) {
    std::string cand = d + "/nats-server";
    if (access(cand.c_str(), X_OK) == 0) return cand;
  }
  return {};
}

NatsChild::~NatsChild() {
  stop(5000);
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

Result<void> NatsChild::start(const std::string& binary, uint16_t port, int64_t timeout_ms) {
  if (binary.empty() || access(binary.c_str(), X_OK) != 0) {
    return fail(Errc::kInvalidArgument,
                "nats-server not found (--nats-server PATH; Debian package nats-server)");
  }
  char tmpl[] = "/tmp/skyring-bench-nats-XXXXXX";
  if (dir_.empty()) {
    if (mkdtemp(tmpl) == nullptr) return fail(Errc::kIo, "mkdtemp failed");
    dir_ = tmpl;
  }
  port_ = port;
  std::string log_path = dir_ + "/nats.log";
  std::vector<std::string> args = {binary, "-a", "127.0.0.1", "-p", std::to_string(port)};
  auto pid = spawn_logged(std::move(args), log_path, /*append=*/true);
  if (!pid) return tl::unexpected(pid.error());
  pid_ = *pid;
  int64_t deadline = monotonic_us() + timeout_ms * 1000;
  while (monotonic_us() < deadline && !interrupted().load()) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return fail(Errc::kUnavailable,
                  fmt::format("nats-server exited at start (see {})", log_path));
    }
    if (port_accepts(port_)) return {};
    sleep_ms(20);
  }
  stop(2000);
  return fail(Errc::kUnavailable, fmt::format("nats-server not listening on {}", port_));
}

void NatsChild::stop(int64_t timeout_ms) {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  int64_t deadline = monotonic_us() + timeout_ms * 1000;
  while (monotonic_us() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    sleep_ms(5);
  }
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

}  // namespace skyring::bench
