#include "cluster/mover.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "base/clock.h"
#include "cluster/wire.h"
#include "model/codec.h"
#include "model/json_text.h"

namespace skyring::cluster {
namespace {

constexpr std::string_view kMagic = "SKM1";
// x-skyring-move on a refusal: "refused" — nothing of this request was stored (it says nothing
// of an earlier send of the same token); "not-held" — nothing under this token is stored here,
// nor will be (a leaving node that checked its receipts).
constexpr std::string_view kMoveHeader = "x-skyring-move";
constexpr std::string_view kRefused = "refused";
constexpr std::string_view kNotHeld = "not-held";

RouteResponse json_answer(int status, std::string body) {
  RouteResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

// `move`: the x-skyring-move value, or empty for none.
RouteResponse error_answer(int status, std::string_view message, std::string_view move) {
  ErrorReply e = error_reply(message);
  RouteResponse r = json_answer(status, std::move(e.body));
  r.headers.emplace_back("x-skyring-reason", std::move(e.reason));
  if (status == 503) r.headers.emplace_back("Retry-After", "1");
  if (!move.empty()) r.headers.emplace_back(std::string(kMoveHeader), std::string(move));
  return r;
}

}  // namespace

Mover::Mover(TimerEngine& engine, Membership& membership, PeerClient& peers, Executor& executor,
             MoverOptions options, Registry& metrics)
    : engine_(engine),
      membership_(membership),
      peers_(peers),
      executor_(executor),
      options_(std::move(options)),
      moved_out_(metrics.counter("skyring_cluster_moves_out_total",
                                 "Timers and retention records handed to their new owner")),
      moved_in_(metrics.counter("skyring_cluster_moves_in_total",
                                "Timers and retention records taken over from another node")),
      batches_out_(metrics.counter("skyring_cluster_move_batches_total", "Move batches sent")),
      unknown_(metrics.counter("skyring_cluster_move_unknown_total",
                               "Move batches whose outcome was unknown (resent)")),
      refused_(metrics.counter("skyring_cluster_move_refused_total",
                               "Move batches the receiver did not take (timers stay here)")),
      kept_local_(metrics.counter(
          "skyring_cluster_move_conflicts_total",
          "Moved records not stored because the receiver held another record of the id")),
      moving_(metrics.gauge("skyring_cluster_moving", "Timers with a move in progress")),
      unresolved_(metrics.gauge("skyring_cluster_moves_unresolved",
                                "Move batches waiting to be resent (unknown outcome)")) {
  std::random_device rd;
  rng_.seed((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(monotonic_us()));
}

Mover::~Mover() {
  *alive_ = false;
}

std::string Mover::new_token() {
  return fmt::format("{}-{:016x}", options_.self_id, rng_());
}

void Mover::start() {
  // Moves interrupted by a stop: resent under their own token to their own destination.
  std::map<std::pair<std::string, std::string>, std::vector<std::string>> groups;
  for (MoveMark& m : engine_.moving()) {
    groups[{std::move(m.dest), std::move(m.token)}].push_back(std::move(m.id));
  }
  for (auto& [key, ids] : groups) {
    for (size_t at = 0; at < ids.size(); at += options_.batch) {
      auto b = std::make_shared<Batch>();
      b->dest = key.first;
      b->token = key.second;
      b->ids.assign(
          ids.begin() + static_cast<ptrdiff_t>(at),
          ids.begin() + static_cast<ptrdiff_t>(std::min(ids.size(), at + options_.batch)));
      b->retry_ms = options_.retry_min_ms;
      retrying_.push_back(std::move(b));
    }
  }
  if (!retrying_.empty()) {
    log::info("resending {} interrupted move batch(es) ({} timers)", retrying_.size(),
              engine_.moving_count());
  }
  unresolved_.set(static_cast<int64_t>(retrying_.size()));
  ring_changed();
}

void Mover::ring_changed() {
  rescan_ = true;
  settled_ = false;
  // Ids queued under the old ring may have another owner now: the new pass finds them again.
  queue_.clear();
  schedule_pump();
}

bool Mover::settled() const {
  return settled_ && settled_ring_ == membership_.ring().fingerprint();
}

size_t Mover::in_flight() const {
  return inflight_ + retrying_.size();
}

size_t Mover::queued() const {
  size_t n = 0;
  for (const auto& [dest, ids] : queue_) n += ids.size();
  return n;
}

bool Mover::foreign(const std::string& id, std::string* dest) const {
  const Member* owner = membership_.ring().owner(id);
  if (owner == nullptr || owner->id == options_.self_id) return false;
  *dest = owner->id;
  return true;
}

void Mover::queue_id(const std::string& id, const std::string& dest) {
  queue_[dest].push_back(id);
  pass_found_ = true;
}

void Mover::tick() {
  int64_t now = monotonic_us();
  // Unknown outcomes whose wait is over are resent.
  for (size_t i = 0; i < retrying_.size();) {
    if (retrying_[i]->next_try_us <= now && inflight_ < options_.max_inflight) {
      auto b = std::move(retrying_[i]);
      retrying_.erase(retrying_.begin() + static_cast<ptrdiff_t>(i));
      ++inflight_;
      if (b->body.empty()) {
        // Found at recovery: the records are read again under the same token.
        start_batch(b->dest, std::move(b->ids), b->token, /*resend=*/true);
      } else {
        send(std::move(b));
      }
    } else {
      ++i;
    }
  }
  unresolved_.set(static_cast<int64_t>(retrying_.size()));
  moving_.set(static_cast<int64_t>(engine_.moving_count()));
  if (phase_ == Phase::kIdle && !rescan_ && now - last_pass_us_ >= options_.rescan_ms * 1000) {
    rescan_ = true;
  }
  pump();
}

void Mover::schedule_pump() {
  if (pump_posted_) return;
  pump_posted_ = true;
  executor_.post([this, alive = alive_] {
    if (!*alive) return;
    pump_posted_ = false;
    pump();
  });
}

void Mover::pump() {
  if (!membership_.ring_known()) return;
  if (phase_ == Phase::kIdle && rescan_ && monotonic_us() >= pass_not_before_us_) {
    rescan_ = false;
    phase_ = Phase::kWaiting;
    slot_cursor_ = 0;
    pass_generation_ = engine_.slot_table_generation();
    final_cursor_.clear();
    pass_found_ = false;
    pass_ring_ = membership_.ring().fingerprint();
    last_pass_us_ = monotonic_us();
  }
  bool more_scan = false;
  if (phase_ != Phase::kIdle && queued() < options_.batch * options_.max_inflight * 2) {
    more_scan = scan_some();
  }
  // Full batches go at once; partial ones when the pass has nothing more to add.
  for (auto it = queue_.begin(); it != queue_.end() && inflight_ < options_.max_inflight;) {
    if (it->second.size() >= options_.batch || phase_ == Phase::kIdle ||
        queued() >= options_.batch * options_.max_inflight) {
      std::vector<std::string> ids;
      size_t n = std::min(it->second.size(), options_.batch);
      ids.assign(std::make_move_iterator(it->second.begin()),
                 std::make_move_iterator(it->second.begin() + static_cast<ptrdiff_t>(n)));
      it->second.erase(it->second.begin(), it->second.begin() + static_cast<ptrdiff_t>(n));
      std::string dest = it->first;
      if (it->second.empty()) it = queue_.erase(it);
      ++inflight_;
      start_batch(std::move(dest), std::move(ids), new_token(), /*resend=*/false);
    } else {
      ++it;
    }
  }
  if (more_scan && queued() < options_.batch * options_.max_inflight * 2) schedule_pump();

  // Settled: a whole pass under this ring found nothing, and nothing is on its way.
  uint64_t ring = membership_.ring().fingerprint();
  if (phase_ == Phase::kIdle && !rescan_ && queue_.empty() && inflight_ == 0 && retrying_.empty() &&
      engine_.moving_count() == 0) {
    if (pass_found_ || pass_ring_ != ring) {
      rescan_ = true;  // confirm with a pass that finds nothing
      schedule_pump();
    } else if (!settled_ || settled_ring_ != ring) {
      settled_ = true;
      settled_ring_ = ring;
      membership_.set_settled(ring);
      if (stats_.moved_out != stats_at_settle_.moved_out ||
          stats_.moved_in != stats_at_settle_.moved_in) {
        log::info("rebalance settled: {} moved out, {} moved in since the last one",
                  stats_.moved_out - stats_at_settle_.moved_out,
                  stats_.moved_in - stats_at_settle_.moved_in);
        if (on_settled_) on_settled_(stats_);
        stats_at_settle_ = stats_;
      }
    }
  }
}

// One chunk of the current pass; true while the pass has more to visit.
bool Mover::scan_some() {
  std::string dest;
  if (phase_ == Phase::kWaiting) {
    std::vector<std::string> ids;
    size_t busy = 0;
    bool done = engine_.scan_waiting(
        &slot_cursor_, options_.scan_chunk,
        [&](const std::string& id) { return foreign(id, &dest); }, &ids, &busy);
    for (const std::string& id : ids) {
      if (foreign(id, &dest)) queue_id(id, dest);
    }
    // A foreign timer whose attempt is in flight moves after it: this pass does not settle.
    if (busy > 0) pass_found_ = true;
    if (done) {
      // The slot table rehashed during the pass: a chunk may have missed timers.
      if (engine_.slot_table_generation() != pass_generation_) pass_found_ = true;
      phase_ = Phase::kSucceeded;
    }
    return true;
  }
  State state = phase_ == Phase::kSucceeded ? State::kSucceeded
                : phase_ == Phase::kFailed  ? State::kFailed
                                            : State::kCancelled;
  auto ids = engine_.final_ids(state, final_cursor_, 1000);
  if (!ids) {
    if (uint64_t dropped = 0; log_.allow(&dropped)) {
      log::warn("rebalance: listing retention records failed ({}); retrying{}", ids.error().message,
                log::Limiter::note(dropped));
    }
    return false;  // tick() pumps again
  }
  for (const std::string& id : *ids) {
    if (foreign(id, &dest)) queue_id(id, dest);
  }
  if (ids->size() == 1000) {
    final_cursor_ = ids->back();
    return true;
  }
  final_cursor_.clear();
  phase_ = phase_ == Phase::kSucceeded ? Phase::kFailed
           : phase_ == Phase::kFailed  ? Phase::kCancelled
                                       : Phase::kIdle;
  return phase_ != Phase::kIdle || !queue_.empty();
}

void Mover::start_batch(std::string dest, std::vector<std::string> ids, std::string token,
                        bool resend) {
  auto b = std::make_shared<Batch>();
  b->dest = dest;
  b->token = token;
  b->retry_ms = options_.retry_min_ms;
  b->maybe_stored = resend;  // marks found at recovery: sent before the stop, perhaps
  auto resend_ids = std::make_shared<std::vector<std::string>>();
  if (resend) *resend_ids = ids;
  engine_.begin_move(
      std::move(ids), dest, token,
      [this, alive = alive_, b, resend_ids, resend](Result<std::vector<TimerRecord>> records) {
        if (!*alive) return;
        if (!records) {
          --inflight_;
          if (resend) {
            // A resend of marks found at recovery: the marks stay, so it must be tried again.
            b->ids = std::move(*resend_ids);
            b->next_try_us = monotonic_us() + options_.retry_max_ms * 1000;
            retrying_.push_back(b);
            return;
          }
          // Overloaded or failed: nothing was marked; a later pass finds these again.
          rescan_ = true;
          back_off_passes();
          schedule_pump();
          return;
        }
        if (resend) {
          // Marked ids whose record could not be read now (a read error): tried again later.
          std::vector<std::string> missing;
          for (const std::string& id : *resend_ids) {
            bool got = std::any_of(records->begin(), records->end(),
                                   [&](const TimerRecord& r) { return r.id == id; });
            if (!got && engine_.moving_under(id, b->token)) missing.push_back(id);
          }
          if (!missing.empty()) {
            auto again = std::make_shared<Batch>();
            again->dest = b->dest;
            again->token = b->token;
            again->ids = std::move(missing);
            again->retry_ms = options_.retry_max_ms;
            again->next_try_us = monotonic_us() + options_.retry_max_ms * 1000;
            retrying_.push_back(std::move(again));
          }
        }
        if (records->empty()) {
          --inflight_;
          schedule_pump();
          return;
        }
        // A batch larger than max_batch_bytes is cut: the rest goes back to the queue's
        // next pass (their marks are ended as not delivered right away).
        std::string body(kMagic);
        put_u32(body, static_cast<uint32_t>(b->token.size()));
        body.append(b->token);
        size_t count_at = body.size();
        put_u32(body, 0);
        std::vector<std::string> overflow;
        uint32_t count = 0;
        std::string enc;
        for (const TimerRecord& r : *records) {
          if (count > 0 && body.size() >= options_.max_batch_bytes) {
            overflow.push_back(r.id);
            continue;
          }
          enc.clear();
          encode_record(r, &enc);
          put_u32(body, static_cast<uint32_t>(enc.size()));
          body.append(enc);
          b->ids.push_back(r.id);
          ++count;
        }
        for (int i = 0; i < 4; ++i)
          body[count_at + i] = static_cast<char>((count >> (8 * i)) & 0xff);
        b->body = std::move(body);
        if (!overflow.empty()) {
          rescan_ = true;
          engine_.end_move(overflow, b->token, /*delivered=*/false, [](Result<void>) {});
        }
        send(b);
      });
}

void Mover::send(std::shared_ptr<Batch> b) {
  const MemberInfo* m = membership_.find(b->dest);
  if (m == nullptr) {
    --inflight_;
    if (!b->maybe_stored) {
      // Gone before anything was sent: certainly not stored there. The timers are owed here
      // again and go to their current owner at the next pass.
      rescan_ = true;
      std::vector<std::string> ids = std::move(b->ids);
      end(std::move(b), {}, std::move(ids));
      return;
    }
    if (membership_.left_after_handoff(b->dest)) return redirect(std::move(b));
    // Sent before (or found at recovery), outcome unknown: the marks stay until the
    // destination is back (docs/cluster.md, "Moves").
    retry_later(std::move(b), "destination is not a reachable member");
    return;
  }
  PeerRequest req;
  req.address = m->member.address;
  req.method = "POST";
  req.target = "/cluster/moves";
  req.headers.emplace_back(std::string(kClusterHeader), options_.cluster);
  req.headers.emplace_back("Content-Type", "application/octet-stream");
  req.body = b->body;
  req.timeout_ms = options_.send_timeout_ms;
  batches_out_.inc();
  peers_.send(std::move(req), [this, alive = alive_, b](PeerResponse resp) mutable {
    executor_.post([this, alive, b = std::move(b), resp = std::move(resp)]() mutable {
      if (!*alive) return;
      on_answer(std::move(b), std::move(resp));
    });
  });
}

void Mover::on_answer(std::shared_ptr<Batch> b, PeerResponse resp) {
  --inflight_;
  using Kind = PeerResponse::Kind;
  if (resp.kind == Kind::kAnswered && resp.status == 200) {
    // {"outcomes":"SDKR..."}: one letter per record sent, in order.
    std::string_view body = resp.body;
    size_t at = body.find("\"outcomes\":\"");
    std::string_view letters;
    if (at != std::string_view::npos) {
      letters = body.substr(at + 12);
      letters = letters.substr(0, letters.find('"'));
    }
    if (letters.size() != b->ids.size()) {
      retry_later(std::move(b), "the answer does not list one outcome per record");
      return;
    }
    refusal_backoff_ms_ = 0;
    std::vector<std::string> delivered;
    std::vector<std::string> kept;
    for (size_t i = 0; i < letters.size(); ++i) {
      char c = letters[i];
      if (c == 'S') {
        ++stats_.moved_out;
        moved_out_.inc();
      }
      if (c == 'K') kept_local_.inc();
      (c == 'R' ? kept : delivered).push_back(b->ids[i]);
    }
    end(std::move(b), std::move(delivered), std::move(kept));
    return;
  }
  bool refused = resp.kind == Kind::kNotSent || resp.kind == Kind::kRefused ||
                 (resp.kind == Kind::kAnswered && resp.status >= 400 && resp.status < 500);
  bool not_held = false;
  if (resp.kind == Kind::kAnswered) {
    for (const auto& [name, value] : resp.headers) {
      if (!iequals(name, kMoveHeader)) continue;
      if (value == kRefused) refused = true;
      if (value == kNotHeld) not_held = true;
    }
  }
  if (refused && !not_held && b->maybe_stored) {
    // This send was not taken, but an earlier one of the same token may have been stored
    // there: only an answer that knows the token (200, or "not-held") ends the move.
    retry_later(std::move(b), resp.kind == Kind::kAnswered
                                  ? fmt::format("status {} to a resend", resp.status)
                                  : resp.error + " (a resend)");
    return;
  }
  refused = refused || not_held;
  if (refused) {
    refused_.inc();
    if (uint64_t dropped = 0; log_.allow(&dropped)) {
      log::info("move of {} timers to {} not taken ({}); they stay here for now{}", b->ids.size(),
                b->dest,
                resp.kind == Kind::kAnswered ? fmt::format("status {}", resp.status) : resp.error,
                log::Limiter::note(dropped));
    }
    rescan_ = true;
    back_off_passes();
    std::vector<std::string> ids = std::move(b->ids);
    end(std::move(b), {}, std::move(ids));
    return;
  }
  retry_later(std::move(b),
              resp.kind == Kind::kAnswered ? fmt::format("status {}", resp.status) : resp.error);
}

void Mover::end(std::shared_ptr<Batch> b, std::vector<std::string> delivered,
                std::vector<std::string> kept) {
  auto finish = [this, alive = alive_](Result<void>) {
    if (!*alive) return;
    schedule_pump();
  };
  if (!kept.empty()) engine_.end_move(kept, b->token, false, finish);
  if (!delivered.empty()) engine_.end_move(delivered, b->token, true, finish);
  if (kept.empty() && delivered.empty()) schedule_pump();
}

void Mover::redirect(std::shared_ptr<Batch> b) {
  // The destination left after a complete handoff and stored no move once it began leaving:
  // whatever this batch stored there went on to the timers' owners. So the same batch (same
  // token, marks kept) goes to the owners now: one that holds a timer already answers "kept
  // local" and the copy here is deleted; one that does not stores it. Ids this node owns now
  // came back here if they had been stored there (replacing the marked copy), so a mark still
  // under this token means they were not: they stay here. Never unmarked before the owner
  // answered, so never fired twice.
  std::map<std::string, std::vector<std::string>> by_dest;
  std::vector<std::string> here;
  for (std::string& id : b->ids) {
    std::string dest;
    if (foreign(id, &dest)) {
      by_dest[dest].push_back(std::move(id));
    } else {
      here.push_back(std::move(id));
    }
  }
  if (uint64_t dropped = 0; log_.allow(&dropped)) {
    log::info(
        "move to {} (left after its handoff) had an unknown outcome: {} timers go to {} "
        "other owner(s), {} stay here{}",
        b->dest, b->ids.size() - here.size(), by_dest.size(), here.size(),
        log::Limiter::note(dropped));
  }
  for (auto& [dest, ids] : by_dest) {
    auto again = std::make_shared<Batch>();
    again->dest = dest;
    again->token = b->token;
    again->ids = std::move(ids);
    again->maybe_stored = true;
    again->retry_ms = options_.retry_min_ms;
    again->next_try_us = monotonic_us();  // body empty: tick() reads the records again
    retrying_.push_back(std::move(again));
  }
  unresolved_.set(static_cast<int64_t>(retrying_.size()));
  rescan_ = true;
  end(std::move(b), {}, std::move(here));
}

void Mover::back_off_passes() {
  refusal_backoff_ms_ = refusal_backoff_ms_ == 0
                            ? options_.retry_min_ms
                            : std::min(refusal_backoff_ms_ * 2, options_.retry_max_ms);
  pass_not_before_us_ = monotonic_us() + refusal_backoff_ms_ * 1000;
}

void Mover::retry_later(std::shared_ptr<Batch> b, const std::string& why) {
  unknown_.inc();
  b->maybe_stored = true;
  if (uint64_t dropped = 0; log_.allow(&dropped)) {
    log::warn("move of {} timers to {}: outcome unknown ({}); resending in {} ms{}", b->ids.size(),
              b->dest, why, b->retry_ms, log::Limiter::note(dropped));
  }
  b->next_try_us = monotonic_us() + b->retry_ms * 1000;
  b->retry_ms = std::min(b->retry_ms * 2, options_.retry_max_ms);
  retrying_.push_back(std::move(b));
  unresolved_.set(static_cast<int64_t>(retrying_.size()));
}

void Mover::receive_moves(std::string_view body, std::function<void(RouteResponse)> done) {
  std::string_view in = body;
  if (!in.starts_with(kMagic)) return done(error_answer(400, "not a move batch", kRefused));
  in.remove_prefix(kMagic.size());
  uint32_t token_len = 0;
  if (!get_u32(in, &token_len) || token_len == 0 || token_len > 256 || in.size() < token_len) {
    return done(error_answer(400, "move batch: bad token", kRefused));
  }
  std::string token(in.substr(0, token_len));
  in.remove_prefix(token_len);
  uint32_t count = 0;
  if (!get_u32(in, &count) || count > options_.max_batch_records_in) {
    return done(error_answer(400, "move batch: bad record count", kRefused));
  }
  std::vector<TimerRecord> records;
  records.reserve(std::min<size_t>(count, 4096));
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t len = 0;
    if (!get_u32(in, &len) || in.size() < len) {
      return done(error_answer(400, "move batch: truncated", kRefused));
    }
    auto r = decode_record(in.substr(0, len));
    if (!r) return done(error_answer(400, "move batch: " + r.error().message, kRefused));
    in.remove_prefix(len);
    records.push_back(std::move(*r));
  }
  if (!in.empty()) return done(error_answer(400, "move batch: trailing bytes", kRefused));
  // A leaving node stores no new move: what it stored before it began leaving, its handoff
  // takes on; what came after would stay behind once it exits. So a first send is refused
  // for sure ("not-held": the sender may re-plan), and only a resend of a move stored here
  // earlier (a receipt of its token) goes on to import(), which answers it as a duplicate.
  if (const MemberInfo* me = membership_.find(options_.self_id); me != nullptr && me->leaving) {
    bool held = false;
    for (const TimerRecord& r : records) {
      auto seen = engine_.has_move_receipt(r.id, token);
      if (!seen) return done(error_answer(503, seen.error().message, ""));
      held = held || *seen;
    }
    if (!held) {
      return done(
          error_answer(503, "this node is leaving the ring and takes no new moves", kNotHeld));
    }
  }
  // Timers this node does not own under its own view (views differ, or it is leaving) must
  // move on: only then is another pass needed before this node may report settled.
  std::string dest;
  bool foreign_in = std::any_of(records.begin(), records.end(),
                                [&](const TimerRecord& r) { return foreign(r.id, &dest); });
  engine_.import(std::move(records), token,
                 [this, alive = alive_, foreign_in,
                  done = std::move(done)](Result<std::vector<ImportOutcome>> r) {
                   if (!r) {
                     // Refused before anything was written (admission), or storage failed: only the
                     // former is a sure "not stored".
                     bool sure = r.error().code == Errc::kOverloaded;
                     return done(error_answer(503, r.error().message, sure ? kRefused : ""));
                   }
                   std::string letters;
                   letters.reserve(r->size());
                   uint64_t stored = 0;
                   for (ImportOutcome o : *r) {
                     switch (o) {
                       case ImportOutcome::kStored:
                         letters.push_back('S');
                         ++stored;
                         break;
                       case ImportOutcome::kDuplicate:
                         letters.push_back('D');
                         break;
                       case ImportOutcome::kKeptLocal:
                         letters.push_back('K');
                         break;
                       case ImportOutcome::kRejected:
                         letters.push_back('R');
                         break;
                     }
                   }
                   if (*alive) {
                     stats_.moved_in += stored;
                     moved_in_.inc(stored);
                     if (stored > 0 && foreign_in) {
                       rescan_ = true;
                       settled_ = false;
                       schedule_pump();
                     }
                   }
                   done(json_answer(200, fmt::format(R"({{"outcomes":"{}"}})", letters)));
                 });
}

}  // namespace skyring::cluster
