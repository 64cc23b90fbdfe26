// Ring: consistent hashing of timer ids over the live members (docs/cluster.md, "Ring").
//
// Every member gets `vnodes` points on a 64-bit circle: XXH3-64("<member id>#<i>", seed)
// (base/hash.h) for
// i in [0, vnodes). A timer id hashes to XXH3-64(id, seed); its owner is the member of the first
// point at or after that hash, wrapping around (points that collide are ordered by member id).
// The result depends only on the set of (member id) and the parameters, never on the order in
// which members were seen, so every node with the same membership computes the same owners.
//
// Immutable: a membership change builds a new Ring. Lookups are a binary search over the
// points (members x vnodes entries).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace skyring::cluster {

struct Member {
  std::string id;
  std::string address;  // host:port of its HTTP API (--advertise)
  bool operator==(const Member&) const = default;
};

struct RingParams {
  uint64_t seed = 0x736b7972696e6731ULL;  // "skyring1"
  uint32_t vnodes = 128;
};

class Ring {
 public:
  Ring() = default;  // no members: owner() is nullptr
  // Members are sorted by id; a duplicate id keeps its first entry.
  explicit Ring(std::vector<Member> members, RingParams params = {});

  // The owner of a timer id; nullptr when the ring is empty.
  const Member* owner(std::string_view timer_id) const;
  static uint64_t hash_id(std::string_view timer_id, uint64_t seed);

  // Identical on every node for the same member ids, addresses and parameters; 0 when empty.
  uint64_t fingerprint() const { return fingerprint_; }
  const std::vector<Member>& members() const { return members_; }
  bool contains(std::string_view member_id) const;
  const Member* find(std::string_view member_id) const;
  size_t size() const { return members_.size(); }
  bool empty() const { return members_.empty(); }
  const RingParams& params() const { return params_; }

  struct Point {
    uint64_t hash;
    uint32_t member;  // index into members()
  };
  // Sorted by (hash, member id).
  const std::vector<Point>& points() const { return points_; }

 private:
  std::vector<Member> members_;
  std::vector<Point> points_;
  RingParams params_;
  uint64_t fingerprint_ = 0;
};

}  // namespace skyring::cluster
