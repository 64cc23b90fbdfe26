#include "api/api.h"

#include <charconv>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "cluster/router.h"
#include "model/json_text.h"

namespace skyring {
namespace {

namespace json = boost::json;

ApiResponse id_body(int status, const std::string& id) {
  ApiResponse r;
  r.status = status;
  r.body = fmt::format(R"({{"id":"{}"}})", id);  // ids are [A-Za-z0-9._:-]: nothing to escape
  return r;
}

// Splits "/a/b?x=1" into path "/a/b" and query "x=1".
std::pair<std::string_view, std::string_view> split_target(std::string_view target) {
  size_t q = target.find('?');
  if (q == std::string_view::npos) return {target, {}};
  return {target.substr(0, q), target.substr(q + 1)};
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes a query component; false if malformed.
bool decode(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%') {
      if (i + 2 >= in.size()) return false;
      int h = hex(in[i + 1]), l = hex(in[i + 2]);
      if (h < 0 || l < 0) return false;
      out->push_back(static_cast<char>(h * 16 + l));
      i += 2;
    } else if (in[i] == '+') {
      out->push_back(' ');
    } else {
      out->push_back(in[i]);
    }
  }
  return true;
}

}  // namespace

Api::Api(TimerEngine& engine, const TransportRegistry& transports, Registry& metrics,
         const Clock& clock, ApiOptions options)
    : engine_(engine),
      transports_(transports),
      metrics_(metrics),
      clock_(clock),
      options_(std::move(options)),
      latency_(metrics.histogram("skyring_http_request_duration_seconds",
                                 "Time from request parsed to response ready",
                                 latency_buckets_seconds())) {}

int Api::status_for(Errc code) {
  switch (code) {
    case Errc::kInvalidArgument:
      return 400;
    case Errc::kNotFound:
      return 404;
    case Errc::kConflict:
      return 409;
    case Errc::kTooLarge:
      return 413;
    case Errc::kOverloaded:
      return 503;
    case Errc::kUnavailable:
      return 503;
    case Errc::kCorruption:
      return 500;
    case Errc::kIo:
      return 500;
  }
  return 500;
}

ApiResponse Api::error(int status, std::string_view message) {
  // The reason header is bounded: messages may quote client input (a header name, a value).
  ErrorReply e = error_reply(message);
  ApiResponse r;
  r.status = status;
  r.body = std::move(e.body);
  r.headers.emplace_back("x-skyring-reason", std::move(e.reason));
  if (status == 503) r.headers.emplace_back("Retry-After", "1");
  return r;
}

void Api::handle(const ApiRequest& req, Done done) {
  int64_t start = monotonic_us();
  Done timed = [this, start, done = std::move(done)](ApiResponse r) {
    latency_.observe((monotonic_us() - start) / 1e6);
    done(std::move(r));
  };
  if (options_.router != nullptr) return route(req, std::move(timed));
  handle_here(req, false, std::move(timed));
}

void Api::route(const ApiRequest& req, Done done) {
  const auto [path, query] = split_target(req.target);
  if (path == cluster::kForwardPath) return forward_batch(req, std::move(done));
  std::string_view id;
  if (path == "/timer" || path == "/timer/") {
    if (req.method == "POST") id = req.timer_id;
  } else if (path.starts_with("/timer/")) {
    id = path.substr(7);
  }
  // An id that is not valid names no timer anywhere: answered here (400 or 404).
  if (!id.empty() && !valid_timer_id(id)) return handle_here(req, false, std::move(done));
  cluster::RouteRequest rr;
  rr.method = req.method;
  rr.target = req.target;
  rr.timer_id = std::string(id);
  rr.body = req.body;
  rr.content_type = req.content_type;
  rr.cluster = req.cluster;
  rr.hops = req.hops;
  rr.fallback = req.fallback;
  options_.router->route(std::move(rr),
                         [this, req, done = std::move(done)](cluster::RouteDecision d) mutable {
                           if (!d.local) {
                             cluster::RouteResponse& r = d.response;
                             return done(ApiResponse{r.status, std::move(r.content_type),
                                                     std::move(r.body), std::move(r.headers)});
                           }
                           // The id chosen by the router (a POST without x-timer-id) is the one
                           // created; `d` lives until handle_here() returns, which copies what it
                           // keeps.
                           ApiRequest here = req;
                           if (!d.timer_id.empty()) here.timer_id = d.timer_id;
                           handle_here(here, d.fresh_id, std::move(done));
                         });
}

void Api::forward_batch(const ApiRequest& req, Done done) {
  const cluster::RouterOptions& ro = options_.router->options();
  if (req.method != "POST") {
    ApiResponse r = error(
        405, fmt::format("method {} is not allowed on {}", req.method, cluster::kForwardPath));
    r.headers.emplace_back("Allow", "POST");
    return done(std::move(r));
  }
  if (req.cluster != ro.cluster) {
    return done(error(403, "x-skyring-cluster must be this node's cluster name"));
  }
  auto batch = cluster::decode_forward_batch(req.body, ro.forward_batch.max_requests_in,
                                             kMaxHopsHeaderValue);
  if (!batch) return done(error(400, batch.error().message));
  // The requests are views into req.body, which lives until `done` is called: the last
  // answer encodes them all and only then answers.
  struct Gather {
    std::vector<ApiResponse> answers;
    size_t left = 0;
    Done done;
  };
  auto g = std::make_shared<Gather>();
  g->answers.resize(batch->size());
  g->left = batch->size();
  g->done = std::move(done);
  for (size_t i = 0; i < batch->size(); ++i) {
    const cluster::ForwardedRequest& f = (*batch)[i];
    auto finish = [g, i](ApiResponse r) {
      g->answers[i] = std::move(r);
      if (--g->left != 0) return;
      cluster::ForwardAnswerWriter w(g->answers.size());
      for (const ApiResponse& a : g->answers) w.add(a.status, a.content_type, a.headers, a.body);
      ApiResponse all;
      all.content_type = std::string(cluster::kForwardContentType);
      all.body = w.take();
      g->done(std::move(all));
    };
    if (split_target(f.target).first.starts_with("/cluster")) {
      finish(error(400, "a forward batch carries only timer requests"));
      continue;
    }
    ApiRequest one;
    one.method = f.method;
    one.target = f.target;
    one.timer_id = f.timer_id;
    one.body = f.body;
    one.content_type = f.content_type;
    one.cluster = req.cluster;
    one.hops = f.hops;
    one.fallback = f.fallback;
    route(one, std::move(finish));
  }
}

void Api::handle_here(const ApiRequest& req, bool fresh_id, Done timed) {
  // Not a structured binding: clang 14 (the fuzz build) cannot capture one in a lambda.
  const auto [path_part, query_part] = split_target(req.target);
  const std::string_view path = path_part, query = query_part;
  const std::string_view m = req.method;
  auto not_allowed = [&](const char* allow) {
    ApiResponse r = error(405, fmt::format("method {} is not allowed on {}", m, path));
    r.headers.emplace_back("Allow", allow);
    timed(std::move(r));
  };
  if (path == "/timer" || path == "/timer/") {
    if (m == "POST") return create(req, fresh_id, std::move(timed));
    if (m == "GET") return list(query, std::move(timed));
    return not_allowed("GET, POST");
  }
  if (path.starts_with("/timer/")) {
    std::string_view id = path.substr(7);
    if (!valid_timer_id(id)) return timed(error(404, "no timer with this id"));
    if (m == "GET") {
      return engine_.get(std::string(id), [done = std::move(timed)](Result<TimerRecord> r) {
        if (!r) return done(error(status_for(r.error().code), r.error().message));
        ApiResponse resp;
        resp.body = timer_to_json(*r);
        done(std::move(resp));
      });
    }
    if (m == "PUT") return replace(std::string(id), req, std::move(timed));
    if (m == "DELETE") {
      return engine_.cancel(std::string(id),
                            [id = std::string(id), done = std::move(timed)](Result<void> r) {
                              if (!r)
                                return done(error(status_for(r.error().code), r.error().message));
                              done(id_body(202, id));
                            });
    }
    return not_allowed("GET, PUT, DELETE");
  }
  if (path == "/ping") {
    if (m != "GET" && m != "HEAD") return not_allowed("GET");
    ApiResponse r;
    r.content_type = "text/plain; charset=utf-8";
    r.body = "pong";
    return timed(std::move(r));
  }
  if (path == "/health") {
    if (m != "GET" && m != "HEAD") return not_allowed("GET");
    return timed(health());
  }
  if (path == "/metrics") {
    if (m != "GET" && m != "HEAD") return not_allowed("GET");
    ApiResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = metrics_.render();
    return timed(std::move(r));
  }
  timed(error(404, fmt::format("no route for {} {}", m, path)));
}

Result<TimerRecord> Api::parse_body(const ApiRequest& req) {
  auto rec = parse_timer_request(req.body, clock_.now_us(), options_.parse);
  if (!rec) return rec;
  Transport* t = transports_.find(rec->callback.transport);
  if (t == nullptr) {
    return fail(
        Errc::kInvalidArgument,
        fmt::format("callback.transport '{}' is not a loaded transport", rec->callback.transport));
  }
  // Most timers name one of a few callbacks: remember the ones that passed (bounded).
  std::string key = rec->callback.transport + ' ' + rec->callback.method + ' ' + rec->callback.uri;
  if (valid_callbacks_.count(key) == 0) {
    if (auto v = t->validate(rec->callback.method, rec->callback.uri); !v) {
      return tl::unexpected(v.error());
    }
    if (valid_callbacks_.size() >= kValidCallbackCacheSize) valid_callbacks_.clear();
    valid_callbacks_.insert(std::move(key));
  }
  return rec;
}

void Api::create(const ApiRequest& req, bool fresh_id, Done done) {
  if (!req.timer_id.empty() && !valid_timer_id(req.timer_id)) {
    return done(error(400, "x-timer-id must be 1-128 characters of [A-Za-z0-9._:-]"));
  }
  auto rec = parse_body(req);
  if (!rec) return done(error(status_for(rec.error().code), rec.error().message));
  rec->id = std::string(req.timer_id);
  engine_.create(
      std::move(*rec),
      [done = std::move(done)](Result<CreateResult> r) {
        if (!r) return done(error(status_for(r.error().code), r.error().message));
        ApiResponse resp = id_body(201, r->id);
        resp.headers.emplace_back("Location", "/timer/" + r->id);
        done(std::move(resp));
      },
      fresh_id);
}

void Api::replace(std::string id, const ApiRequest& req, Done done) {
  auto rec = parse_body(req);
  if (!rec) return done(error(status_for(rec.error().code), rec.error().message));
  rec->id = id;
  engine_.replace(std::move(*rec), [id = std::move(id), done = std::move(done)](Result<void> r) {
    if (!r) return done(error(status_for(r.error().code), r.error().message));
    done(id_body(200, id));
  });
}

void Api::list(std::string_view query, Done done) {
  State state = State::kFailed;
  bool have_state = false;
  size_t limit = 100;
  std::string cursor, value;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    size_t eq = pair.find('=');
    std::string_view key = pair.substr(0, eq);
    std::string_view raw = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    if (!decode(raw, &value))
      return done(error(400, fmt::format("query parameter {} is malformed", key)));
    if (key == "state") {
      if (!parse_state(value, &state)) {
        return done(error(400,
                          "state must be one of pending, executing, retrying, succeeded, "
                          "failed, cancelled"));
      }
      have_state = true;
    } else if (key == "limit") {
      auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), limit);
      if (ec != std::errc() || p != value.data() + value.size() || limit < 1 || limit > 1000) {
        return done(error(400, "limit must be an integer from 1 to 1000"));
      }
    } else if (key == "cursor") {
      cursor = value;
    }
  }
  if (!have_state) return done(error(400, "state is required (e.g. /timer?state=failed)"));
  engine_.list(state, cursor, limit, [done = std::move(done)](Result<ListPage> page) {
    if (!page) return done(error(status_for(page.error().code), page.error().message));
    std::string body = R"({"timers":[)";
    for (size_t i = 0; i < page->timers.size(); ++i) {
      if (i > 0) body += ',';
      body += timer_to_json(page->timers[i]);
    }
    body += "],\"next_cursor\":";
    body += page->next_cursor.empty() ? std::string("null") : json_quoted(page->next_cursor);
    body += '}';
    ApiResponse r;
    r.body = std::move(body);
    done(std::move(r));
  });
}

// 200 "ok"; 200 "degraded" while quarantined records exist (the node works, an operator
// should look: the ids are in the log and the bytes under q/); 503 when storage failed.
ApiResponse Api::health() const {
  bool ok = !engine_.failed();
  size_t quarantined = engine_.quarantined();
  json::object o;
  o["status"] = !ok ? "unavailable" : quarantined > 0 ? "degraded" : "ok";
  o["node"] = options_.node_id;
  o["storage"] = !ok               ? engine_.failure()
                 : quarantined > 0 ? fmt::format("{} corrupt record(s) quarantined", quarantined)
                                   : std::string("ok");
  o["quarantined"] = quarantined;
  o["pending"] = engine_.waiting();
  o["inflight"] = engine_.inflight();
  if (!ok) o["error"] = engine_.failure();
  if (options_.router != nullptr) o["cluster"] = json::parse(options_.router->health_json());
  ApiResponse r = ok ? ApiResponse{} : error(503, engine_.failure());
  r.body = json::serialize(o);
  return r;
}

}  // namespace skyring
