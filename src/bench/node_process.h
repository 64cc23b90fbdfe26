// One `skyring run` child process owned by the bench, with its own temp dir
// (/tmp/skyring-bench-XXXXXX: data/ for storage, node.log for its stdout and stderr).
//
// Lifecycle
// * create() makes the temp dir; start() spawns the node bound to 127.0.0.1 and waits, bounded,
//   until it logs "listening on" and answers GET /ping. The node can be stopped (SIGTERM, waiting
//   for its exit), killed (SIGKILL) and started again on the same data dir and port.
// * The destructor kills a running node, reaps it and removes the temp dir. The child also gets
//   PR_SET_PDEATHSIG(SIGKILL), so it dies with the bench even if the bench itself is killed:
//   no orphan nodes on any exit path.
//
// The log goes to a file, not a pipe, so a chatty node never blocks on a full pipe and nothing
// has to drain it; readiness is found by reading the file's new bytes every millisecond.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"

namespace skyring::bench {

struct NodeSpec {
  std::string binary;
  std::string storage = "rocksdb";
  std::vector<std::string> extra_args;
};

struct StartTiming {
  int64_t listening_us = 0;  // spawn -> "listening on" in the log
  int64_t ping_us = 0;       // spawn -> first GET /ping answered 200
};

// Starts `args` (args[0] is the binary) with stdin from /dev/null and stdout and stderr into
// log_path (truncated, or appended to), killed if the bench dies. Returns the child's pid.
Result<pid_t> spawn_logged(std::vector<std::string> args, const std::string& log_path, bool append);

class NodeProcess {
 public:
  static Result<std::unique_ptr<NodeProcess>> create(NodeSpec spec);
  ~NodeProcess();
  NodeProcess(const NodeProcess&) = delete;
  NodeProcess& operator=(const NodeProcess&) = delete;

  // port 0: any free port (found from the log); otherwise that port (a restart keeps its port).
  Result<StartTiming> start(uint16_t port, int64_t timeout_ms);
  // SIGTERM and wait for the exit; returns how long it took (µs). On timeout: SIGKILL, error.
  Result<int64_t> stop(int64_t timeout_ms);
  void kill_hard();
  bool running();

  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  Result<int64_t> rss_bytes() const;
  std::string log_tail(size_t max_lines) const;

 private:
  explicit NodeProcess(NodeSpec spec) : spec_(std::move(spec)) {}
  bool reap(bool block);  // true when the child is gone

  NodeSpec spec_;
  std::string dir_;
  pid_t pid_ = -1;
  int exit_status_ = 0;
  uint16_t port_ = 0;
};

}  // namespace skyring::bench
