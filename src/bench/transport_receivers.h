// The far ends of the zmq and nats transports for the delivery scenarios (webhook_receiver.h
// has http and tcp). Each has one thread that records every payload as a timer id (the bench's
// timers carry their id as data); arrival time is taken right after the receive.
//
// * ZmqReceiver: a PULL socket bound on tcp://127.0.0.1:<free port>; frames "timeout", payload.
// * NatsReceiver: a subscription on a subject of the nats-server at `url` (the scenario starts
//   the server); libnats calls back on its own thread, one at a time.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "base/result.h"
#include "bench/webhook_receiver.h"

namespace skyring::bench {

class ZmqReceiver final : public Receiver {
 public:
  static Result<std::unique_ptr<ZmqReceiver>> start(std::string prefix, uint32_t measured,
                                                    uint32_t warm);
  ~ZmqReceiver() override;
  std::string callback() const override;
  void stop() override;

 private:
  ZmqReceiver(std::string prefix, uint32_t measured, uint32_t warm);
  void loop();

  void* ctx_ = nullptr;
  void* socket_ = nullptr;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

class NatsReceiver final : public Receiver {
 public:
  // url: nats://127.0.0.1:PORT; the subject is derived from the prefix.
  static Result<std::unique_ptr<NatsReceiver>> start(std::string prefix, uint32_t measured,
                                                     uint32_t warm, std::string url);
  ~NatsReceiver() override;
  std::string callback() const override;
  void stop() override;

 private:
  NatsReceiver(std::string prefix, uint32_t measured, uint32_t warm, std::string url);
  static void on_message(void* conn, void* sub, void* msg, void* self);

  std::string url_;
  std::string subject_;
  void* conn_ = nullptr;                // natsConnection*, kept out of this header
  void* sub_ = nullptr;                 // natsSubscription*
  std::atomic<bool> completed_{false};  // no message callback runs any more
};

}  // namespace skyring::bench
