// NatsBus: this node's one connection to NATS (libnats behind a small interface; nothing else
// includes nats.h). It carries membership heartbeats and the events (docs/cluster.md).
//
// Operation
//   * start() validates the URLs and connects in the background: the node starts (and keeps
//     serving) while NATS is unreachable; the client reconnects forever with a fixed wait.
//   * publish() never blocks and never fails the caller: the message goes into a bounded
//     queue (max_queue messages, max_queue_bytes bytes) drained by the bus's own thread in
//     batches at most every batch_interval_ms (--nats-batch, 50 ms: one wake-up of this thread,
//     libnats' flusher and nats-server per batch, not per event; Send::kAtOnce skips the wait,
//     for membership messages); when
//     the queue is full, or NATS is down and its reconnect buffer full, the message is dropped
//     and counted (skyring_nats_dropped_total), with a rate-limited log line.
//   * subscribe() callbacks and state changes are posted to the Executor (the engine's loop),
//     so cluster code never takes locks. subscribe() works before the first connect; on a
//     live connection it returns once the server has the subscription (one PING round trip,
//     at most 2 s), so everything published afterwards, by any connection, reaches it.
//   * stop() (also run by the destructor): after it returns no handler runs any more, not even
//     one posted before, and no metric is touched (the Registry may go next).
//
// Metrics: skyring_nats_connected (gauge 0/1), skyring_nats_published_total,
// skyring_nats_dropped_total, skyring_nats_received_total, skyring_nats_reconnects_total.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "base/executor.h"
#include "base/metrics.h"
#include "base/result.h"

namespace skyring::cluster {

struct NatsOptions {
  std::string urls;  // comma separated, as --nats
  std::string name;  // connection name shown by the server (the node id)
  int64_t reconnect_wait_ms = 250;
  int64_t connect_timeout_ms = 2000;
  size_t max_queue = 65'536;                  // messages waiting for the publisher thread
  size_t max_queue_bytes = 64 * 1024 * 1024;  // ... and their bytes
  int64_t flush_timeout_ms = 1000;            // stop(): time to flush what is queued
  int64_t batch_interval_ms = 50;  // the publisher sends what gathered at most this often
};

class NatsBus {
 public:
  using Handler = std::function<void(std::string_view subject, std::string_view data)>;

  // Fails (kInvalidArgument, one line naming --nats) only for URLs libnats rejects.
  static Result<std::unique_ptr<NatsBus>> start(NatsOptions options, Executor& executor,
                                                Registry& metrics);
  virtual ~NatsBus() = default;

  // kGathered: waits for the next batch (at most batch_interval_ms; events). kAtOnce: wakes the
  // publisher now and goes with whatever is queued (membership: a node's "leaving" must reach
  // the others before its handoff does, or a receiver with the old view sends the timers back).
  enum class Send { kGathered, kAtOnce };
  virtual void publish(std::string subject, std::string data, Send send) = 0;
  // `handler` runs on the executor. Subscriptions survive reconnects.
  virtual void subscribe(const std::string& subject, Handler handler) = 0;
  // Called on the executor with true on (re)connect and false on disconnect.
  virtual void on_state(std::function<void(bool connected)> fn) = 0;
  virtual bool connected() const = 0;
  // Flushes what is queued for at most flush_timeout_ms, then closes. Idempotent.
  virtual void stop() = 0;
};

}  // namespace skyring::cluster
