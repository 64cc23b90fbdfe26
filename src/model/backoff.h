// Retry schedule (SPEC section 4): the delay before attempt n+1 after n failed attempts is
// min(max_backoff, backoff * 2^(n-1)) with "equal jitter": half of it fixed, half uniformly
// random, so retries from many timers failing together spread out but never come sooner than
// half the nominal delay.
#pragma once

#include <cstdint>

#include "model/timer.h"

namespace skyring {

// Nominal delay in ms after `failed_attempts` (>= 1) failures, before jitter.
uint64_t nominal_backoff_ms(const RetryPolicy& p, uint32_t failed_attempts);
// The jittered delay; `random` is any uniformly distributed 64-bit value.
uint64_t backoff_ms(const RetryPolicy& p, uint32_t failed_attempts, uint64_t random);

}  // namespace skyring
