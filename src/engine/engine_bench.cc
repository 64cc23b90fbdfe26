// Micro-benchmarks of the engine's hot paths: create (insert), cancel, expire (tick + attempt
// start + outcome). Storage is the in-memory Kv with a committer that applies writes at once,
// so the figures are engine + codec + index cost, not fsync.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include "engine/engine_fakes.h"
#include "engine/timer_engine.h"
#include "engine/timer_heap.h"
#include "model/request.h"

namespace skyring {
namespace {

using testing::HeldCommitter;
using testing::HeldTransport;
using testing::ManualExecutor;
using testing::RecordingWakeup;

struct Bench {
  Bench() {
    auto t = std::make_unique<HeldTransport>();
    transport = t.get();
    registry.add(std::move(t));
    EngineOptions o;
    o.max_inflight = 1 << 20;
    o.max_inflight_per_destination = 1 << 20;
    o.max_unsettled = 1 << 22;
    engine = std::make_unique<TimerEngine>(clock, ex, wake, store, committer, registry, o);
    auto body = std::string(
        R"({"timeout":60000,"data":"hello world","callback":{"transport":"http","method":"post","uri":"http://127.0.0.1:8080/hook"}})");
    proto = *parse_timer_request(body, clock.now_us());
  }
  void settle() {
    while (committer.held() > 0 || ex.run_all() > 0) committer.complete_all();
  }
  TimerRecord make(int64_t timeout_ms, std::string id) {
    TimerRecord r = proto;
    r.id = std::move(id);
    r.created_us = clock.now_us();
    r.due_us = r.next_us = r.created_us + timeout_ms * 1000;
    return r;
  }
  ManualClock clock;
  ManualExecutor ex;
  RecordingWakeup wake;
  std::unique_ptr<Kv> kv = make_memory_kv();
  TimerStore store{*kv};
  HeldCommitter committer{*kv, ex};
  TransportRegistry registry;
  HeldTransport* transport;
  std::unique_ptr<TimerEngine> engine;
  TimerRecord proto;
};

void BM_HeapPushPop(benchmark::State& state) {
  struct Item : HeapSlot {};
  std::vector<Item> items(static_cast<size_t>(state.range(0)));
  uint64_t x = 88172645463325252ULL;
  for (auto& it : items) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    it.next_us = static_cast<int64_t>(x % 1'000'000'000);
  }
  TimerHeap<Item> h;
  for (auto _ : state) {
    for (auto& it : items) h.push(&it);
    while (!h.empty()) benchmark::DoNotOptimize(h.pop());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_HeapPushPop)->Arg(1000)->Arg(1'000'000);

void BM_EngineCreate(benchmark::State& state) {
  Bench b;
  uint64_t n = 0;
  for (auto _ : state) {
    b.engine->create(b.make(60'000 + static_cast<int64_t>(n % 1000), fmt::format("c{}", n)),
                     [](Result<CreateResult>) {});
    if (++n % 256 == 0) b.settle();
  }
  b.settle();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EngineCreate);

void BM_EngineCancel(benchmark::State& state) {
  Bench b;
  constexpr int kN = 200'000;
  for (int i = 0; i < kN; ++i)
    b.engine->create(b.make(60'000 + i, fmt::format("x{}", i)), [](Result<CreateResult>) {});
  b.settle();
  int i = 0;
  for (auto _ : state) {
    if (i == kN) {
      state.PauseTiming();
      for (int j = 0; j < kN; ++j)
        b.engine->create(b.make(60'000 + j, fmt::format("x{}", j)), [](Result<CreateResult>) {});
      b.settle();
      i = 0;
      state.ResumeTiming();
    }
    b.engine->cancel(fmt::format("x{}", i++), [](Result<void>) {});
    if (i % 256 == 0) b.settle();
  }
  b.settle();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EngineCancel);

// A batch of due timers: tick starts every attempt, each succeeds.
void BM_EngineExpire(benchmark::State& state) {
  Bench b;
  const int batch = static_cast<int>(state.range(0));
  uint64_t n = 0;
  for (auto _ : state) {
    state.PauseTiming();
    b.transport->attempts.clear();
    for (int i = 0; i < batch; ++i)
      b.engine->create(b.make(1, fmt::format("e{}", n++)), [](Result<CreateResult>) {});
    b.settle();
    b.clock.advance_ms(2);
    state.ResumeTiming();
    b.engine->tick();
    b.settle();
    for (size_t i = 0; i < b.transport->attempts.size(); ++i)
      b.transport->complete(i, Outcome::kSuccess);
    b.settle();
  }
  state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(BM_EngineExpire)->Arg(1000);

}  // namespace
}  // namespace skyring

BENCHMARK_MAIN();
