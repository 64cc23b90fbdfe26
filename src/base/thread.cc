#include "base/thread.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstring>

namespace skyring {

ThreadSetup set_up_this_thread(std::string_view name, ThreadRole role) {
  ThreadSetup out;
#if defined(__linux__)
  char buf[16];  // the kernel's limit: 15 characters and the terminator
  size_t n = std::min(name.size(), sizeof buf - 1);
  std::memcpy(buf, name.data(), n);
  buf[n] = '\0';
  out.named = pthread_setname_np(pthread_self(), buf) == 0;
  if (role == ThreadRole::kThroughput) {
    sched_param p{};
    p.sched_priority = 0;
    // Linux applies sched_setscheduler(0, ...) to the calling thread, not the process.
    out.role_applied = sched_setscheduler(0, SCHED_BATCH, &p) == 0;
  } else {
    out.role_applied = true;
  }
#else
  (void)name;
  out.role_applied = role == ThreadRole::kLatency;
#endif
  return out;
}

}  // namespace skyring
