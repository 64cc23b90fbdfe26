#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/api.h"

#include <boost/json.hpp>
#include "base/clock.h"
#include "base/executor.h"
#include "base/manual_executor.h"
#include "base/metrics.h"
#include "delivery/transport.h"
#include "engine/engine_fakes.h"
#include "engine/timer_engine.h"
#include "model/request.h"
#include "storage/group_committer.h"
#include "storage/kv.h"
#include "storage/timer_store.h"

namespace skyring {
namespace {

// Writes each batch to the Kv at once; the completion arrives through the executor, like the
// GroupCommitter's. fail_writes makes every write fail without touching the Kv.
class SyncCommitter final : public Committer {
 public:
  SyncCommitter(Kv& kv, Executor& executor) : kv_(kv), executor_(executor) {}
  Result<void> submit(KvBatch batch, CommitDone done) override {
    Result<void> r =
        fail_writes ? Result<void>(fail(Errc::kIo, "disk on fire")) : kv_.write(batch, true);
    executor_.post([r, done = std::move(done)] { done(r); });
    ++submits;
    return {};
  }
  bool fail_writes = false;
  int submits = 0;

 private:
  Kv& kv_;
  Executor& executor_;
};

// "http" that accepts post/put to http:// uris and keeps every job until the test completes it.
class FakeTransport final : public Transport {
 public:
  std::string_view name() const override { return "http"; }
  Result<void> validate(std::string_view method, std::string_view uri) const override {
    if (method != "post" && method != "put") {
      return fail(Errc::kInvalidArgument, "callback.method must be post or put");
    }
    if (!uri.starts_with("http://")) {
      return fail(Errc::kInvalidArgument, "callback.uri must start with http://");
    }
    return {};
  }
  std::string destination(std::string_view uri) const override { return std::string(uri); }
  void deliver(DeliveryJob job, DeliveryDone done) override {
    jobs.push_back(std::move(job));
    dones.push_back(std::move(done));
  }
  void stop() override {}

  std::vector<DeliveryJob> jobs;
  std::vector<DeliveryDone> dones;
};

constexpr int64_t kStartUs = 1'700'000'000'000'000;
constexpr int64_t kStartMs = kStartUs / 1000;

std::string body(int64_t timeout_ms, std::string_view data = "hello",
                 std::string_view transport = "http", std::string_view method = "post",
                 std::string_view uri = "http://example/hook") {
  return "{\"timeout\":" + std::to_string(timeout_ms) + ",\"data\":\"" + std::string(data) +
         "\",\"callback\":{\"transport\":\"" + std::string(transport) + "\",\"method\":\"" +
         std::string(method) + "\",\"uri\":\"" + std::string(uri) + "\"}}";
}

std::optional<std::string> header(const ApiResponse& r, std::string_view name) {
  for (const auto& [k, v] : r.headers) {
    if (k.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < k.size(); ++i) {
      same = same && std::tolower(static_cast<unsigned char>(k[i])) ==
                         std::tolower(static_cast<unsigned char>(name[i]));
    }
    if (same) return v;
  }
  return std::nullopt;
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

class ApiTest : public ::testing::Test {
 protected:
  ApiTest() {
    auto f = std::make_unique<FakeTransport>();
    transport_ = f.get();
    transports_.add(std::move(f));
    EXPECT_TRUE(store_.open().has_value());
    EXPECT_TRUE(engine_.recover().has_value());
  }

  // Handles one request and drains the executor; the response must have arrived by then.
  ApiResponse call(std::string_view method, std::string_view target, std::string_view req_body = {},
                   std::string_view timer_id = {}) {
    std::optional<ApiResponse> got;
    api_.handle(ApiRequest{method, target, timer_id, req_body},
                [&](ApiResponse r) { got = std::move(r); });
    executor_.run_all();
    EXPECT_TRUE(got.has_value()) << method << " " << target << ": no response";
    return got ? std::move(*got) : ApiResponse{0, "", "", {}};
  }

  std::string create(std::string_view id, int64_t timeout_ms = 60'000,
                     std::string_view data = "hello") {
    ApiResponse r = call("POST", "/timer", body(timeout_ms, data), id);
    EXPECT_EQ(r.status, 201) << r.body;
    return r.body;
  }

  // The uniform error shape of SPEC section 2.
  void expect_error(const ApiResponse& r, int status, std::string_view needle = {}) {
    EXPECT_EQ(r.status, status) << r.body;
    auto reason = header(r, "x-skyring-reason");
    ASSERT_TRUE(reason.has_value()) << "no x-skyring-reason on " << r.status << " " << r.body;
    EXPECT_FALSE(reason->empty());
    EXPECT_EQ(r.content_type, "application/json");
    EXPECT_TRUE(r.body.starts_with("{\"error\":\"")) << r.body;
    EXPECT_TRUE(r.body.ends_with("\"}")) << r.body;
    EXPECT_TRUE(contains(r.body, *reason)) << r.body << " vs " << *reason;
    if (!needle.empty()) {
      EXPECT_TRUE(contains(*reason, needle)) << "'" << *reason << "' lacks '" << needle << "'";
    }
  }

  ManualClock clock_{kStartUs};
  ManualExecutor executor_;
  testing::RecordingWakeup wakeup_;
  std::unique_ptr<Kv> kv_ = make_memory_kv();
  TimerStore store_{*kv_};
  SyncCommitter committer_{*kv_, executor_};
  TransportRegistry transports_;
  FakeTransport* transport_ = nullptr;
  Registry metrics_;
  TimerEngine engine_{clock_,     executor_,   wakeup_,         store_,
                      committer_, transports_, EngineOptions{}, EngineProbe::make(metrics_)};
  Api api_{engine_, transports_, metrics_, clock_, ApiOptions{"node-1", ParseLimits{}}};
};

// ---------------------------------------------------------------------------------------------
// POST /timer

TEST_F(ApiTest, CreateReturns201WithLocationAndId) {
  ApiResponse r = call("POST", "/timer", body(6000));
  ASSERT_EQ(r.status, 201) << r.body;
  auto location = header(r, "Location");
  ASSERT_TRUE(location.has_value());
  ASSERT_TRUE(location->starts_with("/timer/"));
  std::string id = location->substr(7);
  EXPECT_TRUE(valid_timer_id(id)) << id;
  EXPECT_EQ(r.body, "{\"id\":\"" + id + "\"}");
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(call("GET", "/timer/" + id).status, 200);
  // Generated ids are unique.
  ApiResponse second = call("POST", "/timer", body(6000));
  ASSERT_EQ(second.status, 201);
  EXPECT_NE(header(second, "Location"), location);
}

TEST_F(ApiTest, CreateAnswersOnlyOnceDurable) {
  std::optional<ApiResponse> got;
  std::string b = body(1000);
  api_.handle(ApiRequest{"POST", "/timer", "t1", b}, [&](ApiResponse r) { got = std::move(r); });
  EXPECT_FALSE(got.has_value());  // the commit has not completed yet
  EXPECT_TRUE(kv_->get("t/t1").value().has_value());
  executor_.run_all();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, 201);
}

TEST_F(ApiTest, ClientChosenId) {
  ApiResponse r = call("POST", "/timer", body(1000), "order:42.a_b-c");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(header(r, "Location"), "/timer/order:42.a_b-c");
  EXPECT_EQ(r.body, R"({"id":"order:42.a_b-c"})");
  EXPECT_EQ(call("GET", "/timer/order:42.a_b-c").status, 200);
}

TEST_F(ApiTest, InvalidClientIdIs400) {
  for (std::string id :
       {std::string("bad id"), std::string("a/b"), std::string("x?y"), std::string(129, 'a')}) {
    expect_error(call("POST", "/timer", body(1000), id), 400, "x-timer-id");
  }
  EXPECT_EQ(committer_.submits, 0);
}

TEST_F(ApiTest, IdempotentCreate) {
  std::string b = body(1000, "same");
  ApiResponse first = call("POST", "/timer", b, "dup");
  ASSERT_EQ(first.status, 201);
  int submits = committer_.submits;
  ApiResponse again = call("POST", "/timer", b, "dup");
  EXPECT_EQ(again.status, 201);
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(header(again, "Location"), "/timer/dup");
  EXPECT_EQ(committer_.submits, submits);  // nothing created
  expect_error(call("POST", "/timer", body(1000, "other"), "dup"), 409);
  expect_error(call("POST", "/timer", body(1001, "same"), "dup"), 409);
}

TEST_F(ApiTest, IdempotentCreateBeforeTheFirstIsDurable) {
  std::string b = body(1000, "same");
  std::vector<ApiResponse> got;
  for (int i = 0; i < 2; ++i) {
    api_.handle(ApiRequest{"POST", "/timer", "early", b},
                [&](ApiResponse r) { got.push_back(std::move(r)); });
  }
  EXPECT_TRUE(got.empty());  // neither answers before the record is durable
  executor_.run_all();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].status, 201);
  EXPECT_EQ(got[1].status, 201);
  EXPECT_EQ(got[1].body, R"({"id":"early"})");
  EXPECT_EQ(committer_.submits, 1);
}

TEST_F(ApiTest, IdempotentCreateHoldsAfterCompletion) {
  std::string b = body(1000, "same");
  ASSERT_EQ(call("POST", "/timer", b, "done-1").status, 201);
  ASSERT_EQ(call("DELETE", "/timer/done-1").status, 202);
  EXPECT_EQ(call("POST", "/timer", b, "done-1").status, 201);
  expect_error(call("POST", "/timer", body(1000, "other"), "done-1"), 409);
  EXPECT_TRUE(contains(call("GET", "/timer/done-1").body, R"("state":"cancelled")"));
}

TEST_F(ApiTest, CreateWithAt) {
  std::string b = R"({"at":)" + std::to_string(kStartMs + 5000) +
                  R"(,"callback":{"transport":"http","method":"put","uri":"http://x/"}})";
  ApiResponse r = call("POST", "/timer", b, "at-1");
  ASSERT_EQ(r.status, 201) << r.body;
  std::string got = call("GET", "/timer/at-1").body;
  EXPECT_TRUE(contains(got, "\"due\":" + std::to_string(kStartMs + 5000))) << got;
}

TEST_F(ApiTest, BadBodiesAre400NamingTheField) {
  expect_error(call("POST", "/timer", "{not json"), 400, "JSON");
  expect_error(call("POST", "/timer", ""), 400);
  expect_error(call("POST", "/timer", "[]"), 400, "object");
  expect_error(call("POST", "/timer",
                    R"({"callback":{"transport":"http","method":"post","uri":"http://x/"}})"),
               400, "timeout");
  expect_error(call("POST", "/timer", R"({"timeout":"soon"})"), 400, "timeout");
  expect_error(call("POST", "/timer", R"({"timeout":1000})"), 400, "callback");
  expect_error(
      call(
          "POST", "/timer",
          R"({"timeout":1000,"data":5,"callback":{"transport":"http","method":"post","uri":"http://x/"}})"),
      400, "data");
  expect_error(
      call(
          "POST", "/timer",
          R"({"timeout":1000,"callback":{"transport":"http","method":"post","uri":"http://x/"},"retry":{"attempts":0}})"),
      400, "retry.attempts");
  expect_error(call("POST", "/timer", std::string(1000, '[') + std::string(1000, ']')), 400,
               "nested too deeply");
  EXPECT_EQ(committer_.submits, 0);
}

TEST_F(ApiTest, UnknownTransportIs400) {
  ApiResponse r = call("POST", "/timer", body(1000, "x", "smtp"));
  expect_error(r, 400, "callback.transport");
  EXPECT_TRUE(contains(r.body, "smtp")) << r.body;
}

TEST_F(ApiTest, TransportValidationIs400) {
  expect_error(call("POST", "/timer", body(1000, "x", "http", "delete")), 400, "callback.method");
  expect_error(call("POST", "/timer", body(1000, "x", "http", "post", "ftp://x/")), 400,
               "callback.uri");
  expect_error(call("PUT", "/timer/t", body(1000, "x", "http", "get")), 400, "callback.method");
  // The transport sees the lower-cased method.
  EXPECT_EQ(call("POST", "/timer", body(1000, "x", "HTTP", "PUT")).status, 201);
  EXPECT_EQ(committer_.submits, 1);
}

// ---------------------------------------------------------------------------------------------
// GET /timer/:id

TEST_F(ApiTest, GetReturnsTheTimer) {
  ASSERT_EQ(call("POST", "/timer", body(6000, "payload"), "g1").status, 201);
  ApiResponse r = call("GET", "/timer/g1");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/json");
  const std::string& j = r.body;
  EXPECT_TRUE(contains(j, R"("id":"g1")")) << j;
  EXPECT_TRUE(contains(j, R"("state":"pending")")) << j;
  EXPECT_TRUE(contains(j, "\"created\":" + std::to_string(kStartMs))) << j;
  EXPECT_TRUE(contains(j, "\"due\":" + std::to_string(kStartMs + 6000))) << j;
  EXPECT_TRUE(contains(j, R"("timeout":6000)")) << j;
  EXPECT_TRUE(contains(j, R"("attempts":0)")) << j;
  EXPECT_TRUE(
      contains(j, R"("callback":{"transport":"http","method":"post","uri":"http://example/hook"})"))
      << j;
  EXPECT_TRUE(contains(j, R"("data":"payload")")) << j;
  EXPECT_TRUE(contains(j, R"("last_error":null)")) << j;
}

TEST_F(ApiTest, GetUnknownIs404) {
  expect_error(call("GET", "/timer/nope"), 404);
  expect_error(call("GET", "/timer/bad%20id"), 404);
  expect_error(call("GET", "/timer/" + std::string(200, 'x')), 404);
}

// ---------------------------------------------------------------------------------------------
// PUT /timer/:id

TEST_F(ApiTest, ReplaceReturns200AndRestartsTheCountdown) {
  ASSERT_EQ(call("POST", "/timer", body(6000, "old"), "r1").status, 201);
  clock_.advance_ms(4000);
  ApiResponse r = call("PUT", "/timer/r1", body(5000, "new"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, R"({"id":"r1"})");
  std::string j = call("GET", "/timer/r1").body;
  EXPECT_TRUE(contains(j, R"("data":"new")")) << j;
  EXPECT_TRUE(contains(j, "\"due\":" + std::to_string(kStartMs + 4000 + 5000))) << j;
  EXPECT_TRUE(contains(j, R"("timeout":5000)")) << j;
}

TEST_F(ApiTest, ReplaceUnknownIs404) {
  expect_error(call("PUT", "/timer/none", body(1000)), 404);
  EXPECT_EQ(committer_.submits, 0);
}

TEST_F(ApiTest, ReplaceCompletedIs404) {
  ASSERT_EQ(call("POST", "/timer", body(1000), "c1").status, 201);
  ASSERT_EQ(call("DELETE", "/timer/c1").status, 202);
  expect_error(call("PUT", "/timer/c1", body(1000)), 404);
}

TEST_F(ApiTest, ReplaceWithBadBodyIs400) {
  ASSERT_EQ(call("POST", "/timer", body(1000), "b1").status, 201);
  expect_error(call("PUT", "/timer/b1", R"({"timeout":0})"), 400, "timeout");
  EXPECT_TRUE(contains(call("GET", "/timer/b1").body, R"("timeout":1000)"));
}

// ---------------------------------------------------------------------------------------------
// DELETE /timer/:id

TEST_F(ApiTest, DeleteReturns202ThenIs404) {
  ASSERT_EQ(call("POST", "/timer", body(1000), "d1").status, 201);
  ApiResponse r = call("DELETE", "/timer/d1");
  EXPECT_EQ(r.status, 202) << r.body;
  expect_error(call("DELETE", "/timer/d1"), 404);
  expect_error(call("DELETE", "/timer/never"), 404);
  // Still readable for the retention window.
  ApiResponse got = call("GET", "/timer/d1");
  EXPECT_EQ(got.status, 200);
  EXPECT_TRUE(contains(got.body, R"("state":"cancelled")")) << got.body;
}

TEST_F(ApiTest, InFlightAttemptIs409ThenCompletes) {
  ASSERT_EQ(call("POST", "/timer", body(1000), "f1").status, 201);
  clock_.advance_ms(1000);
  engine_.tick();
  executor_.run_all();
  ASSERT_EQ(transport_->jobs.size(), 1u);
  EXPECT_EQ(transport_->jobs[0].timer_id, "f1");
  EXPECT_TRUE(contains(call("GET", "/timer/f1").body, R"("state":"executing")"));
  expect_error(call("DELETE", "/timer/f1"), 409);
  expect_error(call("PUT", "/timer/f1", body(1000)), 409);

  transport_->dones[0](DeliveryResult{Outcome::kSuccess, 200, ""});
  executor_.run_all();
  ApiResponse got = call("GET", "/timer/f1");
  EXPECT_TRUE(contains(got.body, R"("state":"succeeded")")) << got.body;
  EXPECT_TRUE(contains(got.body, R"("attempts":1)")) << got.body;
  expect_error(call("DELETE", "/timer/f1"), 404);
  ApiResponse list = call("GET", "/timer?state=succeeded");
  EXPECT_TRUE(contains(list.body, R"("id":"f1")")) << list.body;
}

// ---------------------------------------------------------------------------------------------
// GET /timer?state=...

TEST_F(ApiTest, ListPagesWithCursor) {
  for (const char* id : {"p3", "p1", "p5", "p2", "p4"}) create(id);
  ApiResponse r = call("GET", "/timer?state=pending&limit=2");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(r.body.starts_with(R"({"timers":[{"id":"p1")")) << r.body;
  EXPECT_TRUE(contains(r.body, R"({"id":"p2")")) << r.body;
  EXPECT_FALSE(contains(r.body, R"("id":"p3")")) << r.body;
  EXPECT_TRUE(r.body.ends_with(R"(],"next_cursor":"p2"})")) << r.body;

  r = call("GET", "/timer?state=pending&limit=2&cursor=p2");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(contains(r.body, R"("id":"p3")")) << r.body;
  EXPECT_TRUE(contains(r.body, R"("id":"p4")")) << r.body;
  EXPECT_TRUE(r.body.ends_with(R"("next_cursor":"p4"})")) << r.body;

  r = call("GET", "/timer?cursor=p4&limit=2&state=pending");  // any parameter order
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(contains(r.body, R"("id":"p5")")) << r.body;
  EXPECT_TRUE(r.body.ends_with(R"("next_cursor":null})")) << r.body;

  // Percent-encoded cursor.
  r = call("GET", "/timer?state=pending&limit=1&cursor=p%34");
  EXPECT_TRUE(contains(r.body, R"("id":"p5")")) << r.body;
}

TEST_F(ApiTest, ListPerState) {
  create("a");
  create("b");
  ASSERT_EQ(call("DELETE", "/timer/a").status, 202);
  ApiResponse cancelled = call("GET", "/timer?state=cancelled");
  ASSERT_EQ(cancelled.status, 200);
  EXPECT_TRUE(contains(cancelled.body, R"("id":"a")")) << cancelled.body;
  EXPECT_FALSE(contains(cancelled.body, R"("id":"b")")) << cancelled.body;
  ApiResponse pending = call("GET", "/timer?state=pending");
  EXPECT_TRUE(contains(pending.body, R"("id":"b")")) << pending.body;
  EXPECT_FALSE(contains(pending.body, R"("id":"a")")) << pending.body;
  EXPECT_EQ(call("GET", "/timer?state=failed").body, R"({"timers":[],"next_cursor":null})");
  EXPECT_EQ(call("GET", "/timer/?state=failed").status, 200);
}

TEST_F(ApiTest, ListBadQueryIs400) {
  expect_error(call("GET", "/timer?state=bogus"), 400, "state");
  expect_error(call("GET", "/timer?state="), 400, "state");
  expect_error(call("GET", "/timer?state=Pending"), 400, "state");
  expect_error(call("GET", "/timer?state=pending&limit=0"), 400, "limit");
  expect_error(call("GET", "/timer?state=pending&limit=5000"), 400, "limit");
  expect_error(call("GET", "/timer?state=pending&limit=1001"), 400, "limit");
  expect_error(call("GET", "/timer?state=pending&limit=-1"), 400, "limit");
  expect_error(call("GET", "/timer?state=pending&limit=ten"), 400, "limit");
  expect_error(call("GET", "/timer?state=pending&limit="), 400, "limit");
  expect_error(call("GET", "/timer"), 400, "state");
  expect_error(call("GET", "/timer?limit=10"), 400, "state");
  expect_error(call("GET", "/timer?state=pending&cursor=%zz"), 400, "cursor");
  EXPECT_EQ(call("GET", "/timer?state=pending&limit=1000").status, 200);
  EXPECT_EQ(call("GET", "/timer?state=pending&limit=1").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Operations

TEST_F(ApiTest, Ping) {
  ApiResponse r = call("GET", "/ping");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(call("HEAD", "/ping").status, 200);
}

TEST_F(ApiTest, HealthOk) {
  create("h1");
  ApiResponse r = call("GET", "/health");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_TRUE(contains(r.body, R"("status":"ok")")) << r.body;
  EXPECT_TRUE(contains(r.body, R"("node":"node-1")")) << r.body;
  EXPECT_TRUE(contains(r.body, R"("pending":1)")) << r.body;
}

TEST_F(ApiTest, StorageFailureMakesHealth503) {
  committer_.fail_writes = true;
  expect_error(call("POST", "/timer", body(1000)), 503);
  ApiResponse h = call("GET", "/health");
  EXPECT_EQ(h.status, 503) << h.body;
  EXPECT_TRUE(header(h, "x-skyring-reason").has_value());
  EXPECT_FALSE(contains(h.body, R"("status":"ok")")) << h.body;
  EXPECT_TRUE(contains(h.body, "disk on fire")) << h.body;
  // Sticky: the engine refuses work from now on.
  committer_.fail_writes = false;
  ApiResponse again = call("POST", "/timer", body(1000));
  expect_error(again, 503);
  EXPECT_TRUE(header(again, "Retry-After").has_value());
}

// Every 4xx/5xx carries a JSON body {"error":"<message>"} (SPEC section 2), /health's 503
// too: its health object keeps the "error" field next to the status fields.
TEST_F(ApiTest, Health503HasTheErrorBody) {
  committer_.fail_writes = true;
  call("POST", "/timer", body(1000));
  ApiResponse h = call("GET", "/health");
  EXPECT_EQ(h.status, 503);
  EXPECT_TRUE(contains(h.body, R"("error":")")) << h.body;
}

// A stored record that fails its checksum: a 500 (retrying will not help, so no Retry-After),
// the record is quarantined, and /health stays 200 but says "degraded".
TEST_F(ApiTest, CorruptRecordIs500AndHealthDegraded) {
  create("bad");
  ASSERT_TRUE(kv_->write({KvOp{KvOp::Kind::kPut, "t/bad", "garbage"}}, true).has_value());
  ApiResponse r = call("GET", "/timer/bad");
  expect_error(r, 500, "corrupt");
  EXPECT_FALSE(header(r, "Retry-After").has_value());
  expect_error(call("DELETE", "/timer/bad"), 500);
  ApiResponse h = call("GET", "/health");
  EXPECT_EQ(h.status, 200) << h.body;
  EXPECT_TRUE(contains(h.body, R"("status":"degraded")")) << h.body;
  EXPECT_TRUE(contains(h.body, R"("quarantined":1)")) << h.body;
  // The node keeps working.
  create("good");
}

// An error message that quotes client bytes which are not UTF-8 (a path, a method) still
// gives a valid JSON body: such bytes become U+FFFD (found by the http_request fuzzer).
TEST_F(ApiTest, ErrorBodyIsValidJsonForBytesThatAreNotUtf8) {
  ApiResponse r = call("GET", "/no\xff\xc3(");
  EXPECT_EQ(r.status, 404);
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(r.body, ec);
  ASSERT_FALSE(ec) << r.body;
  EXPECT_TRUE(contains(v.at("error").as_string(), "/no\xef\xbf\xbd\xef\xbf\xbd(")) << r.body;
}

TEST_F(ApiTest, Metrics) {
  create("m1");
  ApiResponse r = call("GET", "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.content_type.starts_with("text/plain")) << r.content_type;
  EXPECT_TRUE(contains(r.body, "# TYPE skyring_timers_created_total counter")) << r.body;
  EXPECT_TRUE(contains(r.body, "skyring_timers_created_total 1\n")) << r.body;
  EXPECT_TRUE(contains(r.body, "skyring_http_request_duration_seconds_count")) << r.body;
}

TEST_F(ApiTest, UnknownRouteIs404) {
  expect_error(call("GET", "/"), 404);
  expect_error(call("GET", "/nope"), 404);
  expect_error(call("GET", "/timers"), 404);
  expect_error(call("POST", "/timerx"), 404);
  expect_error(call("GET", "/ping/extra"), 404);
}

TEST_F(ApiTest, WrongMethodIs405WithAllow) {
  struct Case {
    const char* method;
    const char* target;
    const char* allow;
  };
  for (const Case& c : {Case{"PATCH", "/timer", "GET, POST"}, Case{"DELETE", "/timer", "GET, POST"},
                        Case{"POST", "/timer/x", "GET, PUT, DELETE"},
                        Case{"PATCH", "/timer/x", "GET, PUT, DELETE"}, Case{"POST", "/ping", "GET"},
                        Case{"DELETE", "/health", "GET"}, Case{"PUT", "/metrics", "GET"}}) {
    SCOPED_TRACE(std::string(c.method) + " " + c.target);
    ApiResponse r = call(c.method, c.target);
    expect_error(r, 405);
    EXPECT_EQ(header(r, "Allow"), c.allow);
  }
}

TEST_F(ApiTest, ErrorShape) {
  ApiResponse r = Api::error(400, "bad \"thing\"\r\nnext");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, R"({"error":"bad \"thing\"\r\nnext"})");
  EXPECT_EQ(header(r, "x-skyring-reason"), "bad \"thing\"  next");  // no line breaks in headers
  EXPECT_EQ(header(Api::error(503, "busy"), "Retry-After"), "1");
  EXPECT_EQ(Api::status_for(Errc::kInvalidArgument), 400);
  EXPECT_EQ(Api::status_for(Errc::kNotFound), 404);
  EXPECT_EQ(Api::status_for(Errc::kConflict), 409);
  EXPECT_EQ(Api::status_for(Errc::kTooLarge), 413);
  EXPECT_EQ(Api::status_for(Errc::kOverloaded), 503);
  EXPECT_EQ(Api::status_for(Errc::kUnavailable), 503);
  EXPECT_EQ(Api::status_for(Errc::kCorruption), 500);
  EXPECT_EQ(Api::status_for(Errc::kIo), 500);
}

// x-skyring-reason is at most 256 bytes, cut on a UTF-8 character boundary; the JSON body keeps
// the whole message.
TEST_F(ApiTest, ReasonHeaderIsCappedOnACharacterBoundary) {
  std::string ascii(1000, 'a');
  ApiResponse r = Api::error(400, ascii);
  EXPECT_EQ(header(r, "x-skyring-reason"), std::string(256, 'a'));
  EXPECT_TRUE(contains(r.body, ascii));

  // "é" is 2 bytes: 255 ASCII bytes then "é" puts byte 256 inside the character.
  std::string split = std::string(255, 'b') + "\xc3\xa9" + std::string(100, 'c');
  EXPECT_EQ(header(Api::error(400, split), "x-skyring-reason"), std::string(255, 'b'));
  // A 4-byte character across the cut: 254 bytes + U+1F600.
  std::string emoji = std::string(254, 'd') + "\xf0\x9f\x98\x80" + "tail";
  EXPECT_EQ(header(Api::error(400, emoji), "x-skyring-reason"), std::string(254, 'd'));
  // A character that ends exactly at the cut is kept.
  std::string exact = std::string(254, 'e') + "\xc3\xa9" + "more";
  EXPECT_EQ(header(Api::error(400, exact), "x-skyring-reason"), std::string(254, 'e') + "\xc3\xa9");
  // Short messages are untouched; control characters become spaces.
  EXPECT_EQ(header(Api::error(400, "x\x01y\x7fz"), "x-skyring-reason"), "x y z");
  EXPECT_EQ(header(Api::error(404, std::string(256, 'f')), "x-skyring-reason")->size(), 256u);
}

// Without a router (standalone) the cluster fields of a request change nothing: no routing,
// no cluster routes, no "cluster" in /health.
TEST_F(ApiTest, StandaloneIgnoresClusterFields) {
  auto routed = [&](std::string_view method, std::string_view target, std::string_view b = {}) {
    ApiRequest req{method, target, {}, b};
    req.content_type = "application/json";
    req.cluster = "other";
    req.hops = kMaxHopsHeaderValue;
    req.fallback = true;
    std::optional<ApiResponse> got;
    api_.handle(req, [&](ApiResponse r) { got = std::move(r); });
    executor_.run_all();
    EXPECT_TRUE(got.has_value());
    return got ? std::move(*got) : ApiResponse{};
  };
  ApiResponse created = routed("POST", "/timer", body(60'000));
  EXPECT_EQ(created.status, 201) << created.body;
  auto id = boost::json::parse(created.body).at("id").as_string();
  EXPECT_EQ(routed("GET", "/timer/" + std::string(id)).status, 200);
  expect_error(routed("GET", "/cluster"), 404);
  expect_error(routed("POST", "/cluster/moves", "[]"), 404);
  EXPECT_FALSE(contains(routed("GET", "/health").body, "\"cluster\""));
}

}  // namespace
}  // namespace skyring
