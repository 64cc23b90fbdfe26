#include "cluster/ring.h"

#include <algorithm>

#include "base/hash.h"

namespace skyring::cluster {

Ring::Ring(std::vector<Member> members, RingParams params) : params_(params) {
  // Stable sort keeps the first entry of a duplicate id first, so unique() keeps it.
  std::stable_sort(members.begin(), members.end(),
                   [](const Member& a, const Member& b) { return a.id < b.id; });
  members.erase(std::unique(members.begin(), members.end(),
                            [](const Member& a, const Member& b) { return a.id == b.id; }),
                members.end());
  members_ = std::move(members);
  if (members_.empty()) return;

  points_.reserve(members_.size() * params_.vnodes);
  std::string key;
  for (uint32_t m = 0; m < members_.size(); ++m) {
    for (uint32_t i = 0; i < params_.vnodes; ++i) {
      key.assign(members_[m].id);
      key += '#';
      key += std::to_string(i);
      points_.push_back({hash64(key, params_.seed), m});
    }
  }
  // members_ is sorted by id, so the member index orders colliding points by member id.
  std::sort(points_.begin(), points_.end(), [](const Point& a, const Point& b) {
    return a.hash != b.hash ? a.hash < b.hash : a.member < b.member;
  });

  std::string text;
  for (const Member& m : members_) {
    text += m.id;
    text += '\0';
    text += m.address;
    text += '\0';
  }
  text += std::to_string(params_.seed);
  text += '\0';
  text += std::to_string(params_.vnodes);
  fingerprint_ = hash64(text, params_.seed);
  if (fingerprint_ == 0) fingerprint_ = 1;  // 0 means "empty ring"
}

uint64_t Ring::hash_id(std::string_view timer_id, uint64_t seed) {
  return hash64(timer_id, seed);
}

const Member* Ring::owner(std::string_view timer_id) const {
  if (points_.empty()) return nullptr;
  uint64_t h = hash_id(timer_id, params_.seed);
  auto it = std::lower_bound(points_.begin(), points_.end(), h,
                             [](const Point& p, uint64_t v) { return p.hash < v; });
  if (it == points_.end()) it = points_.begin();
  return &members_[it->member];
}

const Member* Ring::find(std::string_view member_id) const {
  auto it = std::lower_bound(members_.begin(), members_.end(), member_id,
                             [](const Member& m, std::string_view id) { return m.id < id; });
  if (it == members_.end() || it->id != member_id) return nullptr;
  return &*it;
}

bool Ring::contains(std::string_view member_id) const {
  return find(member_id) != nullptr;
}

}  // namespace skyring::cluster
