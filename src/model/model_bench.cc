// Costs on the request path: parsing a create body, and the storage codec both ways.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include "model/codec.h"
#include "model/request.h"
#include "model/timer.h"

namespace skyring {
namespace {

constexpr int64_t kNowUs = 1'700'000'000'000'000;

// What a webhook scheduler typically sends.
constexpr char kTypicalBody[] =
    R"({"timeout":6000,"data":{"user":"u-123456","action":"send-reminder","attempt":1},)"
    R"("callback":{"transport":"http","method":"post","uri":"http://hooks.example.com/timer",)"
    R"("headers":{"X-Custom":"v","Authorization":"Bearer 0123456789abcdef"}},)"
    R"("retry":{"attempts":5,"backoff_ms":1000,"max_backoff_ms":60000}})";

TimerRecord typical_record() {
  auto r = parse_timer_request(kTypicalBody, kNowUs);
  if (!r) std::abort();
  r->id = "4f2kQ9xYb1A7";
  return *r;
}

void BM_ParseTimerRequest(benchmark::State& state) {
  for (auto _ : state) {
    auto r = parse_timer_request(kTypicalBody, kNowUs);
    benchmark::DoNotOptimize(r);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * (sizeof(kTypicalBody) - 1));
}
BENCHMARK(BM_ParseTimerRequest);

void BM_EncodeRecord(benchmark::State& state) {
  TimerRecord r = typical_record();
  std::string out;
  for (auto _ : state) {
    encode_record(r, &out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * out.size()));
}
BENCHMARK(BM_EncodeRecord);

void BM_DecodeRecord(benchmark::State& state) {
  std::string bytes = encode_record(typical_record());
  for (auto _ : state) {
    auto r = decode_record(bytes);
    benchmark::DoNotOptimize(r);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes.size()));
}
BENCHMARK(BM_DecodeRecord);

void BM_TimerToJson(benchmark::State& state) {
  TimerRecord r = typical_record();
  for (auto _ : state) {
    std::string j = timer_to_json(r);
    benchmark::DoNotOptimize(j.data());
  }
}
BENCHMARK(BM_TimerToJson);

}  // namespace
}  // namespace skyring

BENCHMARK_MAIN();
