// GroupCommitter: many writers, one fsync.
//
// Operation: submit() queues a batch with its completion; a single committer thread takes
// everything queued (up to max_group_ops operations), writes it as ONE atomic Kv batch with
// sync, then hands all completions of that group to the completion Executor as ONE task, in
// submit order. So a group of N requests costs one fsync and one cross-thread hand-off.
//
// Concurrency: submit() may be called from any thread. Completions run on the Executor given
// to the constructor (the engine thread), never on the caller's stack.
//
// Failure: a failed write fails every completion of its group and makes the committer
// sticky-failed: every later submit() fails at once with kUnavailable. Nothing after a failed
// write is acknowledged, so acknowledged state never runs ahead of what is on disk.
//
// Limits: at most max_queue_ops operations wait at once; submit() beyond that returns
// kOverloaded without queuing (the caller answers 503).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "base/executor.h"
#include "base/metrics.h"
#include "base/result.h"
#include "base/thread.h"
#include "storage/kv.h"

namespace skyring {

using CommitDone = std::function<void(Result<void>)>;

struct CommitterOptions {
  size_t max_queue_ops = 1'000'000;
  size_t max_group_ops = 65'536;
  bool sync = true;
  // The committer thread's scheduling role (base/thread.h): kThroughput, so that its wake-ups
  // inside each fsync do not preempt the event loop on a contended host.
  ThreadRole thread_role = ThreadRole::kThroughput;
};

struct CommitterProbe {
  Histogram* commit_seconds = nullptr;  // latency of one group write
  Histogram* group_size = nullptr;      // key writes per group
};

// What the engine needs from a committer; the engine tests use a manual fake.
class Committer {
 public:
  virtual ~Committer() = default;
  virtual Result<void> submit(KvBatch batch, CommitDone done) = 0;
};

class GroupCommitter final : public Committer {
 public:
  GroupCommitter(Kv& kv, Executor& completions, CommitterOptions options,
                 CommitterProbe probe = {});
  ~GroupCommitter() override;

  Result<void> submit(KvBatch batch, CommitDone done) override;
  // Writes what is queued, then stops the thread. Idempotent.
  void stop();

 private:
  struct Item {
    KvBatch batch;
    CommitDone done;
  };
  void run();

  Kv& kv_;
  Executor& completions_;
  const CommitterOptions options_;
  CommitterProbe probe_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Item> queue_;
  size_t queued_ops_ = 0;
  bool stopping_ = false;
  bool failed_ = false;
  std::thread thread_;
};

// TurnCommitter: the engine's submits of one event-loop turn as one submit.
//
// Why: the GroupCommitter's thread wakes on the first submit and writes what it finds; when
// a turn of the engine's loop handles several requests (a forward batch of creates, many
// client reads from one epoll wake-up), the first change would go alone and the others in
// the next group: one fsync and two wake-ups per change instead of per turn. This wrapper
// gathers the submits made on the executor's thread and hands them on as one, from a task
// posted at the first of them: it runs after the work already queued on the loop, so it adds
// no wait of its own.
// Contract: a Committer; submit() only on the executor's thread. Completions keep submit
// order (the one merged submit completes them in order); a failed write, or a refusal by the
// next committer (stopped, failed earlier), fails each; a full queue there is a sizing bug
// and crashes loudly (SKYRING_ASSERT), as the engine's own check did. At most
// max_ops operations gather; the submit that reaches it hands them on at once. flush() hands
// on what gathered (the node calls it before stopping the GroupCommitter).
class TurnCommitter final : public Committer {
 public:
  TurnCommitter(Committer& next, Executor& executor, size_t max_ops = 4096);
  ~TurnCommitter() override;

  Result<void> submit(KvBatch batch, CommitDone done) override;
  void flush();

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace skyring
