// Node: one running `skyring run`. Owns every component and the order they start and stop in
// (SPEC section 6):
//   start: open storage -> recover waiting timers -> listen (logs "listening") -> deliver
//          overdue timers at once -> serve.
//   stop (SIGTERM/SIGINT): stop accepting and close idle connections -> refuse new work ->
//          finish in-flight requests -> wait (bounded) for in-flight deliveries -> abort the
//          rest (they stay owed and are attempted again after restart) -> flush storage.
#pragma once

#include "app/config.h"
#include "base/result.h"

namespace skyring {

// Runs a node until a shutdown signal; returns the process exit code.
int run_node(const Config& config);

}  // namespace skyring
