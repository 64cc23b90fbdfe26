#include "model/json_text.h"

#include <boost/json.hpp>

namespace skyring {
namespace {

namespace json = boost::json;

size_t utf8_char(std::string_view s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size() || byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
  }
  return n;
}

// A JSON string. JSON text is UTF-8 but messages may quote client bytes that are not (a path,
// a method): each byte that does not start a valid character becomes U+FFFD.
std::string quoted_impl(std::string_view s) {
  std::string text;
  text.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8_char(s, i);
    if (n == 0) {
      text += "\xEF\xBF\xBD";
      ++i;
    } else {
      text.append(s, i, n);
      i += n;
    }
  }
  return json::serialize(json::string(text));
}

}  // namespace

size_t utf8_char_length(std::string_view s, size_t i) {
  return utf8_char(s, i);
}

std::string json_quoted(std::string_view s) {
  return quoted_impl(s);
}

ErrorReply error_reply(std::string_view message) {
  ErrorReply r;
  r.body = "{\"error\":" + json_quoted(message) + "}";
  size_t cut = message.size();
  if (cut > kMaxReasonBytes) {
    cut = kMaxReasonBytes;
    // Back up over continuation bytes (10xxxxxx) to the start of the character cut in two
    // (at most 3: a character is at most 4 bytes; invalid UTF-8 is cut anywhere).
    for (int i = 0; i < 3 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80; ++i) {
      --cut;
    }
  }
  // Header values cannot carry control characters; messages are ours, but be strict anyway.
  r.reason.assign(message.substr(0, cut));
  for (char& c : r.reason) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return r;
}

}  // namespace skyring
