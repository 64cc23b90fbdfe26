// The timer as the rest of the program sees it. A TimerRecord is what storage keeps per id:
// the request (callback, data, retry policy), its schedule and its delivery history.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace skyring {

// Stored as one byte: values are part of the storage format (docs/storage-format.md).
enum class State : uint8_t {
  kPending = 1,    // waiting for its due time
  kExecuting = 2,  // a delivery attempt is in flight (memory only: stored as pending/retrying)
  kRetrying = 3,   // an attempt failed; waiting for the next one
  kSucceeded = 4,  // delivered
  kFailed = 5,     // permanent failure or attempts exhausted: a dead letter
  kCancelled = 6,  // DELETE before delivery
};

const char* state_name(State s);
bool parse_state(std::string_view name, State* out);
// Pending or retrying: the timer still owes a delivery attempt.
inline bool awaits_attempt(State s) {
  return s == State::kPending || s == State::kRetrying;
}
inline bool is_final(State s) {
  return s == State::kSucceeded || s == State::kFailed || s == State::kCancelled;
}

struct Callback {
  std::string transport;
  std::string method;  // lower case
  std::string uri;
  std::vector<std::pair<std::string, std::string>> headers;
  bool operator==(const Callback&) const = default;
};

struct RetryPolicy {
  uint32_t attempts = 5;  // total attempts, 1 = no retries
  uint64_t backoff_ms = 1000;
  uint64_t max_backoff_ms = 60000;
  bool operator==(const RetryPolicy&) const = default;
};

enum class DataKind : uint8_t { kNone = 0, kString = 1, kJson = 2 };

struct TimerRecord {
  std::string id;
  State state = State::kPending;
  int64_t created_us = 0;
  int64_t due_us = 0;        // fixed at create/replace; never moves
  int64_t next_us = 0;       // next attempt (== due_us until a retry is scheduled)
  int64_t timeout_ms = 0;    // as requested (0 when created with "at")
  int64_t completed_us = 0;  // when it reached a final state
  uint32_t attempts = 0;     // attempts finished so far
  uint64_t body_hash = 0;    // of the create/replace body, for idempotent creates
  Callback callback;
  RetryPolicy retry;
  DataKind data_kind = DataKind::kNone;
  std::string data;  // the string, or the serialized JSON object
  std::string last_error;
  bool operator==(const TimerRecord&) const = default;
};

// Limits of the API contract (SPEC section 2).
inline constexpr int64_t kMaxTimeoutMs = 10LL * 36525 * 24 * 3600 * 10;  // 10 years (365.25 d)
inline constexpr size_t kMaxIdLength = 128;

}  // namespace skyring
