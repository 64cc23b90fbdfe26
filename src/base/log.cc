#include "base/log.h"

#include <atomic>
#include <memory>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace skyring::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<bool> g_json{false};

std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    auto lg = std::make_shared<spdlog::logger>("skyring", sink);
    lg->set_level(spdlog::level::trace);
    return lg;
  }();
  return l;
}

const char* level_name(Level l) {
  switch (l) {
    case Level::kTrace:
      return "trace";
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
    case Level::kOff:
      return "off";
  }
  return "info";
}

void json_escape(std::string& out, std::string_view s) {
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out += c;
        }
    }
  }
}

}  // namespace

Result<Level> parse_level(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(Level::kError); ++i) {
    if (name == level_name(static_cast<Level>(i))) return static_cast<Level>(i);
  }
  return fail(Errc::kInvalidArgument,
              fmt::format("unknown log level '{}' (trace, debug, info, warn, error)", name));
}

void init(Level level, bool json) {
  g_level.store(static_cast<int>(level));
  g_json.store(json);
  logger()->set_pattern(json ? "%v" : "%Y-%m-%dT%H:%M:%S.%e %l %v");
}

bool enabled(Level level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void write(Level level, std::string_view message) {
  static const spdlog::level::level_enum map[] = {spdlog::level::trace, spdlog::level::debug,
                                                  spdlog::level::info,  spdlog::level::warn,
                                                  spdlog::level::err,   spdlog::level::off};
  if (g_json.load(std::memory_order_relaxed)) {
    std::string line = fmt::format(R"({{"ts":{},"level":"{}","msg":")",
                                   std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count(),
                                   level_name(level));
    json_escape(line, message);
    line += "\"}";
    logger()->log(map[static_cast<int>(level)], line);
  } else {
    logger()->log(map[static_cast<int>(level)], message);
  }
  if (level >= Level::kWarn) logger()->flush();
}

}  // namespace skyring::log
