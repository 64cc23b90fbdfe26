// JSON text helpers shared by the Api and the cluster layer (which sits below the Api and
// cannot call it): UTF-8 checking, string literals, and the uniform error answer of the HTTP
// API (SPEC 2): a JSON body {"error": message} and an x-skyring-reason header.
#pragma once

#include <string>
#include <string_view>

namespace skyring {

// Length of the valid UTF-8 character at s[i] (RFC 3629: no overlong form, surrogate or code
// point above U+10FFFF), or 0 when the byte there does not start one.
size_t utf8_char_length(std::string_view s, size_t i);

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
