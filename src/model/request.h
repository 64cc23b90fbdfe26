// Turns a POST/PUT /timer body into a TimerRecord, checking every field rule of SPEC section 2.
// The transport name, method and uri are checked for shape here and for meaning by the transport
// (api layer), so the model does not depend on which transports are loaded.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"
#include "model/timer.h"

namespace skyring {

struct ParseLimits {
  size_t max_depth = 32;  // JSON nesting
  uint32_t max_attempts = 100;
  uint64_t max_backoff_ms = 86'400'000;  // one day
};

// Parses `body` received at `now_us`. On success the record has everything but the id.
// Errors are kInvalidArgument with a message naming the field.
Result<TimerRecord> parse_timer_request(std::string_view body, int64_t now_us,
                                        const ParseLimits& limits = {});

// Parses an RFC 3339 timestamp ("2026-12-01T10:00:00Z", "...T10:00:00.250+02:00") to epoch ms.
Result<int64_t> parse_rfc3339_ms(std::string_view text);

// Valid client-chosen id: 1-128 chars of [A-Za-z0-9._:-].
bool valid_timer_id(std::string_view id);

// Renders a record as the GET /timer/:id JSON object.
std::string timer_to_json(const TimerRecord& r);

}  // namespace skyring
