#include "model/timer.h"

namespace skyring {

const char* state_name(State s) {
  switch (s) {
    case State::kPending:
      return "pending";
    case State::kExecuting:
      return "executing";
    case State::kRetrying:
      return "retrying";
    case State::kSucceeded:
      return "succeeded";
    case State::kFailed:
      return "failed";
    case State::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

bool parse_state(std::string_view name, State* out) {
  for (State s : {State::kPending, State::kExecuting, State::kRetrying, State::kSucceeded,
                  State::kFailed, State::kCancelled}) {
    if (name == state_name(s)) {
      *out = s;
      return true;
    }
  }
  return false;
}

}  // namespace skyring
