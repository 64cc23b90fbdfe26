// The `zmq` transport (SPEC section 4): one ZeroMQ message per delivery attempt.
//
// Operation
// * callback.method `push` or `pub` (case-insensitive); callback.uri is the endpoint our socket
//   connects to: `tcp://host:port` (host: IPv4, [IPv6] or a name) or `ipc://path`. Bind-side
//   forms (`*`, `tcp://src;host:port`) are refused by validate(). The receiver binds.
// * Message: two frames, the topic `timeout`, then the payload (`data` string as-is, the `data`
//   object as JSON text, or an empty frame without data). Nothing else (no timer id, no
//   attempt number) travels with it.
// * One socket per destination (method + endpoint: push and pub to one endpoint are two
//   sockets), created on first use and kept; beyond `max_sockets` the least recently used
//   socket with no waiting attempt is closed. libzmq reconnects on its own (reconnect_ivl_ms
//   doubling to reconnect_ivl_max_ms) and detects dead peers by ZMTP heartbeats. A socket
//   monitor (zmq_socket_monitor) follows each connection; libzmq stops reconnecting for good
//   after a protocol error (a peer of the wrong socket type, or not ZMTP at all), so a socket
//   left without a scheduled reconnect for 1 s is replaced when an attempt needs it: fixing
//   the receiver is enough, no node restart.
// * push: a PUSH socket with ZMQ_IMMEDIATE=1, so messages are only queued to completed
//   connections. Success = the message was accepted by the pipe of a connected peer (at most
//   `sndhwm` messages queued per socket; the receiver may still lose what was queued when it
//   dies). With no connected peer, or a full pipe, the attempt waits up to
//   min(send_timeout_ms, job timeout) for the socket to become writable, then fails retryable:
//   "no connected peer" or "peer not reading (high-water mark reached)".
// * pub: an XPUB socket (a PUB to its peers) so that subscriptions are visible here. An attempt
//   is sent only while at least one connected subscriber has a subscription matching `timeout`
//   (``, `t`, ..., `timeout`); otherwise it waits up to min(send_timeout_ms, job timeout) for
//   one, then fails retryable: "no subscriber connected". Waiting for the subscription itself
//   (not only for the TCP/ZMTP handshake) avoids the slow-joiner loss of a plain PUB. Success =
//   handed to libzmq with a subscriber present: fire-and-forget towards the subscribers, a
//   subscriber over its high-water mark loses the message silently (PUB semantics), and with
//   several subscribers only "at least one" is known. A subscriber that binds sends its
//   subscription to a new connection only once its own thread uses the socket (recv/poll):
//   libzmq attaches a bound socket's connections in the owner's thread. One waiting in recv
//   is fine; one that never touches its socket is "no subscriber connected".
// * A waiting attempt does not hold the thread: it is parked on its socket and sent when the
//   socket reports room (POLLOUT) or a subscription arrives. The grace also covers a freshly
//   created socket, whose connection needs a moment: the first attempt to a live receiver
//   succeeds rather than failing for want of a handshake.
//
// Concurrency
// * All zmq sockets (and the context) live on one transport thread: zmq sockets are not thread
//   safe. deliver() only takes a short mutex, appends to a bounded queue and wakes the thread
//   (an eventfd in its zmq_poll set); the thread sleeps in zmq_poll until a socket, the wake fd
//   or the earliest waiting attempt's deadline (at most 1 s) needs it.
// * `done` runs on the transport thread, exactly once per job, with no lock of ours held (it may
//   call deliver() again). A rejected deliver() (queue full, stopped) calls `done` right away on
//   the caller's thread.
// * stop() is idempotent: queued and waiting jobs complete with kAborted, sockets close with
//   `linger_ms` (what they still hold is flushed for at most that long), the context is
//   terminated and the thread joined. Called from inside a `done` it only asks the thread to
//   finish.
//
// Limitations
// * No acknowledgement from the receiver: success means "handed to a connected peer", not
//   "processed". A receiver that crashes may lose up to sndhwm (+ socket buffers) messages.
// * Host names are resolved by libzmq's I/O thread (blocking getaddrinfo): a slow resolver
//   delays every zmq destination. Prefer IP addresses.
// * Each socket costs file descriptors (TCP connection, zmq mailboxes; a push socket also has a
//   monitor): budget about 3 per destination against the process limit for max_sockets.
// * `max_queue` bounds jobs accepted and not yet done (queued + waiting), not bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "delivery/transport.h"

namespace skyring {

struct ZmqTransportOptions {
  size_t max_queue = 100000;  // jobs accepted and not yet done; beyond it: "delivery queue full"
  size_t max_sockets = 256;   // open destination sockets; the LRU idle one closes beyond it
  int sndhwm = 1000;          // messages queued per socket (ZMQ_SNDHWM)
  // Longest an attempt waits for a connected peer, room below the high-water mark or (pub) a
  // subscriber, capped by the job's timeout. 0: fail at once when the socket is not ready.
  int64_t send_timeout_ms = 200;
  int linger_ms = 200;              // ZMQ_LINGER: flush time for a closed socket (and at stop)
  int reconnect_ivl_ms = 100;       // ZMQ_RECONNECT_IVL
  int reconnect_ivl_max_ms = 1000;  // ZMQ_RECONNECT_IVL_MAX
  int connect_timeout_ms = 5000;    // ZMQ_CONNECT_TIMEOUT (TCP connect)
  int heartbeat_ivl_ms = 5000;      // ZMQ_HEARTBEAT_IVL, peer dead after 3x silence; 0: off
};

class ZmqTransport final : public Transport {
 public:
  explicit ZmqTransport(ZmqTransportOptions options = {});
  ~ZmqTransport() override;  // stop()
  ZmqTransport(const ZmqTransport&) = delete;
  ZmqTransport& operator=(const ZmqTransport&) = delete;

  std::string_view name() const override { return "zmq"; }
  Result<void> validate(std::string_view method, std::string_view uri) const override;
  // The normalised endpoint ("tcp://host:port" with a lower-case host, or "ipc://path");
  // a bad uri is its own destination.
  std::string destination(std::string_view uri) const override;
  void deliver(DeliveryJob job, DeliveryDone done) override;
  void stop() override;

 private:
  class Loop;  // the transport thread and every zmq object; keeps zmq out of this header
  std::unique_ptr<Loop> loop_;
};

}  // namespace skyring
