// Fuzz target: the timer JSON parser (parse_timer_request, model/request.h), plus the RFC 3339
// and id checks it relies on.
//
// Beyond "no crash, no sanitizer report", every accepted body must give a record that keeps
// SPEC section 2's rules (the checks below), renders as valid JSON and survives the storage
// encoding unchanged.
#include <cstdint>
#include <string>
#include <string_view>

#include <boost/json.hpp>

#include "base/result.h"
#include "model/codec.h"
#include "model/request.h"

namespace {

constexpr int64_t kNowUs = 1'700'000'000'000'000;

bool header_token(std::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (c <= 0x20 || c >= 0x7f || c == ':') return false;
  }
  return true;
}

void check_record(const skyring::TimerRecord& r, const skyring::ParseLimits& limits) {
  using skyring::kMaxTimeoutMs;
  SKYRING_ASSERT(r.id.empty(), "the parser must not invent an id");
  SKYRING_ASSERT(r.state == skyring::State::kPending, "a parsed timer is pending");
  SKYRING_ASSERT(r.created_us == kNowUs, "created is the receive time");
  SKYRING_ASSERT(r.due_us >= 0, "due before 1970");
  SKYRING_ASSERT(r.due_us <= kNowUs + kMaxTimeoutMs * 1000, "due more than 10 years ahead");
  SKYRING_ASSERT(r.next_us == r.due_us, "next attempt is the due time");
  SKYRING_ASSERT(r.timeout_ms == 0 || r.due_us == kNowUs + r.timeout_ms * 1000,
                 "timeout and due disagree");
  SKYRING_ASSERT(
      !r.callback.transport.empty() && !r.callback.method.empty() && !r.callback.uri.empty(),
      "callback fields are required");
  for (char c : r.callback.transport + r.callback.method) {
    SKYRING_ASSERT(!(c >= 'A' && c <= 'Z'), "transport and method are lower case");
  }
  for (const auto& [name, value] : r.callback.headers) {
    SKYRING_ASSERT(header_token(name), "callback header name is not a token");
    SKYRING_ASSERT(value.find_first_of("\r\n") == std::string::npos,
                   "callback header value has a line break");
  }
  SKYRING_ASSERT(r.retry.attempts >= 1 && r.retry.attempts <= limits.max_attempts,
                 "retry.attempts out of range");
  SKYRING_ASSERT(r.retry.backoff_ms <= r.retry.max_backoff_ms, "backoff above its maximum");
  SKYRING_ASSERT(r.retry.max_backoff_ms <= limits.max_backoff_ms, "max_backoff_ms above the limit");
  SKYRING_ASSERT(r.data_kind != skyring::DataKind::kNone || r.data.empty(), "data without kind");

  boost::system::error_code ec;
  boost::json::value shown = boost::json::parse(skyring::timer_to_json(r), ec);
  SKYRING_ASSERT(!ec && shown.is_object(), "timer_to_json is not a JSON object");

  auto stored = skyring::decode_record(skyring::encode_record(r));
  SKYRING_ASSERT(stored.has_value() && *stored == r, "record does not survive the codec");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  skyring::ParseLimits limits;
  if (auto r = skyring::parse_timer_request(body, kNowUs, limits)) {
    check_record(*r, limits);
  } else {
    SKYRING_ASSERT(r.error().code == skyring::Errc::kInvalidArgument,
                   "a bad body must be kInvalidArgument");
    SKYRING_ASSERT(!r.error().message.empty(), "an error needs a message");
  }
  // The same bytes as an "at" string and as an id.
  (void)skyring::parse_rfc3339_ms(body);
  (void)skyring::valid_timer_id(body);
  return 0;
}
