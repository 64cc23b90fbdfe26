#include "engine/timer_engine.h"

#include <algorithm>

#include "base/log.h"
#include "model/backoff.h"

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

}  // namespace

EngineProbe EngineProbe::make(Registry& r) {
  EngineProbe p;
  p.created = &r.counter("skyring_timers_created_total", "Timers created");
  p.replaced = &r.counter("skyring_timers_replaced_total", "Timers replaced by PUT");
  p.cancelled = &r.counter("skyring_timers_cancelled_total", "Timers cancelled by DELETE");
  p.delivered = &r.counter("skyring_timers_delivered_total", "Timers delivered successfully");
  p.failed = &r.counter("skyring_timers_failed_total", "Timers that became dead letters");
  p.retried = &r.counter("skyring_timers_retried_total", "Failed attempts scheduled for retry");
  p.purged = &r.counter("skyring_timers_purged_total", "Final records purged after retention");
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
  new_id_prefix();
}

void TimerEngine::new_id_prefix() {
  // 48 random bits: two nodes (or two runs of one node) never share a prefix in practice, and
  // the counter makes ids unique within a prefix. 2^48 < 62^9.
  id_prefix_.clear();
  append_base62(id_prefix_, rng_() & 0xffffffffffffULL, kPrefixDigits);
  id_counter_ = 0;
}

Result<size_t> TimerEngine::recover() {
  size_t n = 0;
  auto r = store_.scan_waiting([&](const PendingEntry& e) {
    auto [it, inserted] = slots_.try_emplace(std::string(e.id));
    SKYRING_ASSERT(inserted, "pending index lists an id twice");
    Slot& s = it->second;
    s.id = &it->first;
    s.next_us = e.next_us;
    s.state = e.state;
    heap_.append_unordered(&s);
    ++n;
    return true;
  });
  heap_.heapify();
  if (!r) return tl::unexpected(r.error());
  if (probe_.pending) probe_.pending->set(static_cast<int64_t>(slots_.size()));
  arm();
  return n;
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
  if (auto u = unsettled_.find(id); u != unsettled_.end()) {
    l.record = u->second.record;
    l.seq = u->second.seq;
  } else if (auto n = near_.find(id); n != near_.end()) {
    l.record = n->second;
  } else {
    auto got = store_.get(id);
    if (!got) return tl::unexpected(got.error());
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
  uint64_t seq = ++submitted_seq_;
  std::string id = record.id;
  unsettled_[id] = Unsettled{std::move(record), seq};
  auto on_done = [this, seq, id = std::move(id), done = std::move(done)](Result<void> r) {
    if (auto u = unsettled_.find(id); u != unsettled_.end() && u->second.seq == seq) {
      unsettled_.erase(u);
    }
    on_committed(seq, r);
    if (done) done(std::move(r));
  };
  if (auto s = committer_.submit(std::move(batch), on_done); !s) {
    executor_.post([on_done, err = s.error()]() mutable { on_done(tl::unexpected(err)); });
  }
  return seq;
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
  if (heap_.empty() || !firing_ || failed_) return;
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

std::string TimerEngine::generate_id() {
  if (id_counter_ == kCounterLimit) new_id_prefix();
  std::string id = id_prefix_;
  append_base62(id, id_counter_++, kCounterDigits);
  return id;
}

void TimerEngine::create(TimerRecord r, Reply<CreateResult> done) {
  if (auto a = admit(); !a) return done(tl::unexpected(a.error()));
  if (r.id.empty()) {
    r.id = generate_id();
  } else {
    auto l = lookup(r.id);
    if (!l) return done(fail(Errc::kUnavailable, l.error().message));
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
  SKYRING_ASSERT(inserted, "new timer id already has a slot");
  Slot& s = it->second;
  s.id = &it->first;
  s.next_us = r.next_us;
  s.state = State::kPending;
  bind_destination(&s, r);
  keep_if_near(r);
  KvBatch b;
  TimerStore::put_waiting(b, r);
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
  auto it = slots_.find(r.id);
  if (it == slots_.end()) return done(fail(Errc::kNotFound, "no pending timer with this id"));
  Slot& s = it->second;
  if (s.state == State::kExecuting) {
    return done(fail(Errc::kConflict, "a delivery attempt is in flight; retry later"));
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
  auto it = slots_.find(id);
  if (it == slots_.end()) return done(fail(Errc::kNotFound, "no pending timer with this id"));
  if (it->second.state == State::kExecuting) {
    return done(fail(Errc::kConflict, "a delivery attempt is in flight; retry later"));
  }
  auto l = lookup(id);
  if (!l) return done(fail(Errc::kUnavailable, l.error().message));
  if (!l->record) {
    log::error("timer {} is scheduled but has no record; dropping it", id);
    erase_slot(id);
    return done(fail(Errc::kNotFound, "no pending timer with this id"));
  }
  TimerRecord r = std::move(*l->record);
  r.state = State::kCancelled;
  r.completed_us = clock_.now_us();
  erase_slot(id);
  KvBatch b;
  TimerStore::put_final(b, r, purge_at(r));
  submit(std::move(b), std::move(r), [this, done = std::move(done)](Result<void> res) {
    if (!res) return done(fail(Errc::kUnavailable, failure_));
    if (probe_.cancelled) probe_.cancelled->inc();
    done({});
  });
}

void TimerEngine::get(const std::string& id, Reply<TimerRecord> done) {
  auto l = lookup(id);
  if (!l) return done(fail(Errc::kUnavailable, l.error().message));
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
    if (state == State::kExecuting) {
      std::vector<std::string> all;
      for (const auto& [id, f] : inflight_) {
        if (id > cursor) all.push_back(id);
      }
      std::sort(all.begin(), all.end());
      if (all.size() > limit) all.resize(limit);
      ids = std::move(all);
    } else if (awaits_attempt(state)) {
      ids = store_.list_waiting(state, cursor, limit);
    } else {
      ids = store_.list_final(state, cursor, limit);
    }
    if (!ids) return done(fail(Errc::kUnavailable, ids.error().message));
    ListPage page;
    for (const std::string& id : *ids) {
      auto l = lookup(id);
      if (!l) return done(fail(Errc::kUnavailable, l.error().message));
      if (l->record && l->record->state == state) page.timers.push_back(std::move(*l->record));
    }
    if (ids->size() == limit) page.next_cursor = ids->back();
    done(std::move(page));
  });
}

void TimerEngine::tick() {
  armed_us_ = INT64_MAX;
  if (!firing_ || failed_) return;
  int64_t now = clock_.now_us();
  int starts = 0;
  while (!heap_.empty()) {
    Slot* s = heap_.top();
    if (s->next_us > now) break;
    // Blocked until a commit or a delivery completes; each of those ticks again.
    if (s->write_seq > durable_seq_) return;
    if (inflight_.size() >= options_.max_inflight) return;
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

bool TimerEngine::start_attempt(Slot* s) {
  std::string id = *s->id;
  auto l = lookup(id);
  if (!l || !l->record) {
    log::error("timer {} is due but its record cannot be read ({}); dropping it", id,
               l ? "missing" : l.error().message);
    erase_slot(id);
    return false;
  }
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
  submit(std::move(b), std::move(r), nullptr);
}

void TimerEngine::park(Slot* s) {
  s->parked = true;
  destinations_[s->destination].parked.push_back(*s->id);
}

void TimerEngine::unpark(uint32_t destination) {
  // Attempts started here may finish the timer and free the entry, so index every time.
  while (firing_ && !failed_ && inflight_.size() < options_.max_inflight &&
         destination < destinations_.size() && !destinations_[destination].parked.empty() &&
         destinations_[destination].busy < options_.max_inflight_per_destination) {
    std::string id = std::move(destinations_[destination].parked.front());
    destinations_[destination].parked.pop_front();
    auto sit = slots_.find(id);
    if (sit == slots_.end() || !sit->second.parked) continue;  // cancelled or replaced since
    sit->second.parked = false;
    start_attempt(&sit->second);
  }
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

void TimerEngine::housekeeping() {
  if (failed_ || !firing_ || backlog() > options_.max_unsettled / 2) return;
  auto expired = store_.expired(clock_.now_us(), options_.purge_batch);
  if (!expired) {
    log::warn("retention purge skipped: {}", expired.error().message);
    return;
  }
  size_t n = 0;
  for (const auto& e : *expired) {
    if (unsettled_.count(e.id) != 0) continue;  // already being purged
    KvBatch b;
    TimerStore::purge(b, e.id, e.state, e.purge_at_us);
    TimerRecord tomb;
    tomb.id = e.id;
    submit(std::move(b), std::move(tomb), nullptr);
    unsettled_[e.id].record.reset();
    ++n;
  }
  if (n > 0) {
    if (probe_.purged) probe_.purged->inc(n);
    log::debug("purged {} final timer records past retention", n);
  }
}

void TimerEngine::stop_firing() {
  firing_ = false;
}

}  // namespace skyring
