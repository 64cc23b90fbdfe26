#include "bench/http_wire.h"

#include <charconv>

namespace skyring::bench {
namespace {

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::string_view header_value(std::string_view head, std::string_view name) {
  size_t pos = head.find("\r\n");  // skip the start line
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    size_t begin = pos + 2;
    size_t end = head.find("\r\n", begin);
    if (end == std::string_view::npos) end = head.size();
    std::string_view line = head.substr(begin, end - begin);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos && iequals(line.substr(0, colon), name)) {
      return trim(line.substr(colon + 1));
    }
    pos = end;
  }
  return {};
}

Parse parse_head(std::string_view buf, bool response, MessageHead* out) {
  size_t end = buf.find("\r\n\r\n");
  if (end == std::string_view::npos) return buf.size() > kMaxHead ? Parse::kBad : Parse::kNeedMore;
  std::string_view head = buf.substr(0, end + 2);  // keeps the last header's CRLF
  MessageHead h;
  h.head_len = end + 4;
  if (response) {
    // "HTTP/1.1 201 Created"
    if (head.size() < 12 || head.substr(0, 5) != "HTTP/") return Parse::kBad;
    size_t sp = head.find(' ');
    if (sp == std::string_view::npos || sp + 4 > head.size()) return Parse::kBad;
    auto [p, ec] = std::from_chars(head.data() + sp + 1, head.data() + sp + 4, h.status);
    if (ec != std::errc() || p != head.data() + sp + 4) return Parse::kBad;
  }
  if (!header_value(head, "transfer-encoding").empty()) return Parse::kBad;
  std::string_view cl = header_value(head, "content-length");
  if (!cl.empty()) {
    auto [p, ec] = std::from_chars(cl.data(), cl.data() + cl.size(), h.content_length);
    if (ec != std::errc() || p != cl.data() + cl.size() || h.content_length > kMaxBody) {
      return Parse::kBad;
    }
  }
  h.close = iequals(header_value(head, "connection"), "close");
  *out = h;
  return Parse::kOk;
}

}  // namespace skyring::bench
