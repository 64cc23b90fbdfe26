// PeerClient: HTTP/1.1 to the other nodes of the ring, for forwarded requests and timer moves
// (docs/cluster.md, "Forwarding"). Keep-alive connections are pooled per peer address.
//
// Unlike the webhook client it returns the whole answer (status, headers, body), and it tells
// apart a request that certainly never reached the peer (kNotSent: connect failed or refused,
// so nothing was processed) from one whose fate is unknown (kFailed: sent, then the connection
// broke or the deadline passed). The mover depends on that difference.
//
// Threading: send() and stop() from any thread; `done` runs on the client's own thread (the
// caller posts it to its executor). Given the owner's io_context instead (the node's IoLoop),
// the client has no thread: send(), stop() and `done` all run on that loop's thread, which
// saves two thread hand-offs per request; after stop() the loop must run until idle()
// before the client is destroyed.
// Limits: at most max_queue requests accepted and not answered (beyond it: kRefused at once);
// at most max_connections_per_peer connections per address; answers over max_response_bytes
// fail the request; every request ends by its timeout_ms (connect included).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace skyring::cluster {

struct PeerRequest {
  std::string address;  // host:port (IP address or a name)
  std::string method;   // "GET", "POST", ...
  std::string target;   // path and query
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  int64_t timeout_ms = 5000;
};

struct PeerResponse {
  enum class Kind {
    kAnswered,  // status, headers, body are set
    kNotSent,   // connect failed: the peer never saw the request
    kFailed,    // sent (or partly), no complete answer: the peer may have processed it
    kRefused,   // the client's queue is full, or stop() came first: never sent
  };
  Kind kind = Kind::kFailed;
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // as received, minus hop-by-hop
  std::string body;
  std::string error;
};

struct PeerClientOptions {
  size_t max_queue = 10'000;
  size_t max_connections_per_peer = 32;
  size_t max_response_bytes = 64 * 1024 * 1024;
  int64_t connect_timeout_ms = 1000;
  int64_t idle_timeout_ms = 30'000;
};

class PeerClient {
 public:
  explicit PeerClient(PeerClientOptions options, boost::asio::io_context* loop = nullptr);
  ~PeerClient();  // stop()
  PeerClient(const PeerClient&) = delete;
  PeerClient& operator=(const PeerClient&) = delete;

  // `done` is called exactly once.
  void send(PeerRequest request, std::function<void(PeerResponse)> done);
  // Fails what is waiting or in flight (kRefused / kFailed), closes connections, joins.
  void stop();
  // No exchange is left that could call back (shared loop: true some turns after stop()).
  bool idle() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring::cluster
