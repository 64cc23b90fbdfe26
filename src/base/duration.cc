#include "base/duration.h"

#include <charconv>

#include <fmt/format.h>

namespace skyring {

Result<int64_t> parse_duration_ms(std::string_view text) {
  size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  if (i == 0)
    return fail(Errc::kInvalidArgument,
                fmt::format("'{}' is not a duration (e.g. 500ms, 30s, 24h)", text));
  int64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + i, n);
  if (ec != std::errc())
    return fail(Errc::kInvalidArgument, fmt::format("'{}' is too large", text));
  std::string_view unit = text.substr(i);
  int64_t mult = 0;
  if (unit.empty() || unit == "ms")
    mult = 1;
  else if (unit == "s")
    mult = 1000;
  else if (unit == "m")
    mult = 60'000;
  else if (unit == "h")
    mult = 3'600'000;
  else if (unit == "d")
    mult = 86'400'000;
  else
    return fail(Errc::kInvalidArgument,
                fmt::format("'{}' has an unknown unit (ms, s, m, h, d)", text));
  if (n > INT64_MAX / mult)
    return fail(Errc::kInvalidArgument, fmt::format("'{}' is too large", text));
  return n * mult;
}

}  // namespace skyring
