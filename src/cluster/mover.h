// Mover: hands the timers this node holds but no longer owns to their owners, and takes in
// the ones handed to it (docs/cluster.md, "Moves"). It is the only writer of moves.
//
// Sending (one batch = up to `batch` ids for one destination, at most max_inflight batches):
//   1. engine.begin_move(ids, dest, token): waiting timers get a durable "moving" mark (from
//      then on they never fire here and PUT/DELETE answer 503) and leave the heap.
//   2. POST /cluster/moves to the destination: the records, the token.
//   3. 200: the receiver stored them durably (or had them: same token, or a record of its own)
//      → engine.end_move(delivered): records and marks deleted in one batch.
//      A refusal that says nothing was stored (503 with x-skyring-move: refused, any 4xx —
//      the receiver rejected the request before storing anything — or the connection never
//      opened) → end_move(not delivered): the marks go, the timers are owed here again and
//      move at a later pass (passes back off after refusals: 100 ms doubling to 5 s).
//      Anything else (connection broken after sending, a timeout, another status): unknown →
//      the marks stay and the same batch (same token) is sent again, with backoff, until the
//      destination answers. The receiver's receipt of the token makes that resend a no-op.
//      A resend (and a batch of marks found at recovery) may find the first send stored, so
//      a refusal of it ends nothing: only a 200, or 503 with x-skyring-move: not-held (the
//      receiver checked it has no receipt of the token), ends that move.
//   Marks found at recovery are resent the same way (start()).
//   An unknown outcome whose destination has left after a complete handoff
//   (Membership::left_after_handoff): the same batch, same token, marks kept, goes to the
//   ids' new owners (redirect()); ids owned here now end their marks and stay.
// Receiving while leaving: a batch none of whose records has a receipt here is answered
// 503 not-held (a leaving node stores no new move: its handoff could miss it); a resend of
// a batch stored earlier is answered as usual (duplicates).
// Scanning: after a ring change, and every rescan_ms, a pass visits the waiting timers (the
// engine's slots, in chunks of scan_chunk per turn of the loop) and then the final records
// (storage's s/ index) and queues the ids whose owner is another reachable member. A pass
// that finds nothing while nothing is in flight settles the ring: Membership::set_settled.
//
// Receiving: receive_moves() decodes the batch (any byte may be wrong: a bad batch is 400)
// and calls engine.import(); the answer lists one outcome per record.
//
// Wire format (POST /cluster/moves, application/octet-stream): "SKM1", u32le token length,
// token, u32le count, then per record u32le length + the record as stored
// (model/codec.h, checksummed). Answer: 200 {"outcomes":"SDKR..."} (stored, duplicate, kept
// local, rejected; one letter per record in order); a refusal carries x-skyring-move: refused
// (this request stored nothing) or not-held (nothing under this token is stored here).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "base/executor.h"
#include "base/log.h"
#include "base/metrics.h"
#include "cluster/membership.h"
#include "cluster/peer_client.h"
#include "cluster/router.h"
#include "engine/timer_engine.h"

namespace skyring::cluster {

struct MoverOptions {
  std::string self_id;
  std::string cluster = "skyring";
  size_t batch = 1000;                    // ids per batch
  size_t max_batch_bytes = 768 * 1024;    // encoded records per batch (at least one record)
  size_t max_inflight = 8;                // batches begun and not ended
  size_t scan_chunk = 8192;               // slots visited per turn of the loop
  int64_t send_timeout_ms = 30'000;       // one batch exchange
  int64_t retry_min_ms = 100;             // resend of an unknown outcome, doubling...
  int64_t retry_max_ms = 5000;            // ... up to this
  int64_t rescan_ms = 60'000;             // a pass even without a ring change
  size_t max_batch_records_in = 100'000;  // receive: records per batch accepted
};

struct MoveStats {
  uint64_t moved_out = 0;  // records the receivers stored
  uint64_t moved_in = 0;
  uint64_t batches = 0;
};

class Mover final : public MoveSink {
 public:
  Mover(TimerEngine& engine, Membership& membership, PeerClient& peers, Executor& executor,
        MoverOptions options, Registry& metrics);
  ~Mover() override;

  // Resends the moves found at recovery (engine.moving()) and starts the first pass.
  void start();
  void ring_changed();
  // Called periodically (~100 ms): retries, rescans, settling.
  void tick();
  // No foreign timer found by the last full pass and nothing in flight or unresolved.
  bool settled() const;
  size_t in_flight() const;
  const MoveStats& stats() const { return stats_; }
  // Called once per settled ring change (for the "rebalance" node event).
  void on_settled(std::function<void(const MoveStats&)> fn) { on_settled_ = std::move(fn); }

  void receive_moves(std::string_view body, std::function<void(RouteResponse)> done) override;

 private:
  struct Batch {
    std::string dest;
    std::string token;
    std::vector<std::string> ids;
    std::string body;  // empty until begun
    // An earlier send's outcome is unknown, or the marks were found at recovery: the
    // destination may hold the records already, so only an answer that knows the token ends
    // the move (a 200, or a "not-held" refusal).
    bool maybe_stored = false;
    int64_t retry_ms = 0;
    int64_t next_try_us = 0;  // monotonic
  };
  enum class Phase { kWaiting, kSucceeded, kFailed, kCancelled, kIdle };

  void pump();
  void schedule_pump();
  bool scan_some();
  void queue_id(const std::string& id, const std::string& dest);
  // resend: the ids carry marks of `token` found at recovery (kept and retried on failure).
  void start_batch(std::string dest, std::vector<std::string> ids, std::string token, bool resend);
  void send(std::shared_ptr<Batch> b);
  void on_answer(std::shared_ptr<Batch> b, PeerResponse resp);
  void end(std::shared_ptr<Batch> b, std::vector<std::string> delivered,
           std::vector<std::string> kept);
  void retry_later(std::shared_ptr<Batch> b, const std::string& why);
  // An unknown outcome whose destination left after a complete handoff: to the new owners.
  void redirect(std::shared_ptr<Batch> b);
  void back_off_passes();
  std::string new_token();
  bool foreign(const std::string& id, std::string* dest) const;
  size_t queued() const;

  TimerEngine& engine_;
  Membership& membership_;
  PeerClient& peers_;
  Executor& executor_;
  const MoverOptions options_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  Phase phase_ = Phase::kIdle;
  size_t slot_cursor_ = 0;
  size_t pass_generation_ = 0;  // engine slot table generation when the pass began
  std::string final_cursor_;
  bool pass_found_ = false;
  bool rescan_ = true;      // a new pass is wanted
  uint64_t pass_ring_ = 0;  // ring fingerprint the current pass started under
  uint64_t settled_ring_ = 0;
  bool settled_ = false;
  bool pump_posted_ = false;
  int64_t last_pass_us_ = 0;
  // After a refusal the next pass waits (100 ms doubling to retry_max_ms; reset by a success),
  // so a full or refusing receiver is not asked again in a tight loop.
  int64_t pass_not_before_us_ = 0;
  int64_t refusal_backoff_ms_ = 0;
  std::map<std::string, std::vector<std::string>> queue_;  // dest -> ids
  size_t inflight_ = 0;
  std::vector<std::shared_ptr<Batch>> retrying_;
  std::mt19937_64 rng_;
  MoveStats stats_;
  MoveStats stats_at_settle_;
  std::function<void(const MoveStats&)> on_settled_;
  log::Limiter log_;

  Counter& moved_out_;
  Counter& moved_in_;
  Counter& batches_out_;
  Counter& unknown_;
  Counter& refused_;
  Counter& kept_local_;
  Gauge& moving_;
  Gauge& unresolved_;
};

}  // namespace skyring::cluster
