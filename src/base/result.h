// Expected failures are values: every fallible call returns Result<T>.
// Broken invariants are not failures: they crash through SKYRING_ASSERT.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include <tl/expected.hpp>

namespace skyring {

enum class Errc {
  kInvalidArgument,  // the client sent something wrong (400)
  kNotFound,         // no such timer (404)
  kConflict,         // state forbids the operation (409)
  kTooLarge,         // body over the limit (413)
  kOverloaded,       // a bounded queue is full (503)
  kUnavailable,      // storage failed, shutting down (503)
  kCorruption,       // stored data failed its checksum
  kIo,               // the OS or a library said no
};

struct Error {
  Errc code;
  std::string message;
};

template <typename T>
using Result = tl::expected<T, Error>;

inline tl::unexpected<Error> fail(Errc code, std::string message) {
  return tl::unexpected<Error>(Error{code, std::move(message)});
}

const char* errc_name(Errc code);

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const char* msg);

}  // namespace skyring

// Crashes loudly in every build type: used for invariants, never for input.
#define SKYRING_ASSERT(expr, msg) \
  ((expr) ? (void)0 : ::skyring::assert_fail(#expr, __FILE__, __LINE__, msg))
