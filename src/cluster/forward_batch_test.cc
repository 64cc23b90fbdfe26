#include "cluster/forward_batch.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/manual_executor.h"
#include "cluster/http_server_for_tests.h"

namespace skyring::cluster {
namespace {

using skyring::testing::HttpServerForTests;
using skyring::testing::RefusingPort;
using skyring::testing::test_http_answer;
using skyring::testing::TestHttpAnswer;
using skyring::testing::TestHttpRequest;
using Kind = PeerResponse::Kind;
using Clock_ = std::chrono::steady_clock;

constexpr std::chrono::seconds kDeadline{10};

PeerRequest request(const std::string& address, const std::string& target, std::string body = "") {
  PeerRequest r;
  r.address = address;
  r.method = "POST";
  r.target = target;
  r.headers = {{"Content-Type", "application/json"},
               {"x-timer-id", "id-" + target.substr(target.rfind('/') + 1)},
               {"x-skyring-hops", "1"}};
  r.body = std::move(body);
  r.timeout_ms = 10'000;
  return r;
}

// The batch a batcher would send for these requests (through the public codec: a batch of
// the plain requests' encodings).
std::string batch_of(const std::vector<PeerRequest>& rs) {
  // Built by hand from the documented format, so the test checks the format, not the code.
  auto u32 = [](std::string& out, uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  auto str = [&](std::string& out, std::string_view s) {
    u32(out, static_cast<uint32_t>(s.size()));
    out.append(s);
  };
  std::string out = "SKF1";
  u32(out, static_cast<uint32_t>(rs.size()));
  for (const PeerRequest& r : rs) {
    str(out, r.method);
    str(out, r.target);
    u32(out, static_cast<uint32_t>(r.headers.size()));
    for (const auto& [k, v] : r.headers) {
      str(out, k);
      str(out, v);
    }
    str(out, r.body);
  }
  return out;
}

TEST(ForwardBatchCodec, RequestsDecodeToTheirFields) {
  PeerRequest a = request("x", "/timer", R"({"timeout":1})");
  PeerRequest b = request("x", "/timer/b");
  b.method = "GET";
  b.headers = {{"X-Skyring-Fallback", "1"}, {"x-skyring-hops", "junk"}, {"Other", "ignored"}};
  std::string body = batch_of({a, b});
  auto got = decode_forward_batch(body, 10, 255);
  ASSERT_TRUE(got.has_value()) << got.error().message;
  ASSERT_EQ(got->size(), 2u);
  EXPECT_EQ((*got)[0].method, "POST");
  EXPECT_EQ((*got)[0].target, "/timer");
  EXPECT_EQ((*got)[0].timer_id, "id-timer");
  EXPECT_EQ((*got)[0].content_type, "application/json");
  EXPECT_EQ((*got)[0].body, R"({"timeout":1})");
  EXPECT_EQ((*got)[0].hops, 1);
  EXPECT_FALSE((*got)[0].fallback);
  EXPECT_EQ((*got)[1].method, "GET");
  EXPECT_TRUE((*got)[1].fallback);
  EXPECT_EQ((*got)[1].hops, 255);  // unreadable: never forwarded again
  EXPECT_TRUE((*got)[1].timer_id.empty());
}

TEST(ForwardBatchCodec, MalformedBatchesAreErrorsNeverCrashes) {
  std::string good = batch_of({request("x", "/timer/1", "abc"), request("x", "/timer/2")});
  ASSERT_TRUE(decode_forward_batch(good, 10, 255).has_value());
  // Every proper prefix is truncated somewhere.
  for (size_t n = 0; n < good.size(); ++n) {
    auto r = decode_forward_batch(std::string_view(good).substr(0, n), 10, 255);
    ASSERT_FALSE(r.has_value()) << n;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  }
  EXPECT_FALSE(decode_forward_batch(good + "x", 10, 255).has_value());  // trailing bytes
  EXPECT_FALSE(decode_forward_batch(good, 1, 255).has_value());         // over max_requests
  std::string zero = "SKF1";
  zero.append(4, '\0');
  EXPECT_FALSE(decode_forward_batch(zero, 10, 255).has_value());
  std::string wrong = good;
  wrong[3] = '2';
  EXPECT_FALSE(decode_forward_batch(wrong, 10, 255).has_value());
  // A length that points far past the end.
  std::string huge = "SKF1";
  huge += std::string("\x01\x00\x00\x00", 4);
  huge += std::string("\xff\xff\xff\xff", 4);
  EXPECT_FALSE(decode_forward_batch(huge, 10, 255).has_value());
  // Too many headers.
  PeerRequest many = request("x", "/timer/3");
  many.headers.assign(65, {"a", "b"});
  EXPECT_FALSE(decode_forward_batch(batch_of({many}), 10, 255).has_value());
}

TEST(ForwardBatchCodec, AnswersRoundTripInOrder) {
  ForwardAnswerWriter w(2);
  w.add(201, "application/json", {{"Location", "/timer/a"}}, R"({"id":"a"})");
  w.add(404, "", {}, "");
  std::string body = w.take();
  auto got = decode_forward_answers(body, 2);
  ASSERT_TRUE(got.has_value()) << got.error().message;
  EXPECT_EQ((*got)[0].kind, Kind::kAnswered);
  EXPECT_EQ((*got)[0].status, 201);
  EXPECT_EQ((*got)[0].body, R"({"id":"a"})");
  ASSERT_EQ((*got)[0].headers.size(), 2u);
  EXPECT_EQ((*got)[0].headers[0],
            (std::pair<std::string, std::string>{"Content-Type", "application/json"}));
  EXPECT_EQ((*got)[0].headers[1].first, "Location");
  EXPECT_EQ((*got)[1].status, 404);
  EXPECT_TRUE((*got)[1].headers.empty());
  EXPECT_FALSE(decode_forward_answers(body, 3).has_value());  // not the count sent
  for (size_t n = 0; n < body.size(); ++n) {
    EXPECT_FALSE(decode_forward_answers(std::string_view(body).substr(0, n), 2).has_value());
  }
  ForwardAnswerWriter bad(1);
  bad.add(42, "", {}, "");  // not an HTTP status
  EXPECT_FALSE(decode_forward_answers(bad.take(), 1).has_value());
}

TEST(ForwardBatchCodec, HopsParse) {
  EXPECT_EQ(parse_hops("0", 255), 0);
  EXPECT_EQ(parse_hops("2", 255), 2);
  EXPECT_EQ(parse_hops("300", 255), 255);
  for (std::string_view v : {"", "-1", "1x", "1000", " 1"}) EXPECT_EQ(parse_hops(v, 255), 255) << v;
}

// A peer that holds its first plain request until the test opens the gate, so that the next
// ones queue behind it; batches are answered request by request with 201 "<target>".
class GatedPeer {
 public:
  GatedPeer() = default;

  HttpServerForTests::Handler handler() {
    return [this](const TestHttpRequest& req) -> TestHttpAnswer {
      if (req.target == kForwardPath) {
        EXPECT_EQ(req.header("x-skyring-cluster").value_or(""), "test");
        EXPECT_EQ(req.header("content-type").value_or(""), kForwardContentType);
        if (batch_status != 200) return {test_http_answer(batch_status, "refused")};
        if (garbled) return {test_http_answer(200, "SKA1 garbage")};
        auto batch = decode_forward_batch(req.body, 1000, 255);
        EXPECT_TRUE(batch.has_value());
        if (!batch) return {test_http_answer(400, "bad")};
        ForwardAnswerWriter w(batch->size());
        std::vector<std::string> targets;
        for (const ForwardedRequest& f : *batch) {
          targets.emplace_back(f.target);
          w.add(201, "text/plain", {{"x-id", std::string(f.timer_id)}}, f.target);
        }
        {
          std::lock_guard lock(mu);
          seen.push_back(targets);
        }
        return {test_http_answer(200, w.take())};
      }
      {
        std::unique_lock lock(mu);
        seen.push_back({req.target});
        if (!held) {
          held = true;
          cv.notify_all();
          cv.wait_for(lock, kDeadline, [&] { return open; });
        }
      }
      return {test_http_answer(200, req.target, {{"x-id", req.header("x-timer-id").value_or("")}})};
    };
  }

  bool wait_held() {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, kDeadline, [&] { return held; });
  }
  void release() {
    std::lock_guard lock(mu);
    open = true;
    cv.notify_all();
  }
  std::vector<std::vector<std::string>> exchanges() {
    std::lock_guard lock(mu);
    return seen;
  }

  int batch_status = 200;
  bool garbled = false;

 private:
  std::mutex mu;
  std::condition_variable cv;
  bool held = false;
  bool open = false;
  std::vector<std::vector<std::string>> seen;  // each exchange: the targets it carried
};

int64_t metric(Registry& reg, std::string_view name) {
  std::string text = reg.render();
  std::string key = std::string(name) + " ";
  size_t at = text.find("\n" + key);
  if (at == std::string::npos) return -1;
  return std::stoll(text.substr(at + 1 + key.size()));
}

class ForwardBatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.cluster = "test";
    options_.in_flight_per_peer = 1;
    options_.max_requests = 3;
  }
  void TearDown() override { client_.stop(); }

  // Sends /timer/0 .. /timer/<n-1>: the first goes at once and `peer` holds it, so the others
  // queue behind it. False if the peer never got the first.
  bool send_behind_a_held_one(ForwardBatcher& b, GatedPeer& peer, const std::string& address,
                              size_t n) {
    for (size_t i = 0; i < n; ++i)
      b.send(request(address, "/timer/" + std::to_string(i)), collect(i));
    return peer.wait_held();
  }

  // Drains the executor until `n` answers came.
  bool wait_answers(size_t n) {
    auto deadline = Clock_::now() + kDeadline;
    while (answers_.size() < n) {
      if (ex_.run_all() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (Clock_::now() > deadline) return false;
    }
    return true;
  }
  std::function<void(PeerResponse)> collect(size_t i) {
    return [this, i](PeerResponse p) {
      ++calls_[i];
      answers_[i] = std::move(p);
    };
  }

  ForwardBatchOptions options_;
  ManualExecutor ex_;
  Registry reg_;
  PeerClient client_{PeerClientOptions{}};
  std::map<size_t, PeerResponse> answers_;
  std::map<size_t, int> calls_;
};

TEST_F(ForwardBatcherTest, QueuedRequestsGoTogetherAndEachGetsItsAnswer) {
  GatedPeer peer;
  HttpServerForTests server(peer.handler());
  ForwardBatcher b(client_, ex_, options_, reg_);
  // /timer/0 goes alone, at once; the others wait.
  ASSERT_TRUE(send_behind_a_held_one(b, peer, server.address(), 5));
  EXPECT_EQ(metric(reg_, "skyring_cluster_forward_queued"), 4);
  peer.release();
  ASSERT_TRUE(wait_answers(5));
  auto ex = peer.exchanges();
  ASSERT_EQ(ex.size(), 3u);
  EXPECT_EQ(ex[0], (std::vector<std::string>{"/timer/0"}));
  EXPECT_EQ(ex[1], (std::vector<std::string>{"/timer/1", "/timer/2", "/timer/3"}));  // max 3
  EXPECT_EQ(ex[2], (std::vector<std::string>{"/timer/4"}));  // alone again: plain
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(calls_[i], 1);
    const PeerResponse& p = answers_[i];
    ASSERT_EQ(p.kind, Kind::kAnswered) << i;
    EXPECT_EQ(p.body, "/timer/" + std::to_string(i));
    EXPECT_EQ(p.status, (i >= 1 && i <= 3) ? 201 : 200);
    bool has_id = false;
    for (const auto& [k, v] : p.headers) has_id |= k == "x-id" && v == "id-" + std::to_string(i);
    EXPECT_TRUE(has_id) << i;
  }
  EXPECT_EQ(metric(reg_, "skyring_cluster_forward_batches_total"), 1);
  EXPECT_EQ(metric(reg_, "skyring_cluster_forward_batched_total"), 3);
  EXPECT_EQ(metric(reg_, "skyring_cluster_forward_queued"), 0);
}

TEST_F(ForwardBatcherTest, BatchesStayUnderTheByteLimitAndBigRequestsGoAlone) {
  options_.max_requests = 100;
  options_.max_bytes = 300;
  GatedPeer peer;
  HttpServerForTests server(peer.handler());
  ForwardBatcher b(client_, ex_, options_, reg_);
  b.send(request(server.address(), "/timer/0"), collect(0));
  ASSERT_TRUE(peer.wait_held());
  b.send(request(server.address(), "/timer/1", std::string(400, 'x')), collect(1));  // > limit
  for (size_t i = 2; i < 6; ++i) {
    b.send(request(server.address(), "/timer/" + std::to_string(i), std::string(40, 'y')),
           collect(i));
  }
  peer.release();
  ASSERT_TRUE(wait_answers(6));
  auto ex = peer.exchanges();
  ASSERT_GE(ex.size(), 4u);
  EXPECT_EQ(ex[1], (std::vector<std::string>{"/timer/1"}));  // too big to share: alone
  size_t in_batches = 0;
  for (size_t i = 2; i < ex.size(); ++i) {
    EXPECT_LE(ex[i].size(), 2u);  // ~110 bytes each: two fit under 300 with the header
    in_batches += ex[i].size();
  }
  EXPECT_EQ(in_batches, 4u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(answers_[i].kind, Kind::kAnswered) << i;
}

TEST_F(ForwardBatcherTest, ARefusedBatchGivesEachRequestTheOwnersAnswer) {
  GatedPeer peer;
  peer.batch_status = 503;
  HttpServerForTests server(peer.handler());
  ForwardBatcher b(client_, ex_, options_, reg_);
  ASSERT_TRUE(send_behind_a_held_one(b, peer, server.address(), 3));
  peer.release();
  ASSERT_TRUE(wait_answers(3));
  EXPECT_EQ(answers_[0].status, 200);
  for (size_t i : {1, 2}) {
    EXPECT_EQ(answers_[i].kind, Kind::kAnswered);
    EXPECT_EQ(answers_[i].status, 503);
    EXPECT_EQ(answers_[i].body, "refused");
  }
}

TEST_F(ForwardBatcherTest, AnUnreadableAnswerIsAnUnknownOutcomeForEach) {
  GatedPeer peer;
  peer.garbled = true;
  HttpServerForTests server(peer.handler());
  ForwardBatcher b(client_, ex_, options_, reg_);
  ASSERT_TRUE(send_behind_a_held_one(b, peer, server.address(), 3));
  peer.release();
  ASSERT_TRUE(wait_answers(3));
  for (size_t i : {1, 2}) {
    EXPECT_EQ(answers_[i].kind, Kind::kFailed);
    EXPECT_NE(answers_[i].error.find("malformed forward answer"), std::string::npos);
  }
}

TEST_F(ForwardBatcherTest, UnreachableOwnerFailsEveryRequestAsNotSent) {
  RefusingPort nobody;
  ForwardBatcher b(client_, ex_, options_, reg_);
  for (size_t i = 0; i < 5; ++i)
    b.send(request(nobody.address(), "/timer/" + std::to_string(i)), collect(i));
  ASSERT_TRUE(wait_answers(5));
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(calls_[i], 1);
    EXPECT_EQ(answers_[i].kind, Kind::kNotSent) << i;
  }
}

TEST_F(ForwardBatcherTest, AFullQueueRefusesAtOnce) {
  options_.max_queued = 2;
  GatedPeer peer;
  HttpServerForTests server(peer.handler());
  ForwardBatcher b(client_, ex_, options_, reg_);
  ASSERT_TRUE(send_behind_a_held_one(b, peer, server.address(), 5));
  ex_.run_all();
  EXPECT_EQ(answers_.size(), 2u);  // 3 and 4: refused without waiting
  EXPECT_EQ(answers_[3].kind, Kind::kRefused);
  EXPECT_EQ(answers_[4].kind, Kind::kRefused);
  EXPECT_EQ(metric(reg_, "skyring_cluster_forward_queue_full_total"), 2);
  peer.release();
  ASSERT_TRUE(wait_answers(5));
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(answers_[i].kind, Kind::kAnswered) << i;
}

}  // namespace
}  // namespace skyring::cluster
