#include "delivery/zmq_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <zmq.hpp>

#include "base/callbacks_for_tests.h"

namespace skyring {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Generous: the machine may be shared and the test may run under sanitizers. Nothing waits for
// a deadline unless something is broken.
constexpr milliseconds kDeadline{10'000};

// A TCP port nobody listens on right now (bound to port 0, then closed).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string tcp_uri(int port) {
  return "tcp://127.0.0.1:" + std::to_string(port);
}

// A receiving socket (PULL or SUB) bound on 127.0.0.1, with a monitor counting the connections
// it accepted. Used from the test thread only.
class Receiver {
 public:
  Receiver(zmq::socket_type type, int port = 0, int rcvhwm = 1000, int rcvbuf = -1)
      : sock_(ctx_, type), monitor_(ctx_, zmq::socket_type::pair) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::rcvhwm, rcvhwm);
    if (rcvbuf > 0) sock_.set(zmq::sockopt::rcvbuf, rcvbuf);
    const std::string name = "inproc://receiver-monitor";
    EXPECT_EQ(zmq_socket_monitor(sock_.handle(), name.c_str(), ZMQ_EVENT_ACCEPTED), 0);
    monitor_.set(zmq::sockopt::linger, 0);
    monitor_.connect(name);
    sock_.bind(port == 0 ? std::string("tcp://127.0.0.1:*") : tcp_uri(port));
    const std::string endpoint = sock_.get(zmq::sockopt::last_endpoint);
    port_ = std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
  }
  ~Receiver() {
    zmq_socket_monitor(sock_.handle(), nullptr, 0);
    monitor_.close();
    sock_.close();
  }

  void subscribe(const std::string& topic) { sock_.set(zmq::sockopt::subscribe, topic); }
  int port() const { return port_; }
  std::string uri() const { return tcp_uri(port_); }

  // The next message's frames, or nullopt after the deadline.
  std::optional<std::vector<std::string>> recv(milliseconds deadline = kDeadline) {
    zmq_pollitem_t item{sock_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, static_cast<long>(deadline.count())) != 1) return std::nullopt;
    std::vector<std::string> frames;
    for (int i = 0; i < 16; ++i) {
      zmq::message_t m;
      if (!sock_.recv(m, zmq::recv_flags::dontwait)) break;
      frames.push_back(m.to_string());
      if (!m.more()) break;
    }
    return frames;
  }

  // Connections accepted so far (events are queued before the first message of a connection).
  int accepted() {
    for (int i = 0; i < 1000; ++i) {
      zmq::message_t event;
      if (!monitor_.recv(event, zmq::recv_flags::dontwait)) break;
      if (event.more()) {
        zmq::message_t address;
        (void)monitor_.recv(address, zmq::recv_flags::dontwait);
      }
      uint16_t id = 0;
      if (event.size() >= sizeof(id)) std::memcpy(&id, event.data(), sizeof(id));
      if (id == ZMQ_EVENT_ACCEPTED) ++accepted_;
    }
    return accepted_;
  }

 private:
  zmq::context_t ctx_;
  zmq::socket_t sock_;
  zmq::socket_t monitor_;
  int port_ = 0;
  int accepted_ = 0;
};

// DeliveryResults by job index; every `done` must come exactly once.
class Results : public CallbackRecorder<DeliveryResult> {
 public:
  Results() : CallbackRecorder<DeliveryResult>(kDeadline) {}
};

DeliveryJob job(const std::string& method, const std::string& uri, DataKind kind = DataKind::kNone,
                std::string data = {}, int64_t timeout_ms = 10'000) {
  DeliveryJob j;
  j.timer_id = "t1";
  j.method = method;
  j.uri = uri;
  j.data_kind = kind;
  j.data = std::move(data);
  j.timeout_ms = timeout_ms;
  return j;
}

// A transport whose attempts wait long for a peer, so "receiver up" cases never depend on how
// fast the connection comes up; cases that expect a failure give the job a short timeout.
ZmqTransportOptions patient() {
  ZmqTransportOptions o;
  o.send_timeout_ms = 10'000;
  return o;
}

using Frames = std::vector<std::string>;

TEST(ZmqTransportTest, PushSendsTopicAndPayloadFrames) {
  Receiver pull(zmq::socket_type::pull);
  Results res;  // outlives the transport, whose stop() still calls back
  ZmqTransport t(patient());
  t.deliver(job("push", pull.uri(), DataKind::kString, "hello"), res.done(0));
  auto r = res.wait(0);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
  EXPECT_EQ(pull.recv(), (Frames{"timeout", "hello"}));
  t.deliver(job("PUSH", pull.uri(), DataKind::kJson, R"({"a":[1,2],"b":"x"})"), res.done(1));
  t.deliver(job("push", pull.uri()), res.done(2));
  for (size_t i : {1, 2}) {
    r = res.wait(i);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
  }
  EXPECT_EQ(pull.recv(), (Frames{"timeout", R"({"a":[1,2],"b":"x"})"}));
  EXPECT_EQ(pull.recv(), (Frames{"timeout", ""}));
}

TEST(ZmqTransportTest, PubSendsTopicAndPayloadFramesToASubscriber) {
  Receiver sub(zmq::socket_type::sub);
  sub.subscribe("timeout");
  Results res;
  ZmqTransport t(patient());
  // The first attempt waits for the subscription, so even it is not lost to a slow joiner.
  t.deliver(job("pub", sub.uri(), DataKind::kJson, R"({"k":1})"), res.done(0));
  t.deliver(job("Pub", sub.uri(), DataKind::kString, "two words"), res.done(1));
  // Receiving first: a bound SUB sends its subscription to a new peer only once its own
  // thread uses the socket (libzmq attaches the connection there), as a real subscriber does.
  EXPECT_EQ(sub.recv(), (Frames{"timeout", R"({"k":1})"}));
  EXPECT_EQ(sub.recv(), (Frames{"timeout", "two words"}));
  for (size_t i : {0, 1}) {
    auto r = res.wait(i);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
  }
}

TEST(ZmqTransportTest, PushWithoutReceiverIsRetryableThenSucceedsOnceItIsUp) {
  const int port = free_port();
  Results res;
  ZmqTransport t(patient());
  t.deliver(job("push", tcp_uri(port), DataKind::kString, "x", 200), res.done(0));
  auto r = res.wait(0);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kRetryable);
  EXPECT_NE(r->detail.find("no connected peer"), std::string::npos) << r->detail;

  Receiver pull(zmq::socket_type::pull, port);
  t.deliver(job("push", tcp_uri(port), DataKind::kString, "again"), res.done(1));
  r = res.wait(1);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
  EXPECT_EQ(pull.recv(), (Frames{"timeout", "again"}));
  EXPECT_EQ(pull.recv(milliseconds(50)), std::nullopt) << "the failed attempt was sent later";
}

TEST(ZmqTransportTest, PubWithoutMatchingSubscriberIsRetryableThenSucceeds) {
  const int port = free_port();
  Results res;
  ZmqTransport t(patient());
  t.deliver(job("pub", tcp_uri(port), DataKind::kString, "x", 200), res.done(0));
  auto r = res.wait(0);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kRetryable);
  EXPECT_NE(r->detail.find("no subscriber"), std::string::npos) << r->detail;
  {
    // Connected, but subscribed to another topic: still nobody to deliver to.
    Receiver other(zmq::socket_type::sub, port);
    other.subscribe("other");
    t.deliver(job("pub", tcp_uri(port), DataKind::kString, "x", 300), res.done(1));
    EXPECT_EQ(other.recv(milliseconds(500)), std::nullopt);  // lets its subscription out
    r = res.wait(1);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->outcome, Outcome::kRetryable) << r->detail;
  }
  Receiver sub(zmq::socket_type::sub, port);
  sub.subscribe("time");  // a prefix of the topic matches too
  t.deliver(job("pub", tcp_uri(port), DataKind::kString, "now"), res.done(2));
  EXPECT_EQ(sub.recv(), (Frames{"timeout", "now"}));
  r = res.wait(2);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
}

// libzmq stops reconnecting after a protocol error (here: PULL is no peer for an XPUB); the
// transport replaces such a socket, so fixing the receiver is enough.
TEST(ZmqTransportTest, RecoversFromAPeerOfTheWrongSocketType) {
  const int port = free_port();
  Results res;
  ZmqTransport t(patient());
  {
    Receiver wrong(zmq::socket_type::pull, port);
    t.deliver(job("pub", tcp_uri(port), DataKind::kString, "x", 1500), res.done(0));
    EXPECT_EQ(wrong.recv(milliseconds(1500)), std::nullopt);  // lets the handshake run
    auto r = res.wait(0);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->outcome, Outcome::kRetryable) << r->detail;
  }
  Receiver sub(zmq::socket_type::sub, port);
  sub.subscribe("timeout");
  t.deliver(job("pub", tcp_uri(port), DataKind::kString, "fixed"), res.done(1));
  EXPECT_EQ(sub.recv(), (Frames{"timeout", "fixed"}));
  auto r = res.wait(1);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
}

TEST(ZmqTransportTest, OneSocketPerDestinationIsReused) {
  Receiver pull(zmq::socket_type::pull);
  Results res;
  ZmqTransport t(patient());
  constexpr size_t kJobs = 50;
  for (size_t i = 0; i < kJobs; ++i) {
    t.deliver(job("push", pull.uri(), DataKind::kString, std::to_string(i)), res.done(i));
  }
  for (size_t i = 0; i < kJobs; ++i) {
    auto r = res.wait(i);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
  }
  for (size_t i = 0; i < kJobs; ++i) {
    EXPECT_EQ(pull.recv(), (Frames{"timeout", std::to_string(i)})) << "in order";
  }
  EXPECT_EQ(pull.accepted(), 1);
  // push and pub to one endpoint are different sockets (and pub finds no subscriber on a PULL).
  t.deliver(job("pub", pull.uri(), DataKind::kString, "p", 300), res.done(kJobs));
  auto r = res.wait(kJobs);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kRetryable);
}

TEST(ZmqTransportTest, LeastRecentlyUsedSocketClosesBeyondMaxSockets) {
  Receiver a(zmq::socket_type::pull);
  Receiver b(zmq::socket_type::pull);
  ZmqTransportOptions o = patient();
  o.max_sockets = 1;
  Results res;
  ZmqTransport t(o);
  const std::string uris[] = {a.uri(), b.uri(), a.uri()};
  for (size_t i = 0; i < 3; ++i) {
    t.deliver(job("push", uris[i], DataKind::kString, std::to_string(i)), res.done(i));
    auto r = res.wait(i);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
  }
  EXPECT_EQ(a.recv(), (Frames{"timeout", "0"}));
  EXPECT_EQ(b.recv(), (Frames{"timeout", "1"}));
  EXPECT_EQ(a.recv(), (Frames{"timeout", "2"}));
  EXPECT_EQ(a.accepted(), 2);  // closed for b, opened again
}

TEST(ZmqTransportTest, ValidateMethodAndUri) {
  ZmqTransport t;
  EXPECT_EQ(t.name(), "zmq");
  for (const char* m : {"push", "pub", "PUSH", "Pub"}) {
    EXPECT_TRUE(t.validate(m, "tcp://127.0.0.1:5555")) << m;
  }
  for (const char* m : {"", "post", "pull", "sub", "pushx", "pu"}) {
    auto v = t.validate(m, "tcp://127.0.0.1:5555");
    ASSERT_FALSE(v) << m;
    EXPECT_NE(v.error().message.find("callback.method"), std::string::npos);
  }
  for (const char* u : {"tcp://127.0.0.1:5555", "tcp://[::1]:1", "tcp://Example.COM:65535",
                        "TCP://host:9", "ipc:///tmp/skyring.sock", "ipc://@abstract"}) {
    EXPECT_TRUE(t.validate("push", u)) << u;
  }
  for (const char* u : {"", "http://127.0.0.1:80/", "tcp://", "tcp://host", "tcp://host:",
                        "tcp://:5555", "tcp://*:5555", "tcp://host:0", "tcp://host:65536",
                        "tcp://host:12x", "tcp://10.0.0.1;host:5555", "tcp://host:5555/path",
                        "tcp://[::1:5", "ipc://", "ipc://*", "inproc://x", "udp://host:1"}) {
    auto v = t.validate("push", u);
    ASSERT_FALSE(v) << u;
    EXPECT_NE(v.error().message.find("callback.uri"), std::string::npos);
  }
  EXPECT_EQ(t.destination("TCP://Example.COM:0080"), "tcp://example.com:80");
  EXPECT_EQ(t.destination("ipc:///tmp/a"), "ipc:///tmp/a");
  EXPECT_EQ(t.destination("junk"), "junk");
}

TEST(ZmqTransportTest, StopAbortsWaitingAndQueuedJobsExactlyOnce) {
  const int port = free_port();
  ZmqTransportOptions o;
  o.send_timeout_ms = 60'000;
  Results res;
  ZmqTransport t(o);
  constexpr size_t kJobs = 20;
  for (size_t i = 0; i < kJobs; ++i) {
    t.deliver(job(i % 2 ? "push" : "pub", tcp_uri(port), DataKind::kString, "x", 60'000),
              res.done(i));
  }
  t.stop();
  for (size_t i = 0; i < kJobs; ++i) {
    ASSERT_EQ(res.calls(i), 1) << i;  // stop() returns after every callback ran
    EXPECT_EQ(res.wait(i)->outcome, Outcome::kAborted);
  }
  t.deliver(job("push", tcp_uri(port)), res.done(kJobs));
  ASSERT_EQ(res.calls(kJobs), 1);
  EXPECT_EQ(res.wait(kJobs)->outcome, Outcome::kAborted);
  t.stop();  // idempotent
  for (size_t i = 0; i <= kJobs; ++i) EXPECT_EQ(res.calls(i), 1) << i;
}

TEST(ZmqTransportTest, QueueIsBounded) {
  ZmqTransportOptions o;
  o.max_queue = 2;
  o.send_timeout_ms = 60'000;
  Results res;
  ZmqTransport t(o);
  const std::string uri = tcp_uri(free_port());
  t.deliver(job("push", uri, DataKind::kNone, {}, 60'000), res.done(0));
  t.deliver(job("push", uri, DataKind::kNone, {}, 60'000), res.done(1));
  t.deliver(job("push", uri, DataKind::kNone, {}, 60'000), res.done(2));
  ASSERT_EQ(res.calls(2), 1) << "a refused job is answered at once";
  EXPECT_EQ(res.wait(2)->outcome, Outcome::kRetryable);
  EXPECT_EQ(res.wait(2)->detail, "delivery queue full");
  EXPECT_EQ(res.calls(0), 0);
}

TEST(ZmqTransportTest, PeerThatNeverReadsFailsRetryableAndOthersStillWork) {
  // Small buffers everywhere so the high-water mark is reached after a few large messages.
  Receiver stuck(zmq::socket_type::pull, 0, /*rcvhwm=*/1, /*rcvbuf=*/4096);
  Receiver fine(zmq::socket_type::pull);
  ZmqTransportOptions o = patient();
  o.sndhwm = 1;
  Results res;
  ZmqTransport t(o);
  const std::string payload(64 * 1024, 'p');
  size_t n = 0;
  std::optional<DeliveryResult> r;
  for (; n < 2000; ++n) {  // ~100 MB at most; loopback buffers fill after a few MB
    t.deliver(job("push", stuck.uri(), DataKind::kString, payload, 300), res.done(n));
    r = res.wait(n);
    ASSERT_TRUE(r) << "attempt " << n << " hung";
    if (r->outcome != Outcome::kSuccess) break;
  }
  ASSERT_LT(n, 2000u) << "the high-water mark was never reached";
  EXPECT_EQ(r->outcome, Outcome::kRetryable);
  EXPECT_NE(r->detail.find("peer not reading"), std::string::npos) << r->detail;

  // One more attempt waits for room (long timeout) while another destination is served.
  const size_t waiting = n + 1;
  t.deliver(job("push", stuck.uri(), DataKind::kString, payload, 60'000), res.done(waiting));
  t.deliver(job("push", fine.uri(), DataKind::kString, "ok"), res.done(waiting + 1));
  r = res.wait(waiting + 1);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kSuccess) << r->detail;
  EXPECT_EQ(fine.recv(), (Frames{"timeout", "ok"}));
  EXPECT_EQ(res.calls(waiting), 0);
  t.stop();
  ASSERT_EQ(res.calls(waiting), 1);
  EXPECT_EQ(res.wait(waiting)->outcome, Outcome::kAborted);
}

TEST(ZmqTransportTest, ZeroSendTimeoutFailsAtOnceWhenNotReady) {
  ZmqTransportOptions o;
  o.send_timeout_ms = 0;
  Results res;
  ZmqTransport t(o);
  const auto start = Clock::now();
  t.deliver(job("push", tcp_uri(free_port()), DataKind::kString, "x", 60'000), res.done(0));
  auto r = res.wait(0);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, Outcome::kRetryable);
  EXPECT_LT(Clock::now() - start, kDeadline);
}

TEST(ZmqTransportTest, InvalidJobIsPermanent) {
  Results res;
  ZmqTransport t;
  t.deliver(job("post", "tcp://127.0.0.1:1"), res.done(0));
  t.deliver(job("push", "http://127.0.0.1:1/"), res.done(1));
  ASSERT_EQ(res.calls(0), 1);
  ASSERT_EQ(res.calls(1), 1);
  EXPECT_EQ(res.wait(0)->outcome, Outcome::kPermanent);
  EXPECT_EQ(res.wait(1)->outcome, Outcome::kPermanent);
}

}  // namespace
}  // namespace skyring
