// The timer key layout over a Kv (docs/storage-format.md). One keyspace, four prefixes:
//
//   t/<id>                         -> encoded TimerRecord (model/codec.h)
//   p/<id>                         -> u64le next_us, u8 state   (pending or retrying timers)
//   s/<state byte><id>             -> ""                        (final timers, for listing)
//   e/<u64be purge_at_us><state><id> -> ""                      (final timers, for retention purge)
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

inline constexpr std::string_view kStorageFormat = "skyring-storage-1";

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
  // Removes a final record and its index entries (retention expired).
  static void purge(KvBatch& b, std::string_view id, State state, int64_t purge_at_us);

  // Every pending/retrying timer, in id order.
  Result<void> scan_waiting(const std::function<bool(const PendingEntry&)>& fn);
  // Final timers whose purge time is <= now_us, oldest first, at most `limit`.
  struct Expired {
    std::string id;
    int64_t purge_at_us;
    State state;
  };
  Result<std::vector<Expired>> expired(int64_t now_us, size_t limit);
  // Ids of final timers in `state` after `cursor` (exclusive), at most `limit`, in id order.
  Result<std::vector<std::string>> list_final(State state, std::string_view cursor, size_t limit);
  // Ids of waiting timers in `state` (pending or retrying) after `cursor`.
  Result<std::vector<std::string>> list_waiting(State state, std::string_view cursor, size_t limit);

 private:
  Kv& kv_;
};

}  // namespace skyring
