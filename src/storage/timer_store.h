// The timer key layout over a Kv (docs/storage-format.md). One keyspace, five prefixes:
//
//   t/<id>                         -> encoded TimerRecord (model/codec.h)
//   p/<id>                         -> u64le next_us, u8 state   (pending or retrying timers)
//   s/<state byte><id>             -> ""                        (final timers, for listing)
//   e/<u64be purge_at_us><state><id> -> ""                      (final timers, for retention purge)
//   q/<id>                         -> u8 source ('t' or 'p') + the bytes as found (quarantine)
//   v/<id>                         -> dest node id, '\0', move token (a timer being moved)
//   i/<id>\0<token>                -> u64be expire_at_us          (receipt of a move in)
//   e/<u64be expire_at_us>'R'<id>\0<token> -> ""               (receipt expiry, purged too)
//   m/format, m/node-id            -> metadata
//
// A record and its index entries always change in one atomic batch, so after any crash the
// indexes agree with the records. Recovery reads only p/ (16 bytes per pending timer);
// payloads stay on disk until a timer is due.
//
// Operation builders append to a KvBatch; they never write themselves, so the engine can hand
// a whole group of changes to the GroupCommitter.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "base/result.h"
#include "model/timer.h"
#include "storage/kv.h"

namespace skyring {

inline constexpr std::string_view kStorageFormat = "skyring-storage-2";
// Format 1 had no v/ and i/ keys; it is upgraded in place by writing the new marker.
inline constexpr std::string_view kStorageFormatV1 = "skyring-storage-1";
// The "state" byte of a receipt's expiry entry under e/ (not a timer state).
inline constexpr State kReceiptExpiry = static_cast<State>('R');

struct MoveMarkEntry {
  std::string_view id;
  std::string_view dest;
  std::string_view token;
};

struct PendingEntry {
  std::string_view id;
  int64_t next_us;
  State state;
};

class TimerStore {
 public:
  explicit TimerStore(Kv& kv) : kv_(kv) {}

  // Checks (or, in an empty store, writes) the format marker.
  Result<void> open();
  Result<std::optional<std::string>> meta(std::string_view name);
  Result<void> set_meta(std::string_view name, std::string_view value);

  Result<std::optional<TimerRecord>> get(std::string_view id);

  // A pending or retrying record (replaces whatever the id had).
  static void put_waiting(KvBatch& b, const TimerRecord& r);
  // A final record; removes the pending index, adds the listing and purge entries.
  static void put_final(KvBatch& b, const TimerRecord& r, int64_t purge_at_us);
  // Removes the pending index entry of `id` alone (a stale one, found at recovery).
  static void drop_pending_entry(KvBatch& b, std::string_view id);
  // Removes a final record and its index entries (retention expired).
  static void purge(KvBatch& b, std::string_view id, State state, int64_t purge_at_us);

  // Moves an unreadable record or index entry aside, never deleting its bytes: q/<id> gets
  // `source` ('t' for a record, 'p' for a pending index entry) and `raw`; t/<id> and p/<id> go.
  static void quarantine(KvBatch& b, std::string_view id, char source, std::string_view raw);

  // Every pending/retrying timer, in id order. A corrupt index entry fails the scan, or, when
  // on_corrupt is given, is reported there (id and raw value) and the scan goes on.
  using CorruptVisitor = std::function<void(std::string_view id, std::string_view raw)>;
  Result<void> scan_waiting(const std::function<bool(const PendingEntry&)>& fn,
                            const CorruptVisitor& on_corrupt = nullptr);
  // Final timers whose purge time is <= now_us, oldest first, at most `limit`; with `after`,
  // only entries after that one (a cursor: the purge skips what it already deleted).
  struct Expired {
    std::string id;
    int64_t purge_at_us;
    State state;
  };
  Result<std::vector<Expired>> expired(int64_t now_us, size_t limit,
                                       const Expired* after = nullptr);
  // Ids of final timers in `state` after `cursor` (exclusive), at most `limit`, in id order.
  Result<std::vector<std::string>> list_final(State state, std::string_view cursor, size_t limit);
  // Ids of waiting timers in `state` (pending or retrying) after `cursor`. The pending index
  // holds both states, so at most `max_scan` index entries are visited per call: `resume_after`
  // is where the next call continues (empty when the end was reached).
  struct WaitingPage {
    std::vector<std::string> ids;
    std::string resume_after;
  };
  Result<WaitingPage> list_waiting(State state, std::string_view cursor, size_t limit,
                                   size_t max_scan);

  // The stored bytes of a record, undecoded (what quarantine keeps).
  Result<std::optional<std::string>> raw_record(std::string_view id);
  // Ids under quarantine, in id order.
  Result<void> scan_quarantined(const std::function<bool(std::string_view id)>& fn);
  // Whether any record's id starts with `prefix`.
  Result<bool> has_id_with_prefix(std::string_view prefix);
  // --- Cluster moves (docs/cluster.md, "Moves") ---
  // A durable "moving" mark: the timer is being handed to `dest` under `token`.
  static void put_move_mark(KvBatch& b, std::string_view id, std::string_view dest,
                            std::string_view token);
  static void drop_move_mark(KvBatch& b, std::string_view id);
  // Removes a waiting timer's record and pending index entry (it moved away).
  static void remove_waiting(KvBatch& b, std::string_view id);
  // Every move mark; a mark that does not decode is reported with an empty dest.
  Result<void> scan_move_marks(const std::function<bool(const MoveMarkEntry&)>& fn);
  // Receipt of a move into this node: (id, token) is remembered until expire_at_us (then
  // purged like a final record). One per move, so a later move of the same id does not
  // forget an earlier one.
  static void put_receipt(KvBatch& b, std::string_view id, std::string_view token,
                          int64_t expire_at_us);
  Result<bool> has_receipt(std::string_view id, std::string_view token);

  // A write outside the committer, for writers whose keys no other write touches: repairs
  // during recovery (synced) and the retention purge (not synced; see retention_purger.h).
  Result<void> write_now(const KvBatch& b, bool sync);

 private:
  Kv& kv_;
};

}  // namespace skyring
