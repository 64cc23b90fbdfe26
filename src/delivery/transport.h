// Outbound delivery of a due timer. A Transport owns its own threads and connections; the engine
// only hands it jobs and receives one result per job (docs/transports.md). Retries, backoff,
// dead letters, in-flight bounds and events are the engine's, the same for every transport.
//
// Life: constructing a transport starts it (a plugin: load_transport_plugin, whose create may
// fail and stop the node); deliver() for each attempt; stop() once. The drain before stop() is
// the node's, bounded by --shutdown-timeout: it stops starting attempts and waits for those in
// flight, then stop() aborts the rest.
//
// Contract:
// * validate() is called on the request path; it must be cheap and never block.
// * deliver() never blocks and never throws; `done` is called exactly once per job, from any
//   thread (the caller re-posts it onto its own executor).
// * stop() aborts whatever is still in flight (each such job completes with kAborted) and
//   returns when no callback is running any more and none will be called again.
// * Limits on in-flight jobs are the caller's (engine) business; a transport may additionally
//   refuse work with kRetryable when its own bounded queue is full.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/result.h"
#include "model/timer.h"

namespace skyring {

struct DeliveryJob {
  std::string timer_id;
  uint32_t attempt = 1;  // 1-based, sent as X-Skyring-Attempt
  std::string method;    // lower case, validated
  std::string uri;
  std::vector<std::pair<std::string, std::string>> headers;
  DataKind data_kind = DataKind::kNone;
  std::string data;
  int64_t timeout_ms = 10'000;
};

enum class Outcome {
  kSuccess,    // delivered (HTTP 2xx)
  kRetryable,  // connection error, timeout, 5xx, 408, 429
  kPermanent,  // any other status: the destination refused it for good
  kAborted,    // the transport was stopped before the attempt finished: nothing is known
};

struct DeliveryResult {
  Outcome outcome = Outcome::kRetryable;
  int status = 0;      // protocol status when there is one (HTTP status code)
  std::string detail;  // human-readable reason for failures, becomes last_error
};

using DeliveryDone = std::function<void(DeliveryResult)>;

// Completes a job. `done` belongs to the caller: one that throws is logged (naming `transport`)
// and swallowed, so that it cannot take a transport's thread, or a plugin's, down.
void call_done(std::string_view transport, DeliveryDone& done, DeliveryResult result) noexcept;

class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::string_view name() const = 0;
  // Is this (method, uri) deliverable by this transport? Error message names the field.
  virtual Result<void> validate(std::string_view method, std::string_view uri) const = 0;
  // Key used to bound concurrent deliveries per destination (e.g. "http://host:port").
  virtual std::string destination(std::string_view uri) const = 0;
  virtual void deliver(DeliveryJob job, DeliveryDone done) = 0;
  virtual void stop() = 0;
};

// Transports by name. Filled at start-up, read-only afterwards.
class TransportRegistry {
 public:
  void add(std::unique_ptr<Transport> t);
  Transport* find(std::string_view name) const;
  void stop_all();

 private:
  std::map<std::string, std::unique_ptr<Transport>, std::less<>> by_name_;
};

}  // namespace skyring
