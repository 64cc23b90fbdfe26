// TimerEngine: the state machine of every timer this node holds.
//
// Operation
//   * Every pending/retrying/executing timer has a Slot in memory (its id, next attempt time,
//     state: ~100 bytes with the map node) and sits in a TimerHeap. Payloads stay in storage
//     and are read when the timer is due, so millions of far-future timers cost little RAM;
//     only records due within near_window_us of their create are kept (bounded, `near_`).
//   * A change (create, replace, cancel, an attempt's outcome, a purge) updates memory at once
//     and is handed to the Committer. Until it is durable the new record is kept in
//     `unsettled_`, so every read sees the newest state; a reply that reports it waits until it
//     is durable. A timer fires only once its record is durable, so nothing is delivered that a
//     crash could take back.
//   * tick() starts attempts for due timers (next_us <= now: never early), bounded per node and
//     per destination; a timer whose destination is saturated is parked in that destination's
//     FIFO and its slot in the heap given up, so a dead destination never delays the others.
//   * Outcomes: success -> succeeded; retryable failure with attempts left -> retrying with
//     exponential backoff and jitter; otherwise failed (a dead letter). Final records stay for
//     the retention window; the RetentionPurger (storage/) removes them.
//   * Admission: creates, replaces and cancels are refused (kOverloaded, 503) while
//     max_unsettled changes wait for storage; attempts start only while backlog + in-flight
//     attempts stay below max_unsettled, so the outcomes of the attempts in flight always fit
//     (backlog <= max_unsettled + max_inflight). A slow disk makes timers wait, never fail.
//   * Read errors: a record that cannot be read when its timer is due is retried with backoff
//     (100 ms doubling to 10 s); one that fails its checksum is quarantined (q/<id>, never
//     deleted), counted, and reported by failed reads (kCorruption, 500) and /health.
//   * Generated ids are a random prefix (checked unused in storage and in unsettled changes)
//     plus a counter. A client id that takes the current prefix retires it, so a generated id
//     never equals an id that exists or is retained.
//
// Concurrency
//   Single-threaded: every method runs on the engine's Executor thread. Transports and the
//   committer call back through that Executor.
//
// Limitations
//   A storage write failure is fail-stop: the engine refuses all further work (kUnavailable)
//   and stops firing; /health reports it. The operator restarts the node, which recovers from
//   what is durable. Overload (a full backlog) is not a failure: it only refuses and waits.
//   Quarantined ids are remembered in memory up to max_quarantined_ids; beyond that a read of
//   one finds nothing (404) and its id may be used again (the quarantined bytes stay).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "base/clock.h"
#include "base/executor.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/result.h"
#include "delivery/transport.h"
#include "engine/timer_heap.h"
#include "model/timer.h"
#include "storage/group_committer.h"
#include "storage/timer_store.h"

namespace skyring {

struct EngineOptions {
  size_t max_inflight = 1024;                 // delivery attempts in flight per node
  size_t max_inflight_per_destination = 128;  // ... per destination
  size_t max_unsettled = 200'000;             // changes accepted but not yet durable
  int64_t retention_us = 24LL * 3600 * 1'000'000;
  int64_t delivery_timeout_ms = 10'000;
  size_t max_list = 1000;           // page size limit for list()
  size_t max_list_scan = 4096;      // pending-index entries visited per list() of a waiting state
  int64_t read_retry_min_ms = 100;  // first retry of a due timer whose record read failed
  int64_t read_retry_max_ms = 10'000;   // ... doubling up to this
  size_t max_quarantined_ids = 10'000;  // quarantined ids remembered in memory
  // Records of timers due within near_window_us of their create/replace stay in memory (at most
  // max_near_records), so their attempt needs no storage read.
  int64_t near_window_us = 10'000'000;
  size_t max_near_records = 100'000;
  // Cluster moves: how long a receipt of a move in is kept (a sender that crashed between the
  // acknowledgement and its delete resends within this time; docs/cluster.md), and the storage
  // operations that begin_move/end_move/import may have on their way to storage at once
  // (beyond it begin_move and import answer kOverloaded and the mover retries).
  int64_t move_receipt_ttl_us = 7LL * 24 * 3600 * 1'000'000;
  size_t max_move_ops = 65'536;
};

// Lifecycle events of timers (the cluster publishes them on NATS). Called on the engine thread
// after the change is durable (create, replace, cancel, success, fail, evict) or when an
// attempt starts (execute); must be cheap and must not call back into the engine.
enum class TimerEvent { kCreate, kReplace, kExecute, kSuccess, kFail, kCancel, kEvict };
const char* timer_event_name(TimerEvent e);

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void on_timer(TimerEvent event, const TimerRecord& record) = 0;
};

// A durable "moving" mark found at recovery: the timer was being handed to `dest` under
// `token` when the node stopped (docs/cluster.md, "Moves").
struct MoveMark {
  std::string id;
  std::string dest;
  std::string token;
};

// What import() did with one moved record.
enum class ImportOutcome {
  kStored,     // new here: stored durably
  kDuplicate,  // this move (token) was stored before: nothing to do
  kKeptLocal,  // a different record of the id is here already: it stays (counted, logged)
  kRejected,   // not a valid record (bad id or state): not stored, the sender keeps it
};

// The engine's single re-armable wake-up. The driver calls TimerEngine::tick() at or after
// the time given (never needs to be exact: tick() re-arms itself).
class Wakeup {
 public:
  virtual ~Wakeup() = default;
  virtual void wake_at(int64_t due_us) = 0;
};

struct EngineProbe {
  Counter* created = nullptr;
  Counter* replaced = nullptr;
  Counter* cancelled = nullptr;
  Counter* delivered = nullptr;
  Counter* failed = nullptr;
  Counter* retried = nullptr;
  Counter* read_errors = nullptr;
  Counter* quarantined = nullptr;
  Gauge* quarantined_records = nullptr;
  Gauge* pending = nullptr;
  Gauge* inflight = nullptr;
  Histogram* lateness_seconds = nullptr;
  static EngineProbe make(Registry& r);
};

struct CreateResult {
  std::string id;
  bool created = true;  // false: an identical create was answered again
};

struct ListPage {
  std::vector<TimerRecord> timers;
  std::string next_cursor;  // empty when this is the last page
};

class TimerEngine {
 public:
  template <typename T>
  using Reply = std::function<void(Result<T>)>;

  TimerEngine(const Clock& clock, Executor& executor, Wakeup& wakeup, TimerStore& store,
              Committer& committer, const TransportRegistry& transports, EngineOptions options,
              EngineProbe probe = {});

  // Loads every waiting timer from storage. Call once, before anything else. A corrupt index
  // entry is repaired from its record, or quarantined with it; it never stops the start.
  Result<size_t> recover();

  // `r` comes from parse_timer_request(); r.id empty means "generate one". fresh_id: r.id came
  // from new_id() on this node and was never used (no lookup needed).
  void create(TimerRecord r, Reply<CreateResult> done, bool fresh_id = false);
  void replace(TimerRecord r, Reply<void> done);
  void cancel(const std::string& id, Reply<void> done);
  void get(const std::string& id, Reply<TimerRecord> done);
  void list(State state, const std::string& cursor, size_t limit, Reply<ListPage> done);

  // Starts attempts for every due timer the limits allow.
  void tick();

  // --- Cluster support (docs/cluster.md) ---
  void set_observer(EngineObserver* observer) { observer_ = observer; }
  // While held, no attempt starts (a restarted node waits until it knows the ring).
  void hold_firing(bool hold);
  bool firing_held() const { return held_; }
  // A new id for a create routed by this node (the same generator as create() without id).
  Result<std::string> new_id();
  // Whether this node holds a record of `id` in any state (a read error counts as yes, so the
  // request is answered here with that error).
  bool holds(const std::string& id);
  // Visits waiting timers (not executing, not moving) from *cursor on, at most max_visit;
  // appends the ids for which want(id) is true, and counts in *busy the executing ones for
  // which it is true (they can move only after their attempt). Returns true when the end was
  // reached (then *cursor is 0 again). The order is arbitrary; a timer created meanwhile, or
  // any timer when the table rehashed (slot_table_generation() changed), may be missed.
  bool scan_waiting(size_t* cursor, size_t max_visit,
                    const std::function<bool(const std::string&)>& want,
                    std::vector<std::string>* out, size_t* busy);
  size_t slot_table_generation() const { return slots_.bucket_count(); }
  // Starts moving `ids` to node `dest` under `token`: waiting ones get a durable moving mark
  // (from then on they neither fire nor change; PUT/DELETE answer 503) and leave the heap;
  // final ones are only read. Gives the records once the marks are durable. Ids that cannot
  // move now (executing, already moving, gone) are left out.
  void begin_move(std::vector<std::string> ids, const std::string& dest, const std::string& token,
                  Reply<std::vector<TimerRecord>> done);
  // Ends a move begun with `token`: delivered (the receiver acknowledged a durable write)
  // deletes the records and marks; otherwise the marks go and the timers are owed here again.
  // Ids whose mark is no longer this token are left alone, and so is a retention record that
  // was not sent under this token or came back since.
  void end_move(const std::vector<std::string>& ids, const std::string& token, bool delivered,
                Reply<void> done);
  // Marks found at recovery whose moves are not ended yet.
  std::vector<MoveMark> moving() const;
  // Stores moved records (durably, with a receipt per token); see ImportOutcome.
  void import(std::vector<TimerRecord> records, const std::string& token,
              Reply<std::vector<ImportOutcome>> done);
  // Ids of final (retention) records in `state` after `cursor`, at most `limit` (id order).
  Result<std::vector<std::string>> final_ids(State state, const std::string& cursor, size_t limit);
  size_t moving_count() const { return moving_.size(); }
  // Whether a move of `id` under `token` was stored here (its receipt, as import() checks it).
  Result<bool> has_move_receipt(std::string_view id, std::string_view token) {
    return store_.has_receipt(id, token);
  }
  bool moving_under(const std::string& id, const std::string& token) const {
    auto it = moving_.find(id);
    return it != moving_.end() && it->second.token == token;
  }

  // Graceful stop: no new attempts start; requests get kUnavailable.
  void stop_firing();
  size_t inflight() const { return inflight_.size(); }
  size_t waiting() const { return slots_.size(); }
  // Changes handed to the committer and not yet durable.
  uint64_t backlog() const { return submitted_seq_ - durable_seq_; }
  bool failed() const { return failed_; }
  const std::string& failure() const { return failure_; }
  // Records moved aside because they failed their checksum (durable, since ever).
  size_t quarantined() const { return quarantined_total_; }

 private:
  static constexpr uint32_t kNoDestination = UINT32_MAX;
  struct Slot : HeapSlot {
    const std::string* id = nullptr;
    uint64_t write_seq = 0;                 // commit that made the current state durable
    uint32_t destination = kNoDestination;  // index into destinations_; unknown after recovery
    State state = State::kPending;
    bool parked = false;
    bool moving = false;  // listed in moving_: out of the heap, never fired or changed
  };
  struct Move {
    std::string dest;
    std::string token;
  };
  // One per distinct destination that some slot refers to: lets tick() see a saturated
  // destination before reading the timer's record, and park the timer for it alone.
  struct Destination {
    std::string key;
    size_t refs = 0;  // slots that name it
    size_t busy = 0;  // attempts in flight
    // Ids; stale entries (cancelled/replaced) are skipped. Allocated at the first park: most
    // destinations never saturate, and an empty std::deque already holds ~576 bytes.
    std::unique_ptr<std::deque<std::string>> parked;
    bool blocked = false;  // listed in blocked_destinations_
  };
  struct Unsettled {
    std::optional<TimerRecord> record;  // nullopt: purged
    uint64_t seq = 0;
  };
  struct Lookup {
    std::optional<TimerRecord> record;
    uint64_t seq = 0;  // reply only once this commit is durable
  };
  struct InFlight {
    TimerRecord record;
    uint32_t destination;
  };

  Result<void> admit() const;
  bool may_start() const { return backlog() + inflight_.size() < options_.max_unsettled; }
  Result<Lookup> lookup(const std::string& id);
  Result<void> not_quarantined(const std::string& id) const;
  uint64_t submit(KvBatch batch, TimerRecord record, std::function<void(Result<void>)> done);
  // A batch changing several ids (moves): each id reads as its given state until durable.
  using Changes = std::vector<std::pair<std::string, std::optional<TimerRecord>>>;
  uint64_t submit_moves(KvBatch batch, Changes changes);
  Result<void> admit_moves(size_t ops) const;
  // A change to `id`: record is its new state (nullopt: gone) until the commit is durable.
  uint64_t submit_change(KvBatch batch, std::string id, std::optional<TimerRecord> record,
                         std::function<void(Result<void>)> done);
  void quarantine(const std::string& id, char source, std::string_view raw);
  void remember_quarantined(std::string_view id);  // one found in storage
  void note_quarantined(std::string_view id);      // ... and newly moved aside: counted
  Slot* load_slot(std::string_view id, int64_t next_us, State state);  // recovery
  // A moved-in waiting record becomes (or replaces) this node's slot for its id.
  void adopt_waiting(const TimerRecord& r);
  void notify(TimerEvent e, const TimerRecord& r) {
    if (observer_) observer_->on_timer(e, r);
  }
  void repair_index_entry(std::string_view id, std::string_view raw, KvBatch& repairs);
  void retry_read_later(Slot* s, const Error& e);
  void after_durable(uint64_t seq, std::function<void()> fn);
  void on_committed(uint64_t seq, const Result<void>& r);
  void schedule_tick();
  void arm();
  void enqueue(Slot* s);
  void dequeue(Slot* s);
  void erase_slot(const std::string& id);
  void keep_if_near(const TimerRecord& r);
  bool start_attempt(Slot* s);
  void on_delivered(const std::string& id, DeliveryResult result);
  void finish(TimerRecord r, State state);
  void unpark(uint32_t destination);
  void unpark_blocked();
  void park(Slot* s);
  // Sets the slot's destination from its record (refcounted); false if the transport is gone.
  bool bind_destination(Slot* s, const TimerRecord& r);
  void release_destination(Slot* s);
  Result<std::string> generate_id();
  Result<void> new_id_prefix();
  int64_t purge_at(const TimerRecord& r) const { return r.completed_us + options_.retention_us; }

  const Clock& clock_;
  Executor& executor_;
  Wakeup& wakeup_;
  TimerStore& store_;
  Committer& committer_;
  const TransportRegistry& transports_;
  const EngineOptions options_;
  EngineProbe probe_;

  std::unordered_map<std::string, Slot> slots_;
  TimerHeap<Slot> heap_;
  std::unordered_map<std::string, Unsettled> unsettled_;
  // Invariant: an entry is the newest record of its id (every change updates or erases it).
  std::unordered_map<std::string, TimerRecord> near_;
  std::unordered_map<std::string, InFlight> inflight_;
  std::unordered_map<std::string, uint32_t> destination_index_;
  std::vector<Destination> destinations_;
  std::vector<uint32_t> free_destinations_;
  // uri -> destination key: most timers share a few uris, and parsing one is not free.
  std::unordered_map<std::string, std::string> destination_cache_;
  std::deque<std::pair<uint64_t, std::function<void()>>> waiters_;
  // Destinations with parked timers whose unpark a node-wide limit cut short.
  std::vector<uint32_t> blocked_destinations_;
  std::unordered_set<std::string> quarantined_ids_;  // bounded by max_quarantined_ids
  size_t quarantined_total_ = 0;
  int64_t read_retry_ms_ = 0;  // current backoff for failing record reads (0: none failing)
  log::Limiter read_error_log_;

  std::unordered_map<std::string, Move> moving_;  // ids whose move has begun and not ended
  // Retention records sent (unmarked) under a token whose move has not ended: end_move
  // deletes a final record only if it is still listed here under that token (an import of
  // the id takes it off). Bounded by the mover's batches in flight.
  std::unordered_map<std::string, std::string> final_moves_;
  size_t move_ops_ = 0;  // storage ops of moves not yet durable
  EngineObserver* observer_ = nullptr;
  bool held_ = false;
  log::Limiter import_conflict_log_;

  uint64_t submitted_seq_ = 0;
  uint64_t durable_seq_ = 0;
  int64_t armed_us_ = INT64_MAX;
  bool tick_posted_ = false;
  bool firing_ = true;
  bool failed_ = false;
  std::string failure_;
  std::mt19937_64 rng_;
  std::string id_prefix_;  // empty: draw a new one before the next generated id
  uint64_t id_counter_ = 0;
};

}  // namespace skyring
