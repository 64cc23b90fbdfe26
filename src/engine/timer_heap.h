// TimerHeap: an indexed binary min-heap of timers by next attempt time.
//
// Each element knows its own position (Slot::heap_index), so cancel and reschedule are
// O(log n) without a search, and nothing is left behind as garbage: memory stays 8 bytes per
// pending timer on top of the Slot. Elements are not owned; the engine's map owns them and
// their addresses are stable (std::unordered_map nodes).
#pragma once

#include <cstdint>
#include <vector>

#include "base/result.h"

namespace skyring {

struct HeapSlot {
  static constexpr uint32_t kNotQueued = UINT32_MAX;
  int64_t next_us = 0;
  uint32_t heap_index = kNotQueued;
};

template <typename T>  // T derives from HeapSlot
class TimerHeap {
 public:
  bool empty() const { return v_.empty(); }
  size_t size() const { return v_.size(); }
  T* top() const { return v_.front(); }

  void push(T* t) {
    SKYRING_ASSERT(t->heap_index == HeapSlot::kNotQueued, "timer queued twice");
    t->heap_index = static_cast<uint32_t>(v_.size());
    v_.push_back(t);
    up(t->heap_index);
  }

  // Bulk load: append without ordering, then heapify() once (O(n) instead of O(n log n)).
  void append_unordered(T* t) {
    SKYRING_ASSERT(t->heap_index == HeapSlot::kNotQueued, "timer queued twice");
    t->heap_index = static_cast<uint32_t>(v_.size());
    v_.push_back(t);
  }
  void heapify() {
    for (size_t i = v_.size() / 2; i-- > 0;) down(static_cast<uint32_t>(i));
  }

  T* pop() {
    T* t = v_.front();
    remove(t);
    return t;
  }

  void remove(T* t) {
    uint32_t i = t->heap_index;
    SKYRING_ASSERT(i < v_.size() && v_[i] == t, "timer not in heap");
    uint32_t last = static_cast<uint32_t>(v_.size() - 1);
    if (i != last) {
      place(i, v_[last]);
      v_.pop_back();
      if (!up(i)) down(i);
    } else {
      v_.pop_back();
    }
    t->heap_index = HeapSlot::kNotQueued;
  }

  bool contains(const T* t) const { return t->heap_index != HeapSlot::kNotQueued; }
  void reserve(size_t n) { v_.reserve(n); }

 private:
  static bool less(const T* a, const T* b) { return a->next_us < b->next_us; }
  void place(uint32_t i, T* t) {
    v_[i] = t;
    t->heap_index = i;
  }
  bool up(uint32_t i) {
    T* t = v_[i];
    uint32_t start = i;
    while (i > 0) {
      uint32_t parent = (i - 1) / 2;
      if (!less(t, v_[parent])) break;
      place(i, v_[parent]);
      i = parent;
    }
    place(i, t);
    return i != start;
  }
  void down(uint32_t i) {
    T* t = v_[i];
    uint32_t n = static_cast<uint32_t>(v_.size());
    for (;;) {
      uint32_t c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && less(v_[c + 1], v_[c])) ++c;
      if (!less(v_[c], t)) break;
      place(i, v_[c]);
      i = c;
    }
    place(i, t);
  }

  std::vector<T*> v_;
};

}  // namespace skyring
