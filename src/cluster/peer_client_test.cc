#include "cluster/peer_client.h"

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "base/callbacks_for_tests.h"
#include "cluster/http_server_for_tests.h"

namespace skyring::cluster {
namespace {

using skyring::testing::HttpServerForTests;
using skyring::testing::RefusingPort;
using skyring::testing::test_http_answer;
using skyring::testing::TestHttpAnswer;
using skyring::testing::TestHttpRequest;
using std::chrono::milliseconds;
using Kind = PeerResponse::Kind;

// Generous: nothing waits this long unless something is broken.
constexpr milliseconds kDeadline{10'000};

// Callbacks by request index; counts calls to prove exactly-once.
class Results : public CallbackRecorder<PeerResponse> {
 public:
  Results() : CallbackRecorder<PeerResponse>(kDeadline) {}
};

PeerRequest get(const std::string& address, std::string target = "/timer/a",
                int64_t timeout_ms = 10'000) {
  PeerRequest r;
  r.address = address;
  r.method = "GET";
  r.target = std::move(target);
  r.timeout_ms = timeout_ms;
  return r;
}

// The answer to a single request (waits for it).
PeerResponse call(PeerClient& client, PeerRequest req) {
  Results results;
  client.send(std::move(req), results.done(0));
  EXPECT_TRUE(results.wait_for(1));
  return results.result(0);
}

std::optional<std::string> header(const PeerResponse& r, std::string_view name) {
  TestHttpRequest view{"", "", r.headers, ""};
  return view.header(name);
}

TestHttpAnswer ok(const TestHttpRequest&) {
  return {test_http_answer(200, "ok")};
}

TEST(PeerClient, RelaysStatusHeadersAndBody) {
  HttpServerForTests server([](const TestHttpRequest& req) {
    return TestHttpAnswer{test_http_answer(
        201, "got " + req.body,
        {{"Location", "/timer/x"}, {"x-skyring-reason", "why"}, {"Connection", "keep-alive"}})};
  });
  PeerClient client({});
  PeerRequest req;
  req.address = server.address();
  req.method = "POST";
  req.target = "/timer?x=1";
  req.headers = {{"Content-Type", "application/json"},
                 {"x-skyring-hops", "1"},
                 {"Content-Length", "999"},  // the client's own counts
                 {"Host", "elsewhere"}};
  req.body = R"({"a":1})";
  PeerResponse r = call(client, req);
  ASSERT_EQ(r.kind, Kind::kAnswered) << r.error;
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.body, R"(got {"a":1})");
  EXPECT_EQ(header(r, "location"), "/timer/x");
  EXPECT_EQ(header(r, "x-skyring-reason"), "why");
  EXPECT_FALSE(header(r, "content-length"));  // hop-by-hop and framing: dropped
  EXPECT_FALSE(header(r, "connection"));

  auto seen = server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/timer?x=1");
  EXPECT_EQ(seen[0].header("host"), server.address());
  EXPECT_EQ(seen[0].header("content-length"), "7");
  EXPECT_EQ(seen[0].header("content-type"), "application/json");
  EXPECT_EQ(seen[0].header("x-skyring-hops"), "1");
  EXPECT_EQ(seen[0].body, R"({"a":1})");
}

TEST(PeerClient, ReusesOneKeepAliveConnection) {
  HttpServerForTests server(ok);
  PeerClient client({});
  for (int i = 0; i < 50; ++i) {
    PeerResponse r = call(client, get(server.address()));
    ASSERT_EQ(r.kind, Kind::kAnswered) << r.error;
    EXPECT_EQ(r.status, 200);
  }
  EXPECT_EQ(server.connections(), 1);
}

TEST(PeerClient, ConcurrentRequestsStayWithinTheConnectionLimit) {
  HttpServerForTests server(ok);
  PeerClientOptions o;
  o.max_connections_per_peer = 2;
  PeerClient client(o);
  Results results;
  for (size_t i = 0; i < 40; ++i) client.send(get(server.address()), results.done(i));
  ASSERT_TRUE(results.wait_for(40));
  for (size_t i = 0; i < 40; ++i) {
    EXPECT_EQ(results.result(i).kind, Kind::kAnswered) << results.result(i).error;
  }
  EXPECT_LE(server.connections(), 2);
}

TEST(PeerClient, ResolvesNames) {
  HttpServerForTests server(ok);
  PeerClient client({});
  PeerResponse r = call(client, get("localhost:" + std::to_string(server.port())));
  // localhost may resolve to ::1 first; async_connect tries every address.
  ASSERT_EQ(r.kind, Kind::kAnswered) << r.error;
  EXPECT_EQ(r.status, 200);
}

TEST(PeerClient, RefusedConnectionIsNotSent) {
  RefusingPort port;
  PeerClient client({});
  auto start = std::chrono::steady_clock::now();
  PeerResponse r = call(client, get(port.address(), "/timer/a", 60'000));
  EXPECT_EQ(r.kind, Kind::kNotSent);
  EXPECT_NE(r.error.find("refused"), std::string::npos) << r.error;
  EXPECT_LT(std::chrono::steady_clock::now() - start, kDeadline);  // not the 60 s timeout
}

TEST(PeerClient, BadAddressIsNotSent) {
  PeerClient client({});
  for (std::string a : {"nohost", "1.2.3.4:", ":80", "::1:80", "[::1]:99999", "a:b"}) {
    PeerResponse r = call(client, get(a));
    EXPECT_EQ(r.kind, Kind::kNotSent) << a;
  }
  PeerRequest bad = get("127.0.0.1:1");
  bad.headers = {{"x-a", "b\r\nInjected: 1"}};
  EXPECT_EQ(call(client, bad).kind, Kind::kNotSent);
}

TEST(PeerClient, SilentPeerFailsByTheTimeout) {
  HttpServerForTests server([](const TestHttpRequest&) { return TestHttpAnswer{}; });
  PeerClient client({});
  PeerResponse r = call(client, get(server.address(), "/timer/a", 100));
  EXPECT_EQ(r.kind, Kind::kFailed);
  EXPECT_NE(r.error.find("100 ms"), std::string::npos) << r.error;
  // The connection that timed out is not reused: the next request opens another.
  PeerResponse again = call(client, get(server.address(), "/timer/a", 100));
  EXPECT_EQ(again.kind, Kind::kFailed);
  EXPECT_EQ(server.connections(), 2);
}

TEST(PeerClient, AnswerOverTheLimitFails) {
  HttpServerForTests server([](const TestHttpRequest&) {
    return TestHttpAnswer{test_http_answer(200, std::string(2000, 'x'))};
  });
  PeerClientOptions o;
  o.max_response_bytes = 1000;
  PeerClient client(o);
  PeerResponse r = call(client, get(server.address()));
  EXPECT_EQ(r.kind, Kind::kFailed);
  EXPECT_NE(r.error.find("1000"), std::string::npos) << r.error;
}

TEST(PeerClient, ConnectionClosedWithoutAnswerFails) {
  HttpServerForTests server([](const TestHttpRequest&) { return TestHttpAnswer{"", true}; });
  PeerClient client({});
  PeerResponse r = call(client, get(server.address()));
  EXPECT_EQ(r.kind, Kind::kFailed);  // it was sent: the peer may have processed it
}

TEST(PeerClient, FullQueueRefusesAtOnce) {
  HttpServerForTests server([](const TestHttpRequest&) { return TestHttpAnswer{}; });
  PeerClientOptions o;
  o.max_queue = 2;
  PeerClient client(o);
  Results results;
  client.send(get(server.address()), results.done(0));
  client.send(get(server.address()), results.done(1));
  client.send(get(server.address()), results.done(2));
  // Refused inline, before send() returned.
  EXPECT_EQ(results.calls(2), 1);
  EXPECT_EQ(results.result(2).kind, Kind::kRefused);
  client.stop();
  EXPECT_EQ(results.calls(0), 1);
  EXPECT_EQ(results.calls(1), 1);
}

TEST(PeerClient, StopAnswersEveryRequestOnce) {
  HttpServerForTests server([](const TestHttpRequest&) { return TestHttpAnswer{}; });
  PeerClientOptions o;
  o.max_connections_per_peer = 4;
  PeerClient client(o);
  Results results;
  constexpr size_t kRequests = 20;
  for (size_t i = 0; i < kRequests; ++i) client.send(get(server.address()), results.done(i));
  // Let the first four reach the server, so some are in flight and the rest wait.
  for (int i = 0; i < 10'000 && server.requests().size() < 4; ++i) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  ASSERT_EQ(server.requests().size(), 4u);
  client.stop();
  client.stop();  // idempotent
  size_t failed = 0, refused = 0;
  for (size_t i = 0; i < kRequests; ++i) {
    ASSERT_EQ(results.calls(i), 1) << i;
    Kind k = results.result(i).kind;
    failed += k == Kind::kFailed;
    refused += k == Kind::kRefused;
  }
  EXPECT_EQ(failed, 4u);
  EXPECT_EQ(refused, kRequests - 4);
  // After stop(): refused inline.
  client.send(get(server.address()), results.done(kRequests));
  EXPECT_EQ(results.result(kRequests).kind, Kind::kRefused);
}

TEST(PeerClient, DestructorStopsWithRequestsInFlight) {
  HttpServerForTests server([](const TestHttpRequest&) { return TestHttpAnswer{}; });
  Results results;
  {
    PeerClient client({});
    for (size_t i = 0; i < 5; ++i) client.send(get(server.address()), results.done(i));
  }
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(results.calls(i), 1) << i;
}

}  // namespace
}  // namespace skyring::cluster
