// The engine's thread is an Executor: other threads (the group committer, transports) hand it
// work with post(); the engine never takes a lock on its own state.
#pragma once

#include <functional>

namespace skyring {

using Task = std::function<void()>;

class Executor {
 public:
  virtual ~Executor() = default;
  // Runs task on the executor's thread, in post order. Safe from any thread.
  virtual void post(Task task) = 0;
};

}  // namespace skyring
