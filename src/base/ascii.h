// ASCII helpers for protocol tokens (URI schemes, hosts, methods, header names, ports):
// locale-free; the case helpers change only A-Z.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace skyring {

inline char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

inline std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

// Equal ignoring ASCII case (header names, schemes).
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

// A port as written in a URI or host:port: decimal digits only, 1-65535.
inline std::optional<uint16_t> parse_port(std::string_view digits) {
  if (digits.empty() || digits.size() > 5) return std::nullopt;
  uint32_t n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<uint32_t>(c - '0');
  }
  if (n == 0 || n > 65535) return std::nullopt;
  return static_cast<uint16_t>(n);
}

}  // namespace skyring
