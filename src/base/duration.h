// Durations as operators write them: "500ms", "30s", "15m", "24h", "7d"; a bare integer is
// milliseconds. Shared by the node's configuration and the benchmark tool.
#pragma once

#include <cstdint>
#include <string_view>

#include "base/result.h"

namespace skyring {

Result<int64_t> parse_duration_ms(std::string_view text);

}  // namespace skyring
