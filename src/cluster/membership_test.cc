// Membership, NatsBus and EventPublisher against a real nats-server (skipped when none is
// installed). Every wait is a deadline poll: time is a bound, never a condition.
#include "cluster/membership.h"

#include <chrono>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "base/manual_executor.h"
#include "cluster/events.h"
#include "cluster/nats_bus.h"
#include "cluster/nats_server_for_tests.h"

namespace skyring::cluster {
namespace {

namespace json = boost::json;
using Clock_ = std::chrono::steady_clock;
constexpr auto kDeadline = std::chrono::seconds(10);

// A metric's value from the text exposition (the last line with that name).
int64_t metric(const Registry& r, const std::string& name) {
  std::istringstream in(r.render());
  std::string line;
  int64_t value = -1;
  while (std::getline(in, line)) {
    if (line.rfind(name + " ", 0) == 0) value = std::stoll(line.substr(name.size() + 1));
  }
  return value;
}

int64_t ms_since(Clock_::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock_::now() - t).count();
}

NatsOptions bus_options(const std::string& url, const std::string& name) {
  NatsOptions o;
  o.urls = url;
  o.name = name;
  o.reconnect_wait_ms = 100;
  o.connect_timeout_ms = 500;
  o.flush_timeout_ms = 500;
  return o;
}

// One node: its own executor (drained by the test thread), metrics, bus and membership.
struct Node {
  Node(const std::string& url, const std::string& id) {
    auto b = NatsBus::start(bus_options(url, id), executor, metrics);
    EXPECT_TRUE(b.has_value());
    bus = std::move(*b);
    MembershipOptions o;
    o.cluster = "test";
    o.self = {id, id + ".local:8080"};
    o.heartbeat_ms = 100;
    o.member_timeout_ms = 600;
    o.discovery_ms = 300;
    membership = std::make_unique<Membership>(*bus, clock, o, metrics);
    membership->on_ring_change([this] { ++ring_changes; });
  }
  ~Node() {
    membership.reset();
    bus->stop();
  }
  void step() {
    executor.run_all();
    membership->tick();
  }
  std::vector<std::string> member_ids() const {
    std::vector<std::string> ids;
    for (const auto& m : membership->members()) ids.push_back(m.member.id);
    return ids;
  }

  SystemClock clock;
  ManualExecutor executor;
  Registry metrics;
  std::unique_ptr<NatsBus> bus;
  std::unique_ptr<Membership> membership;
  int ring_changes = 0;
};

// Drives every node (executor + tick) until pred() holds or the deadline passes.
bool run_until(const std::vector<Node*>& nodes, const std::function<bool()>& pred,
               Clock_::duration limit = kDeadline) {
  auto deadline = Clock_::now() + limit;
  for (;;) {
    for (Node* n : nodes) n->step();
    if (pred()) return true;
    if (Clock_::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Drives every node for `d`, checking invariant() after every step.
bool run_for(const std::vector<Node*>& nodes, Clock_::duration d,
             const std::function<bool()>& invariant) {
  auto end = Clock_::now() + d;
  while (Clock_::now() < end) {
    for (Node* n : nodes) n->step();
    if (!invariant()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

bool all_agree(const std::vector<Node*>& nodes, size_t size) {
  for (Node* n : nodes) {
    if (!n->membership->ring_known() || n->membership->ring().size() != size) return false;
    if (n->membership->ring().fingerprint() != nodes[0]->membership->ring().fingerprint()) {
      return false;
    }
  }
  return true;
}

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (NatsServerForTests::binary().empty()) GTEST_SKIP() << "nats-server not installed";
    ASSERT_TRUE(server_.start());
  }
  std::unique_ptr<Node> node(const std::string& id) {
    auto n = std::make_unique<Node>(server_.url(), id);
    n->membership->start();
    return n;
  }
  NatsServerForTests server_;
};

using MembershipTest = ClusterTest;
using NatsBusTest = ClusterTest;
using EventTest = ClusterTest;

TEST_F(MembershipTest, ThreeNodesAgreeOnTheRing) {
  auto a = node("a"), b = node("b"), c = node("c");
  std::vector<Node*> all = {a.get(), b.get(), c.get()};
  ASSERT_TRUE(run_until(all, [&] { return all_agree(all, 3); }));
  Ring expected({{"a", "a.local:8080"}, {"b", "b.local:8080"}, {"c", "c.local:8080"}});
  EXPECT_EQ(a->membership->ring().fingerprint(), expected.fingerprint());
  for (Node* n : all) {
    EXPECT_EQ(n->member_ids().size(), 3u);
    EXPECT_EQ(metric(n->metrics, "skyring_cluster_members"), 3);
    EXPECT_EQ(metric(n->metrics, "skyring_cluster_ring_size"), 3);
    EXPECT_GE(n->ring_changes, 1);
    ASSERT_NE(n->membership->find("b"), nullptr);
    EXPECT_EQ(n->membership->find("b")->member.address, "b.local:8080");
    EXPECT_EQ(n->membership->find("a")->self, n == a.get());
  }
}

TEST_F(MembershipTest, AloneAfterDiscovery) {
  auto a = node("solo");
  auto start = Clock_::now();
  ASSERT_TRUE(run_until({a.get()}, [&] { return a->membership->ring_known(); }));
  EXPECT_GE(ms_since(start), 250);
  EXPECT_EQ(a->membership->ring().size(), 1u);
  EXPECT_EQ(a->membership->ring().owner("x")->id, "solo");
}

TEST_F(MembershipTest, LeaveTakesANodeOutAtOnceGoneForgetsIt) {
  auto a = node("a"), b = node("b"), c = node("c");
  std::vector<Node*> all = {a.get(), b.get(), c.get()};
  ASSERT_TRUE(run_until(all, [&] { return all_agree(all, 3); }));
  Ring before = a->membership->ring();
  // An id that c owns now: after c leaves, a must name c as a previous owner.
  std::string id;
  for (int i = 0; id.empty(); ++i) {
    if (before.owner("t" + std::to_string(i))->id == "c") id = "t" + std::to_string(i);
  }

  c->membership->leave();
  EXPECT_FALSE(c->membership->ring().contains("c"));
  auto start = Clock_::now();
  ASSERT_TRUE(run_until(
      all, [&] { return a->membership->ring().size() == 2 && b->membership->ring().size() == 2; }));
  EXPECT_LT(ms_since(start), 1000);
  EXPECT_EQ(a->membership->ring().fingerprint(), c->membership->ring().fingerprint());
  ASSERT_NE(a->membership->find("c"), nullptr);
  EXPECT_TRUE(a->membership->find("c")->leaving);
  EXPECT_EQ(a->member_ids().size(), 3u);
  auto prev = a->membership->previous_owners(id);
  ASSERT_EQ(prev.size(), 1u);
  EXPECT_EQ(prev[0].id, "c");

  // Once every reachable member settled on the current ring the history goes.
  uint64_t fp = a->membership->ring().fingerprint();
  for (Node* n : all) n->membership->set_settled(fp);
  ASSERT_TRUE(run_until(all, [&] { return a->membership->settled_everywhere(); }));
  EXPECT_TRUE(a->membership->previous_owners(id).empty());

  c->membership->gone(true);
  start = Clock_::now();
  ASSERT_TRUE(run_until(all, [&] {
    return a->membership->find("c") == nullptr && b->membership->find("c") == nullptr;
  }));
  EXPECT_LT(ms_since(start), 1000);
  EXPECT_EQ(metric(a->metrics, "skyring_cluster_members"), 2);
  // Its handoff ended: a move to it with an unknown outcome may go to the new owners.
  EXPECT_TRUE(a->membership->left_after_handoff("c"));
  EXPECT_FALSE(a->membership->left_after_handoff("b"));
}

TEST_F(MembershipTest, SilentMemberIsDroppedAfterTheTimeout) {
  auto a = node("a"), b = node("b"), c = node("c");
  std::vector<Node*> all = {a.get(), b.get(), c.get()};
  ASSERT_TRUE(run_until(all, [&] { return all_agree(all, 3); }));
  c.reset();  // a crash: no gone
  all = {a.get(), b.get()};
  auto start = Clock_::now();
  ASSERT_TRUE(run_until(all, [&] {
    return a->membership->find("c") == nullptr && b->membership->find("c") == nullptr;
  }));
  EXPECT_GE(ms_since(start), 400);  // timeout 600 ms, last heartbeat <= 100 ms before the crash
  EXPECT_TRUE(all_agree(all, 2));
  EXPECT_FALSE(a->membership->left_after_handoff("c"));  // a crash says nothing of its moves
}

TEST_F(MembershipTest, NatsOutageDropsNobody) {
  auto a = node("a"), b = node("b"), c = node("c");
  std::vector<Node*> all = {a.get(), b.get(), c.get()};
  ASSERT_TRUE(run_until(all, [&] { return all_agree(all, 3); }));
  uint64_t fp = a->membership->ring().fingerprint();
  uint64_t version = a->membership->ring_version();

  server_.stop();
  auto three_each = [&] {
    for (Node* n : all) {
      if (n->membership->members().size() != 3 || n->membership->ring().fingerprint() != fp) {
        return false;
      }
    }
    return true;
  };
  ASSERT_TRUE(run_until(
      all, [&] { return !a->bus->connected() && !b->bus->connected() && !c->bus->connected(); }));
  EXPECT_TRUE(run_for(all, std::chrono::milliseconds(1200), three_each));

  ASSERT_TRUE(server_.start());
  ASSERT_TRUE(run_until(
      all, [&] { return a->bus->connected() && b->bus->connected() && c->bus->connected(); }));
  // Past another timeout after the reconnect: heartbeats flow again, nobody expires.
  EXPECT_TRUE(run_for(all, std::chrono::milliseconds(1000), three_each));
  EXPECT_EQ(a->membership->ring_version(), version);
  EXPECT_EQ(metric(a->metrics, "skyring_nats_reconnects_total"), 1);
}

TEST_F(MembershipTest, GarbageIsIgnoredAndCounted) {
  auto a = node("a");
  ManualExecutor ex;
  Registry reg;
  auto raw = NatsBus::start(bus_options(server_.url(), "raw"), ex, reg);
  ASSERT_TRUE(raw.has_value());
  const std::string subject = "skyring.test.members";
  std::vector<std::string> garbage = {
      "",
      "not json",
      "[1,2,3]",
      "{}",
      R"({"v":1})",
      R"({"v":2,"type":"heartbeat","id":"x","address":"h:1","incarnation":1})",
      R"({"v":1,"type":"dance","id":"x","address":"h:1","incarnation":1})",
      R"({"v":1,"type":"heartbeat","id":"","address":"h:1","incarnation":1})",
      R"({"v":1,"type":"heartbeat","id":7,"address":"h:1","incarnation":1})",
      R"({"v":1,"type":"heartbeat","id":"x","incarnation":1})",
      R"({"v":1,"type":"heartbeat","id":"x","address":"h:1","incarnation":-1})",
      R"({"v":1,"type":"heartbeat","id":"x","address":"h:1","incarnation":"1"})",
      R"({"v":1,"type":"heartbeat","id":"x","address":"h:1","incarnation":1,"settled":"zz"})",
      R"({"v":1,"type":"heartbeat","id":"x","address":"h:1","incarnation":1,"state":"odd"})",
      R"({"v":1,"type":"heartbeat","id":"x","address":"h:1","incarnation":1.5})",
      R"({"v":1,"type":"gone","id":"x","incarnation":1,"handed_over":"yes"})",
      std::string(200, '[') + std::string(200, ']'),
      std::string("{\"v\":1,\"type\":\"hello\",\"id\":\"\xff\xfe\"", 31),
      std::string(5000, 'x'),
  };
  for (const auto& g : garbage) (*raw)->publish(subject, g, NatsBus::Send::kAtOnce);
  // Another process with our id: ignored, counted as a conflict.
  (*raw)->publish(subject, R"({"v":1,"type":"heartbeat","id":"a","address":"h:1","incarnation":5})",
                  NatsBus::Send::kAtOnce);
  // The end marker: messages of one connection arrive in order.
  (*raw)->publish(subject,
                  R"({"v":1,"type":"heartbeat","id":"marker","address":"m:1",)"
                  R"("state":"active","incarnation":1,"settled":"00ff"})",
                  NatsBus::Send::kAtOnce);
  ASSERT_TRUE(run_until({a.get()}, [&] { return a->membership->find("marker") != nullptr; }));
  EXPECT_EQ(metric(a->metrics, "skyring_cluster_bad_messages_total"),
            static_cast<int64_t>(garbage.size()));
  EXPECT_EQ(metric(a->metrics, "skyring_cluster_id_conflicts_total"), 1);
  EXPECT_EQ(a->membership->find("marker")->settled, 0xffu);
  EXPECT_EQ(a->member_ids(), (std::vector<std::string>{"a", "marker"}));
  EXPECT_EQ(a->membership->find("a")->member.address, "a.local:8080");
  (*raw)->stop();
}

TEST_F(MembershipTest, NewerIncarnationReplacesAnOlderOne) {
  auto a = node("a");
  ManualExecutor ex;
  Registry reg;
  auto raw = NatsBus::start(bus_options(server_.url(), "raw"), ex, reg);
  ASSERT_TRUE(raw.has_value());
  const std::string subject = "skyring.test.members";
  auto hb = [&](int inc, const std::string& addr) {
    (*raw)->publish(subject,
                    fmt::format(R"({{"v":1,"type":"heartbeat","id":"x","address":"{}",)"
                                R"("incarnation":{}}})",
                                addr, inc),
                    NatsBus::Send::kAtOnce);
  };
  hb(2, "new:1");
  hb(1, "old:1");  // a past life: ignored
  hb(2, "new:1");
  (*raw)->publish(subject, R"({"v":1,"type":"gone","id":"x","incarnation":1,"handed_over":true})",
                  NatsBus::Send::kAtOnce);  // stale gone
  (*raw)->publish(subject,
                  R"({"v":1,"type":"heartbeat","id":"marker","address":"m:1",)"
                  R"("incarnation":1})",
                  NatsBus::Send::kAtOnce);
  ASSERT_TRUE(run_until({a.get()}, [&] { return a->membership->find("marker") != nullptr; }));
  ASSERT_NE(a->membership->find("x"), nullptr);
  EXPECT_EQ(a->membership->find("x")->member.address, "new:1");
  EXPECT_EQ(a->membership->find("x")->incarnation, 2u);
  hb(3, "newer:1");
  ASSERT_TRUE(run_until({a.get()}, [&] { return a->membership->find("x")->incarnation == 3; }));
  EXPECT_EQ(a->membership->ring().find("x")->address, "newer:1");
  EXPECT_FALSE(a->membership->left_after_handoff("x"));  // the stale gone said nothing
  // Gone after a complete handoff, then back: it may hold anything again.
  (*raw)->publish(subject, R"({"v":1,"type":"gone","id":"x","incarnation":3,"handed_over":true})",
                  NatsBus::Send::kAtOnce);
  ASSERT_TRUE(run_until({a.get()}, [&] { return a->membership->find("x") == nullptr; }));
  EXPECT_TRUE(a->membership->left_after_handoff("x"));
  hb(4, "again:1");
  ASSERT_TRUE(run_until({a.get()}, [&] { return a->membership->find("x") != nullptr; }));
  EXPECT_FALSE(a->membership->left_after_handoff("x"));
  (*raw)->stop();
}

TEST(NatsBus, BadUrlIsAnInvalidArgument) {
  ManualExecutor ex;
  Registry reg;
  for (const char* url : {"nats://127.0.0.1:notaport", "", " , "}) {
    NatsOptions o;
    o.urls = url;
    auto bus = NatsBus::start(o, ex, reg);
    ASSERT_FALSE(bus.has_value()) << url;
    EXPECT_EQ(bus.error().code, Errc::kInvalidArgument);
    EXPECT_EQ(bus.error().message.rfind("--nats ", 0), 0u) << bus.error().message;
  }
}

TEST(NatsBus, PublishWithNatsDownNeverBlocks) {
  ManualExecutor ex;
  Registry reg;
  NatsOptions o =
      bus_options("nats://127.0.0.1:" + std::to_string(NatsServerForTests::free_port()), "down");
  o.max_queue = 4;
  auto started = Clock_::now();
  auto bus = NatsBus::start(o, ex, reg);
  ASSERT_TRUE(bus.has_value());
  EXPECT_LT(ms_since(started), 1000);
  EXPECT_FALSE((*bus)->connected());
  // 1000 x 16 KiB = 16 MiB: twice libnats' 8 MiB reconnect buffer, so half at least is dropped
  // whatever the timing (the tiny queue drops more).
  std::string big(16 * 1024, 'x');
  started = Clock_::now();
  for (int i = 0; i < 1000; ++i) (*bus)->publish("skyring.down", big, NatsBus::Send::kGathered);
  EXPECT_LT(ms_since(started), 1000);
  started = Clock_::now();
  (*bus)->stop();
  (*bus)->stop();  // idempotent
  EXPECT_LT(ms_since(started), 2000);
  int64_t dropped = metric(reg, "skyring_nats_dropped_total");
  int64_t published = metric(reg, "skyring_nats_published_total");
  EXPECT_EQ(dropped + published, 1000);
  EXPECT_GE(dropped, 480);
  EXPECT_EQ(metric(reg, "skyring_nats_connected"), 0);
}

TEST_F(NatsBusTest, SubscribeBeforeConnectAndNothingAfterStop) {
  server_.stop();
  ManualExecutor ex;
  Registry reg;
  auto bus = NatsBus::start(bus_options(server_.url(), "early"), ex, reg);
  ASSERT_TRUE(bus.has_value());
  std::vector<std::string> got;
  std::vector<bool> states;
  (*bus)->subscribe("early.x", [&](std::string_view, std::string_view d) { got.emplace_back(d); });
  (*bus)->on_state([&](bool up) { states.push_back(up); });
  ASSERT_TRUE(server_.start());
  ASSERT_TRUE(ex.drain_until([&] { return !states.empty() && states.back(); }));
  EXPECT_EQ(metric(reg, "skyring_nats_connected"), 1);
  (*bus)->publish("early.x", "one", NatsBus::Send::kAtOnce);
  ASSERT_TRUE(run_until({}, [&] {
    ex.run_all();
    return got.size() == 1;
  }));
  EXPECT_EQ(got[0], "one");

  ManualExecutor ex2;
  Registry reg2;
  auto other = NatsBus::start(bus_options(server_.url(), "other"), ex2, reg2);
  ASSERT_TRUE(other.has_value());
  (*bus)->stop();
  for (int i = 0; i < 10; ++i) (*other)->publish("early.x", "late", NatsBus::Send::kGathered);
  (*other)->stop();  // flushes
  ex.run_all();
  EXPECT_EQ(got.size(), 1u);
}

// Gathered messages wait for the next batch; a kAtOnce message ends the wait at once and takes
// them along (membership must not wait behind events). The interval is a minute, so only the
// kAtOnce can deliver the second message within the test's deadline.
TEST_F(NatsBusTest, AtOnceEndsTheGatheringWait) {
  ManualExecutor ex;
  Registry reg;
  NatsOptions o = bus_options(server_.url(), "gather");
  o.batch_interval_ms = 60'000;
  auto bus = NatsBus::start(o, ex, reg);
  ASSERT_TRUE(bus.has_value());
  ASSERT_TRUE(run_until({}, [&] { return (*bus)->connected(); }));
  std::vector<std::string> got;
  // On a live connection subscribe() returns once the server has the subscription.
  (*bus)->subscribe("gather.x", [&](std::string_view, std::string_view d) { got.emplace_back(d); });
  auto drain = [&](size_t n) {
    return run_until({}, [&] {
      ex.run_all();
      return got.size() >= n;
    });
  };
  // The first message after a quiet spell goes at once; the publisher then gathers.
  (*bus)->publish("gather.x", "first", NatsBus::Send::kGathered);
  ASSERT_TRUE(drain(1));
  (*bus)->publish("gather.x", "second", NatsBus::Send::kGathered);
  auto start = Clock_::now();
  while (ms_since(start) < 300) {  // not sent while the gathering wait lasts
    ex.run_all();
    ASSERT_EQ(got.size(), 1u);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  (*bus)->publish("gather.x", "now", NatsBus::Send::kAtOnce);
  ASSERT_TRUE(drain(3));
  EXPECT_EQ(got, (std::vector<std::string>{"first", "second", "now"}));
  (*bus)->stop();
}

TEST_F(EventTest, TimerAndNodeEventsAreJson) {
  ManualExecutor ex_pub, ex_sub;
  Registry reg_pub, reg_sub;
  auto pub = NatsBus::start(bus_options(server_.url(), "pub"), ex_pub, reg_pub);
  auto sub = NatsBus::start(bus_options(server_.url(), "sub"), ex_sub, reg_sub);
  ASSERT_TRUE(pub.has_value() && sub.has_value());
  std::vector<std::pair<std::string, std::string>> got;
  for (std::string_view subject : {kTimerEventsSubject, kNodeEventsSubject}) {
    (*sub)->subscribe(std::string(subject),
                      [&](std::string_view s, std::string_view d) { got.emplace_back(s, d); });
  }
  ManualClock clock(1'700'000'000'123'456);
  EventPublisher events(**pub, "node-1", "prod", &clock);
  TimerRecord r;
  r.id = "abc-123";
  r.state = State::kPending;
  r.created_us = 1'700'000'000'000'999;
  r.due_us = 1'700'000'005'000'999;
  r.timeout_ms = 5000;
  r.attempts = 2;
  r.callback = {"http", "post", "http://example.com/hook?a=\"b\"", {}};
  r.last_error = std::string("bad \"gateway\"\n") + static_cast<char>(0xff);

  // The subscription may not have reached the server yet: publish until one arrives.
  ASSERT_TRUE(run_until({}, [&] {
    if (got.empty()) events.on_timer(TimerEvent::kCreate, r);
    ex_sub.run_all();
    return !got.empty();
  }));
  EXPECT_EQ(got[0].first, "skyring:events");
  json::error_code ec;
  json::value v = json::parse(got[0].second, ec);
  ASSERT_FALSE(ec) << got[0].second;
  const json::object& o = v.as_object();
  EXPECT_EQ(o.at("type"), "create");
  EXPECT_EQ(o.at("node"), "node-1");
  EXPECT_EQ(o.at("cluster"), "prod");
  EXPECT_EQ(o.at("timer"), "abc-123");
  EXPECT_EQ(o.at("created").to_number<int64_t>(), 1'700'000'000'000);
  EXPECT_EQ(o.at("due").to_number<int64_t>(), 1'700'000'005'000);
  EXPECT_EQ(o.at("timeout").to_number<int64_t>(), 5000);
  EXPECT_EQ(o.at("attempt").to_number<int64_t>(), 2);
  EXPECT_EQ(o.at("state"), "pending");
  EXPECT_EQ(o.at("error"), "bad \"gateway\"\n\xEF\xBF\xBD");
  EXPECT_EQ(o.at("callback").at("transport"), "http");
  EXPECT_EQ(o.at("callback").at("method"), "post");
  EXPECT_EQ(o.at("callback").at("uri"), "http://example.com/hook?a=\"b\"");
  EXPECT_EQ(o.at("time").to_number<int64_t>(), 1'700'000'000'123);

  got.clear();
  r.last_error.clear();
  events.on_timer(TimerEvent::kSuccess, r);
  events.node_event("ready", R"("count":3)");
  // Late copies of the create may still arrive: look for the two new events.
  auto find = [&](std::string_view subject, std::string_view type) -> const std::string* {
    for (const auto& [s, d] : got) {
      if (s == subject && d.find(fmt::format(R"({{"type":"{}")", type)) == 0) return &d;
    }
    return nullptr;
  };
  ASSERT_TRUE(run_until({}, [&] {
    ex_sub.run_all();
    return find(kTimerEventsSubject, "success") != nullptr &&
           find(kNodeEventsSubject, "ready") != nullptr;
  }));
  json::value success = json::parse(*find(kTimerEventsSubject, "success"));
  EXPECT_EQ(success.at("type"), "success");
  EXPECT_FALSE(success.as_object().contains("error"));
  const std::string& ready_text = *find(kNodeEventsSubject, "ready");
  json::value ready = json::parse(ready_text, ec);
  ASSERT_FALSE(ec) << ready_text;
  EXPECT_EQ(ready.at("type"), "ready");
  EXPECT_EQ(ready.at("node"), "node-1");
  EXPECT_EQ(ready.at("cluster"), "prod");
  EXPECT_EQ(ready.at("count").to_number<int64_t>(), 3);
  EXPECT_EQ(ready.at("time").to_number<int64_t>(), 1'700'000'000'123);
  (*pub)->stop();
  (*sub)->stop();
}

}  // namespace
}  // namespace skyring::cluster
