// Router over real Membership objects (joined through an in-memory bus instead of NATS), a
// real engine on a memory store and a real PeerClient; the other nodes are HttpServerForTests
// standing in for them, so what a forwarded request looks like on the wire is checked too.
#include "cluster/router.h"

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "base/clock.h"
#include "base/manual_executor.h"
#include "base/metrics.h"
#include "cluster/http_server_for_tests.h"
#include "cluster/membership.h"
#include "cluster/peer_client.h"
#include "engine/engine_fakes.h"
#include "engine/timer_engine.h"
#include "model/request.h"
#include "storage/kv.h"
#include "storage/timer_store.h"

namespace skyring::cluster {
namespace {

namespace json = boost::json;
using skyring::testing::HeldCommitter;
using skyring::testing::HeldTransport;
using skyring::testing::HttpServerForTests;
using skyring::testing::RecordingWakeup;
using skyring::testing::test_http_answer;
using skyring::testing::TestHttpAnswer;
using skyring::testing::TestHttpRequest;

// Core NATS in one process: every publish reaches every subscriber of the subject (the
// publisher included, as NATS echoes), through the executor.
class LoopbackHub {
 public:
  explicit LoopbackHub(Executor& ex) : ex_(ex) {}
  void publish(const std::string& subject, const std::string& data) {
    for (auto& [s, h] : subs_) {
      if (s == subject) ex_.post([h = h, subject, data] { h(subject, data); });
    }
  }
  void subscribe(const std::string& subject, NatsBus::Handler h) {
    subs_.emplace_back(subject, std::move(h));
  }

 private:
  Executor& ex_;
  std::vector<std::pair<std::string, NatsBus::Handler>> subs_;
};

class LoopbackBus final : public NatsBus {
 public:
  explicit LoopbackBus(LoopbackHub& hub) : hub_(hub) {}
  void publish(std::string subject, std::string data, Send) override {
    hub_.publish(subject, data);
  }
  void subscribe(const std::string& subject, Handler handler) override {
    hub_.subscribe(subject, std::move(handler));
  }
  void on_state(std::function<void(bool)>) override {}
  bool connected() const override { return true; }
  void stop() override {}

 private:
  LoopbackHub& hub_;
};

class RecordingMoves final : public MoveSink {
 public:
  void receive_moves(std::string_view body, std::function<void(RouteResponse)> done) override {
    bodies.emplace_back(body);
    RouteResponse r;
    r.body = R"({"stored":1})";
    done(std::move(r));
  }
  std::vector<std::string> bodies;
};

// The answer a stand-in node gives; set by the test, read on the server's thread.
class Script {
 public:
  void set(TestHttpAnswer a) {
    std::lock_guard lock(mu_);
    answer_ = std::move(a);
  }
  HttpServerForTests::Handler handler() {
    return [this](const TestHttpRequest&) {
      std::lock_guard lock(mu_);
      return answer_;
    };
  }

 private:
  std::mutex mu_;
  TestHttpAnswer answer_{test_http_answer(200, "{}")};
};

std::optional<std::string> header(const std::vector<std::pair<std::string, std::string>>& h,
                                  std::string_view name) {
  return TestHttpRequest{"", "", h, ""}.header(name);
}

constexpr std::string_view kTimerBody =
    R"({"timeout":60000,"data":"x","callback":{"transport":"http","method":"post","uri":"http://a.test/hook"}})";

class RouterTest : public ::testing::Test {
 protected:
  RouterTest() {
    transports_.add(std::make_unique<HeldTransport>());
    EXPECT_TRUE(store_.open().has_value());
    EXPECT_TRUE(engine_.recover().has_value());
  }

  // Node "a" (this one) and the members given, all started and known to each other.
  void join(std::vector<Member> others) {
    a_ = add_member({"a", "127.0.0.1:1"});
    for (const Member& m : others) add_member(m);
    for (auto& n : nodes_) n->membership->start();
    ex_.run_all();
    // Every member has moved what it had to: no earlier owner needs asking.
    for (auto& n : nodes_) n->membership->set_settled(n->membership->ring().fingerprint());
    ex_.run_all();
    ASSERT_TRUE(a_->ring_known());
    ASSERT_EQ(a_->ring().size(), others.size() + 1);
    RouterOptions o;
    o.cluster = "test";
    o.self_id = "a";
    o.forward_timeout_ms = 5000;
    o.nats_connected = [] { return true; };
    router_ = std::make_unique<Router>(engine_, *a_, client_, ex_, moves_, o, metrics_);
  }

  Membership* member(const std::string& id) {
    for (auto& n : nodes_) {
      if (n->id == id) return n->membership.get();
    }
    return nullptr;
  }

  RouteDecision route(RouteRequest r) {
    std::optional<RouteDecision> got;
    router_->route(std::move(r), [&](RouteDecision d) { got = std::move(d); });
    EXPECT_TRUE(ex_.drain_until([&] { return got.has_value(); }));
    return got ? std::move(*got) : RouteDecision{};
  }

  RouteRequest get(const std::string& id, int hops = 0) {
    RouteRequest r;
    r.method = "GET";
    target_ = "/timer/" + id;
    r.target = target_;
    r.timer_id = id;
    r.hops = hops;
    return r;
  }

  // An id whose owner in a's current ring is `owner` (and, if given, was `before` in a ring
  // with `before` in it).
  std::string id_owned_by(const std::string& owner, const Ring* earlier = nullptr,
                          const std::string& before = "") {
    for (int i = 0; i < 100'000; ++i) {
      std::string id = fmt::format("t{}", i);
      if (a_->ring().owner(id)->id != owner) continue;
      if (earlier != nullptr && earlier->owner(id)->id != before) continue;
      return id;
    }
    ADD_FAILURE() << "no id owned by " << owner;
    return "";
  }

  // Creates a timer in a's engine with the given id.
  void create_here(const std::string& id) {
    auto r = parse_timer_request(kTimerBody, clock_.now_us());
    ASSERT_TRUE(r.has_value());
    r->id = id;
    bool done = false;
    engine_.create(std::move(*r), [&](Result<CreateResult> c) {
      EXPECT_TRUE(c.has_value());
      done = true;
    });
    for (int i = 0; i < 10 && !done; ++i) {
      ex_.run_all();
      committer_.complete_all();
      ex_.run_all();
    }
    ASSERT_TRUE(done);
  }

  struct Node {
    std::string id;
    std::unique_ptr<LoopbackBus> bus;
    Registry metrics;
    std::unique_ptr<Membership> membership;
  };
  Membership* add_member(const Member& m) {
    auto n = std::make_unique<Node>();
    n->id = m.id;
    n->bus = std::make_unique<LoopbackBus>(hub_);
    MembershipOptions o;
    o.cluster = "test";
    o.self = m;
    o.ring.vnodes = 16;
    o.answer_quiet_ms = 0;  // the loopback bus answers at once: no wait for stragglers
    n->membership = std::make_unique<Membership>(*n->bus, clock_, o, n->metrics);
    nodes_.push_back(std::move(n));
    return nodes_.back()->membership.get();
  }

  ManualClock clock_;
  ManualExecutor ex_;
  RecordingWakeup wakeup_;
  std::unique_ptr<Kv> kv_ = make_memory_kv();
  TimerStore store_{*kv_};
  HeldCommitter committer_{*kv_, ex_};
  TransportRegistry transports_;
  Registry metrics_;
  TimerEngine engine_{clock_, ex_, wakeup_, store_, committer_, transports_, EngineOptions{}};
  LoopbackHub hub_{ex_};
  std::vector<std::unique_ptr<Node>> nodes_;
  Membership* a_ = nullptr;
  Script script_;
  HttpServerForTests peer_{script_.handler()};  // node "b"
  RecordingMoves moves_;
  PeerClient client_{PeerClientOptions{}};  // stopped before the executor goes
  std::unique_ptr<Router> router_;
  std::string target_;
};

TEST_F(RouterTest, OwnIdsAreHandledHere) {
  join({{"b", peer_.address()}});
  std::string id = id_owned_by("a");
  RouteDecision d = route(get(id));
  EXPECT_TRUE(d.local);
  EXPECT_EQ(d.timer_id, id);
  EXPECT_FALSE(d.fresh_id);
  EXPECT_TRUE(peer_.requests().empty());
}

TEST_F(RouterTest, ForwardsToTheOwnerAndRelaysItsAnswer) {
  join({{"b", peer_.address()}});
  script_.set({test_http_answer(200, R"({"id":"x"})",
                                {{"Content-Type", "application/json; charset=utf-8"},
                                 {"x-extra", "1"},
                                 {"Server", "skyring/other"}})});
  std::string id = id_owned_by("b");
  RouteRequest r = get(id, 1);
  RouteDecision d = route(r);
  ASSERT_FALSE(d.local);
  EXPECT_EQ(d.response.status, 200);
  EXPECT_EQ(d.response.body, R"({"id":"x"})");
  EXPECT_EQ(d.response.content_type, "application/json; charset=utf-8");
  EXPECT_EQ(header(d.response.headers, "x-extra"), "1");
  EXPECT_FALSE(header(d.response.headers, "server"));
  EXPECT_FALSE(header(d.response.headers, "content-type"));
  auto seen = peer_.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].target, "/timer/" + id);
  EXPECT_EQ(seen[0].header("x-skyring-hops"), "2");
  EXPECT_FALSE(seen[0].header("x-skyring-fallback"));
  EXPECT_FALSE(seen[0].header("x-timer-id"));  // the id is in the path
}

TEST_F(RouterTest, HeldIdsStayHereWhoeverOwnsThem) {
  join({{"b", peer_.address()}});
  std::string id = id_owned_by("b");
  create_here(id);
  RouteDecision d = route(get(id));
  EXPECT_TRUE(d.local);
  EXPECT_TRUE(peer_.requests().empty());
}

TEST_F(RouterTest, PostWithoutIdGetsAFreshIdAndGoesToItsOwner) {
  join({{"b", peer_.address()}});
  script_.set({test_http_answer(201, R"({"id":"y"})")});
  bool saw_local = false, saw_forward = false;
  for (int i = 0; i < 64 && !(saw_local && saw_forward); ++i) {
    RouteRequest r;
    r.method = "POST";
    r.target = "/timer";
    r.body = kTimerBody;
    r.content_type = "application/json";
    size_t sent = peer_.requests().size();
    RouteDecision d = route(r);
    if (d.local) {
      saw_local = true;
      EXPECT_TRUE(d.fresh_id);
      EXPECT_TRUE(valid_timer_id(d.timer_id));
      EXPECT_EQ(a_->ring().owner(d.timer_id)->id, "a");
    } else {
      saw_forward = true;
      EXPECT_EQ(d.response.status, 201);
      auto seen = peer_.requests();
      ASSERT_EQ(seen.size(), sent + 1);
      const TestHttpRequest& f = seen.back();
      EXPECT_EQ(f.method, "POST");
      EXPECT_EQ(f.body, kTimerBody);
      EXPECT_EQ(f.header("content-type"), "application/json");
      ASSERT_TRUE(f.header("x-timer-id"));
      EXPECT_EQ(a_->ring().owner(*f.header("x-timer-id"))->id, "b");
      EXPECT_EQ(f.header("x-skyring-hops"), "1");
    }
  }
  EXPECT_TRUE(saw_local);
  EXPECT_TRUE(saw_forward);
}

TEST_F(RouterTest, HopLimitAnswers503WithoutForwarding) {
  join({{"b", peer_.address()}});
  RouteDecision d = route(get(id_owned_by("b"), 2));
  ASSERT_FALSE(d.local);
  EXPECT_EQ(d.response.status, 503);
  EXPECT_EQ(header(d.response.headers, "Retry-After"), "1");
  EXPECT_TRUE(peer_.requests().empty());
  EXPECT_NE(metrics_.render().find("skyring_cluster_hop_limit_total 1"), std::string::npos);
}

TEST_F(RouterTest, UnreachableOwnerAnswers503WithTheReason) {
  skyring::testing::RefusingPort refusing;
  std::string dead = refusing.address();
  join({{"b", dead}});
  RouteDecision d = route(get(id_owned_by("b")));
  ASSERT_FALSE(d.local);
  EXPECT_EQ(d.response.status, 503);
  auto reason = header(d.response.headers, "x-skyring-reason");
  ASSERT_TRUE(reason);
  EXPECT_EQ(reason->rfind(fmt::format("owner b ({}) unreachable: ", dead), 0), 0u) << *reason;
  EXPECT_EQ(header(d.response.headers, "Retry-After"), "1");
  auto body = json::parse(d.response.body).as_object();
  EXPECT_EQ(body.at("error").as_string(), *reason);
  EXPECT_NE(metrics_.render().find("skyring_cluster_forward_failures_total 1"), std::string::npos);
}

TEST_F(RouterTest, FallbackLookupsAreAnsweredHereOrAbsent) {
  join({{"b", peer_.address()}});
  std::string id = id_owned_by("b");
  RouteRequest r = get(id, 1);
  r.fallback = true;
  RouteDecision d = route(r);
  ASSERT_FALSE(d.local);  // not held: absent, never forwarded
  EXPECT_EQ(d.response.status, 404);
  EXPECT_TRUE(header(d.response.headers, kAbsentHeader));
  EXPECT_TRUE(peer_.requests().empty());
  create_here(id);
  d = route(r);
  EXPECT_TRUE(d.local);
}

TEST_F(RouterTest, AsksThePreviousOwnerWhileMovesSettle) {
  Script c_script;
  HttpServerForTests c(c_script.handler());
  join({{"b", peer_.address()}, {"c", c.address()}});
  Ring before = a_->ring();
  member("c")->leave();
  ex_.run_all();
  ASSERT_EQ(a_->ring().size(), 2u);
  std::string id = id_owned_by("a", &before, "c");
  // c (it left and still hands over), then b (the owner without this node).
  auto earlier = a_->previous_owners(id);
  ASSERT_EQ(earlier.size(), 2u);
  EXPECT_EQ(earlier[0].id, "c");
  EXPECT_EQ(earlier[1].id, "b");

  // c still has it: its answer is the answer.
  c_script.set({test_http_answer(200, R"({"id":"moved"})")});
  RouteDecision d = route(get(id));
  ASSERT_FALSE(d.local);
  EXPECT_EQ(d.response.body, R"({"id":"moved"})");
  auto seen = c.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].header("x-skyring-fallback"), "1");
  EXPECT_EQ(seen[0].header("x-skyring-hops"), "1");

  // c and b say absent: handled here.
  c_script.set({test_http_answer(404, "{}", {{"x-skyring-absent", "1"}})});
  script_.set({test_http_answer(404, "{}", {{"x-skyring-absent", "1"}})});
  d = route(get(id));
  EXPECT_TRUE(d.local);
  EXPECT_EQ(d.timer_id, id);
  EXPECT_NE(metrics_.render().find("skyring_cluster_fallback_lookups_total 3"), std::string::npos);
}

TEST_F(RouterTest, ClusterViewAndHealth) {
  join({{"b", peer_.address()}});
  RouteRequest r;
  r.method = "GET";
  r.target = "/cluster";
  RouteDecision d = route(r);
  ASSERT_FALSE(d.local);
  EXPECT_EQ(d.response.status, 200);
  auto v = json::parse(d.response.body).as_object();
  EXPECT_EQ(v.at("node").as_string(), "a");
  EXPECT_EQ(v.at("cluster").as_string(), "test");
  EXPECT_EQ(v.at("members").as_array().size(), 2u);
  EXPECT_EQ(v.at("hash").as_string(), "xxh3-64");
  EXPECT_EQ(v.at("vnodes").as_int64(), 16);
  EXPECT_EQ(v.at("seed").as_string(), std::to_string(a_->ring().params().seed));
  EXPECT_EQ(v.at("ring_fingerprint").as_string(), fmt::format("{:016x}", a_->ring().fingerprint()));
  const auto& points = v.at("points").as_array();
  ASSERT_EQ(points.size(), 32u);
  EXPECT_EQ(points[0].as_array()[0].as_string(), std::to_string(a_->ring().points()[0].hash));

  auto h = json::parse(router_->health_json()).as_object();
  EXPECT_EQ(h.at("state").as_string(), "ok");
  EXPECT_EQ(h.at("nats").as_string(), "connected");
  EXPECT_EQ(h.at("members").as_int64(), 2);
  EXPECT_TRUE(h.at("settled").as_bool());
}

TEST_F(RouterTest, MovesNeedTheClusterName) {
  join({{"b", peer_.address()}});
  RouteRequest r;
  r.method = "POST";
  r.target = "/cluster/moves";
  r.body = "[]";
  r.cluster = "other";
  RouteDecision d = route(r);
  EXPECT_EQ(d.response.status, 403);
  EXPECT_TRUE(moves_.bodies.empty());
  r.cluster = "test";
  d = route(r);
  ASSERT_FALSE(d.local);
  EXPECT_EQ(d.response.body, R"({"stored":1})");
  ASSERT_EQ(moves_.bodies.size(), 1u);
  EXPECT_EQ(moves_.bodies[0], "[]");
}

TEST_F(RouterTest, OtherRoutesAreHandledHere) {
  join({{"b", peer_.address()}});
  for (std::string_view t :
       {"/timer?state=failed", "/health", "/metrics", "/ping", "/nope", "", "?", "/timer/"}) {
    RouteRequest r;
    r.method = "GET";
    r.target = t;
    EXPECT_TRUE(route(r).local) << t;
  }
  RouteRequest r;
  r.method = "PUT";
  r.target = "/cluster";
  EXPECT_EQ(route(r).response.status, 405);
}

}  // namespace
}  // namespace skyring::cluster
