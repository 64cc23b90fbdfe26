#include "bench/node_metrics.h"

#include <charconv>

#include <fmt/format.h>

#include "bench/load_client.h"

namespace skyring::bench {

Result<std::string> fetch_metrics(uint16_t port, int64_t timeout_ms) {
  auto r = http_request(port, "GET", "/metrics", timeout_ms);
  if (!r) return tl::unexpected(r.error());
  if (r->status != 200) return fail(Errc::kIo, fmt::format("GET /metrics: status {}", r->status));
  return std::move(r->body);
}

Result<int64_t> metric_value(std::string_view text, std::string_view name) {
  std::string line_start = fmt::format("\n{} ", name);
  size_t at = text.find(line_start);
  if (at == std::string_view::npos)
    return fail(Errc::kIo, fmt::format("GET /metrics: no {}", name));
  const char* p = text.data() + at + line_start.size();
  const char* end = text.data() + text.size();
  int64_t v = 0;
  auto [stop, ec] = std::from_chars(p, end, v);
  if (ec != std::errc() || (stop != end && *stop != '\n')) {
    return fail(Errc::kIo, fmt::format("GET /metrics: {} is not an integer", name));
  }
  return v;
}

}  // namespace skyring::bench
