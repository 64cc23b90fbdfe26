// Fuzz target: the HTTP request path, bytes -> Beast's request parser (configured as
// http/server.cc configures it) -> ApiRequest -> Api::handle on a real TimerEngine over a
// memory Kv, with a manual clock, a manual executor, a held committer and a held transport
// that uses the real http transport's validate() and destination().
//
// One input is one connection: requests are parsed one after the other (keep-alive,
// pipelining) until the bytes run out, a parse error closes it or a request says close. After
// each request the node is settled: executor drained, commits completed, attempts answered,
// the clock moved on and the engine ticked when its wake-up is due.
//
// Checks, beyond "no crash, no sanitizer report": every request gets exactly one answer, with
// a known status (never 500: memory storage cannot fail), header lines without line breaks,
// a JSON body where the content type says JSON, and a Location on 201; every created timer is
// still there after a restart over the same storage.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include "api/api.h"
#include "base/clock.h"
#include "base/manual_executor.h"
#include "base/metrics.h"
#include "base/result.h"
#include "delivery/http_transport.h"
#include "engine/engine_fakes.h"
#include "engine/timer_engine.h"
#include "http/api_request.h"
#include "http/server.h"
#include "storage/kv.h"
#include "storage/timer_store.h"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using namespace skyring;

constexpr int kMaxRequests = 32;         // per input: keeps one run short
constexpr int64_t kStepUs = 61'000'000;  // the clock moves this much after each request
constexpr int kMaxSettleRounds = 1000;   // a node that does not settle by then is a bug

// The real http transport's rules; its threads idle (it is never given a job). Leaked on
// purpose: it outlives every input and needs no orderly shutdown at exit.
const Transport& http_rules() {
  static const Transport* rules = new HttpTransport();
  return *rules;
}

// "http" with the real validate() and destination(); attempts wait for answer_all().
class HeldHttpTransport final : public Transport {
 public:
  std::string_view name() const override { return "http"; }
  Result<void> validate(std::string_view method, std::string_view uri) const override {
    return http_rules().validate(method, uri);
  }
  std::string destination(std::string_view uri) const override {
    return http_rules().destination(uri);
  }
  void deliver(DeliveryJob job, DeliveryDone done) override {
    SKYRING_ASSERT(!job.timer_id.empty() && job.attempt >= 1, "delivery job without id/attempt");
    held_.push_back(std::move(done));
  }
  void stop() override {}
  // Answers every held attempt: success, retryable and permanent failure in turn.
  size_t answer_all() {
    auto held = std::move(held_);
    held_.clear();
    for (auto& done : held) {
      switch (answered_++ % 3) {
        case 0:
          done(DeliveryResult{Outcome::kSuccess, 200, {}});
          break;
        case 1:
          done(DeliveryResult{Outcome::kRetryable, 503, "HTTP 503"});
          break;
        default:
          done(DeliveryResult{Outcome::kPermanent, 404, "HTTP 404"});
          break;
      }
    }
    return held.size();
  }

 private:
  std::vector<DeliveryDone> held_;
  size_t answered_ = 0;
};

bool known_status(int s) {
  switch (s) {
    case 200:
    case 201:
    case 202:
    case 400:
    case 404:
    case 405:
    case 409:
    case 413:
    case 503:
      return true;
    default:
      return false;
  }
}

void check_response(const ApiResponse& r, std::vector<std::string>* created) {
  SKYRING_ASSERT(known_status(r.status), "unexpected status");
  for (const auto& [name, value] : r.headers) {
    SKYRING_ASSERT((name + value).find_first_of("\r\n") == std::string::npos,
                   "a response header has a line break");
  }
  if (r.content_type == "application/json") {
    boost::system::error_code ec;
    boost::json::value v = boost::json::parse(r.body, ec);
    SKYRING_ASSERT(!ec && v.is_object(), "a JSON response is not a JSON object");
    if (r.status == 201) {
      const boost::json::value* id = v.get_object().if_contains("id");
      SKYRING_ASSERT(id != nullptr && id->is_string(), "201 without an id");
      std::string s(id->get_string());
      SKYRING_ASSERT(valid_timer_id(s), "201 with an invalid id");
      bool location = false;
      for (const auto& [name, value] : r.headers) location |= name == "Location";
      SKYRING_ASSERT(location, "201 without Location");
      created->push_back(std::move(s));
    }
  }
}

// One node over a given Kv: what node.cc builds, with every collaborator held by the target.
struct Node {
  explicit Node(Kv& kv, ManualClock& c) : clock(c), store(kv), committer(kv, executor) {
    SKYRING_ASSERT(store.open().has_value(), "memory store does not open");
    auto t = std::make_unique<HeldHttpTransport>();
    transport = t.get();
    transports.add(std::move(t));
    engine.emplace(clock, executor, wakeup, store, committer, transports, EngineOptions{},
                   EngineProbe::make(metrics));
    SKYRING_ASSERT(engine->recover().has_value(), "recovery over memory storage failed");
    ApiOptions options;
    options.node_id = "fuzz";
    api.emplace(*engine, transports, metrics, clock, options);
  }

  // Runs until nothing is left to do: posted tasks, held commits, held attempts.
  void settle() {
    for (int round = 0; round < kMaxSettleRounds; ++round) {
      size_t work = executor.run_all();
      work += committer.held();
      committer.complete_all();
      work += transport->answer_all();
      if (work == 0) return;
    }
    SKYRING_ASSERT(false, "the node does not settle");
  }

  // What the IoLoop does when the engine's wake-up is due.
  void pass_time() {
    clock.advance_us(kStepUs);
    if (wakeup.last >= 0 && wakeup.last <= clock.now_us()) engine->tick();
    settle();
  }

  ManualClock& clock;
  ManualExecutor executor;
  testing::RecordingWakeup wakeup;
  TimerStore store;
  testing::HeldCommitter committer;
  TransportRegistry transports;
  HeldHttpTransport* transport = nullptr;
  Registry metrics;
  std::optional<TimerEngine> engine;
  std::optional<Api> api;
};

// Parses one request from the front of `rest` as the server would; consumes what it used.
// False when the connection would be closed without a request to hand to the Api.
bool parse_one(std::string_view* rest, http::request_parser<http::string_body>* parser) {
  HttpServerOptions server;  // the server's defaults
  limit_request_parser(*parser, server.max_header_bytes, server.max_body_bytes);
  parser->eager(true);
  beast::error_code ec;
  while (!parser->is_done()) {
    if (rest->empty()) {
      parser->put_eof(ec);  // the client sent all it will: done, or partial_message
      return !ec && parser->is_done();
    }
    size_t used = parser->put(boost::asio::buffer(rest->data(), rest->size()), ec);
    rest->remove_prefix(used);
    if (ec == http::error::need_more || (!ec && used == 0)) {
      if (used == 0) *rest = {};  // everything there is was offered: the message is cut short
      ec = {};
      continue;
    }
    if (ec) return false;  // the server answers 413, 431 or 400 itself and closes
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<Kv> kv = make_memory_kv();
  ManualClock clock;
  std::vector<std::string> created;
  {
    Node node(*kv, clock);
    for (int i = 0; i < kMaxRequests && !rest.empty(); ++i) {
      http::request_parser<http::string_body> parser;
      if (!parse_one(&rest, &parser)) break;
      auto& req = parser.get();
      ApiRequest areq = to_api_request(req);  // the server's own mapping
      int answers = 0;
      node.api->handle(areq, [&](ApiResponse r) {
        ++answers;
        check_response(r, &created);
      });
      node.settle();
      SKYRING_ASSERT(answers == 1, "a request must get exactly one answer");
      node.pass_time();
      if (!req.keep_alive()) break;
    }
  }
  // A restart over the same storage: every acknowledged create is still there.
  Node restarted(*kv, clock);
  for (const std::string& id : created) {
    int found = 0;
    restarted.engine->get(id, [&](Result<TimerRecord> r) {
      SKYRING_ASSERT(r.has_value() && r->id == id, "an acknowledged timer is gone after restart");
      ++found;
    });
    restarted.settle();
    SKYRING_ASSERT(found == 1, "get() answered more or less than once");
  }
  return 0;
}
