// The webhook end of the delivery scenarios: an HTTP/1.1 keep-alive server on 127.0.0.1:0 with
// its own thread and epoll loop. It answers every request `200 OK` with an empty body and
// records, per request, the wall-clock arrival time (CLOCK_REALTIME, µs: comparable with the
// timers' `at`) and the X-Skyring-Timer-Id.
//
// Ids the bench creates are "<prefix>d<seq>" (measured timers, seq < measured) and
// "<prefix>w<seq>" (warm-up timers); anything else is counted as foreign. The arrival time is
// taken once per read, right after recv(): it includes the HTTP hop from the node.
//
// Concurrency: the progress counters are atomics, readable any time; receipts() and counts()
// only after stop(), which joins the thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/result.h"

namespace skyring::bench {

struct Receipt {
  int64_t recv_us;  // wall clock
  uint32_t seq;     // measured timer number
};

struct ReceiverCounts {
  uint64_t requests = 0;
  uint64_t foreign = 0;     // id missing or not ours
  uint64_t bad = 0;         // unparseable requests (connection closed)
  uint64_t retried = 0;     // X-Skyring-Attempt > 1
  uint64_t overflow = 0;    // receipts not kept: more repeats than the bound
  uint64_t warm_total = 0;  // warm-up requests, repeats included
};

// Receipt bookkeeping shared by every receiver kind (webhook, tcp lines, zmq, nats): ids
// "<prefix>d<seq>" / "<prefix>w<seq>", first arrivals, repeats. record() runs on the receiver's
// one thread.
class Receiver {
 public:
  virtual ~Receiver() = default;
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;

  uint64_t measured_unique() const { return measured_unique_.load(std::memory_order_relaxed); }
  uint64_t warm_unique() const { return warm_unique_.load(std::memory_order_relaxed); }
  // The timers' "callback" JSON object that reaches this receiver.
  virtual std::string callback() const = 0;
  // Joins the receiver's thread: nothing is recorded afterwards.
  virtual void stop() = 0;
  // Measured timers in arrival order, repeats included (bounded at 2 x measured + 1024).
  // Only after stop().
  const std::vector<Receipt>& receipts() const { return receipts_; }
  const ReceiverCounts& counts() const { return counts_; }

 protected:
  Receiver(std::string prefix, uint32_t measured, uint32_t warm);
  // id: the timer id (header or payload); attempt: "" when the transport carries none.
  void record(std::string_view id, std::string_view attempt, int64_t now_us);
  ReceiverCounts counts_;

 private:
  std::string prefix_;
  std::vector<uint8_t> seen_measured_;
  std::vector<uint8_t> seen_warm_;
  std::vector<Receipt> receipts_;
  size_t max_receipts_ = 0;
  std::atomic<uint64_t> measured_unique_{0};
  std::atomic<uint64_t> warm_unique_{0};
};

// kHttp: the webhook receiver described above. kLines: the `tcp` transport's end: the same
// listener reads newline-terminated payloads, each a timer id (the bench's timers carry their
// id as data), and answers nothing.
class WebhookReceiver final : public Receiver {
 public:
  enum class Wire { kHttp, kLines };
  static Result<std::unique_ptr<WebhookReceiver>> start(std::string prefix, uint32_t measured,
                                                        uint32_t warm, Wire wire = Wire::kHttp);
  ~WebhookReceiver() override;  // stop()

  uint16_t port() const { return port_; }
  std::string callback() const override;
  void stop() override;
  // Connections accepted so far (a pooled transport opens few).
  uint64_t accepted() const { return accepted_.load(std::memory_order_relaxed); }

 private:
  WebhookReceiver(std::string prefix, uint32_t measured, uint32_t warm, Wire wire);
  void loop();

  Wire wire_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<uint64_t> accepted_{0};
  std::thread thread_;
};

}  // namespace skyring::bench
