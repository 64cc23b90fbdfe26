#include "cluster/membership.h"

#include <algorithm>
#include <charconv>

#include <boost/json.hpp>

namespace skyring::cluster {

namespace json = boost::json;

namespace {

constexpr size_t kMaxMessageBytes = 4096;
constexpr size_t kMaxIdBytes = 256;
constexpr size_t kMaxAddressBytes = 256;

std::string hex(uint64_t v) {
  return fmt::format("{:016x}", v);
}

bool parse_hex(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 16) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, 16);
  return ec == std::errc() && end == s.data() + s.size();
}

// A string member of `o` of 1..max bytes; nullptr when absent, not a string or too long.
const json::string* string_field(const json::object& o, std::string_view key, size_t max) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return nullptr;
  const json::string* s = v->if_string();
  if (s == nullptr || s->empty() || s->size() > max) return nullptr;
  return s;
}

}  // namespace

struct Membership::Message {
  std::string type;          // hello, heartbeat, leave, gone
  bool handed_over = false;  // gone: every timer and receipt-held move went to new owners
  std::string id;
  std::string address;
  bool leaving = false;
  bool joining = false;
  uint64_t incarnation = 0;
  uint64_t settled = 0;
};

Membership::Membership(NatsBus& bus, const Clock& clock, MembershipOptions options,
                       Registry& metrics)
    : bus_(bus),
      options_(std::move(options)),
      subject_(fmt::format("skyring.{}.members", options_.cluster)),
      alive_(std::make_shared<Membership*>(this)),
      members_gauge_(
          metrics.gauge("skyring_cluster_members",
                        "Reachable cluster members (active and leaving), self included")),
      ring_size_gauge_(metrics.gauge("skyring_cluster_ring_size", "Members in the ring")),
      ring_version_gauge_(
          metrics.gauge("skyring_cluster_ring_version", "Local count of ring changes")),
      ring_changes_(metrics.counter("skyring_cluster_ring_changes_total", "Ring changes")),
      bad_messages_(metrics.counter("skyring_cluster_bad_messages_total",
                                    "Membership messages ignored as malformed")),
      id_conflicts_(metrics.counter("skyring_cluster_id_conflicts_total",
                                    "Messages from another process using this node's id")) {
  self_.member = options_.self;
  self_.incarnation = static_cast<uint64_t>(clock.now_us());
  self_.self = true;
  ring_ = Ring({self_.member}, options_.ring);
  update_gauges();
}

Membership::~Membership() = default;

void Membership::start() {
  if (started_) return;
  started_ = true;
  start_us_ = monotonic_us();
  std::weak_ptr<Membership*> weak = alive_;
  bus_.on_state([weak](bool connected) {
    if (auto p = weak.lock()) (*p)->on_connection(connected);
  });
  bus_.subscribe(subject_, [weak](std::string_view, std::string_view data) {
    if (auto p = weak.lock()) (*p)->handle(data);
  });
  connected_ = bus_.connected();
  // Sent even while NATS is still connecting: libnats keeps it until the connection is up
  // (and a later connect sends a fresh hello anyway).
  publish("hello");
  log::info("membership: {} started on {} (incarnation {})", self_.member.id, subject_,
            self_.incarnation);
}

void Membership::tick() {
  if (!started_ || gone_) return;
  int64_t now = monotonic_us();
  if (!ring_known_ && first_answer_us_ != 0 &&
      now - first_answer_us_ >= options_.answer_quiet_ms * 1000) {
    // The others answer a hello within a round trip: a short wait after the first answer lets
    // the rest of them arrive, so the first ring acted on is the whole one.
    become_active("the ring is known");
  }
  if (!ring_known_ && now - start_us_ >= options_.discovery_ms * 1000) {
    become_active(fmt::format("no answer within {} ms", options_.discovery_ms));
  }
  if (!connected_) return;  // silence says nothing while we are cut off; nobody hears us
  if (now - last_heartbeat_us_ >= options_.heartbeat_ms * 1000) publish("heartbeat");
  expire(now);
}

// The ring is known: this node takes its place in it (the others add it when they hear this
// heartbeat; until then it owned nothing and forwarded everything).
void Membership::become_active(const std::string& why) {
  ring_known_ = true;
  self_.joining = false;
  rebuild_ring();
  log::info("membership: {}: {} active member(s) with this node", why, ring_.size());
  if (started_ && !gone_ && connected_) publish("heartbeat");
}

void Membership::expire(int64_t now_us) {
  bool changed = false;
  for (auto it = others_.begin(); it != others_.end();) {
    int64_t silent_us = now_us - it->second.last_seen_us;
    if (silent_us > options_.member_timeout_ms * 1000) {
      log::info("member {} timed out after {} ms", it->first, silent_us / 1000);
      it = others_.erase(it);
      changed = true;
    } else {
      ++it;
    }
  }
  if (changed) rebuild_ring();
}

void Membership::on_connection(bool connected) {
  connected_ = connected;
  if (!connected || gone_) return;
  // The others' silence while we were away says nothing: their clocks restart now.
  int64_t now = monotonic_us();
  for (auto& [id, info] : others_) info.last_seen_us = now;
  publish("hello");
}

void Membership::handle(std::string_view data) {
  if (gone_) return;
  // Anybody may publish on the subject: every field is checked before anything changes.
  Message m;
  auto bad = [&](std::string_view reason) {
    bad_messages_.inc();
    uint64_t held = 0;
    if (bad_limiter_.allow(&held)) {
      log::warn("membership: ignored a bad message on {}: {}{}", subject_, reason,
                log::Limiter::note(held));
    }
  };
  if (data.size() > kMaxMessageBytes) return bad("too large");
  boost::system::error_code ec;
  json::value v = json::parse(data, ec);
  if (ec) return bad("not JSON");
  const json::object* o = v.if_object();
  if (o == nullptr) return bad("not an object");

  const json::value* ver = o->if_contains("v");
  if (ver == nullptr || !ver->is_number() || ver->to_number<double>() != 1) {
    return bad("no \"v\":1");
  }
  const json::string* type = string_field(*o, "type", 16);
  if (type == nullptr) return bad("no type");
  m.type = std::string(*type);
  if (m.type != "hello" && m.type != "heartbeat" && m.type != "leave" && m.type != "gone") {
    return bad("unknown type");
  }
  const json::string* id = string_field(*o, "id", kMaxIdBytes);
  if (id == nullptr) return bad("no id");
  m.id = std::string(*id);
  const json::value* inc = o->if_contains("incarnation");
  if (inc == nullptr) return bad("no incarnation");
  if (const uint64_t* u = inc->if_uint64()) {
    m.incarnation = *u;
  } else if (const int64_t* i = inc->if_int64(); i != nullptr && *i >= 0) {
    m.incarnation = static_cast<uint64_t>(*i);
  } else {
    return bad("bad incarnation");
  }
  if (m.type == "gone") {
    if (const json::value* h = o->if_contains("handed_over")) {
      if (!h->is_bool()) return bad("bad handed_over");
      m.handed_over = h->as_bool();
    }
  } else {
    const json::string* address = string_field(*o, "address", kMaxAddressBytes);
    if (address == nullptr) return bad("no address");
    m.address = std::string(*address);
    if (const json::value* state = o->if_contains("state")) {
      const json::string* s = state->if_string();
      if (s == nullptr || (*s != "active" && *s != "leaving" && *s != "joining")) {
        return bad("bad state");
      }
      m.leaving = *s == "leaving";
      m.joining = *s == "joining";
    }
    if (const json::value* settled = o->if_contains("settled")) {
      const json::string* s = settled->if_string();
      if (s == nullptr || !parse_hex(*s, &m.settled)) return bad("bad settled");
    }
  }
  m.leaving = m.leaving || m.type == "leave";

  if (m.id == self_.member.id) {
    if (m.incarnation == self_.incarnation) return;  // our own message, back from NATS
    id_conflicts_.inc();
    uint64_t held = 0;
    if (conflict_limiter_.allow(&held)) {
      log::error(
          "membership: another process uses node id {} (incarnation {}, ours {}); "
          "ignoring its messages{}",
          m.id, m.incarnation, self_.incarnation, log::Limiter::note(held));
    }
    return;
  }
  apply(m, monotonic_us());
}

void Membership::apply(const Message& m, int64_t now_us) {
  auto it = others_.find(m.id);
  if (it != others_.end() && m.incarnation < it->second.incarnation) return;  // a past life
  if (m.type == "gone") {
    if (m.handed_over) remember_handed_over(m.id);
    if (it != others_.end()) {
      log::info("member {} left{}", m.id, m.handed_over ? " (handoff complete)" : "");
      others_.erase(it);
      rebuild_ring();
    }
    return;
  }
  forget_handed_over(m.id);  // back (or never gone): it may hold anything again
  if (started_ && !ring_known_ && first_answer_us_ == 0) {
    first_answer_us_ = now_us;
    log::info("membership: first answer from {}", m.id);
    if (options_.answer_quiet_ms <= 0) become_active("the ring is known");
  }
  if (it == others_.end() || m.incarnation > it->second.incarnation) {
    if (it == others_.end() && others_.size() + 1 >= options_.max_members) {
      bad_messages_.inc();
      if (uint64_t dropped = 0; bad_limiter_.allow(&dropped)) {
        log::warn("membership: ignoring {}: already {} members (the limit){}", m.id,
                  options_.max_members, log::Limiter::note(dropped));
      }
      return;
    }
    if (it == others_.end()) {
      log::info("member {} joined at {}", m.id, m.address);
      it = others_.emplace(m.id, MemberInfo{}).first;
    } else {
      log::info("member {} restarted at {}", m.id, m.address);
    }
    it->second.member.id = m.id;
    it->second.incarnation = m.incarnation;
  }
  MemberInfo& info = it->second;
  if (m.leaving && !info.leaving) log::info("member {} is leaving", m.id);
  if (!m.joining && info.joining) log::info("member {} is active", m.id);
  info.member.address = m.address;
  info.leaving = m.leaving;
  info.joining = m.joining && !m.leaving;
  info.settled = m.settled;
  info.last_seen_us = now_us;
  rebuild_ring();  // no-op unless the active set or an address changed
  maybe_clear_history();
  if (m.type == "hello" && started_) publish("heartbeat");  // the joiner's snapshot
}

void Membership::remember_handed_over(const std::string& id) {
  if (handed_over_.insert(id).second) handed_over_order_.push_back(id);
  while (handed_over_order_.size() > options_.max_members) {
    handed_over_.erase(handed_over_order_.front());
    handed_over_order_.pop_front();
  }
}

void Membership::forget_handed_over(const std::string& id) {
  if (handed_over_.erase(id) == 0) return;
  handed_over_order_.erase(std::find(handed_over_order_.begin(), handed_over_order_.end(), id));
}

bool Membership::left_after_handoff(std::string_view id) const {
  return handed_over_.count(std::string(id)) != 0;
}

void Membership::publish(std::string_view type, bool handed_over) {
  json::object o;
  o["v"] = 1;
  o["type"] = type;
  o["id"] = self_.member.id;
  o["address"] = self_.member.address;
  o["state"] = self_.leaving ? "leaving" : self_.joining ? "joining" : "active";
  o["incarnation"] = self_.incarnation;
  o["settled"] = hex(self_.settled);
  if (type == "gone") o["handed_over"] = handed_over;
  bus_.publish(subject_, json::serialize(o), NatsBus::Send::kAtOnce);
  if (type != "gone" && type != "leave") last_heartbeat_us_ = monotonic_us();
}

void Membership::rebuild_ring() {
  std::vector<Member> active;
  active.reserve(others_.size() + 1);
  bool self_active = !self_.leaving && !self_.joining;
  if (self_active) active.push_back(self_.member);
  for (const auto& [id, info] : others_) {
    if (!info.leaving && !info.joining) active.push_back(info.member);
  }
  std::vector<Member> others_active(active.begin() + (self_active ? 1 : 0), active.end());
  without_self_ = Ring(std::move(others_active), options_.ring);
  Ring next(std::move(active), options_.ring);
  if (next.fingerprint() == ring_.fingerprint()) {
    update_gauges();
    return;
  }
  // Rings seen while joining are partial (members arrive one by one): not worth asking.
  if (!ring_.empty() && options_.max_history > 0 && ring_known_) {
    history_.push_front(std::move(ring_));
    while (history_.size() > options_.max_history) history_.pop_back();
  }
  ring_ = std::move(next);
  ++ring_version_;
  ring_changes_.inc();
  update_gauges();
  log::info("membership: ring version {}: {} member(s), fingerprint {}", ring_version_,
            ring_.size(), hex(ring_.fingerprint()));
  maybe_clear_history();
  if (on_change_) on_change_();
}

void Membership::update_gauges() {
  members_gauge_.set(static_cast<int64_t>(others_.size() + 1));
  ring_size_gauge_.set(static_cast<int64_t>(ring_.size()));
  ring_version_gauge_.set(static_cast<int64_t>(ring_version_));
}

void Membership::maybe_clear_history() {
  if (!history_.empty() && settled_everywhere()) history_.clear();
}

std::vector<MemberInfo> Membership::members() const {
  std::vector<MemberInfo> out;
  out.reserve(others_.size() + 1);
  out.push_back(self_);
  out.back().last_seen_us = monotonic_us();
  for (const auto& [id, info] : others_) out.push_back(info);
  return out;
}

const MemberInfo* Membership::find(std::string_view id) const {
  if (id == self_.member.id) return &self_;
  auto it = others_.find(id);
  return it == others_.end() ? nullptr : &it->second;
}

void Membership::leave() {
  if (self_.leaving) return;
  self_.leaving = true;
  log::info("membership: {} is leaving the ring", self_.member.id);
  publish("leave");
  rebuild_ring();
}

void Membership::gone(bool handed_over) {
  if (gone_) return;
  publish("gone", handed_over);
  gone_ = true;
}

void Membership::set_settled(uint64_t fingerprint) {
  if (self_.settled == fingerprint) return;
  self_.settled = fingerprint;
  maybe_clear_history();
  // Tell the others now rather than at the next heartbeat: their history can go sooner.
  if (started_ && !gone_ && connected_) publish("heartbeat");
}

bool Membership::settled_everywhere() const {
  uint64_t current = ring_.fingerprint();
  if (self_.settled != current) return false;
  return std::all_of(others_.begin(), others_.end(),
                     [&](const auto& e) { return e.second.settled == current; });
}

std::vector<Member> Membership::previous_owners(std::string_view timer_id) const {
  std::vector<Member> out;
  if (history_.empty() && settled_everywhere()) return out;
  const Member* current = ring_.owner(timer_id);
  // Earlier rings (a member that left still holds its timers until its handoff ends), then the
  // owner the id would have without this node: where a timer waits while it moves to a node
  // that joined (the joiner itself has no earlier ring worth asking).
  auto consider = [&](const Ring& ring) {
    const Member* o = ring.owner(timer_id);
    if (o == nullptr || o->id == self_.member.id) return;
    if (current != nullptr && o->id == current->id) return;
    const MemberInfo* reachable = find(o->id);
    if (reachable == nullptr) return;
    bool seen = std::any_of(out.begin(), out.end(), [&](const Member& m) { return m.id == o->id; });
    if (!seen) out.push_back(reachable->member);
  };
  for (const Ring& ring : history_) consider(ring);
  consider(without_self_);
  return out;
}

}  // namespace skyring::cluster
