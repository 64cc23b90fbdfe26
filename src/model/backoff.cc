#include "model/backoff.h"

#include <algorithm>

namespace skyring {

uint64_t nominal_backoff_ms(const RetryPolicy& p, uint32_t failed_attempts) {
  uint32_t doublings = failed_attempts == 0 ? 0 : failed_attempts - 1;
  uint64_t d = p.backoff_ms;
  for (uint32_t i = 0; i < doublings && d < p.max_backoff_ms; ++i) d *= 2;
  return std::min(d, p.max_backoff_ms);
}

uint64_t backoff_ms(const RetryPolicy& p, uint32_t failed_attempts, uint64_t random) {
  uint64_t d = nominal_backoff_ms(p, failed_attempts);
  uint64_t half = d / 2;
  uint64_t span = d - half;
  return half + (span == 0 ? 0 : random % (span + 1));
}

}  // namespace skyring
