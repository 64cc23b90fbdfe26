#include "engine/timer_heap.h"

#include <algorithm>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace skyring {
namespace {

struct Item : HeapSlot {
  int id = 0;
};

TEST(TimerHeap, PopsInDueOrder) {
  std::vector<Item> items(1000);
  std::mt19937_64 rng(1);
  TimerHeap<Item> h;
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].next_us = static_cast<int64_t>(rng() % 100000);
    items[i].id = static_cast<int>(i);
    h.push(&items[i]);
  }
  int64_t last = -1;
  while (!h.empty()) {
    Item* t = h.pop();
    EXPECT_GE(t->next_us, last);
    EXPECT_FALSE(h.contains(t));
    last = t->next_us;
  }
}

TEST(TimerHeap, RemoveFromAnywhereKeepsOrder) {
  std::vector<Item> items(5000);
  std::mt19937_64 rng(2);
  TimerHeap<Item> h;
  for (auto& it : items) {
    it.next_us = static_cast<int64_t>(rng() % 1000);
    h.push(&it);
  }
  for (size_t i = 0; i < items.size(); i += 3) h.remove(&items[i]);
  std::vector<int64_t> got;
  while (!h.empty()) got.push_back(h.pop()->next_us);
  EXPECT_EQ(got.size(), items.size() - (items.size() + 2) / 3);
  EXPECT_TRUE(std::is_sorted(got.begin(), got.end()));
}

TEST(TimerHeap, BulkLoadThenHeapify) {
  std::vector<Item> items(10000);
  std::mt19937_64 rng(4);
  TimerHeap<Item> h;
  for (auto& it : items) {
    it.next_us = static_cast<int64_t>(rng() % 5000);
    h.append_unordered(&it);
  }
  h.heapify();
  h.remove(&items[17]);
  int64_t last = -1;
  size_t n = 0;
  while (!h.empty()) {
    Item* t = h.pop();
    ASSERT_GE(t->next_us, last);
    last = t->next_us;
    ++n;
  }
  EXPECT_EQ(n, items.size() - 1);
}

// Millions of timers: two million inserts, one million cancels, the rest expire in order.
TEST(TimerHeap, MillionsOfInsertsAndCancels) {
  constexpr size_t kN = 2'000'000;
  std::vector<Item> items(kN);
  std::mt19937_64 rng(3);
  TimerHeap<Item> h;
  h.reserve(kN);
  for (auto& it : items) {
    it.next_us = static_cast<int64_t>(rng() % 1'000'000'000);
    h.push(&it);
  }
  for (size_t i = 0; i < kN; i += 2) h.remove(&items[i]);
  ASSERT_EQ(h.size(), kN / 2);
  int64_t last = -1;
  size_t popped = 0;
  while (!h.empty()) {
    Item* t = h.pop();
    ASSERT_GE(t->next_us, last);
    last = t->next_us;
    ++popped;
  }
  EXPECT_EQ(popped, kN / 2);
}

}  // namespace
}  // namespace skyring
