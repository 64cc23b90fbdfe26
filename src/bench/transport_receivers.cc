#include "bench/transport_receivers.h"

#include <nats/nats.h>
#include <zmq.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/nats_child.h"

namespace skyring::bench {

// ---------------------------------------------------------------------------------- zmq

ZmqReceiver::ZmqReceiver(std::string prefix, uint32_t measured, uint32_t warm)
    : Receiver(std::move(prefix), measured, warm) {}

Result<std::unique_ptr<ZmqReceiver>> ZmqReceiver::start(std::string prefix, uint32_t measured,
                                                        uint32_t warm) {
  std::unique_ptr<ZmqReceiver> r(new ZmqReceiver(std::move(prefix), measured, warm));
  r->ctx_ = zmq_ctx_new();
  if (r->ctx_ == nullptr) return fail(Errc::kIo, "zmq_ctx_new failed");
  r->socket_ = zmq_socket(r->ctx_, ZMQ_PULL);
  if (r->socket_ == nullptr) return fail(Errc::kIo, "zmq_socket failed");
  int hwm = 0;  // unbounded on the receiving side: the node's HWM is what is measured
  zmq_setsockopt(r->socket_, ZMQ_RCVHWM, &hwm, sizeof hwm);
  int linger = 0;
  zmq_setsockopt(r->socket_, ZMQ_LINGER, &linger, sizeof linger);
  // A few tries: free_port() only finds a port that was free a moment ago.
  for (int i = 0; i < 5 && r->port_ == 0; ++i) {
    auto port = free_port();
    if (!port) return tl::unexpected(port.error());
    std::string ep = fmt::format("tcp://127.0.0.1:{}", *port);
    if (zmq_bind(r->socket_, ep.c_str()) == 0) r->port_ = *port;
  }
  if (r->port_ == 0) {
    return fail(Errc::kIo, fmt::format("zmq receiver bind: {}", zmq_strerror(zmq_errno())));
  }
  r->thread_ = std::thread([p = r.get()] { p->loop(); });
  return r;
}

ZmqReceiver::~ZmqReceiver() {
  stop();
  if (socket_ != nullptr) zmq_close(socket_);
  if (ctx_ != nullptr) zmq_ctx_term(ctx_);
}

std::string ZmqReceiver::callback() const {
  return fmt::format(R"({{"transport":"zmq","method":"push","uri":"tcp://127.0.0.1:{}"}})", port_);
}

void ZmqReceiver::stop() {
  stopping_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ZmqReceiver::loop() {
  SystemClock clock;
  char topic[64];
  char payload[512];
  while (!stopping_.load()) {
    zmq_pollitem_t item{socket_, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, 100) <= 0) continue;
    // Everything queued, then poll again.
    for (;;) {
      int t = zmq_recv(socket_, topic, sizeof topic, ZMQ_DONTWAIT);
      if (t < 0) break;
      int more = 0;
      size_t more_len = sizeof more;
      zmq_getsockopt(socket_, ZMQ_RCVMORE, &more, &more_len);
      if (!more) {
        ++counts_.bad;
        continue;
      }
      int n = zmq_recv(socket_, payload, sizeof payload, 0);
      if (n < 0) break;
      int64_t now = clock.now_us();
      size_t len = std::min<size_t>(static_cast<size_t>(n), sizeof payload);
      record(std::string_view(payload, len), {}, now);
    }
  }
}

// ---------------------------------------------------------------------------------- nats

NatsReceiver::NatsReceiver(std::string prefix, uint32_t measured, uint32_t warm, std::string url)
    : Receiver(prefix, measured, warm),
      url_(std::move(url)),
      subject_(fmt::format("skyring.bench.{}", prefix)) {}

Result<std::unique_ptr<NatsReceiver>> NatsReceiver::start(std::string prefix, uint32_t measured,
                                                          uint32_t warm, std::string url) {
  std::unique_ptr<NatsReceiver> r(
      new NatsReceiver(std::move(prefix), measured, warm, std::move(url)));
  natsConnection* nc = nullptr;
  natsStatus s = natsConnection_ConnectTo(&nc, r->url_.c_str());
  if (s != NATS_OK) {
    return fail(Errc::kUnavailable,
                fmt::format("nats receiver: connect {}: {}", r->url_, natsStatus_GetText(s)));
  }
  r->conn_ = nc;
  natsSubscription* sub = nullptr;
  s = natsConnection_Subscribe(
      &sub, nc, r->subject_.c_str(),
      [](natsConnection* c, natsSubscription* su, natsMsg* m, void* self) {
        NatsReceiver::on_message(c, su, m, self);
      },
      r.get());
  if (s == NATS_OK) {
    r->sub_ = sub;
    natsSubscription_SetOnCompleteCB(
        sub, [](void* self) { static_cast<NatsReceiver*>(self)->completed_.store(true); }, r.get());
    natsSubscription_SetPendingLimits(sub, -1, -1);  // never drop: drops would read as missing
    s = natsConnection_FlushTimeout(nc, 5000);       // the server has the subscription
  }
  if (s != NATS_OK) {
    return fail(Errc::kUnavailable,
                fmt::format("nats receiver: subscribe: {}", natsStatus_GetText(s)));
  }
  return r;
}

void NatsReceiver::on_message(void*, void*, void* msg, void* self) {
  auto* m = static_cast<natsMsg*>(msg);
  auto* r = static_cast<NatsReceiver*>(self);
  SystemClock clock;
  int64_t now = clock.now_us();
  r->record(std::string_view(natsMsg_GetData(m), static_cast<size_t>(natsMsg_GetDataLength(m))), {},
            now);
  natsMsg_Destroy(m);
}

NatsReceiver::~NatsReceiver() {
  stop();
}

std::string NatsReceiver::callback() const {
  return fmt::format(R"({{"transport":"nats","method":"publish","uri":"{}/{}"}})", url_, subject_);
}

void NatsReceiver::stop() {
  // The on-complete callback runs after the last message callback: wait for it (bounded).
  if (sub_ != nullptr) {
    auto* sub = static_cast<natsSubscription*>(sub_);
    if (natsSubscription_Unsubscribe(sub) == NATS_OK) {
      for (int64_t until = monotonic_us() + 5'000'000;
           !completed_.load() && monotonic_us() < until;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    natsSubscription_Destroy(sub);
    sub_ = nullptr;
  }
  if (conn_ != nullptr) {
    auto* nc = static_cast<natsConnection*>(conn_);
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
    conn_ = nullptr;
  }
}

}  // namespace skyring::bench
