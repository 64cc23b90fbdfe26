// Membership: who is in the ring, learned only through NATS (docs/cluster.md, "Membership").
//
// Protocol (core NATS, subject "skyring.<cluster>.members", one JSON object per message):
//   {"v":1,"type":"hello"|"heartbeat"|"leave"|"gone","id":..,"address":"host:port",
//    "state":"joining"|"active"|"leaving","incarnation":N,"settled":"<hex ring fingerprint>"}
//   ("gone" also carries "handed_over":true|false; absent means false.)
//   * A node is "joining" until it knows the ring (300 ms after the first answer to its hello,
//     or discovery_ms): reachable but in nobody's ring, itself included, so it forwards
//     everything and no timer moves to it before it sees the whole membership. Then it
//     announces "active" and everybody adds it.
//   * start(): subscribes, then publishes "hello"; every member that hears a hello answers at
//     once with its heartbeat, so a joining node has the whole membership within one round
//     trip (the snapshot), and every other node sees the joiner at once.
//   * Every heartbeat_ms each node publishes a heartbeat. A member not heard from for
//     member_timeout_ms is dropped (a crashed node); "leave" takes a member out of the ring at
//     once but keeps it reachable (it is handing its timers over); "gone" removes it.
//   * While this node's own NATS connection is down nobody is dropped (silence then says
//     nothing about the others); on reconnect every member's clock restarts and a hello asks
//     for fresh heartbeats.
//   * "settled" is the fingerprint of the ring for which the sender holds no timer it does not
//     own (its moves are done). While some reachable member has not settled on the current
//     ring, earlier rings are kept (history) so that a request can also look where a timer
//     may still be (previous_owners()).
//
// Bad input: anybody may publish on the subject. A message that is not exactly the object
// above (size <= 4 KiB, id and address 1..256 bytes, known type and state, incarnation a
// non-negative integer, settled hex) is counted (skyring_cluster_bad_messages_total), logged
// rate-limited and ignored. Our own id with our incarnation is our own message coming back;
// with another incarnation it is another process using our node id: logged as an error
// (rate-limited), counted (skyring_cluster_id_conflicts_total), ignored. For another member, a
// message of an older incarnation than the one known is ignored; a newer one replaces it.
//
// Metrics: skyring_cluster_members (reachable), skyring_cluster_ring_size,
// skyring_cluster_ring_version, skyring_cluster_ring_changes_total, and the two above.
//
// Threading: everything runs on the engine's executor (the NatsBus posts there); tick() is
// called periodically by the node (every ~100 ms).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "base/clock.h"
#include "base/log.h"
#include "base/metrics.h"
#include "cluster/nats_bus.h"
#include "cluster/ring.h"

namespace skyring::cluster {

struct MembershipOptions {
  std::string cluster = "skyring";
  Member self;
  int64_t heartbeat_ms = 1000;
  int64_t member_timeout_ms = 5000;  // a silent member is dropped after this
  // After the hello, how long to wait for answers before the ring counts as known when no
  // answer comes (alone in the cluster); also the wait before a node with no NATS at all
  // decides it is alone.
  int64_t discovery_ms = 1500;
  // After the first answer to the hello, how long to let the others' answers arrive before the
  // ring counts as known (0: at once).
  int64_t answer_quiet_ms = 300;
  RingParams ring;
  size_t max_history = 4;     // earlier rings kept while moves settle
  size_t max_members = 1024;  // members known at once (self included); more are ignored
};

struct MemberInfo {
  Member member;
  bool leaving = false;
  bool joining = true;       // until it knows the ring: reachable, not in the ring yet
  uint64_t incarnation = 0;  // the sender's start time (us): a restart is a new incarnation
  uint64_t settled = 0;      // ring fingerprint it reports settled on
  int64_t last_seen_us = 0;  // monotonic
  bool self = false;
};

class Membership {
 public:
  Membership(NatsBus& bus, const Clock& clock, MembershipOptions options, Registry& metrics);
  ~Membership();
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  void start();
  void tick();  // heartbeats, expiry, discovery deadline

  // Active members (self included unless leaving). Rebuilt on every change.
  const Ring& ring() const { return ring_; }
  uint64_t ring_version() const { return ring_version_; }  // local count of ring changes
  // Called (on the executor) after every ring change.
  void on_ring_change(std::function<void()> fn) { on_change_ = std::move(fn); }
  // True 300 ms after the first answer to the hello (the others answer within a round trip),
  // or once discovery_ms passed without one: firing and moves may start.
  bool ring_known() const { return ring_known_; }

  // Reachable members, active and leaving, self included.
  std::vector<MemberInfo> members() const;
  const MemberInfo* find(std::string_view id) const;

  // This node stops owning anything: out of every ring at once, still reachable.
  void leave();
  // Last message before exit: everybody forgets this node at once. `handed_over`: since
  // leave() this node stored no new move and its handoff ended with nothing left here, so
  // whatever a move sent to it had stored now lives with the timers' owners.
  void gone(bool handed_over);
  // A member whose "gone" said handed_over (until that id is heard from again; at most
  // max_members remembered): a move to it whose outcome is unknown may go to the new owners.
  bool left_after_handoff(std::string_view id) const;
  void set_settled(uint64_t fingerprint);
  // Every reachable member reports settled on the current ring.
  bool settled_everywhere() const;
  // Where else `timer_id` may still be held: owners in earlier rings (newest first) that are
  // reachable, not self and not the current owner. Empty once everyone has settled.
  std::vector<Member> previous_owners(std::string_view timer_id) const;

 private:
  struct Message;  // one parsed protocol message (membership.cc)

  void handle(std::string_view data);
  void apply(const Message& m, int64_t now_us);
  void on_connection(bool connected);
  void publish(std::string_view type, bool handed_over = false);
  void remember_handed_over(const std::string& id);
  void forget_handed_over(const std::string& id);
  void expire(int64_t now_us);
  void rebuild_ring();
  void maybe_clear_history();
  void become_active(const std::string& why);
  void update_gauges();

  NatsBus& bus_;
  const MembershipOptions options_;
  const std::string subject_;
  MemberInfo self_;
  std::map<std::string, MemberInfo, std::less<>> others_;  // reachable members except self
  std::deque<Ring> history_;                   // earlier rings, newest first, at most max_history
  std::set<std::string> handed_over_;          // left_after_handoff()
  std::deque<std::string> handed_over_order_;  // oldest first, at most max_members
  Ring without_self_;            // the active members but this node: previous_owners() asks it
  int64_t first_answer_us_ = 0;  // monotonic time of the first message from another member
  bool started_ = false;
  bool gone_ = false;
  bool connected_ = false;         // as last reported on the executor (not the bus's live flag)
  int64_t start_us_ = 0;           // monotonic
  int64_t last_heartbeat_us_ = 0;  // monotonic
  // Bus callbacks hold a weak_ptr to this: the bus (and its subscription) may outlive us.
  std::shared_ptr<Membership*> alive_;
  log::Limiter bad_limiter_;
  log::Limiter conflict_limiter_;
  Gauge& members_gauge_;
  Gauge& ring_size_gauge_;
  Gauge& ring_version_gauge_;
  Counter& ring_changes_;
  Counter& bad_messages_;
  Counter& id_conflicts_;

  Ring ring_;
  uint64_t ring_version_ = 0;
  bool ring_known_ = false;
  std::function<void()> on_change_;
};

}  // namespace skyring::cluster
