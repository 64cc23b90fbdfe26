// The node's GET /metrics, read the way the bench needs it: a few unlabelled counters and gauges
// by name. The node renders integers in the Prometheus text format ("# HELP", "# TYPE", then
// "<name> <value>"), so a sample is the line that starts with its name and a blank.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"

namespace skyring::bench {

// The body of GET /metrics from the node on 127.0.0.1:port (status 200, else an error).
Result<std::string> fetch_metrics(uint16_t port, int64_t timeout_ms);

// The integer value of the unlabelled sample `name` in `text`; an error when it is absent or not
// an integer.
Result<int64_t> metric_value(std::string_view text, std::string_view name);

}  // namespace skyring::bench
