#include "storage/timer_store.h"

#include <fmt/format.h>

#include "model/codec.h"

namespace skyring {
namespace {

std::string key_t(std::string_view id) {
  return fmt::format("t/{}", id);
}
std::string key_p(std::string_view id) {
  return fmt::format("p/{}", id);
}
std::string key_q(std::string_view id) {
  return fmt::format("q/{}", id);
}
std::string key_v(std::string_view id) {
  return fmt::format("v/{}", id);
}
// A receipt's "id" in i/ and e/ is <timer id>\0<token>.
std::string receipt_name(std::string_view id, std::string_view token) {
  std::string n(id);
  n.push_back('\0');
  n.append(token);
  return n;
}
std::string key_i(std::string_view name) {
  std::string k = "i/";
  k.append(name);
  return k;
}
std::string key_s(State s, std::string_view id) {
  std::string k = "s/";
  k.push_back(static_cast<char>(s));
  k.append(id);
  return k;
}
void put_be64(std::string& k, uint64_t v) {
  for (int i = 7; i >= 0; --i) k.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_be64(std::string_view b) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(b[i]);
  return v;
}
std::string key_e(int64_t purge_at_us, State s, std::string_view id) {
  std::string k = "e/";
  put_be64(k, static_cast<uint64_t>(purge_at_us));
  k.push_back(static_cast<char>(s));
  k.append(id);
  return k;
}
std::string pending_value(const TimerRecord& r) {
  std::string v;
  uint64_t n = static_cast<uint64_t>(r.next_us);
  for (int i = 0; i < 8; ++i) v.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  v.push_back(static_cast<char>(r.state));
  return v;
}

// Where a scan of prefix+<id> resumes: the first key strictly after prefix+cursor.
std::string scan_start(std::string_view prefix, std::string_view cursor) {
  std::string start(prefix);
  start.append(cursor);
  if (!cursor.empty()) start.push_back('\0');
  return start;
}

// The ids of keys strictly after prefix+cursor and still under prefix, at most `limit`.
Result<std::vector<std::string>> list_ids(Kv& kv, const std::string& prefix,
                                          std::string_view cursor, size_t limit) {
  std::vector<std::string> ids;
  std::string end = prefix;
  end.back() = static_cast<char>(end.back() + 1);
  auto r = kv.scan(scan_start(prefix, cursor), end, [&](std::string_view k, std::string_view) {
    ids.emplace_back(k.substr(prefix.size()));
    return ids.size() < limit;
  });
  if (!r) return tl::unexpected(r.error());
  return ids;
}

}  // namespace

Result<void> TimerStore::open() {
  auto current = meta("format");
  if (!current) return tl::unexpected(current.error());
  if (!*current) {
    auto any = false;
    auto r = kv_.scan("", "\xff", [&](std::string_view, std::string_view) {
      any = true;
      return false;
    });
    if (!r) return r;
    if (any) return fail(Errc::kCorruption, "storage has data but no format marker");
    return set_meta("format", kStorageFormat);
  }
  if (**current == kStorageFormatV1) return set_meta("format", kStorageFormat);
  if (**current != kStorageFormat) {
    return fail(Errc::kCorruption, fmt::format("storage format is '{}', this build reads '{}'",
                                               **current, kStorageFormat));
  }
  return {};
}

Result<std::optional<std::string>> TimerStore::meta(std::string_view name) {
  return kv_.get(fmt::format("m/{}", name));
}

Result<void> TimerStore::set_meta(std::string_view name, std::string_view value) {
  return kv_.write({KvOp{KvOp::Kind::kPut, fmt::format("m/{}", name), std::string(value)}}, true);
}

Result<std::optional<TimerRecord>> TimerStore::get(std::string_view id) {
  auto raw = kv_.get(key_t(id));
  if (!raw) return tl::unexpected(raw.error());
  if (!*raw) return std::optional<TimerRecord>();
  auto rec = decode_record(**raw);
  if (!rec) return tl::unexpected(rec.error());
  if (rec->id != id)
    return fail(Errc::kCorruption, fmt::format("record under {} names {}", id, rec->id));
  return std::optional<TimerRecord>(std::move(*rec));
}

void TimerStore::put_waiting(KvBatch& b, const TimerRecord& r) {
  SKYRING_ASSERT(awaits_attempt(r.state), "put_waiting needs a pending or retrying record");
  b.push_back({KvOp::Kind::kPut, key_t(r.id), encode_record(r)});
  b.push_back({KvOp::Kind::kPut, key_p(r.id), pending_value(r)});
}

void TimerStore::put_final(KvBatch& b, const TimerRecord& r, int64_t purge_at_us) {
  SKYRING_ASSERT(is_final(r.state), "put_final needs a final record");
  b.push_back({KvOp::Kind::kPut, key_t(r.id), encode_record(r)});
  b.push_back({KvOp::Kind::kDelete, key_p(r.id), {}});
  b.push_back({KvOp::Kind::kPut, key_s(r.state, r.id), {}});
  b.push_back({KvOp::Kind::kPut, key_e(purge_at_us, r.state, r.id), {}});
}

void TimerStore::drop_pending_entry(KvBatch& b, std::string_view id) {
  b.push_back({KvOp::Kind::kDelete, key_p(id), {}});
}

void TimerStore::purge(KvBatch& b, std::string_view id, State state, int64_t purge_at_us) {
  if (state == kReceiptExpiry) {
    b.push_back({KvOp::Kind::kDelete, key_i(id), {}});
    b.push_back({KvOp::Kind::kDelete, key_e(purge_at_us, state, id), {}});
    return;
  }
  b.push_back({KvOp::Kind::kDelete, key_t(id), {}});
  b.push_back({KvOp::Kind::kDelete, key_s(state, id), {}});
  b.push_back({KvOp::Kind::kDelete, key_e(purge_at_us, state, id), {}});
}

void TimerStore::quarantine(KvBatch& b, std::string_view id, char source, std::string_view raw) {
  std::string v(1, source);
  v.append(raw);
  b.push_back({KvOp::Kind::kPut, key_q(id), std::move(v)});
  b.push_back({KvOp::Kind::kDelete, key_t(id), {}});
  b.push_back({KvOp::Kind::kDelete, key_p(id), {}});
}

Result<void> TimerStore::scan_waiting(const std::function<bool(const PendingEntry&)>& fn,
                                      const CorruptVisitor& on_corrupt) {
  Error bad{Errc::kCorruption, ""};
  bool corrupt = false;
  auto r = kv_.scan("p/", "p0", [&](std::string_view k, std::string_view v) {
    if (v.size() != 9 || !awaits_attempt(static_cast<State>(v[8]))) {
      if (on_corrupt) {
        on_corrupt(k.substr(2), v);
        return true;
      }
      corrupt = true;
      bad.message = fmt::format("pending index entry for {} is corrupt", k.substr(2));
      return false;
    }
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(v[i])) << (8 * i);
    return fn(PendingEntry{k.substr(2), static_cast<int64_t>(n), static_cast<State>(v[8])});
  });
  if (!r) return r;
  if (corrupt) return tl::unexpected(bad);
  return {};
}

Result<std::vector<TimerStore::Expired>> TimerStore::expired(int64_t now_us, size_t limit,
                                                             const Expired* after) {
  std::vector<Expired> out;
  std::string start = "e/";
  if (after != nullptr) {
    start = key_e(after->purge_at_us, after->state, after->id);
    start.push_back('\0');
  }
  std::string end = "e/";
  put_be64(end, static_cast<uint64_t>(now_us) + 1);
  if (start >= end) return out;
  auto r = kv_.scan(start, end, [&](std::string_view k, std::string_view) {
    if (k.size() < 12) return true;
    State st = static_cast<State>(k[10]);
    if (!is_final(st) && st != kReceiptExpiry) return true;
    out.push_back({std::string(k.substr(11)), static_cast<int64_t>(get_be64(k.substr(2, 8))),
                   static_cast<State>(k[10])});
    return out.size() < limit;
  });
  if (!r) return tl::unexpected(r.error());
  return out;
}

Result<std::vector<std::string>> TimerStore::list_final(State state, std::string_view cursor,
                                                        size_t limit) {
  std::string prefix = "s/";
  prefix.push_back(static_cast<char>(state));
  return list_ids(kv_, prefix, cursor, limit);
}

Result<TimerStore::WaitingPage> TimerStore::list_waiting(State state, std::string_view cursor,
                                                         size_t limit, size_t max_scan) {
  WaitingPage page;
  size_t scanned = 0;
  std::string last_key;
  bool stopped = false;
  auto r = kv_.scan(scan_start("p/", cursor), "p0", [&](std::string_view k, std::string_view v) {
    ++scanned;
    if (v.size() == 9 && static_cast<State>(v[8]) == state) page.ids.emplace_back(k.substr(2));
    if (page.ids.size() >= limit || scanned >= max_scan) {
      last_key.assign(k.substr(2));
      stopped = true;
      return false;
    }
    return true;
  });
  if (!r) return tl::unexpected(r.error());
  if (stopped) page.resume_after = std::move(last_key);
  return page;
}

Result<std::optional<std::string>> TimerStore::raw_record(std::string_view id) {
  return kv_.get(key_t(id));
}

Result<void> TimerStore::scan_quarantined(const std::function<bool(std::string_view id)>& fn) {
  return kv_.scan("q/", "q0",
                  [&](std::string_view k, std::string_view) { return fn(k.substr(2)); });
}

Result<bool> TimerStore::has_id_with_prefix(std::string_view prefix) {
  std::string start = key_t(prefix);
  std::string end = start;
  end.push_back('\xff');
  bool any = false;
  auto r = kv_.scan(start, end, [&](std::string_view, std::string_view) {
    any = true;
    return false;
  });
  if (!r) return tl::unexpected(r.error());
  return any;
}

void TimerStore::put_move_mark(KvBatch& b, std::string_view id, std::string_view dest,
                               std::string_view token) {
  std::string v(dest);
  v.push_back('\0');
  v.append(token);
  b.push_back({KvOp::Kind::kPut, key_v(id), std::move(v)});
}

void TimerStore::drop_move_mark(KvBatch& b, std::string_view id) {
  b.push_back({KvOp::Kind::kDelete, key_v(id), {}});
}

void TimerStore::remove_waiting(KvBatch& b, std::string_view id) {
  b.push_back({KvOp::Kind::kDelete, key_t(id), {}});
  b.push_back({KvOp::Kind::kDelete, key_p(id), {}});
}

Result<void> TimerStore::scan_move_marks(const std::function<bool(const MoveMarkEntry&)>& fn) {
  return kv_.scan("v/", "v0", [&](std::string_view k, std::string_view v) {
    size_t nul = v.find('\0');
    if (nul == std::string_view::npos || nul == 0) return fn(MoveMarkEntry{k.substr(2), {}, {}});
    return fn(MoveMarkEntry{k.substr(2), v.substr(0, nul), v.substr(nul + 1)});
  });
}

void TimerStore::put_receipt(KvBatch& b, std::string_view id, std::string_view token,
                             int64_t expire_at_us) {
  std::string name = receipt_name(id, token);
  std::string v;
  put_be64(v, static_cast<uint64_t>(expire_at_us));
  b.push_back({KvOp::Kind::kPut, key_i(name), std::move(v)});
  b.push_back({KvOp::Kind::kPut, key_e(expire_at_us, kReceiptExpiry, name), {}});
}

Result<bool> TimerStore::has_receipt(std::string_view id, std::string_view token) {
  auto raw = kv_.get(key_i(receipt_name(id, token)));
  if (!raw) return tl::unexpected(raw.error());
  return raw->has_value();
}

Result<void> TimerStore::write_now(const KvBatch& b, bool sync) {
  return kv_.write(b, sync);
}

}  // namespace skyring
