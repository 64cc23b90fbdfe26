// One logging call for the whole program: skyring::log::info("...{}...", args).
// Lines go to stderr, as text or one JSON object per line (--log-format json).
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

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

}  // namespace skyring::log
