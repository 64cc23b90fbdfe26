// One logging call for the whole program: skyring::log::info("...{}...", args).
// Lines go to stderr, as text or one JSON object per line (--log-format json).
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "base/clock.h"
#include "base/result.h"

namespace skyring::log {

enum class Level { kTrace = 0, kDebug, kInfo, kWarn, kError, kOff };

Result<Level> parse_level(std::string_view name);
void init(Level level, bool json);
bool enabled(Level level);
void write(Level level, std::string_view message);

// Written whatever the level: lines other programs wait for (e.g. "listening").
template <typename... A>
void always(fmt::format_string<A...> f, A&&... a) {
  write(Level::kInfo, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void trace(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::kTrace)) write(Level::kTrace, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void debug(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::kDebug)) write(Level::kDebug, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void info(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::kInfo)) write(Level::kInfo, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void warn(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::kWarn)) write(Level::kWarn, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void error(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::kError)) write(Level::kError, fmt::format(f, std::forward<A>(a)...));
}

// Rate limit for a repeating log line: one line per period; the next line that passes says
// how many were held back. Not thread-safe: one per thread that logs through it.
class Limiter {
 public:
  explicit Limiter(int64_t period_us = 1'000'000) : period_us_(period_us) {}
  // True if a line may be written now; *dropped is the number held back since the last one.
  bool allow(uint64_t* dropped) {
    int64_t now = monotonic_us();
    if (logged_ && now - last_us_ < period_us_) {
      ++dropped_;
      return false;
    }
    logged_ = true;
    last_us_ = now;
    *dropped = dropped_;
    dropped_ = 0;
    return true;
  }
  // " (N more not logged)", or "" when none were held back.
  static std::string note(uint64_t dropped) {
    return dropped == 0 ? std::string() : fmt::format(" ({} more not logged)", dropped);
  }

 private:
  int64_t period_us_;
  bool logged_ = false;
  int64_t last_us_ = 0;
  uint64_t dropped_ = 0;
};

}  // namespace skyring::log
