// The uniform error answer of the HTTP API (SPEC 2): a JSON body {"error": message} and an
// x-skyring-reason header. Used by the Api and by the cluster layer's own answers (forwarding
// failures, moves), which sit below the Api and cannot call it.
#pragma once

#include <string>
#include <string_view>

namespace skyring {

// A JSON string literal. JSON text is UTF-8 but messages may quote client bytes that are not
// (a path, a method): each byte that does not start a valid character becomes U+FFFD.
std::string json_quoted(std::string_view s);

struct ErrorReply {
  std::string body;    // {"error": message}: the whole message
  std::string reason;  // x-skyring-reason: at most kMaxReasonBytes, cut on a UTF-8 character
                       // boundary, control characters replaced by spaces
};
inline constexpr size_t kMaxReasonBytes = 256;
ErrorReply error_reply(std::string_view message);

}  // namespace skyring
