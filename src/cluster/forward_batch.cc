#include "cluster/forward_batch.h"

#include <algorithm>
#include <deque>
#include <unordered_map>

#include <fmt/format.h>

#include "cluster/wire.h"

namespace skyring::cluster {
namespace {

constexpr std::string_view kBatchMagic = "SKF1";
constexpr std::string_view kAnswerMagic = "SKA1";
constexpr uint32_t kMaxHeadersPerEntry = 64;

void put_str(std::string& out, std::string_view s) {
  put_u32(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

bool get_str(std::string_view& in, std::string_view* s) {
  uint32_t n = 0;
  if (!get_u32(in, &n) || in.size() < n) return false;
  *s = in.substr(0, n);
  in.remove_prefix(n);
  return true;
}

Error bad(std::string_view what) {
  return Error{Errc::kInvalidArgument, fmt::format("malformed forward batch: {}", what)};
}

size_t encoded_size(const PeerRequest& r) {
  size_t n = 4 + r.method.size() + 4 + r.target.size() + 4 + 4 + r.body.size();
  for (const auto& [k, v] : r.headers) n += 8 + k.size() + v.size();
  return n;
}

void encode_request(std::string& out, const PeerRequest& r) {
  put_str(out, r.method);
  put_str(out, r.target);
  put_u32(out, static_cast<uint32_t>(r.headers.size()));
  for (const auto& [k, v] : r.headers) {
    put_str(out, k);
    put_str(out, v);
  }
  put_str(out, r.body);
}

}  // namespace

Result<std::vector<ForwardedRequest>> decode_forward_batch(std::string_view in, size_t max_requests,
                                                           int max_hops) {
  if (!in.starts_with(kBatchMagic)) return tl::unexpected(bad("no SKF1 magic"));
  in.remove_prefix(kBatchMagic.size());
  uint32_t count = 0;
  if (!get_u32(in, &count)) return tl::unexpected(bad("truncated count"));
  if (count == 0 || count > max_requests) {
    return tl::unexpected(bad(fmt::format("{} requests (1 to {} allowed)", count, max_requests)));
  }
  std::vector<ForwardedRequest> out;
  out.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    ForwardedRequest r;
    uint32_t headers = 0;
    if (!get_str(in, &r.method) || !get_str(in, &r.target) || !get_u32(in, &headers)) {
      return tl::unexpected(bad(fmt::format("request {} truncated", i)));
    }
    if (headers > kMaxHeadersPerEntry) {
      return tl::unexpected(bad(fmt::format("request {} has {} headers", i, headers)));
    }
    for (uint32_t h = 0; h < headers; ++h) {
      std::string_view k, v;
      if (!get_str(in, &k) || !get_str(in, &v)) {
        return tl::unexpected(bad(fmt::format("request {} truncated in its headers", i)));
      }
      if (iequals(k, "x-timer-id")) {
        r.timer_id = v;
      } else if (iequals(k, "content-type")) {
        r.content_type = v;
      } else if (iequals(k, "x-skyring-hops")) {
        r.hops = parse_hops(v, max_hops);
      } else if (iequals(k, "x-skyring-fallback")) {
        r.fallback = true;
      }
    }
    if (!get_str(in, &r.body)) return tl::unexpected(bad(fmt::format("request {} truncated", i)));
    out.push_back(r);
  }
  if (!in.empty())
    return tl::unexpected(bad(fmt::format("{} bytes after the last request", in.size())));
  return out;
}

ForwardAnswerWriter::ForwardAnswerWriter(size_t count) {
  out_.append(kAnswerMagic);
  put_u32(out_, static_cast<uint32_t>(count));
}

void ForwardAnswerWriter::add(int status, std::string_view content_type,
                              const std::vector<std::pair<std::string, std::string>>& headers,
                              std::string_view body) {
  put_u32(out_, static_cast<uint32_t>(status));
  put_str(out_, content_type);
  put_u32(out_, static_cast<uint32_t>(headers.size()));
  for (const auto& [k, v] : headers) {
    put_str(out_, k);
    put_str(out_, v);
  }
  put_str(out_, body);
}

Result<std::vector<PeerResponse>> decode_forward_answers(std::string_view in, size_t expected) {
  auto bad_answer = [](std::string_view what) {
    return tl::unexpected(
        Error{Errc::kInvalidArgument, fmt::format("malformed forward answer: {}", what)});
  };
  if (!in.starts_with(kAnswerMagic)) return bad_answer("no SKA1 magic");
  in.remove_prefix(kAnswerMagic.size());
  uint32_t count = 0;
  if (!get_u32(in, &count) || count != expected) {
    return bad_answer(fmt::format("{} answers for {} requests", count, expected));
  }
  std::vector<PeerResponse> out;
  out.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    PeerResponse p;
    p.kind = PeerResponse::Kind::kAnswered;
    uint32_t status = 0, headers = 0;
    std::string_view ct, body;
    if (!get_u32(in, &status) || !get_str(in, &ct) || !get_u32(in, &headers)) {
      return bad_answer(fmt::format("answer {} truncated", i));
    }
    if (status < 100 || status > 599 || headers > kMaxHeadersPerEntry) {
      return bad_answer(fmt::format("answer {}: status {}, {} headers", i, status, headers));
    }
    p.status = static_cast<int>(status);
    if (!ct.empty()) p.headers.emplace_back("Content-Type", std::string(ct));
    for (uint32_t h = 0; h < headers; ++h) {
      std::string_view k, v;
      if (!get_str(in, &k) || !get_str(in, &v)) {
        return bad_answer(fmt::format("answer {} truncated in its headers", i));
      }
      p.headers.emplace_back(std::string(k), std::string(v));
    }
    if (!get_str(in, &body)) return bad_answer(fmt::format("answer {} truncated", i));
    p.body = std::string(body);
    out.push_back(std::move(p));
  }
  if (!in.empty()) return bad_answer(fmt::format("{} bytes after the last answer", in.size()));
  return out;
}

struct ForwardBatcher::State : std::enable_shared_from_this<ForwardBatcher::State> {
  using Done = std::function<void(PeerResponse)>;
  struct Waiting {
    PeerRequest request;
    Done done;
  };
  struct Peer {
    size_t in_flight = 0;
    std::deque<Waiting> queue;
  };

  State(PeerClient& p, Executor& x, ForwardBatchOptions o, Registry& metrics)
      : peers(p),
        executor(x),
        options(std::move(o)),
        batches(metrics.counter("skyring_cluster_forward_batches_total",
                                "Forward batches sent (two or more forwarded requests in one "
                                "exchange)")),
        batched(metrics.counter("skyring_cluster_forward_batched_total",
                                "Forwarded requests that went in a batch")),
        refused(metrics.counter("skyring_cluster_forward_queue_full_total",
                                "Forwarded requests refused: the forward queue was full")),
        queued_gauge(metrics.gauge("skyring_cluster_forward_queued",
                                   "Forwarded requests waiting for an exchange with their owner")) {
    options.in_flight_per_peer = std::max<size_t>(1, options.in_flight_per_peer);
    options.max_requests = std::max<size_t>(1, options.max_requests);
  }

  void send(PeerRequest r, Done done) {
    Peer& peer = by_address[r.address];
    if (peer.in_flight < options.in_flight_per_peer && peer.queue.empty()) {
      ++peer.in_flight;
      std::string address = r.address;
      return send_one(std::move(address), Waiting{std::move(r), std::move(done)});
    }
    if (queued >= options.max_queued) {
      refused.inc();
      PeerResponse p;
      p.kind = PeerResponse::Kind::kRefused;
      p.error =
          fmt::format("{} forwarded requests already wait for their owners", options.max_queued);
      executor.post([done = std::move(done), p = std::move(p)]() mutable { done(std::move(p)); });
      return;
    }
    peer.queue.push_back(Waiting{std::move(r), std::move(done)});
    ++queued;
    queued_gauge.set(static_cast<int64_t>(queued));
  }

  // One exchange ended for `address`: the next one takes what waits.
  void exchange_done(const std::string& address) {
    auto it = by_address.find(address);
    if (it == by_address.end()) return;  // cannot happen: in_flight kept the entry
    Peer& peer = it->second;
    --peer.in_flight;
    if (peer.queue.empty()) {
      if (peer.in_flight == 0) by_address.erase(it);
      return;
    }
    ++peer.in_flight;
    std::vector<Waiting> batch;
    size_t bytes = kBatchMagic.size() + 4;
    while (!peer.queue.empty() && batch.size() < options.max_requests) {
      size_t more = encoded_size(peer.queue.front().request);
      if (!batch.empty() && bytes + more > options.max_bytes) break;
      bytes += more;
      batch.push_back(std::move(peer.queue.front()));
      peer.queue.pop_front();
    }
    queued -= batch.size();
    queued_gauge.set(static_cast<int64_t>(queued));
    // One request, or one too big to share a batch: as itself.
    if (batch.size() == 1 || bytes > options.max_bytes) {
      return send_one(address, std::move(batch.front()));
    }
    send_batch(address, std::move(batch), bytes);
  }

  void send_one(std::string address, Waiting w) {
    peers.send(std::move(w.request), [self = shared_from_this(), address = std::move(address),
                                      done = std::move(w.done)](PeerResponse p) mutable {
      self->executor.post(
          [self, address = std::move(address), done = std::move(done), p = std::move(p)]() mutable {
            done(std::move(p));
            self->exchange_done(address);
          });
    });
  }

  void send_batch(const std::string& address, std::vector<Waiting> batch, size_t bytes) {
    batches.inc();
    batched.inc(batch.size());
    PeerRequest b;
    b.address = address;
    b.method = "POST";
    b.target = std::string(kForwardPath);
    b.headers.emplace_back("Content-Type", std::string(kForwardContentType));
    b.headers.emplace_back("x-skyring-cluster", options.cluster);
    b.timeout_ms = batch.front().request.timeout_ms;
    b.body.reserve(bytes);
    b.body.append(kBatchMagic);
    put_u32(b.body, static_cast<uint32_t>(batch.size()));
    std::vector<Done> dones;
    dones.reserve(batch.size());
    for (Waiting& w : batch) {
      b.timeout_ms = std::min(b.timeout_ms, w.request.timeout_ms);
      encode_request(b.body, w.request);
      dones.push_back(std::move(w.done));
    }
    peers.send(std::move(b), [self = shared_from_this(), address,
                              dones = std::move(dones)](PeerResponse p) mutable {
      self->executor.post([self, address = std::move(address), dones = std::move(dones),
                           p = std::move(p)]() mutable {
        self->answer_batch(std::move(p), dones);
        self->exchange_done(address);
      });
    });
  }

  static void answer_batch(PeerResponse p, std::vector<Done>& dones) {
    if (p.kind == PeerResponse::Kind::kAnswered && p.status == 200) {
      auto answers = decode_forward_answers(p.body, dones.size());
      if (answers) {
        for (size_t i = 0; i < dones.size(); ++i) dones[i](std::move((*answers)[i]));
        return;
      }
      p.kind = PeerResponse::Kind::kFailed;  // it answered, but what? each may have happened
      p.error = answers.error().message;
    }
    for (Done& d : dones) d(p);  // a failure, or the owner's answer to the whole batch
  }

  PeerClient& peers;
  Executor& executor;
  ForwardBatchOptions options;
  std::unordered_map<std::string, Peer> by_address;
  size_t queued = 0;
  Counter& batches;
  Counter& batched;
  Counter& refused;
  Gauge& queued_gauge;
};

ForwardBatcher::ForwardBatcher(PeerClient& peers, Executor& executor, ForwardBatchOptions options,
                               Registry& metrics)
    : state_(std::make_shared<State>(peers, executor, std::move(options), metrics)) {}

ForwardBatcher::~ForwardBatcher() = default;

void ForwardBatcher::send(PeerRequest request, std::function<void(PeerResponse)> done) {
  state_->send(std::move(request), std::move(done));
}

}  // namespace skyring::cluster
