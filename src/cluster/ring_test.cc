#include "cluster/ring.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace skyring::cluster {
namespace {

std::vector<Member> make_members(int n) {
  std::vector<Member> out;
  for (int i = 1; i <= n; ++i) {
    out.push_back({"node-" + std::to_string(i), "10.0.0." + std::to_string(i) + ":8080"});
  }
  return out;
}

// Fixed seed: the tests are deterministic. Ids look like the engine's generated ones.
std::vector<std::string> random_ids(size_t n, uint64_t seed = 42) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> ids;
  ids.reserve(n);
  char buf[17];
  for (size_t i = 0; i < n; ++i) {
    snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
    ids.emplace_back(buf);
  }
  return ids;
}

std::map<std::string, size_t> shares(const Ring& ring, const std::vector<std::string>& ids) {
  std::map<std::string, size_t> count;
  for (const auto& id : ids) ++count[ring.owner(id)->id];
  return count;
}

TEST(Ring, EmptyRingHasNoOwner) {
  Ring ring;
  EXPECT_EQ(ring.owner("abc"), nullptr);
  EXPECT_EQ(ring.fingerprint(), 0u);
  EXPECT_TRUE(ring.empty());
  Ring from_nothing(std::vector<Member>{});
  EXPECT_EQ(from_nothing.owner("abc"), nullptr);
  EXPECT_EQ(from_nothing.fingerprint(), 0u);
}

TEST(Ring, SingleMemberOwnsEverything) {
  Ring ring(make_members(1));
  for (const auto& id : random_ids(1000)) EXPECT_EQ(ring.owner(id)->id, "node-1");
  EXPECT_NE(ring.fingerprint(), 0u);
}

TEST(Ring, DeterministicWhateverTheOrder) {
  auto members = make_members(5);
  Ring a(members);
  std::mt19937 rng(7);
  std::shuffle(members.begin(), members.end(), rng);
  Ring b(members);
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  EXPECT_EQ(a.members(), b.members());
  for (const auto& id : random_ids(100'000)) ASSERT_EQ(a.owner(id)->id, b.owner(id)->id) << id;
}

TEST(Ring, PointsSortedAndComplete) {
  Ring ring(make_members(3));
  ASSERT_EQ(ring.points().size(), 3u * ring.params().vnodes);
  for (size_t i = 1; i < ring.points().size(); ++i) {
    const auto& p = ring.points()[i - 1];
    const auto& q = ring.points()[i];
    ASSERT_TRUE(p.hash < q.hash || (p.hash == q.hash && p.member <= q.member));
  }
}

TEST(Ring, FingerprintDependsOnIdsAddressesAndParams) {
  auto members = make_members(3);
  Ring base(members);
  auto moved = members;
  moved[1].address = "10.0.0.9:8080";
  EXPECT_NE(Ring(moved).fingerprint(), base.fingerprint());
  EXPECT_NE(Ring(make_members(4)).fingerprint(), base.fingerprint());
  RingParams other_seed;
  other_seed.seed = 1;
  EXPECT_NE(Ring(members, other_seed).fingerprint(), base.fingerprint());
  RingParams other_vnodes;
  other_vnodes.vnodes = 64;
  EXPECT_NE(Ring(members, other_vnodes).fingerprint(), base.fingerprint());
}

TEST(Ring, DuplicateIdsKeepTheFirstEntry) {
  std::vector<Member> members = {{"b", "b1"}, {"a", "a1"}, {"b", "b2"}, {"a", "a2"}};
  Ring ring(members);
  ASSERT_EQ(ring.size(), 2u);
  EXPECT_EQ(ring.members()[0], (Member{"a", "a1"}));
  EXPECT_EQ(ring.members()[1], (Member{"b", "b1"}));
  EXPECT_EQ(ring.points().size(), 2u * ring.params().vnodes);
  EXPECT_EQ(ring.fingerprint(), Ring({{"a", "a1"}, {"b", "b1"}}).fingerprint());
  EXPECT_TRUE(ring.contains("a"));
  EXPECT_FALSE(ring.contains("c"));
  EXPECT_EQ(ring.find("b")->address, "b1");
  EXPECT_EQ(ring.find("c"), nullptr);
}

TEST(Ring, Balanced) {
  auto ids = random_ids(100'000);
  for (int n = 3; n <= 5; ++n) {
    Ring ring(make_members(n));
    auto count = shares(ring, ids);
    ASSERT_EQ(count.size(), static_cast<size_t>(n));
    for (const auto& [member, c] : count) {
      double share = static_cast<double>(c) / ids.size();
      EXPECT_NEAR(share, 1.0 / n, 0.05) << n << " members: " << member;
    }
  }
}

TEST(Ring, AddingAMemberMovesOnlyItsShare) {
  auto ids = random_ids(100'000);
  Ring three(make_members(3));
  Ring four(make_members(4));
  size_t moved = 0;
  for (const auto& id : ids) {
    const Member* before = three.owner(id);
    const Member* after = four.owner(id);
    if (before->id != after->id) {
      ++moved;
      ASSERT_EQ(after->id, "node-4") << id;
    }
  }
  EXPECT_NEAR(static_cast<double>(moved) / ids.size(), 0.25, 0.05);
}

TEST(Ring, RemovingAMemberMovesOnlyItsIds) {
  auto ids = random_ids(100'000);
  Ring four(make_members(4));
  auto members = make_members(4);
  members.erase(members.begin() + 1);  // node-2
  Ring three(members);
  for (const auto& id : ids) {
    const Member* before = four.owner(id);
    const Member* after = three.owner(id);
    if (before->id != after->id) {
      ASSERT_EQ(before->id, "node-2") << id;
    }
    ASSERT_NE(after->id, "node-2");
  }
}

}  // namespace
}  // namespace skyring::cluster
