#include "engine/timer_engine.h"

#include <algorithm>

#include "base/log.h"
#include "model/backoff.h"
#include "model/request.h"

namespace skyring {
namespace {

// Starts per tick() before yielding the thread to requests.
constexpr int kMaxStartsPerTick = 4096;
// Distinct uris whose destination key is remembered (then the cache starts over).
constexpr size_t kDestinationCacheSize = 4096;

// Fixed width, most significant digit first: consecutive numbers give ids that sort
// consecutively, so a run's creates land next to each other in storage (RocksDB's memtable
// insert is then a short hop from the previous one instead of a cold skip-list search).
void append_base62(std::string& out, uint64_t v, int width) {
  static const char kDigits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  size_t at = out.size();
  out.resize(at + static_cast<size_t>(width));
  for (int i = width - 1; i >= 0; --i) {
    out[at + static_cast<size_t>(i)] = kDigits[v % 62];
    v /= 62;
  }
  SKYRING_ASSERT(v == 0, "base62 value wider than its field");
}

// Generated ids: 9 digits of prefix (48 random bits) + 6 digits of counter = 15 characters,
// which std::string keeps inline (no heap block per pending timer).
constexpr int kPrefixDigits = 9;
constexpr int kCounterDigits = 6;
constexpr uint64_t kCounterLimit = 56'800'235'584ULL;  // 62^6
constexpr size_t kGeneratedIdLength = kPrefixDigits + kCounterDigits;
// Draws of an unused prefix before a create gives up (each draw is 48 random bits).
constexpr int kPrefixDraws = 8;

}  // namespace

const char* timer_event_name(TimerEvent e) {
  switch (e) {
    case TimerEvent::kCreate:
      return "create";
    case TimerEvent::kReplace:
      return "replace";
    case TimerEvent::kExecute:
      return "execute";
    case TimerEvent::kSuccess:
      return "success";
    case TimerEvent::kFail:
      return "fail";
    case TimerEvent::kCancel:
      return "cancel";
    case TimerEvent::kEvict:
      return "evict";
  }
  return "unknown";
}

EngineProbe EngineProbe::make(Registry& r) {
  EngineProbe p;
  p.created = &r.counter("skyring_timers_created_total", "Timers created");
  p.replaced = &r.counter("skyring_timers_replaced_total", "Timers replaced by PUT");
  p.cancelled = &r.counter("skyring_timers_cancelled_total", "Timers cancelled by DELETE");
  p.delivered = &r.counter("skyring_timers_delivered_total", "Timers delivered successfully");
  p.failed = &r.counter("skyring_timers_failed_total", "Timers that became dead letters");
  p.retried = &r.counter("skyring_timers_retried_total", "Failed attempts scheduled for retry");
  p.read_errors = &r.counter("skyring_storage_read_errors_total",
                             "Record reads that failed for a due timer (retried with backoff)");
  p.quarantined = &r.counter("skyring_records_quarantined_total",
                             "Records that failed their checksum and were moved aside");
  p.quarantined_records =
      &r.gauge("skyring_records_quarantined", "Quarantined records in storage (q/ keys)");
  p.pending = &r.gauge("skyring_timers_pending", "Timers waiting for an attempt or in flight");
  p.inflight = &r.gauge("skyring_deliveries_inflight", "Delivery attempts in flight");
  p.lateness_seconds =
      &r.histogram("skyring_delivery_lateness_seconds", "Attempt start minus scheduled time",
                   latency_buckets_seconds());
  return p;
}

TimerEngine::TimerEngine(const Clock& clock, Executor& executor, Wakeup& wakeup, TimerStore& store,
                         Committer& committer, const TransportRegistry& transports,
                         EngineOptions options, EngineProbe probe)
    : clock_(clock),
      executor_(executor),
      wakeup_(wakeup),
      store_(store),
      committer_(committer),
      transports_(transports),
      options_(options),
      probe_(probe) {
  std::random_device rd;
  rng_.seed((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(clock.now_us()));
}

// A prefix is taken only if no id in storage or in a change on its way there starts with it;
// from then on a client id that takes it retires it (create()). 48 random bits: 2^48 < 62^9.
Result<void> TimerEngine::new_id_prefix() {
  for (int draw = 0; draw < kPrefixDraws; ++draw) {
    std::string prefix;
    append_base62(prefix, rng_() & 0xffffffffffffULL, kPrefixDigits);
    auto used = store_.has_id_with_prefix(prefix);
    if (!used) return tl::unexpected(used.error());
    if (*used) continue;
    bool unsettled = std::any_of(unsettled_.begin(), unsettled_.end(),
                                 [&](const auto& u) { return u.first.starts_with(prefix); });
    if (unsettled) continue;
    id_prefix_ = std::move(prefix);
    id_counter_ = 0;
    return {};
  }
  return fail(Errc::kUnavailable, "no unused id prefix found; retry");
}

Result<size_t> TimerEngine::recover() {
  std::vector<std::pair<std::string, std::string>> corrupt;  // id, raw index value
  KvBatch repairs;
  auto marks = store_.scan_move_marks([&](const MoveMarkEntry& m) {
    if (m.dest.empty()) {
      log::warn("timer {}: unreadable move mark dropped (the timer stays owed here)", m.id);
      TimerStore::drop_move_mark(repairs, m.id);
    } else {
      moving_.emplace(std::string(m.id), Move{std::string(m.dest), std::string(m.token)});
    }
    return true;
  });
  if (!marks) return tl::unexpected(marks.error());
  auto r = store_.scan_waiting(
      [&](const PendingEntry& e) {
        load_slot(e.id, e.next_us, e.state);
        return true;
      },
      [&](std::string_view id, std::string_view raw) { corrupt.emplace_back(id, raw); });
  if (!r) return tl::unexpected(r.error());
  auto q = store_.scan_quarantined([&](std::string_view id) {
    remember_quarantined(id);
    return true;
  });
  if (!q) return tl::unexpected(q.error());
  for (const auto& [id, raw] : corrupt) repair_index_entry(id, raw, repairs);
  // A mark whose timer is gone (moved out and deleted, mark left by a crash in between is
  // impossible: they go in one batch; or a final record, which needs no mark) is stale.
  for (auto it = moving_.begin(); it != moving_.end();) {
    if (slots_.count(it->first) == 0) {
      TimerStore::drop_move_mark(repairs, it->first);
      it = moving_.erase(it);
    } else {
      ++it;
    }
  }
  if (!repairs.empty()) {
    if (auto w = store_.write_now(repairs, /*sync=*/true); !w) return tl::unexpected(w.error());
  }
  heap_.heapify();
  if (probe_.pending) probe_.pending->set(static_cast<int64_t>(slots_.size()));
  if (probe_.quarantined_records)
    probe_.quarantined_records->set(static_cast<int64_t>(quarantined_total_));
  arm();
  return slots_.size();
}

TimerEngine::Slot* TimerEngine::load_slot(std::string_view id, int64_t next_us, State state) {
  auto [it, inserted] = slots_.try_emplace(std::string(id));
  SKYRING_ASSERT(inserted, "the pending index lists an id twice");
  Slot& s = it->second;
  s.id = &it->first;
  s.next_us = next_us;
  s.state = state;
  if (moving_.count(it->first) != 0) {
    s.moving = true;  // its move is resent by the cluster; it never fires here meanwhile
  } else {
    heap_.append_unordered(&s);
  }
  return &s;
}

// A pending index entry that does not decode: its record says what the timer is. A waiting
// record gets its index entry back; a final one needs none; an unreadable one is moved aside
// with the entry.
void TimerEngine::repair_index_entry(std::string_view id, std::string_view raw, KvBatch& repairs) {
  auto rec = store_.get(id);
  if (rec && *rec && awaits_attempt((*rec)->state)) {
    log::warn("timer {}: pending index entry is corrupt; rebuilt from its record", id);
    TimerStore::put_waiting(repairs, **rec);
    load_slot(id, (*rec)->next_us, (*rec)->state);
    return;
  }
  if (rec && *rec) {
    log::warn("timer {}: stale pending index entry of a final record removed", id);
    TimerStore::drop_pending_entry(repairs, id);
    return;
  }
  log::error("timer {}: pending index entry and record are unreadable; quarantined", id);
  TimerStore::quarantine(repairs, id, 'p', raw);
  note_quarantined(id);
}

void TimerEngine::remember_quarantined(std::string_view id) {
  ++quarantined_total_;
  if (quarantined_ids_.size() < options_.max_quarantined_ids) quarantined_ids_.emplace(id);
}

void TimerEngine::note_quarantined(std::string_view id) {
  remember_quarantined(id);
  if (probe_.quarantined) probe_.quarantined->inc();
  if (probe_.quarantined_records)
    probe_.quarantined_records->set(static_cast<int64_t>(quarantined_total_));
}

Result<void> TimerEngine::admit() const {
  if (failed_) return fail(Errc::kUnavailable, failure_);
  if (!firing_) return fail(Errc::kUnavailable, "node is shutting down");
  if (backlog() >= options_.max_unsettled)
    return fail(Errc::kOverloaded, "too many changes waiting for storage; retry later");
  return {};
}

Result<TimerEngine::Lookup> TimerEngine::lookup(const std::string& id) {
  Lookup l;
  if (auto q = not_quarantined(id); !q) return tl::unexpected(q.error());
  if (auto u = unsettled_.find(id); u != unsettled_.end()) {
    l.record = u->second.record;
    l.seq = u->second.seq;
  } else if (auto n = near_.find(id); n != near_.end()) {
    l.record = n->second;
  } else {
    auto got = store_.get(id);
    if (!got) {
      if (got.error().code != Errc::kCorruption) {
        return fail(Errc::kUnavailable, "storage read failed: " + got.error().message);
      }
      // Moved aside now if the backlog has room (it counts as a change), else at a later read.
      if (admit()) {
        auto raw = store_.raw_record(id);
        quarantine(id, 't', raw && *raw ? std::string_view(**raw) : std::string_view());
      }
      return fail(Errc::kCorruption, "the stored record of this timer is corrupt (quarantined)");
    }
    l.record = std::move(*got);
  }
  if (l.record) {
    if (auto s = slots_.find(id); s != slots_.end()) {
      l.record->state = s->second.state;
      l.record->next_us = s->second.next_us;
    }
  }
  return l;
}

uint64_t TimerEngine::submit(KvBatch batch, TimerRecord record,
                             std::function<void(Result<void>)> done) {
  std::string id = record.id;
  return submit_change(std::move(batch), std::move(id), std::move(record), std::move(done));
}

uint64_t TimerEngine::submit_change(KvBatch batch, std::string id,
                                    std::optional<TimerRecord> record,
                                    std::function<void(Result<void>)> done) {
  uint64_t seq = ++submitted_seq_;
  unsettled_[id] = Unsettled{std::move(record), seq};
  auto on_done = [this, seq, id = std::move(id), done = std::move(done)](Result<void> r) {
    if (auto u = unsettled_.find(id); u != unsettled_.end() && u->second.seq == seq) {
      unsettled_.erase(u);
    }
    on_committed(seq, r);
    if (done) done(std::move(r));
  };
  if (auto s = committer_.submit(std::move(batch), on_done); !s) {
    // Admission keeps the backlog within max_unsettled + max_inflight changes, and the node
    // sizes the committer's queue for that: a full queue here is a sizing bug, not overload.
    SKYRING_ASSERT(s.error().code != Errc::kOverloaded,
                   "committer queue is smaller than the engine's admission bound");
    executor_.post([on_done, err = s.error()]() mutable { on_done(tl::unexpected(err)); });
  }
  return seq;
}

Result<void> TimerEngine::not_quarantined(const std::string& id) const {
  if (!quarantined_ids_.empty() && quarantined_ids_.count(id) != 0) {
    return fail(Errc::kCorruption, "the stored record of this timer is corrupt (quarantined)");
  }
  return {};
}

void TimerEngine::quarantine(const std::string& id, char source, std::string_view raw) {
  log::error("timer {}: stored record failed its checksum; moved to quarantine (q/{})", id, id);
  KvBatch b;
  TimerStore::quarantine(b, id, source, raw);
  if (moving_.erase(id) != 0) TimerStore::drop_move_mark(b, id);  // nothing left to move
  final_moves_.erase(id);
  if (slots_.count(id) != 0) erase_slot(id);
  near_.erase(id);
  submit_change(std::move(b), id, std::nullopt, nullptr);  // a read now finds nothing
  note_quarantined(id);
}

void TimerEngine::on_committed(uint64_t seq, const Result<void>& r) {
  if (!r) {
    if (!failed_) log::error("engine stops: storage write failed: {}", r.error().message);
    failed_ = true;
    failure_ = "storage write failed: " + r.error().message;
  } else {
    durable_seq_ = std::max(durable_seq_, seq);
  }
  while (!waiters_.empty() && (waiters_.front().first <= durable_seq_ || failed_)) {
    auto fn = std::move(waiters_.front().second);
    waiters_.pop_front();
    fn();
  }
  schedule_tick();
}

void TimerEngine::after_durable(uint64_t seq, std::function<void()> fn) {
  if (seq <= durable_seq_) {
    fn();
  } else {
    waiters_.emplace_back(seq, std::move(fn));
  }
}

void TimerEngine::schedule_tick() {
  if (tick_posted_) return;
  tick_posted_ = true;
  executor_.post([this] {
    tick_posted_ = false;
    tick();
  });
}

void TimerEngine::arm() {
  if (heap_.empty() || !firing_ || failed_ || held_) return;
  int64_t t = heap_.top()->next_us;
  if (t < armed_us_) {
    armed_us_ = t;
    wakeup_.wake_at(t);
  }
}

void TimerEngine::enqueue(Slot* s) {
  heap_.push(s);
  arm();
}

void TimerEngine::dequeue(Slot* s) {
  if (heap_.contains(s)) heap_.remove(s);
}

void TimerEngine::erase_slot(const std::string& id) {
  auto it = slots_.find(id);
  SKYRING_ASSERT(it != slots_.end(), "erasing an unknown slot");
  dequeue(&it->second);
  release_destination(&it->second);
  near_.erase(id);  // before the slot: `id` may be a view of the slot's own key elsewhere
  slots_.erase(it);
  if (probe_.pending) probe_.pending->set(static_cast<int64_t>(slots_.size()));
}

void TimerEngine::keep_if_near(const TimerRecord& r) {
  if (r.next_us - clock_.now_us() <= options_.near_window_us &&
      near_.size() < options_.max_near_records) {
    near_.insert_or_assign(r.id, r);
  }
}

Result<std::string> TimerEngine::generate_id() {
  if (id_prefix_.empty() || id_counter_ == kCounterLimit) {
    if (auto p = new_id_prefix(); !p) return tl::unexpected(p.error());
  }
  std::string id = id_prefix_;
  append_base62(id, id_counter_++, kCounterDigits);
  return id;
}

void TimerEngine::create(TimerRecord r, Reply<CreateResult> done, bool fresh_id) {
  if (auto a = admit(); !a) return done(tl::unexpected(a.error()));
  bool client_id = !r.id.empty() && !fresh_id;
  if (r.id.empty()) {
    auto id = generate_id();
    if (!id) return done(tl::unexpected(id.error()));
    r.id = std::move(*id);
  } else if (client_id) {
    auto l = lookup(r.id);
    if (!l) return done(tl::unexpected(l.error()));
    if (l->record) {
      if (l->record->body_hash != r.body_hash) {
        return done(fail(Errc::kConflict, "a timer with this id exists with a different body"));
      }
      after_durable(l->seq, [this, id = r.id, done = std::move(done)] {
        if (failed_) return done(fail(Errc::kUnavailable, failure_));
        done(CreateResult{id, false});
      });
      return;
    }
  }
  auto [it, inserted] = slots_.try_emplace(r.id);
  if (!inserted) {
    // Scheduled, yet no record was found: the pending index and the records disagree.
    return done(fail(Errc::kCorruption, "this timer id is scheduled but has no stored record"));
  }
  // A client id that could be generated from the current prefix retires it.
  if (client_id && r.id.size() == kGeneratedIdLength && !id_prefix_.empty() &&
      r.id.starts_with(id_prefix_)) {
    id_prefix_.clear();
  }
  Slot& s = it->second;
  s.id = &it->first;
  s.next_us = r.next_us;
  s.state = State::kPending;
  bind_destination(&s, r);
  keep_if_near(r);
  KvBatch b;
  TimerStore::put_waiting(b, r);
  notify(TimerEvent::kCreate, r);
  std::string id = r.id;
  s.write_seq =
      submit(std::move(b), std::move(r), [this, id, done = std::move(done)](Result<void> res) {
        if (!res) return done(fail(Errc::kUnavailable, failure_));
        if (probe_.created) probe_.created->inc();
        done(CreateResult{id, true});
      });
  if (probe_.pending) probe_.pending->set(static_cast<int64_t>(slots_.size()));
  enqueue(&s);
}

void TimerEngine::replace(TimerRecord r, Reply<void> done) {
  if (auto a = admit(); !a) return done(tl::unexpected(a.error()));
  if (auto q = not_quarantined(r.id); !q) return done(tl::unexpected(q.error()));
  auto it = slots_.find(r.id);
  if (it == slots_.end()) return done(fail(Errc::kNotFound, "no pending timer with this id"));
  Slot& s = it->second;
  if (s.state == State::kExecuting) {
    return done(fail(Errc::kConflict, "a delivery attempt is in flight; retry later"));
  }
  if (s.moving) {
    return done(fail(Errc::kUnavailable, "this timer is moving to its new owner; retry"));
  }
  dequeue(&s);
  s.parked = false;  // a stale entry in a parked FIFO is skipped
  s.next_us = r.next_us;
  s.state = State::kPending;
  release_destination(&s);
  bind_destination(&s, r);
  near_.erase(r.id);
  keep_if_near(r);
  KvBatch b;
  TimerStore::put_waiting(b, r);
  notify(TimerEvent::kReplace, r);
  s.write_seq =
      submit(std::move(b), std::move(r), [this, done = std::move(done)](Result<void> res) {
        if (!res) return done(fail(Errc::kUnavailable, failure_));
        if (probe_.replaced) probe_.replaced->inc();
        done({});
      });
  enqueue(&s);
}

void TimerEngine::cancel(const std::string& id, Reply<void> done) {
  if (auto a = admit(); !a) return done(tl::unexpected(a.error()));
  if (auto q = not_quarantined(id); !q) return done(tl::unexpected(q.error()));
  auto it = slots_.find(id);
  if (it == slots_.end()) return done(fail(Errc::kNotFound, "no pending timer with this id"));
  if (it->second.state == State::kExecuting) {
    return done(fail(Errc::kConflict, "a delivery attempt is in flight; retry later"));
  }
  if (it->second.moving) {
    return done(fail(Errc::kUnavailable, "this timer is moving to its new owner; retry"));
  }
  auto l = lookup(id);
  if (!l) return done(tl::unexpected(l.error()));
  if (!l->record) {
    quarantine(id, 'p', {});
    return done(fail(Errc::kCorruption, "this timer id is scheduled but has no stored record"));
  }
  TimerRecord r = std::move(*l->record);
  r.state = State::kCancelled;
  r.completed_us = clock_.now_us();
  erase_slot(id);
  KvBatch b;
  TimerStore::put_final(b, r, purge_at(r));
  notify(TimerEvent::kCancel, r);
  submit(std::move(b), std::move(r), [this, done = std::move(done)](Result<void> res) {
    if (!res) return done(fail(Errc::kUnavailable, failure_));
    if (probe_.cancelled) probe_.cancelled->inc();
    done({});
  });
}

void TimerEngine::get(const std::string& id, Reply<TimerRecord> done) {
  auto l = lookup(id);
  if (!l) return done(tl::unexpected(l.error()));
  if (!l->record) return done(fail(Errc::kNotFound, "no timer with this id"));
  after_durable(l->seq, [this, r = std::move(*l->record), done = std::move(done)]() mutable {
    if (failed_) return done(fail(Errc::kUnavailable, failure_));
    done(std::move(r));
  });
}

void TimerEngine::list(State state, const std::string& cursor, size_t limit, Reply<ListPage> done) {
  limit = std::clamp<size_t>(limit, 1, options_.max_list);
  after_durable(submitted_seq_, [this, state, cursor, limit, done = std::move(done)] {
    if (failed_) return done(fail(Errc::kUnavailable, failure_));
    Result<std::vector<std::string>> ids;
    std::string resume;  // waiting states: where the bounded index scan stopped
    if (state == State::kExecuting) {
      std::vector<std::string> all;
      for (const auto& [id, f] : inflight_) {
        if (id > cursor) all.push_back(id);
      }
      std::sort(all.begin(), all.end());
      if (all.size() > limit) all.resize(limit);
      ids = std::move(all);
    } else if (awaits_attempt(state)) {
      auto w =
          store_.list_waiting(state, cursor, limit, std::max<size_t>(options_.max_list_scan, 1));
      if (!w) return done(fail(Errc::kUnavailable, w.error().message));
      ids = std::move(w->ids);
      resume = std::move(w->resume_after);
    } else {
      ids = store_.list_final(state, cursor, limit);
    }
    if (!ids) return done(fail(Errc::kUnavailable, ids.error().message));
    ListPage page;
    for (const std::string& id : *ids) {
      auto l = lookup(id);
      if (!l && l.error().code == Errc::kCorruption) continue;  // quarantined, not listed
      if (!l) return done(tl::unexpected(l.error()));
      if (l->record && l->record->state == state) page.timers.push_back(std::move(*l->record));
    }
    if (awaits_attempt(state)) {
      page.next_cursor = std::move(resume);
    } else if (ids->size() == limit) {
      page.next_cursor = ids->back();
    }
    done(std::move(page));
  });
}

void TimerEngine::tick() {
  armed_us_ = INT64_MAX;
  if (!firing_ || failed_ || held_) return;
  unpark_blocked();
  int64_t now = clock_.now_us();
  int starts = 0;
  while (!heap_.empty()) {
    Slot* s = heap_.top();
    if (s->next_us > now) break;
    // Blocked until a commit or a delivery completes; each of those ticks again.
    if (s->write_seq > durable_seq_) return;
    if (inflight_.size() >= options_.max_inflight || !may_start()) return;
    if (++starts > kMaxStartsPerTick) return schedule_tick();
    heap_.pop();
    if (s->destination != kNoDestination &&
        destinations_[s->destination].busy >= options_.max_inflight_per_destination) {
      park(s);  // known saturated: no need to read the record
      continue;
    }
    start_attempt(s);
  }
  arm();
}

void TimerEngine::retry_read_later(Slot* s, const Error& e) {
  if (probe_.read_errors) probe_.read_errors->inc();
  read_retry_ms_ = read_retry_ms_ == 0 ? options_.read_retry_min_ms
                                       : std::min(read_retry_ms_ * 2, options_.read_retry_max_ms);
  int64_t now = clock_.now_us();
  if (uint64_t dropped = 0; read_error_log_.allow(&dropped)) {
    log::warn("timer {}: record read failed ({}); retrying in {} ms{}", *s->id, e.message,
              read_retry_ms_, log::Limiter::note(dropped));
  }
  // Later, never earlier: the timer stays owed exactly as stored.
  s->next_us = std::max(s->next_us, now + read_retry_ms_ * 1000);
  s->parked = false;
  enqueue(s);
}

bool TimerEngine::start_attempt(Slot* s) {
  std::string id = *s->id;
  auto l = lookup(id);
  if (!l) {
    // kCorruption: lookup() quarantined the record (or will at a later read if the backlog
    // was full); the slot goes unless it is still there to be moved aside then.
    if (l.error().code == Errc::kCorruption) {
      if (auto it = slots_.find(id); it != slots_.end()) retry_read_later(&it->second, l.error());
      return false;
    }
    retry_read_later(s, l.error());
    return false;
  }
  if (!l->record) {
    quarantine(id, 'p', {});
    return false;
  }
  read_retry_ms_ = 0;
  TimerRecord r = std::move(*l->record);
  r.state = s->state;
  if (s->destination == kNoDestination && !bind_destination(s, r)) {
    r.last_error = "transport '" + r.callback.transport + "' is not loaded";
    finish(std::move(r), State::kFailed);
    return false;
  }
  Transport* t = transports_.find(r.callback.transport);
  SKYRING_ASSERT(t != nullptr, "a bound destination implies a loaded transport");
  Destination& dest = destinations_[s->destination];
  if (dest.busy >= options_.max_inflight_per_destination) {
    park(s);
    return false;
  }
  ++dest.busy;
  near_.erase(id);  // the record now lives in inflight_ until the outcome is written
  s->state = State::kExecuting;
  s->parked = false;
  int64_t now = clock_.now_us();
  if (probe_.lateness_seconds) probe_.lateness_seconds->observe((now - s->next_us) / 1e6);
  DeliveryJob job;
  job.timer_id = id;
  job.attempt = r.attempts + 1;
  job.method = r.callback.method;
  job.uri = r.callback.uri;
  job.headers = r.callback.headers;
  job.data_kind = r.data_kind;
  job.data = r.data;
  job.timeout_ms = options_.delivery_timeout_ms;
  notify(TimerEvent::kExecute, r);
  inflight_.emplace(id, InFlight{std::move(r), s->destination});
  if (probe_.inflight) probe_.inflight->set(static_cast<int64_t>(inflight_.size()));
  t->deliver(std::move(job), [this, id](DeliveryResult res) {
    executor_.post(
        [this, id, res = std::move(res)]() mutable { on_delivered(id, std::move(res)); });
  });
  return true;
}

void TimerEngine::on_delivered(const std::string& id, DeliveryResult result) {
  auto fit = inflight_.find(id);
  SKYRING_ASSERT(fit != inflight_.end(), "delivery result for a timer not in flight");
  InFlight f = std::move(fit->second);
  inflight_.erase(fit);
  if (probe_.inflight) probe_.inflight->set(static_cast<int64_t>(inflight_.size()));
  SKYRING_ASSERT(destinations_[f.destination].busy > 0, "destination count broken");
  --destinations_[f.destination].busy;
  auto sit = slots_.find(id);
  SKYRING_ASSERT(sit != slots_.end() && sit->second.state == State::kExecuting,
                 "delivered timer is not executing");
  Slot& s = sit->second;
  TimerRecord& r = f.record;
  if (result.outcome == Outcome::kAborted) {
    // Nothing is known about the attempt: it stays owed, exactly as stored.
    s.state = r.state;
    enqueue(&s);
  } else {
    ++r.attempts;
    if (result.outcome == Outcome::kSuccess) {
      if (probe_.delivered) probe_.delivered->inc();
      finish(std::move(r), State::kSucceeded);
    } else if (result.outcome == Outcome::kRetryable && r.attempts < r.retry.attempts) {
      if (probe_.retried) probe_.retried->inc();
      r.last_error = result.detail;
      r.state = State::kRetrying;
      r.next_us =
          clock_.now_us() + static_cast<int64_t>(backoff_ms(r.retry, r.attempts, rng_())) * 1000;
      s.state = State::kRetrying;
      s.next_us = r.next_us;
      KvBatch b;
      TimerStore::put_waiting(b, r);
      s.write_seq = submit(std::move(b), std::move(r), nullptr);
      enqueue(&s);
    } else {
      if (probe_.failed) probe_.failed->inc();
      r.last_error = result.detail;
      log::info("timer {} failed after {} attempt(s): {}", id, r.attempts, r.last_error);
      finish(std::move(r), State::kFailed);
    }
  }
  unpark(f.destination);
  schedule_tick();
}

void TimerEngine::finish(TimerRecord r, State state) {
  r.state = state;
  r.completed_us = clock_.now_us();
  erase_slot(r.id);
  KvBatch b;
  TimerStore::put_final(b, r, purge_at(r));
  notify(state == State::kSucceeded ? TimerEvent::kSuccess : TimerEvent::kFail, r);
  submit(std::move(b), std::move(r), nullptr);
}

void TimerEngine::park(Slot* s) {
  s->parked = true;
  Destination& d = destinations_[s->destination];
  if (!d.parked) d.parked = std::make_unique<std::deque<std::string>>();
  d.parked->push_back(*s->id);
}

void TimerEngine::unpark(uint32_t destination) {
  // Attempts started here may finish the timer and free the entry, so index every time.
  auto has_parked = [&] {
    return destination < destinations_.size() && destinations_[destination].parked &&
           !destinations_[destination].parked->empty();
  };
  while (has_parked() && destinations_[destination].busy < options_.max_inflight_per_destination) {
    if (!firing_ || failed_ || held_) return;
    if (inflight_.size() >= options_.max_inflight || !may_start()) {
      // A node-wide limit, not this destination's: tick() resumes it once there is room.
      Destination& d = destinations_[destination];
      if (!d.blocked) {
        d.blocked = true;
        blocked_destinations_.push_back(destination);
      }
      return;
    }
    std::deque<std::string>& q = *destinations_[destination].parked;
    std::string id = std::move(q.front());
    q.pop_front();
    auto sit = slots_.find(id);
    if (sit == slots_.end() || !sit->second.parked) continue;  // cancelled or replaced since
    sit->second.parked = false;
    start_attempt(&sit->second);
  }
  if (destination < destinations_.size() && destinations_[destination].parked &&
      destinations_[destination].parked->empty()) {
    destinations_[destination].parked.reset();
  }
}

void TimerEngine::unpark_blocked() {
  std::vector<uint32_t> blocked;
  blocked.swap(blocked_destinations_);
  for (uint32_t d : blocked) {
    if (d < destinations_.size()) destinations_[d].blocked = false;
  }
  for (uint32_t d : blocked) unpark(d);
}

bool TimerEngine::bind_destination(Slot* s, const TimerRecord& r) {
  SKYRING_ASSERT(s->destination == kNoDestination, "destination bound twice");
  Transport* t = transports_.find(r.callback.transport);
  if (t == nullptr) return false;
  std::string cache_key = r.callback.transport + " " + r.callback.uri;
  auto cached = destination_cache_.find(cache_key);
  if (cached == destination_cache_.end()) {
    if (destination_cache_.size() >= kDestinationCacheSize) destination_cache_.clear();
    cached = destination_cache_
                 .emplace(std::move(cache_key),
                          r.callback.transport + " " + t->destination(r.callback.uri))
                 .first;
  }
  auto [it, inserted] = destination_index_.try_emplace(cached->second, 0);
  if (inserted) {
    if (free_destinations_.empty()) {
      it->second = static_cast<uint32_t>(destinations_.size());
      destinations_.emplace_back();
    } else {
      it->second = free_destinations_.back();
      free_destinations_.pop_back();
    }
    destinations_[it->second].key = it->first;
  }
  s->destination = it->second;
  ++destinations_[it->second].refs;
  return true;
}

void TimerEngine::release_destination(Slot* s) {
  if (s->destination == kNoDestination) return;
  Destination& d = destinations_[s->destination];
  SKYRING_ASSERT(d.refs > 0, "destination refcount broken");
  if (--d.refs == 0) {
    SKYRING_ASSERT(d.busy == 0, "destination busy without slots");
    destination_index_.erase(d.key);
    d = Destination{};  // parked held only stale ids
    free_destinations_.push_back(s->destination);
  }
  s->destination = kNoDestination;
}

// --- Cluster support ---

void TimerEngine::hold_firing(bool hold) {
  held_ = hold;
  if (!held_) {
    armed_us_ = INT64_MAX;
    schedule_tick();
  }
}

Result<std::string> TimerEngine::new_id() {
  if (auto a = admit(); !a) return tl::unexpected(a.error());
  return generate_id();
}

bool TimerEngine::holds(const std::string& id) {
  if (auto u = unsettled_.find(id); u != unsettled_.end()) return u->second.record.has_value();
  if (slots_.count(id) != 0 || near_.count(id) != 0) return true;
  if (!quarantined_ids_.empty() && quarantined_ids_.count(id) != 0) return true;
  auto got = store_.get(id);
  return !got || got->has_value();
}

bool TimerEngine::scan_waiting(size_t* cursor, size_t max_visit,
                               const std::function<bool(const std::string&)>& want,
                               std::vector<std::string>* out, size_t* busy) {
  size_t buckets = slots_.bucket_count();
  size_t visited = 0;
  for (; *cursor < buckets && visited < max_visit; ++*cursor) {
    for (auto it = slots_.begin(*cursor); it != slots_.end(*cursor); ++it) {
      ++visited;
      const Slot& s = it->second;
      if (s.moving) continue;
      if (s.state == State::kExecuting) {
        if (busy != nullptr && want(it->first)) ++*busy;
        continue;
      }
      if (want(it->first)) out->push_back(it->first);
    }
  }
  if (*cursor >= buckets) {
    *cursor = 0;
    return true;
  }
  return false;
}

Result<std::vector<std::string>> TimerEngine::final_ids(State state, const std::string& cursor,
                                                        size_t limit) {
  return store_.list_final(state, cursor, limit);
}

Result<void> TimerEngine::admit_moves(size_t ops) const {
  if (failed_) return fail(Errc::kUnavailable, failure_);
  if (backlog() >= options_.max_unsettled || move_ops_ + ops > options_.max_move_ops) {
    return fail(Errc::kOverloaded, "too many changes waiting for storage; retry later");
  }
  return {};
}

uint64_t TimerEngine::submit_moves(KvBatch batch, Changes changes) {
  uint64_t seq = ++submitted_seq_;
  size_t ops = batch.size();
  move_ops_ += ops;
  for (auto& [id, record] : changes) unsettled_[id] = Unsettled{std::move(record), seq};
  std::vector<std::string> ids;
  ids.reserve(changes.size());
  for (auto& c : changes) ids.push_back(std::move(c.first));
  auto on_done = [this, seq, ops, ids = std::move(ids)](Result<void> r) {
    for (const std::string& id : ids) {
      if (auto u = unsettled_.find(id); u != unsettled_.end() && u->second.seq == seq) {
        unsettled_.erase(u);
      }
    }
    move_ops_ -= ops;
    on_committed(seq, r);
  };
  if (auto s = committer_.submit(std::move(batch), on_done); !s) {
    // The node sizes the committer's queue for max_unsettled changes plus max_move_ops.
    SKYRING_ASSERT(s.error().code != Errc::kOverloaded,
                   "committer queue is smaller than the engine's admission bound");
    executor_.post([on_done, err = s.error()]() mutable { on_done(tl::unexpected(err)); });
  }
  return seq;
}

void TimerEngine::begin_move(std::vector<std::string> ids, const std::string& dest,
                             const std::string& token, Reply<std::vector<TimerRecord>> done) {
  if (auto a = admit_moves(ids.size()); !a) return done(tl::unexpected(a.error()));
  KvBatch b;
  std::vector<TimerRecord> out;
  for (const std::string& id : ids) {
    auto sit = slots_.find(id);
    if (sit == slots_.end()) {
      // A final (retention) record moves without a mark: it never fires and never changes
      // until purged, so sending it twice is harmless (the receiver keeps the first).
      auto l = lookup(id);
      if (l && l->record && is_final(l->record->state)) {
        final_moves_[id] = token;
        out.push_back(std::move(*l->record));
      }
      continue;
    }
    Slot& s = sit->second;
    if (s.state == State::kExecuting) continue;
    if (s.moving) {
      // A resend of the same move (after a crash or an unknown outcome): same token only. To
      // another destination (the first left after a complete handoff: Mover) the mark is
      // rewritten, so that a restart resends it there.
      auto mv = moving_.find(id);
      if (mv == moving_.end() || mv->second.token != token) continue;
      if (mv->second.dest != dest) {
        mv->second.dest = dest;
        TimerStore::put_move_mark(b, id, dest, token);
      }
      auto l = lookup(id);
      if (l && l->record) out.push_back(std::move(*l->record));
      continue;
    }
    auto l = lookup(id);
    if (!l || !l->record) continue;  // a read error: tried again at the next pass
    dequeue(&s);
    s.parked = false;  // a stale entry in a parked FIFO is skipped
    s.moving = true;
    moving_[id] = Move{dest, token};
    TimerStore::put_move_mark(b, id, dest, token);
    out.push_back(std::move(*l->record));
  }
  uint64_t seq = b.empty() ? submitted_seq_ : submit_moves(std::move(b), {});
  after_durable(seq, [this, out = std::move(out), done = std::move(done)]() mutable {
    if (failed_) return done(fail(Errc::kUnavailable, failure_));
    done(std::move(out));
  });
}

void TimerEngine::end_move(const std::vector<std::string>& ids, const std::string& token,
                           bool delivered, Reply<void> done) {
  KvBatch b;
  Changes changes;
  for (const std::string& id : ids) {
    auto mv = moving_.find(id);
    if (mv != moving_.end()) {
      if (mv->second.token != token) continue;
      moving_.erase(mv);
      TimerStore::drop_move_mark(b, id);
      auto sit = slots_.find(id);
      SKYRING_ASSERT(sit != slots_.end() && sit->second.moving, "a move mark without its slot");
      if (delivered) {
        TimerStore::remove_waiting(b, id);
        TimerRecord gone;
        gone.id = id;
        gone.state = sit->second.state;
        gone.next_us = sit->second.next_us;
        notify(TimerEvent::kEvict, gone);
        erase_slot(id);
        changes.emplace_back(id, std::nullopt);
      } else {
        sit->second.moving = false;
        enqueue(&sit->second);
      }
    } else if (auto fm = final_moves_.find(id); fm != final_moves_.end()) {
      if (fm->second != token) continue;
      final_moves_.erase(fm);
      if (!delivered || slots_.count(id) != 0) continue;
      auto l = lookup(id);
      if (l && l->record && is_final(l->record->state)) {
        TimerStore::purge(b, id, l->record->state, purge_at(*l->record));
        notify(TimerEvent::kEvict, *l->record);
        changes.emplace_back(id, std::nullopt);
      }
    }
  }
  // Never refused: the ops are bounded by the begin_move calls that admitted them.
  uint64_t seq = b.empty() ? submitted_seq_ : submit_moves(std::move(b), std::move(changes));
  after_durable(seq, [this, done = std::move(done)] {
    if (failed_) return done(fail(Errc::kUnavailable, failure_));
    done({});
  });
}

std::vector<MoveMark> TimerEngine::moving() const {
  std::vector<MoveMark> out;
  out.reserve(moving_.size());
  for (const auto& [id, m] : moving_) out.push_back(MoveMark{id, m.dest, m.token});
  return out;
}

void TimerEngine::adopt_waiting(const TimerRecord& r) {
  auto [it, inserted] = slots_.try_emplace(r.id);
  Slot& s = it->second;
  if (inserted) {
    s.id = &it->first;
  } else {
    dequeue(&s);
    release_destination(&s);
  }
  s.parked = false;
  s.moving = false;
  s.next_us = r.next_us;
  s.state = r.state;
  bind_destination(&s, r);  // false (transport not loaded): the attempt fails it, as recovery
  near_.erase(r.id);
  keep_if_near(r);
}

void TimerEngine::import(std::vector<TimerRecord> records, const std::string& token,
                         Reply<std::vector<ImportOutcome>> done) {
  if (auto a = admit_moves(records.size() * 8); !a) return done(tl::unexpected(a.error()));
  KvBatch b;
  Changes changes;
  std::vector<ImportOutcome> outcomes;
  outcomes.reserve(records.size());
  std::vector<Slot*> adopted;
  int64_t now = clock_.now_us();
  for (TimerRecord& r : records) {
    if (!valid_timer_id(r.id) || token.empty() || !(awaits_attempt(r.state) || is_final(r.state))) {
      outcomes.push_back(ImportOutcome::kRejected);
      continue;
    }
    auto seen = store_.has_receipt(r.id, token);
    if (!seen) return done(fail(Errc::kUnavailable, seen.error().message));
    if (*seen) {
      outcomes.push_back(ImportOutcome::kDuplicate);
      continue;
    }
    auto sit = slots_.find(r.id);
    bool replaces_outgoing = sit != slots_.end() && sit->second.moving;
    if (!replaces_outgoing && holds(r.id)) {
      if (uint64_t dropped = 0; import_conflict_log_.allow(&dropped)) {
        log::warn(
            "timer {}: a move brought a record of an id held here already; the record "
            "held here stays{}",
            r.id, log::Limiter::note(dropped));
      }
      outcomes.push_back(ImportOutcome::kKeptLocal);
      continue;
    }
    if (replaces_outgoing) {
      // This node was handing the id over and it came back before that ended: the copy that
      // arrives is the newer one (docs/cluster.md, "Moves", crash point 6).
      moving_.erase(r.id);
      TimerStore::drop_move_mark(b, r.id);
      sit->second.moving = false;
    }
    if (awaits_attempt(r.state)) {
      TimerStore::put_waiting(b, r);
      adopt_waiting(r);
      adopted.push_back(&slots_.find(r.id)->second);
    } else {
      if (slots_.count(r.id) != 0) erase_slot(r.id);
      TimerStore::put_final(b, r, purge_at(r));
    }
    TimerStore::put_receipt(b, r.id, token, now + options_.move_receipt_ttl_us);
    final_moves_.erase(r.id);  // a late ack of an earlier send must not delete this one
    outcomes.push_back(ImportOutcome::kStored);
    std::string id = r.id;
    changes.emplace_back(std::move(id), std::move(r));
  }
  uint64_t seq = submitted_seq_;
  if (!b.empty()) {
    seq = submit_moves(std::move(b), std::move(changes));
    for (Slot* s : adopted) {
      s->write_seq = seq;
      enqueue(s);
    }
    if (probe_.pending) probe_.pending->set(static_cast<int64_t>(slots_.size()));
  }
  after_durable(seq, [this, outcomes = std::move(outcomes), done = std::move(done)]() mutable {
    if (failed_) return done(fail(Errc::kUnavailable, failure_));
    done(std::move(outcomes));
  });
}

void TimerEngine::stop_firing() {
  firing_ = false;
}

}  // namespace skyring
