// The few bytes of HTTP/1.1 the bench speaks, shared by its client and its webhook receiver.
//
// Both sides only ever exchange Content-Length framed messages on keep-alive connections, so a
// message is "head up to \r\n\r\n" plus exactly Content-Length body bytes. Chunked bodies and
// anything else unusual are rejected instead of half-understood: the peer is our own node.
#pragma once

#include <cstddef>
#include <string_view>

namespace skyring::bench {

inline constexpr size_t kMaxHead = 16 * 1024;    // a longer head is a protocol error
inline constexpr size_t kMaxBody = 1024 * 1024;  // larger than anything either side sends

struct MessageHead {
  size_t head_len = 0;        // bytes up to and including the blank line
  size_t content_length = 0;  // 0 when the header is absent
  int status = 0;             // responses: the status code; requests: 0
  bool close = false;         // "Connection: close" was sent
};

enum class Parse { kNeedMore, kOk, kBad };

// Parses the message head at the start of `buf` (a response when `response`, else a request).
Parse parse_head(std::string_view buf, bool response, MessageHead* out);

// The value of header `name` (case-insensitive, surrounding blanks removed) in `head`;
// empty when absent.
std::string_view header_value(std::string_view head, std::string_view name);

}  // namespace skyring::bench
