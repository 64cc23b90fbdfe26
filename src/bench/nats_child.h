// Children and ports the bench needs besides nodes: a free loopback port, a port check, and a
// nats-server child (for the cluster scenario and the nats transport's delivery scenario).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "base/result.h"

namespace skyring::bench {

// A free TCP port on 127.0.0.1 (bound to port 0, read back, closed).
Result<uint16_t> free_port();
// Does something accept TCP connections on 127.0.0.1:port?
bool port_accepts(uint16_t port);
// `given`, or nats-server from PATH, /usr/sbin, /usr/bin, /usr/local/bin; empty if none.
std::string find_nats_server(const std::string& given);

// nats-server -a 127.0.0.1 -p PORT as a child of the bench (log in its own temp dir, removed by
// the destructor, which also stops the server).
class NatsChild {
 public:
  NatsChild() = default;
  ~NatsChild();
  NatsChild(const NatsChild&) = delete;
  NatsChild& operator=(const NatsChild&) = delete;

  Result<void> start(const std::string& binary, uint16_t port, int64_t timeout_ms);
  void stop(int64_t timeout_ms);
  uint16_t port() const { return port_; }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

}  // namespace skyring::bench
