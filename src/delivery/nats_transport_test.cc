#include "delivery/nats_transport.h"
#include "delivery/results_for_tests.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nats/nats.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/nats_server_for_tests.h"  // header-only: a nats-server child on a free port

namespace skyring {
namespace {

using delivery_tests::deliver_one;
using delivery_tests::Results;
using delivery_tests::wait_until;

using cluster::NatsServerForTests;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Generous: the machine may be shared and the test may run under sanitizers. Nothing waits for
// a deadline unless something is broken.
constexpr milliseconds kDeadline{15'000};

DeliveryJob make_job(std::string uri, std::string method = "publish") {
  DeliveryJob job;
  job.timer_id = "timer-1";
  job.attempt = 1;
  job.method = std::move(method);
  job.uri = std::move(uri);
  job.timeout_ms = 5000;
  return job;
}

struct Received {
  std::string subject;
  std::string data;
  std::map<std::string, std::string> headers;
};

// A libnats client of the test server: records messages on a subject (wildcards allowed) and
// optionally answers requests.
class Peer {
 public:
  enum class Mode { kRecord, kReply, kSilent };

  Peer(const std::string& url, const std::string& subject, Mode mode = Mode::kRecord)
      : mode_(mode) {
    natsOptions* o = nullptr;
    EXPECT_EQ(natsOptions_Create(&o), NATS_OK);
    natsOptions_SetURL(o, url.c_str());
    natsOptions_SetAllowReconnect(o, false);
    EXPECT_EQ(natsConnection_Connect(&nc_, o), NATS_OK);
    natsOptions_Destroy(o);
    if (nc_ == nullptr) return;
    EXPECT_EQ(natsConnection_Subscribe(&sub_, nc_, subject.c_str(), &Peer::on_msg, this), NATS_OK);
    EXPECT_EQ(natsConnection_FlushTimeout(nc_, 5000), NATS_OK);  // the server has the SUB
  }
  ~Peer() {
    if (sub_ != nullptr) {
      natsSubscription_Unsubscribe(sub_);
      natsSubscription_Destroy(sub_);
    }
    if (nc_ != nullptr) {
      natsConnection_Close(nc_);
      natsConnection_Destroy(nc_);
    }
    // A handler may still run after Destroy(): wait until none is inside one.
    wait_until([&] { return in_handler_.load() == 0; });
  }

  bool wait_for(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kDeadline, [&] { return got_.size() >= n; });
  }
  std::vector<Received> got() {
    std::lock_guard lock(mu_);
    return got_;
  }

 private:
  static void on_msg(natsConnection* nc, natsSubscription*, natsMsg* msg, void* closure) {
    auto* self = static_cast<Peer*>(closure);
    self->in_handler_++;
    Received r;
    r.subject = natsMsg_GetSubject(msg);
    r.data.assign(natsMsg_GetData(msg), static_cast<size_t>(natsMsg_GetDataLength(msg)));
    const char** keys = nullptr;
    int count = 0;
    if (natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK) {
      for (int i = 0; i < count; ++i) {
        const char* value = nullptr;
        if (natsMsgHeader_Get(msg, keys[i], &value) == NATS_OK) r.headers[keys[i]] = value;
      }
      free(keys);
    }
    if (self->mode_ == Mode::kReply && natsMsg_GetReply(msg) != nullptr) {
      natsConnection_PublishString(nc, natsMsg_GetReply(msg), "ok");
    }
    natsMsg_Destroy(msg);
    {
      std::lock_guard lock(self->mu_);
      self->got_.push_back(std::move(r));
    }
    self->cv_.notify_all();
    self->in_handler_--;
  }

  const Mode mode_;
  natsConnection* nc_ = nullptr;
  natsSubscription* sub_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Received> got_;
  std::atomic<int> in_handler_{0};
};

// Accepts TCP connections and never says a word: a NATS connect to it waits for INFO until
// its connect timeout.
class MuteListener {
 public:
  MuteListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(fd_, 64), 0);
    EXPECT_EQ(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
  }
  ~MuteListener() { ::close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

#define START_SERVER_OR_SKIP(server)                                            \
  do {                                                                          \
    if (NatsServerForTests::binary().empty()) GTEST_SKIP() << "no nats-server"; \
    ASSERT_TRUE((server).start()) << "nats-server did not start";               \
  } while (0)

std::string subject_uri(const NatsServerForTests& s, const std::string& subject) {
  return s.url() + "/" + subject;
}

TEST(NatsTransportTest, NameIsNats) {
  NatsTransport t;
  EXPECT_EQ(t.name(), "nats");
}

TEST(NatsTransportTest, ValidateAcceptsBothUriFormsAndBothMethods) {
  NatsTransport t(NatsTransportOptions{.default_urls = "nats://127.0.0.1:4222"});
  EXPECT_TRUE(t.validate("publish", "nats://127.0.0.1:4222/orders.created"));
  EXPECT_TRUE(t.validate("request", "nats://nats.example.com/a"));
  EXPECT_TRUE(t.validate("PUBLISH", "nats://[::1]:4222/a.b-c_d"));
  EXPECT_TRUE(t.validate("Request", "nats:orders.created"));
  EXPECT_TRUE(t.validate("publish", "NATS:x"));
}

TEST(NatsTransportTest, ValidateRejectsBadMethodsUrisAndSubjects) {
  NatsTransport t(NatsTransportOptions{.default_urls = "nats://127.0.0.1:4222"});
  auto rejected = [&](std::string_view method, std::string_view uri, std::string_view field) {
    auto r = t.validate(method, uri);
    if (r) return ::testing::AssertionFailure() << method << " " << uri << " accepted";
    if (r.error().code != Errc::kInvalidArgument ||
        r.error().message.find(field) == std::string::npos) {
      return ::testing::AssertionFailure() << method << " " << uri << ": " << r.error().message;
    }
    return ::testing::AssertionSuccess();
  };
  EXPECT_TRUE(rejected("post", "nats:a", "callback.method"));
  EXPECT_TRUE(rejected("", "nats:a", "callback.method"));
  EXPECT_TRUE(rejected("subscribe", "nats:a", "callback.method"));
  for (const char* uri : {"",
                          "http://127.0.0.1/a",
                          "nats:",
                          "nats://",
                          "nats://127.0.0.1:4222",
                          "nats://127.0.0.1:4222/",
                          "nats://:4222/a",
                          "nats://127.0.0.1:0/a",
                          "nats://127.0.0.1:65536/a",
                          "nats://h:12x/a",
                          "nats://user:pw@127.0.0.1:4222/a",
                          "nats://h o/a",
                          "nats:a..b",
                          "nats:.a",
                          "nats:a.",
                          "nats:a b",
                          "nats:a\tb",
                          "nats:a\nb",
                          "nats:*",
                          "nats:a.>",
                          "nats:a.*.c",
                          "nats:a*",
                          "nats://[::1/a"}) {
    EXPECT_TRUE(rejected("publish", uri, "callback.uri")) << uri;
  }
  EXPECT_TRUE(rejected("publish", "nats:" + std::string(1025, 'a'), "callback.uri"));
  EXPECT_TRUE(t.validate("publish", "nats:" + std::string(1024, 'a')));
}

TEST(NatsTransportTest, DefaultServersFormNeedsNats) {
  NatsTransport t;  // a node without --nats
  auto r = t.validate("publish", "nats:orders");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("--nats"), std::string::npos) << r.error().message;
  EXPECT_TRUE(t.validate("publish", "nats://127.0.0.1:4222/orders"));
  // deliver() of such a job (validated on another node, say) fails for good.
  DeliveryResult d = deliver_one(t, make_job("nats:orders"));
  EXPECT_EQ(d.outcome, Outcome::kPermanent);
}

TEST(NatsTransportTest, DestinationIsPerServer) {
  NatsTransport t(NatsTransportOptions{.default_urls = "nats://u:secret@10.0.0.1:4222, 10.0.0.2"});
  EXPECT_EQ(t.destination("nats://127.0.0.1:4333/a.b"), "nats://127.0.0.1:4333");
  EXPECT_EQ(t.destination("nats://Host.Example/a"), "nats://host.example:4222");
  EXPECT_EQ(t.destination("nats://[::1]/a"), "nats://[::1]:4222");
  EXPECT_EQ(t.destination("nats:a.b"), "nats:nats://10.0.0.1:4222,10.0.0.2");
  EXPECT_EQ(t.destination("bogus"), "bogus");
}

TEST(NatsTransportTest, PublishesExactPayloadsToBothUriForms) {
  NatsServerForTests server;
  START_SERVER_OR_SKIP(server);
  Peer peer(server.url(), "it.>");
  NatsTransport t(NatsTransportOptions{.default_urls = server.url()});

  DeliveryJob text = make_job(subject_uri(server, "it.text"));
  text.data_kind = DataKind::kString;
  text.data = "hello \"nats\"\r\nline two";
  text.timer_id = "t-text";
  text.attempt = 3;
  text.headers = {{"X-Trace", "abc"}, {"Skyring-Attempt", "99"}, {"Bad:Name", "x"}};
  EXPECT_EQ(deliver_one(t, text).outcome, Outcome::kSuccess);

  DeliveryJob object = make_job("nats:it.object", "PUBLISH");
  object.data_kind = DataKind::kJson;
  object.data = R"({"a":1,"b":[true,null]})";
  object.timer_id = "t-object";
  EXPECT_EQ(deliver_one(t, object).outcome, Outcome::kSuccess);

  DeliveryJob none = make_job("nats:it.none");
  none.timer_id = "t-none";
  EXPECT_EQ(deliver_one(t, none).outcome, Outcome::kSuccess);

  ASSERT_TRUE(peer.wait_for(3));
  auto got = peer.got();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].subject, "it.text");
  EXPECT_EQ(got[0].data, text.data);
  EXPECT_EQ(got[0].headers["Skyring-Timer-Id"], "t-text");
  EXPECT_EQ(got[0].headers["Skyring-Attempt"], "3");  // ours win over callback.headers
  EXPECT_EQ(got[0].headers["X-Trace"], "abc");
  EXPECT_EQ(got[0].headers.count("Bad:Name"), 0u);
  EXPECT_EQ(got[1].subject, "it.object");
  EXPECT_EQ(got[1].data, object.data);
  EXPECT_EQ(got[1].headers["Skyring-Timer-Id"], "t-object");
  EXPECT_EQ(got[2].subject, "it.none");
  EXPECT_EQ(got[2].data, "");
}

TEST(NatsTransportTest, ManyDeliveriesShareOneConnectionPerServer) {
  NatsServerForTests server;
  START_SERVER_OR_SKIP(server);
  Peer peer(server.url(), "many.*");
  NatsTransport t(NatsTransportOptions{.default_urls = server.url()});
  constexpr size_t kJobs = 500;
  Results results;
  for (size_t i = 0; i < kJobs; ++i) {
    DeliveryJob job = make_job(i % 2 == 0 ? subject_uri(server, "many.x") : "nats:many.y");
    job.data_kind = DataKind::kString;
    job.data = std::to_string(i);
    t.deliver(std::move(job), results.done(i));
  }
  ASSERT_TRUE(results.wait_for(kJobs));
  for (size_t i = 0; i < kJobs; ++i) {
    EXPECT_EQ(results.result(i).outcome, Outcome::kSuccess) << results.result(i).detail;
    EXPECT_EQ(results.calls(i), 1);
  }
  ASSERT_TRUE(peer.wait_for(kJobs));
  EXPECT_EQ(peer.got().size(), kJobs);
  // Two server keys (the uri's server and the default servers): two connections, not 500.
  EXPECT_EQ(t.connections_opened(), 2u);
}

TEST(NatsTransportTest, RequestSucceedsWhenAResponderAnswers) {
  NatsServerForTests server;
  START_SERVER_OR_SKIP(server);
  Peer responder(server.url(), "svc.echo", Peer::Mode::kReply);
  NatsTransport t(NatsTransportOptions{.default_urls = server.url()});
  DeliveryJob job = make_job(subject_uri(server, "svc.echo"), "request");
  job.data_kind = DataKind::kString;
  job.data = "ping";
  EXPECT_EQ(deliver_one(t, job).outcome, Outcome::kSuccess);
  job.uri = "nats:svc.echo";
  EXPECT_EQ(deliver_one(t, job).outcome, Outcome::kSuccess);
  ASSERT_TRUE(responder.wait_for(2));
  EXPECT_EQ(responder.got()[0].data, "ping");
}

TEST(NatsTransportTest, RequestWithoutResponderIsRetryable) {
  NatsServerForTests server;
  START_SERVER_OR_SKIP(server);
  NatsTransport t;
  DeliveryJob job = make_job(subject_uri(server, "svc.nobody"), "request");
  job.timeout_ms = 60'000;  // the server's "no responders" status ends it long before
  const auto start = Clock::now();
  DeliveryResult r = deliver_one(t, job);
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("no responders"), std::string::npos) << r.detail;
  EXPECT_LT(Clock::now() - start, kDeadline);
}

TEST(NatsTransportTest, RequestWithASilentResponderTimesOut) {
  NatsServerForTests server;
  START_SERVER_OR_SKIP(server);
  Peer silent(server.url(), "svc.silent", Peer::Mode::kSilent);
  NatsTransport t;
  DeliveryJob job = make_job(subject_uri(server, "svc.silent"), "request");
  job.timeout_ms = 300;
  const auto start = Clock::now();
  DeliveryResult r = deliver_one(t, job);
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("no reply"), std::string::npos) << r.detail;
  EXPECT_GE(Clock::now() - start, milliseconds(300));  // not before its timeout
  ASSERT_TRUE(silent.wait_for(1));                     // it did reach the subscriber
  // The connection is still good for the next attempt.
  Peer responder(server.url(), "svc.ok", Peer::Mode::kReply);
  EXPECT_EQ(deliver_one(t, make_job(subject_uri(server, "svc.ok"), "request")).outcome,
            Outcome::kSuccess);
  EXPECT_EQ(t.connections_opened(), 1u);
}

TEST(NatsTransportTest, ServerDownIsRetryableAndServerBackSucceeds) {
  NatsServerForTests server;
  if (NatsServerForTests::binary().empty()) GTEST_SKIP() << "no nats-server";
  NatsTransportOptions o;
  o.reconnect_wait_ms = 20;
  o.connect_timeout_ms = 1000;
  NatsTransport t(o);
  const std::string uri = subject_uri(server, "down.up");

  DeliveryResult r = deliver_one(t, make_job(uri));  // nothing listens on the port yet
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("cannot connect"), std::string::npos) << r.detail;

  ASSERT_TRUE(server.start());
  // The first attempt after the server is back may still fall in reconnect_wait: retry a while.
  EXPECT_TRUE(
      wait_until([&] { return deliver_one(t, make_job(uri)).outcome == Outcome::kSuccess; }));

  server.stop();  // the connection breaks under the transport
  EXPECT_TRUE(
      wait_until([&] { return deliver_one(t, make_job(uri)).outcome == Outcome::kRetryable; }));

  ASSERT_TRUE(server.start());
  Peer peer(server.url(), "down.up");
  EXPECT_TRUE(
      wait_until([&] { return deliver_one(t, make_job(uri)).outcome == Outcome::kSuccess; }));
  EXPECT_TRUE(peer.wait_for(1));
}

TEST(NatsTransportTest, ADeadServerDoesNotDelayAnother) {
  NatsServerForTests server;
  START_SERVER_OR_SKIP(server);
  MuteListener mute;  // connects hang until connect_timeout_ms
  NatsTransportOptions o;
  o.connect_timeout_ms = 3000;
  NatsTransport t(o);
  Results stuck;
  t.deliver(make_job("nats://127.0.0.1:" + std::to_string(mute.port()) + "/x"), stuck.done(0));
  const auto start = Clock::now();
  EXPECT_EQ(deliver_one(t, make_job(subject_uri(server, "fine"))).outcome, Outcome::kSuccess);
  EXPECT_LT(Clock::now() - start, milliseconds(3000));  // not behind the hanging connect
  ASSERT_TRUE(stuck.wait_for(1));
  EXPECT_EQ(stuck.result(0).outcome, Outcome::kRetryable);
}

TEST(NatsTransportTest, StopAbortsQueuedAndPendingJobsExactlyOnce) {
  NatsServerForTests server;
  START_SERVER_OR_SKIP(server);
  Peer silent(server.url(), "svc.silent", Peer::Mode::kSilent);
  MuteListener mute;
  NatsTransportOptions o;
  o.connect_timeout_ms = 1000;
  auto t = std::make_unique<NatsTransport>(o);
  Results results;
  constexpr size_t kPending = 20;
  constexpr size_t kQueued = 20;
  for (size_t i = 0; i < kPending; ++i) {
    DeliveryJob job = make_job(subject_uri(server, "svc.silent"), "request");
    job.timeout_ms = 600'000;
    t->deliver(std::move(job), results.done(i));
  }
  ASSERT_TRUE(silent.wait_for(kPending));  // all requests are out and waiting for a reply
  const std::string stuck_uri = "nats://127.0.0.1:" + std::to_string(mute.port()) + "/x";
  for (size_t i = 0; i < kQueued; ++i) t->deliver(make_job(stuck_uri), results.done(kPending + i));
  t->stop();
  ASSERT_EQ(results.size(), kPending + kQueued);  // all done before stop() returned
  for (size_t i = 0; i < kPending; ++i) {
    EXPECT_EQ(results.result(i).outcome, Outcome::kAborted);
  }
  for (size_t i = 0; i < kPending + kQueued; ++i) EXPECT_EQ(results.calls(i), 1) << i;
  // Behind the hanging connect the queued ones are aborted, or fail the connect (retryable).
  for (size_t i = kPending; i < kPending + kQueued; ++i) {
    Outcome out = results.result(i).outcome;
    EXPECT_TRUE(out == Outcome::kAborted || out == Outcome::kRetryable) << i;
  }
  t->stop();  // idempotent
  DeliveryResult after = deliver_one(*t, make_job(subject_uri(server, "x")));
  EXPECT_EQ(after.outcome, Outcome::kAborted);
  t.reset();
  for (size_t i = 0; i < kPending + kQueued; ++i) EXPECT_EQ(results.calls(i), 1) << i;
}

TEST(NatsTransportTest, FullQueueRefusesWithRetryable) {
  MuteListener mute;
  NatsTransportOptions o;
  o.max_queue = 3;
  o.connect_timeout_ms = 2000;
  NatsTransport t(o);
  Results results;
  const std::string uri = "nats://127.0.0.1:" + std::to_string(mute.port()) + "/x";
  for (size_t i = 0; i < 4; ++i) t.deliver(make_job(uri), results.done(i));
  ASSERT_TRUE(wait_until([&] { return results.has(3); }));
  EXPECT_EQ(results.result(3).outcome, Outcome::kRetryable);
  EXPECT_EQ(results.result(3).detail, "delivery queue full");
  t.stop();
  EXPECT_EQ(results.size(), 4u);
}

TEST(NatsTransportTest, ConnectionsAreBoundedAndIdleOnesEvicted) {
  NatsServerForTests a;
  NatsServerForTests b;
  START_SERVER_OR_SKIP(a);
  ASSERT_TRUE(b.start());
  NatsTransportOptions o;
  o.max_connections = 1;
  NatsTransport t(o);
  // A link is evictable once its worker is back to waiting, a moment after `done`: until then
  // the other server's attempt is refused (retryable), as the engine would retry it.
  auto delivered = [&](const NatsServerForTests& s) {
    return wait_until(
        [&] { return deliver_one(t, make_job(subject_uri(s, "x"))).outcome == Outcome::kSuccess; });
  };
  EXPECT_TRUE(delivered(a));
  EXPECT_TRUE(delivered(b));
  EXPECT_TRUE(delivered(a));
  EXPECT_EQ(t.connections_opened(), 3u);  // a, b (a evicted), a again (b evicted)

  // A link with a request waiting is not idle: the other server is refused, retryable.
  Peer silent(a.url(), "svc.silent", Peer::Mode::kSilent);
  Results pending;
  DeliveryJob req = make_job(subject_uri(a, "svc.silent"), "request");
  req.timeout_ms = 600'000;
  t.deliver(req, pending.done(0));
  ASSERT_TRUE(silent.wait_for(1));
  DeliveryResult r = deliver_one(t, make_job(subject_uri(b, "x")));
  EXPECT_EQ(r.outcome, Outcome::kRetryable);
  EXPECT_NE(r.detail.find("busy"), std::string::npos) << r.detail;
  t.stop();
  ASSERT_TRUE(pending.has(0));
  EXPECT_EQ(pending.result(0).outcome, Outcome::kAborted);
}

}  // namespace
}  // namespace skyring
