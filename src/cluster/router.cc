#include "cluster/router.h"

#include <algorithm>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "base/log.h"
#include "cluster/wire.h"
#include "model/json_text.h"

namespace skyring::cluster {
namespace {

namespace json = boost::json;

// Response headers not relayed from a peer: framing and connection handling belong to each
// hop (PeerClient drops most already), Content-Type travels in RouteResponse::content_type,
// and our own server writes its Server header.
bool not_relayed(std::string_view name) {
  for (std::string_view h : {"connection", "keep-alive", "transfer-encoding", "content-length",
                             "upgrade", "te", "proxy-connection", "content-type", "server"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

bool has_header(const std::vector<std::pair<std::string, std::string>>& headers,
                std::string_view name) {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& h) { return iequals(h.first, name); });
}

// The uniform error answer (model/json_text.h), as the Api gives it, plus Retry-After on 503.
RouteResponse error(int status, std::string_view message) {
  ErrorReply e = error_reply(message);
  RouteResponse r;
  r.status = status;
  r.body = std::move(e.body);
  r.headers.emplace_back("x-skyring-reason", std::move(e.reason));
  if (status == 503) r.headers.emplace_back("Retry-After", "1");
  return r;
}

RouteDecision answer(RouteResponse r) {
  RouteDecision d;
  d.response = std::move(r);
  return d;
}

RouteDecision here(std::string timer_id, bool fresh_id) {
  RouteDecision d;
  d.local = true;
  d.timer_id = std::move(timer_id);
  d.fresh_id = fresh_id;
  return d;
}

RouteResponse relay(PeerResponse p) {
  RouteResponse r;
  r.status = p.status;
  r.body = std::move(p.body);
  for (auto& [k, v] : p.headers) {
    if (iequals(k, "content-type")) {
      r.content_type = std::move(v);
    } else if (!not_relayed(k)) {
      r.headers.emplace_back(std::move(k), std::move(v));
    }
  }
  return r;
}

// 64-bit values (hashes, the seed) as decimal strings: JavaScript numbers are exact only up to
// 2^53, and a client that reads one as a number would silently get another value.
json::string u64(uint64_t v) {
  return json::string(std::to_string(v));
}

}  // namespace

struct Router::State : std::enable_shared_from_this<Router::State> {
  State(TimerEngine& e, Membership& m, PeerClient& p, Executor& x, MoveSink& s, RouterOptions o,
        Registry& metrics)
      : engine(e),
        membership(m),
        peers(p),
        executor(x),
        moves(s),
        options(std::move(o)),
        batcher(p, x, batch_options(options), metrics),
        forwarded(metrics.counter("skyring_cluster_forwarded_total",
                                  "Requests forwarded to the timer's owner")),
        forward_failures(metrics.counter(
            "skyring_cluster_forward_failures_total",
            "Forwards and fallback lookups that got no answer (peer unreachable, timeout)")),
        fallback_lookups(
            metrics.counter("skyring_cluster_fallback_lookups_total",
                            "Lookups at an earlier owner of a timer id while moves settle")),
        hop_limit(metrics.counter("skyring_cluster_hop_limit_total",
                                  "Requests answered 503 because they reached the hop limit "
                                  "(ring views differ)")),
        joining(
            metrics.counter("skyring_cluster_joining_refusals_total",
                            "Requests answered 503 while this node did not know the ring yet")) {}

  using Done = std::function<void(RouteDecision)>;

  static ForwardBatchOptions batch_options(const RouterOptions& o) {
    ForwardBatchOptions b = o.forward_batch;
    b.cluster = o.cluster;
    return b;
  }

  void route(RouteRequest req, Done done) {
    std::string_view path = req.target.substr(0, req.target.find('?'));
    if (path == "/cluster") {
      if (req.method != "GET" && req.method != "HEAD") return done(not_allowed(req, "GET"));
      RouteResponse r;
      r.body = view_json();
      return done(answer(std::move(r)));
    }
    if (path == "/cluster/moves") return receive_moves(req, std::move(done));
    if (req.fallback) {
      // An owner asks whether this node still holds the id: answered here or "absent", never
      // forwarded again.
      if (req.timer_id.empty() || engine.holds(req.timer_id)) {
        return done(here(std::move(req.timer_id), false));
      }
      RouteResponse r = error(404, "no timer with this id");
      r.headers.emplace_back(kAbsentHeader, "1");
      return done(answer(std::move(r)));
    }
    bool fresh = false;
    bool send_id = false;  // x-timer-id goes with a forwarded request (POST /timer)
    if (req.method == "POST" && (path == "/timer" || path == "/timer/")) {
      send_id = true;
      if (req.timer_id.empty()) {
        auto id = engine.new_id();
        if (!id) {
          const Error& e = id.error();
          int status = e.code == Errc::kOverloaded || e.code == Errc::kUnavailable ? 503 : 500;
          return done(answer(error(status, e.message)));
        }
        req.timer_id = std::move(*id);
        fresh = true;
      }
    }
    if (req.timer_id.empty()) return done(here({}, false));  // not about one timer
    if (!fresh && engine.holds(req.timer_id)) return done(here(std::move(req.timer_id), false));
    if (!fresh && !membership.ring_known() && membership.ring().empty()) {
      // Joining and no member heard from yet: nobody to forward to, and answering here could
      // be a wrong 404 or a second timer. A short retryable answer (docs/cluster.md, "Routing
      // and forwarding"). Once others are known, a joining node (in nobody's ring, its own
      // included) forwards everything it does not hold.
      joining.inc();
      return done(
          answer(error(503, fmt::format("node {} is joining the ring; retry", options.self_id))));
    }
    const Member* owner = membership.ring().owner(req.timer_id);
    if (owner == nullptr || owner->id == options.self_id) {
      if (fresh) return done(here(std::move(req.timer_id), true));  // nobody else can hold it
      std::vector<Member> earlier = membership.previous_owners(req.timer_id);
      if (earlier.empty()) return done(here(std::move(req.timer_id), false));
      auto l = std::make_shared<Lookup>();
      l->request = make_request(req, send_id, true);
      l->timer_id = std::move(req.timer_id);
      l->owners = std::move(earlier);
      l->done = std::move(done);
      return ask_previous(std::move(l));
    }
    if (req.hops >= options.max_hops) {
      hop_limit.inc();
      return done(answer(
          error(503, fmt::format("request reached the hop limit ({}) at {}: the nodes' views of "
                                 "the ring differ, retry when membership settles",
                                 options.max_hops, options.self_id))));
    }
    Member to = *owner;
    PeerRequest p = make_request(req, send_id, false);
    p.address = to.address;
    forwarded.inc();
    // Alone when the owner has a free slot, else in the next batch (forward_batch.h); the
    // answer comes on the executor.
    batcher.send(std::move(p), [self = shared_from_this(), to = std::move(to),
                                done = std::move(done)](PeerResponse p) mutable {
      if (p.kind != PeerResponse::Kind::kAnswered) {
        self->forward_failures.inc();
        return done(answer(self->unreachable(to, p.error)));
      }
      done(answer(relay(std::move(p))));
    });
  }

  // Earlier owners asked in turn (newest ring first) whether they still hold the id.
  struct Lookup {
    PeerRequest request;  // sent to each, with its address
    std::string timer_id;
    std::vector<Member> owners;
    size_t next = 0;
    Done done;
  };

  void ask_previous(std::shared_ptr<Lookup> l) {
    if (l->next >= l->owners.size()) {
      return l->done(here(std::move(l->timer_id), false));  // nobody else has it
    }
    PeerRequest p = l->request;
    p.address = l->owners[l->next++].address;
    fallback_lookups.inc();
    peers.send(std::move(p), [self = shared_from_this(), l](PeerResponse p) mutable {
      self->executor.post([self, l = std::move(l), p = std::move(p)]() mutable {
        if (p.kind != PeerResponse::Kind::kAnswered) {
          self->forward_failures.inc();
          const Member& to = l->owners[l->next - 1];
          log::debug("fallback lookup of {} at {} ({}) failed: {}", l->timer_id, to.id, to.address,
                     p.error);
          return self->ask_previous(std::move(l));
        }
        if (has_header(p.headers, kAbsentHeader)) return self->ask_previous(std::move(l));
        l->done(answer(relay(std::move(p))));
      });
    });
  }

  // The request for a peer, without its address.
  PeerRequest make_request(const RouteRequest& req, bool send_id, bool fallback) const {
    PeerRequest p;
    p.method = std::string(req.method);
    p.target = std::string(req.target);
    p.body = std::string(req.body);
    p.timeout_ms = options.forward_timeout_ms;
    if (!req.content_type.empty()) p.headers.emplace_back("Content-Type", req.content_type);
    if (send_id) p.headers.emplace_back("x-timer-id", req.timer_id);
    p.headers.emplace_back(kHopsHeader, std::to_string(req.hops + 1));
    if (fallback) p.headers.emplace_back(kFallbackHeader, "1");
    return p;
  }

  RouteResponse unreachable(const Member& to, std::string_view why) const {
    return error(503, fmt::format("owner {} ({}) unreachable: {}", to.id, to.address, why));
  }

  RouteDecision not_allowed(const RouteRequest& req, const char* allow) const {
    std::string_view path = req.target.substr(0, req.target.find('?'));
    RouteResponse r = error(405, fmt::format("method {} is not allowed on {}", req.method, path));
    r.headers.emplace_back("Allow", allow);
    return answer(std::move(r));
  }

  void receive_moves(const RouteRequest& req, Done done) {
    if (req.method != "POST") return done(not_allowed(req, "POST"));
    if (req.cluster != options.cluster) {
      return done(
          answer(error(403, fmt::format("{} must be this node's cluster name", kClusterHeader))));
    }
    moves.receive_moves(req.body,
                        [done = std::move(done)](RouteResponse r) { done(answer(std::move(r))); });
  }

  std::string view_json() const {
    const Ring& ring = membership.ring();
    json::object o;
    o["node"] = options.self_id;
    o["cluster"] = options.cluster;
    json::array members;
    for (const MemberInfo& m : membership.members()) {
      members.push_back(json::object{{"id", m.member.id},
                                     {"address", m.member.address},
                                     {"state", m.leaving   ? "leaving"
                                               : m.joining ? "joining"
                                                           : "active"}});
    }
    o["members"] = std::move(members);
    o["ring_version"] = membership.ring_version();
    o["ring_fingerprint"] = fmt::format("{:016x}", ring.fingerprint());
    o["hash"] = "xxh3-64";
    o["seed"] = u64(ring.params().seed);
    o["vnodes"] = ring.params().vnodes;
    json::array points;
    points.reserve(ring.points().size());
    for (const Ring::Point& p : ring.points()) {
      points.push_back(json::array{u64(p.hash), json::string(ring.members()[p.member].id)});
    }
    o["points"] = std::move(points);
    return json::serialize(o);
  }

  std::string health_json() const {
    bool nats = options.nats_connected && options.nats_connected();
    bool known = membership.ring_known();
    json::object o;
    o["state"] = !known ? "joining" : !nats ? "degraded" : "ok";
    o["nats"] = nats ? "connected" : "disconnected";
    o["members"] = membership.members().size();
    o["ring_version"] = membership.ring_version();
    o["settled"] = membership.settled_everywhere();
    return json::serialize(o);
  }

  TimerEngine& engine;
  Membership& membership;
  PeerClient& peers;
  Executor& executor;
  MoveSink& moves;
  const RouterOptions options;
  ForwardBatcher batcher;
  Counter& forwarded;
  Counter& forward_failures;
  Counter& fallback_lookups;
  Counter& hop_limit;
  Counter& joining;
};

Router::Router(TimerEngine& engine, Membership& membership, PeerClient& peers, Executor& executor,
               MoveSink& moves, RouterOptions options, Registry& metrics)
    : state_(std::make_shared<State>(engine, membership, peers, executor, moves, std::move(options),
                                     metrics)) {}

void Router::route(RouteRequest request, std::function<void(RouteDecision)> done) {
  state_->route(std::move(request), std::move(done));
}

std::string Router::health_json() const {
  return state_->health_json();
}

std::string Router::view_json() const {
  return state_->view_json();
}

const RouterOptions& Router::options() const {
  return state_->options;
}

}  // namespace skyring::cluster
