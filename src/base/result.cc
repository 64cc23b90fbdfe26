#include "base/result.h"

namespace skyring {

const char* errc_name(Errc code) {
  switch (code) {
    case Errc::kInvalidArgument:
      return "invalid_argument";
    case Errc::kNotFound:
      return "not_found";
    case Errc::kConflict:
      return "conflict";
    case Errc::kTooLarge:
      return "too_large";
    case Errc::kOverloaded:
      return "overloaded";
    case Errc::kUnavailable:
      return "unavailable";
    case Errc::kCorruption:
      return "corruption";
    case Errc::kIo:
      return "io";
  }
  return "unknown";
}

void assert_fail(const char* expr, const char* file, int line, const char* msg) {
  std::fprintf(stderr, "skyring: invariant broken: %s (%s) at %s:%d\n", msg, expr, file, line);
  std::fflush(stderr);
  std::abort();
}

}  // namespace skyring
