#include "bench/node_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/load_client.h"
#include "bench/options.h"

namespace skyring::bench {
namespace {

void sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("wait status {}", status);
}

// Port from "... listening on 127.0.0.1:PORT (...)"; 0 while the line is not there yet.
uint16_t listening_port(const std::string& log) {
  size_t at = log.find("listening on ");
  if (at == std::string::npos) return 0;
  size_t end = log.find_first_of(" \n", at + 13);
  if (end == std::string::npos) return 0;
  std::string_view addr = std::string_view(log).substr(at + 13, end - at - 13);
  size_t colon = addr.rfind(':');
  if (colon == std::string_view::npos) return 0;
  uint16_t port = 0;
  std::from_chars(addr.data() + colon + 1, addr.data() + addr.size(), port);
  return port;
}

}  // namespace

Result<std::unique_ptr<NodeProcess>> NodeProcess::create(NodeSpec spec) {
  if (access(spec.binary.c_str(), X_OK) != 0) {
    return fail(Errc::kInvalidArgument, fmt::format("--skyring {}: not an executable: {}",
                                                    spec.binary, std::strerror(errno)));
  }
  std::unique_ptr<NodeProcess> n(new NodeProcess(std::move(spec)));
  char tmpl[] = "/tmp/skyring-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    return fail(Errc::kIo, fmt::format("mkdtemp: {}", std::strerror(errno)));
  }
  n->dir_ = tmpl;
  return n;
}

NodeProcess::~NodeProcess() {
  kill_hard();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

bool NodeProcess::reap(bool block) {
  if (pid_ <= 0) return true;
  int status = 0;
  pid_t r = waitpid(pid_, &status, block ? 0 : WNOHANG);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    exit_status_ = status;
    pid_ = -1;
    return true;
  }
  return false;
}

bool NodeProcess::running() {
  return !reap(false);
}

void NodeProcess::kill_hard() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  reap(true);
}

Result<pid_t> spawn_logged(std::vector<std::string> args, const std::string& log_path,
                           bool append) {
  // Everything the child needs is prepared before fork(): after it only async-signal-safe calls.
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
  int log_fd = ::open(log_path.c_str(), flags, 0644);
  if (log_fd < 0) return fail(Errc::kIo, fmt::format("{}: {}", log_path, std::strerror(errno)));
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the bench died before prctl took effect
    dup2(devnull, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  ::close(log_fd);
  if (devnull >= 0) ::close(devnull);
  if (pid < 0) return fail(Errc::kIo, fmt::format("fork: {}", std::strerror(errno)));
  return pid;
}

Result<StartTiming> NodeProcess::start(uint16_t port, int64_t timeout_ms) {
  if (pid_ > 0) return fail(Errc::kConflict, "node already running");
  std::string log_path = dir_ + "/node.log";
  std::vector<std::string> args = {
      spec_.binary, "run",          "--host",    "127.0.0.1",   "--port",      std::to_string(port),
      "--data-dir", dir_ + "/data", "--storage", spec_.storage, "--log-level", "info"};
  args.insert(args.end(), spec_.extra_args.begin(), spec_.extra_args.end());
  int64_t t0 = monotonic_us();
  auto pid = spawn_logged(std::move(args), log_path, /*append=*/false);
  if (!pid) return tl::unexpected(pid.error());
  pid_ = *pid;
  port_ = 0;

  StartTiming t;
  int64_t deadline = t0 + timeout_ms * 1000;
  std::string log;
  int fd = ::open(log_path.c_str(), O_RDONLY | O_CLOEXEC);
  while (true) {
    int64_t now = monotonic_us();
    if (t.listening_us == 0 && fd >= 0) {
      char buf[8192];
      ssize_t r;
      while ((r = ::read(fd, buf, sizeof buf)) > 0) log.append(buf, static_cast<size_t>(r));
      if (uint16_t p = listening_port(log); p != 0) {
        t.listening_us = now - t0;
        port_ = p;
      }
    }
    // A restart asks for its old port, so /ping can be tried before the log line appears.
    uint16_t ping_port = port_ != 0 ? port_ : port;
    if (ping_port != 0) {
      auto reply = http_request(ping_port, "GET", "/ping", 1000);
      if (reply && reply->status == 200) {
        t.ping_us = monotonic_us() - t0;
        if (t.listening_us != 0) break;
      }
    }
    if (!running()) {
      if (fd >= 0) ::close(fd);
      return fail(Errc::kUnavailable, fmt::format("node exited during start ({}): {}",
                                                  describe_exit(exit_status_), log_tail(5)));
    }
    if (interrupted().load() || now > deadline) {
      if (fd >= 0) ::close(fd);
      kill_hard();
      return fail(Errc::kUnavailable,
                  interrupted().load()
                      ? std::string("interrupted")
                      : fmt::format("node not serving after {} ms: {}", timeout_ms, log_tail(5)));
    }
    if (t.ping_us == 0 || t.listening_us == 0) sleep_ms(1);
  }
  if (fd >= 0) ::close(fd);
  return t;
}

Result<int64_t> NodeProcess::stop(int64_t timeout_ms) {
  if (pid_ <= 0) return fail(Errc::kConflict, "node not running");
  int64_t t0 = monotonic_us();
  kill(pid_, SIGTERM);
  while (!reap(false)) {
    if (monotonic_us() - t0 > timeout_ms * 1000) {
      kill_hard();
      return fail(Errc::kUnavailable,
                  fmt::format("node still running {} ms after SIGTERM; killed", timeout_ms));
    }
    sleep_ms(2);
  }
  int64_t took = monotonic_us() - t0;
  if (!WIFEXITED(exit_status_) || WEXITSTATUS(exit_status_) != 0) {
    return fail(Errc::kUnavailable, fmt::format("node exited after SIGTERM with {}: {}",
                                                describe_exit(exit_status_), log_tail(3)));
  }
  return took;
}

Result<int64_t> NodeProcess::rss_bytes() const {
  if (pid_ <= 0) return fail(Errc::kConflict, "node not running");
  std::ifstream in(fmt::format("/proc/{}/status", pid_));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      int64_t kb = 0;
      fields >> kb;
      return kb * 1024;
    }
  }
  return fail(Errc::kIo, fmt::format("/proc/{}/status has no VmRSS", pid_));
}

std::string NodeProcess::log_tail(size_t max_lines) const {
  std::ifstream in(dir_ + "/node.log");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(line);
    if (lines.size() > max_lines) lines.erase(lines.begin());
  }
  std::string out;
  for (const std::string& l : lines) out += (out.empty() ? "" : " | ") + l;
  return out.empty() ? "(empty log)" : out;
}

}  // namespace skyring::bench
