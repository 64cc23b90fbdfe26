// The only delivery file that sees libnats (nats_transport.h has the design notes).
//
// Threads: one worker per server key (ServerLink), which alone touches its connection,
// subscription and pending requests; libnats adds its own (reader, flusher, the global message
// delivery pool that runs on_reply, the async thread that runs on_closed). Those callbacks only
// append to the link's mailbox under its mutex and wake the worker; they hold the link through
// a shared_ptr (libnats may call them after natsConnection_Destroy() returns), released by the
// closed / subscription-complete callback.
//
// Locks: Shared::mu (transport-wide: outstanding count, server map) may be held while taking a
// ServerLink::mu, never the other way round. No lock is held while calling libnats or `done`.
#include "delivery/nats_transport.h"

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/ascii.h"
#include "base/log.h"
#include "base/thread.h"

namespace skyring {

std::string nats_error_text(int status) {
  const char* text = nats_GetLastError(nullptr);
  if (text == nullptr || *text == '\0') return natsStatus_GetText(static_cast<natsStatus>(status));
  std::string_view t(text);
  if (t.starts_with('(')) {
    if (size_t end = t.find("): "); end != std::string_view::npos) t.remove_prefix(end + 3);
  }
  return std::string(t);
}

namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr int64_t kDefaultTimeoutMs = 10'000;  // a job without a timeout must still end
constexpr size_t kMaxSubjectBytes = 1024;
constexpr uint16_t kDefaultPort = 4222;
constexpr const char* kTimerIdHeader = "Skyring-Timer-Id";
constexpr const char* kAttemptHeader = "Skyring-Attempt";
constexpr const char* kUriForms = "callback.uri must be nats://host:port/subject or nats:subject";

// Tokens of printable, non-space ASCII separated by single dots; no wildcard characters.
bool valid_subject(std::string_view s) {
  if (s.empty() || s.size() > kMaxSubjectBytes) return false;
  bool token_empty = true;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '.') {
      if (token_empty) return false;
      token_empty = true;
      continue;
    }
    if (c <= 0x20 || c >= 0x7f || c == '*' || c == '>') return false;
    token_empty = false;
  }
  return !token_empty;
}

bool valid_host(std::string_view h) {
  if (h.empty() || h.size() > 255) return false;
  if (h.front() == '[') {  // IPv6 literal
    if (h.size() < 4 || h.back() != ']') return false;
    for (char c : h.substr(1, h.size() - 2)) {
      const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                      c == ':' || c == '.';
      if (!ok) return false;
    }
    return true;
  }
  for (char c : h) {
    const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    c == '-' || c == '.' || c == '_';
    if (!ok) return false;
  }
  return true;
}

struct NatsUri {
  bool use_default = false;  // nats:subject
  std::string host;          // lower case; IPv6 literals keep their brackets
  uint16_t port = kDefaultPort;
  std::string subject;
};

Result<NatsUri> parse_nats_uri(std::string_view uri) {
  auto invalid = [](std::string why) { return fail(Errc::kInvalidArgument, std::move(why)); };
  if (uri.size() < 5 || !iequals(uri.substr(0, 5), "nats:")) return invalid(kUriForms);
  std::string_view rest = uri.substr(5);
  NatsUri out;
  std::string_view subject;
  if (rest.starts_with("//")) {
    rest.remove_prefix(2);
    const size_t slash = rest.find('/');
    if (slash == std::string_view::npos) return invalid("callback.uri has no /subject");
    std::string_view authority = rest.substr(0, slash);
    subject = rest.substr(slash + 1);
    if (authority.find('@') != std::string_view::npos) {
      return invalid("callback.uri: credentials in a nats:// uri are not supported");
    }
    std::string_view host = authority;
    std::string_view port;
    bool has_port = false;
    if (authority.starts_with('[')) {
      const size_t close = authority.find(']');
      if (close == std::string_view::npos) return invalid(kUriForms);
      host = authority.substr(0, close + 1);
      std::string_view after = authority.substr(close + 1);
      if (!after.empty()) {
        if (after.front() != ':') return invalid(kUriForms);
        port = after.substr(1);
        has_port = true;
      }
    } else if (const size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
      has_port = true;
    }
    if (!valid_host(host)) return invalid("callback.uri has no valid host");
    if (has_port) {
      std::optional<uint16_t> n = parse_port(port);
      if (!n) return invalid("callback.uri has an invalid port");
      out.port = *n;
    }
    out.host = ascii_lower(host);
  } else {
    out.use_default = true;
    subject = rest;
  }
  if (!valid_subject(subject)) {
    return invalid(
        "callback.uri: the subject must be 1-1024 printable ASCII characters without spaces, "
        "tokens separated by '.', no empty token, no wildcard ('*', '>')");
  }
  out.subject = std::string(subject);
  return out;
}

std::vector<std::string> split_urls(std::string_view urls) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= urls.size()) {
    size_t end = urls.find(',', start);
    if (end == std::string_view::npos) end = urls.size();
    std::string_view url = urls.substr(start, end - start);
    const size_t b = url.find_first_not_of(" \t");
    const size_t e = url.find_last_not_of(" \t");
    if (b != std::string_view::npos) out.emplace_back(url.substr(b, e - b + 1));
    start = end + 1;
  }
  return out;
}

// "nats:" + the default URLs without their credentials: a destination ends up in logs/metrics.
std::string default_destination(const std::vector<std::string>& urls) {
  std::string out = "nats:";
  for (size_t i = 0; i < urls.size(); ++i) {
    std::string_view u = urls[i];
    const size_t scheme = u.find("://");
    const size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
    const size_t at = u.find('@', start);
    if (i > 0) out += ',';
    if (at == std::string_view::npos) {
      out += u;
    } else {
      out += u.substr(0, start);
      out += u.substr(at + 1);
    }
  }
  return out;
}

std::string authority_key(const NatsUri& u) {
  return fmt::format("nats://{}:{}", u.host, u.port);
}

DeliveryResult result(Outcome outcome, std::string detail = {}) {
  DeliveryResult r;
  r.outcome = outcome;
  r.detail = std::move(detail);
  return r;
}

int64_t job_timeout_ms(const DeliveryJob& job) {
  return job.timeout_ms > 0 ? job.timeout_ms : kDefaultTimeoutMs;
}

// A callback.headers entry that is passed on as a NATS header: not one of ours, nothing that
// could break the header block.
bool forwarded(std::string_view name, std::string_view value) {
  if (name.empty() || iequals(name, kTimerIdHeader) || iequals(name, kAttemptHeader)) return false;
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == ':') return false;
  }
  return value.find_first_of("\r\n") == std::string_view::npos;
}

void open_library() {
  static std::once_flag once;
  // Never closed: nats_Close() at exit could race with callbacks of a connection still closing.
  std::call_once(once, [] {
    if (natsStatus s = nats_Open(-1); s != NATS_OK) {
      log::debug("nats transport: nats_Open: {}", natsStatus_GetText(s));
    }
  });
}

struct OptionsDeleter {
  void operator()(natsOptions* o) const { natsOptions_Destroy(o); }
};

// Transport-wide state shared by the links: the bound on accepted jobs and a counter.
struct Shared {
  explicit Shared(NatsTransportOptions o) : options(std::move(o)) {}

  void complete(DeliveryDone& done, DeliveryResult r) {
    {
      std::lock_guard lock(mu);
      --outstanding;
    }
    call_done("nats", done, std::move(r));
  }

  const NatsTransportOptions options;
  std::atomic<uint64_t> connections_opened{0};
  std::mutex mu;
  size_t outstanding = 0;  // guarded by mu: accepted and not yet done
  bool stopping = false;   // guarded by mu
};

struct Queued {
  DeliveryJob job;
  DeliveryDone done;
  std::string subject;
  bool request = false;
};

struct Reply {
  uint64_t token = 0;
  bool no_responders = false;
};

// One server key: its worker thread, connection, reply inbox and pending requests.
class ServerLink : public std::enable_shared_from_this<ServerLink> {
 public:
  ServerLink(Shared& shared, std::string key, std::vector<std::string> urls)
      : shared_(shared), options_(shared.options), key_(std::move(key)), urls_(std::move(urls)) {}
  ~ServerLink() = default;  // the owner joined the worker; it may run on a libnats thread
  ServerLink(const ServerLink&) = delete;
  ServerLink& operator=(const ServerLink&) = delete;

  bool start() {
    try {
      thread_ = std::thread([this] {
        set_up_this_thread("sky-nats-out");
        run();
      });
    } catch (...) {
      return false;
    }
    thread_id_ = thread_.get_id();
    return true;
  }

  void push(Queued q) {
    bool wake = false;
    {
      std::lock_guard lock(mu_);
      wake = queue_.empty();
      queue_.push_back(std::move(q));
    }
    if (wake) cv_.notify_one();
  }

  // Marks the link for closing when it has nothing queued, flushing or pending.
  bool try_evict() {
    {
      std::lock_guard lock(mu_);
      if (!queue_.empty() || busy_ || stopping_ || evicted_) return false;
      evicted_ = true;
    }
    cv_.notify_one();
    return true;
  }

  void request_stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
  }

  // Only by the owner, serialised by it.
  void join() {
    if (thread_.joinable() && thread_id_ != std::this_thread::get_id()) thread_.join();
  }
  bool exited() const { return exited_.load(); }
  std::thread::id thread_id() const { return thread_id_; }

  // libnats callbacks.
  void on_connection_closed() {
    {
      std::lock_guard lock(mu_);
      conn_event_ = true;
    }
    cv_.notify_one();
  }
  void on_reply(Reply r) {
    {
      std::lock_guard lock(mu_);
      // Anyone may publish to the inbox: keep at most what pending requests could use.
      if (stopping_ || evicted_ || replies_.size() >= options_.max_pending_requests) return;
      replies_.push_back(r);
    }
    cv_.notify_one();
  }

 private:
  struct Pending {
    Queued q;
    SteadyClock::time_point deadline;
  };

  void run();
  void process(std::deque<Queued>& batch);
  bool ensure_connected();
  natsStatus publish(const Queued& q, const std::string& reply);
  void handle_replies(const std::vector<Reply>& replies);
  void expire_requests(SteadyClock::time_point now);
  void drop_connection(const std::string& reason);
  void fail_pending(Outcome outcome, const std::string& reason);
  void complete(Queued& q, DeliveryResult r) { shared_.complete(q.done, std::move(r)); }

  Shared& shared_;
  const NatsTransportOptions options_;  // a copy: callbacks may outlive the transport
  const std::string key_;
  const std::vector<std::string> urls_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;    // guarded by mu_
  std::vector<Reply> replies_;  // guarded by mu_
  bool conn_event_ = false;     // guarded by mu_: a connection closed
  bool stopping_ = false;       // guarded by mu_
  bool evicted_ = false;        // guarded by mu_
  bool busy_ = false;           // guarded by mu_: a batch in hand or requests pending
  std::atomic<bool> exited_{false};
  std::thread thread_;
  std::thread::id thread_id_;

  // Worker thread only.
  natsConnection* nc_ = nullptr;
  natsSubscription* sub_ = nullptr;
  std::string inbox_prefix_;  // "_INBOX.<nuid>."
  uint64_t next_token_ = 1;   // per link, so a late reply of an old connection matches nothing
  std::unordered_map<uint64_t, Pending> pending_;
  std::set<std::pair<SteadyClock::time_point, uint64_t>> deadlines_;
  SteadyClock::time_point connect_allowed_{};
  std::string connect_error_;
  log::Limiter connect_log_;
  log::Limiter send_log_;
};

// The closures libnats calls back with: each holds the link until its last callback.
struct ConnClosure {
  std::shared_ptr<ServerLink> link;
};
struct SubClosure {
  std::shared_ptr<ServerLink> link;
};

void on_closed(natsConnection*, void* closure) {
  auto* c = static_cast<ConnClosure*>(closure);
  c->link->on_connection_closed();
  delete c;  // the connection's last callback
}

// The reply subject's last token is the request's token; anything else is not ours.
std::optional<uint64_t> reply_token(std::string_view subject) {
  const size_t dot = subject.rfind('.');
  if (dot == std::string_view::npos || dot + 1 == subject.size()) return std::nullopt;
  uint64_t token = 0;
  for (char ch : subject.substr(dot + 1)) {
    if (ch < '0' || ch > '9' || token > UINT64_MAX / 10) return std::nullopt;
    token = token * 10 + static_cast<uint64_t>(ch - '0');
  }
  return token;
}

void on_reply_msg(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* c = static_cast<SubClosure*>(closure);
  // The subject lives in the message: read everything before destroying it.
  std::optional<uint64_t> token = reply_token(natsMsg_GetSubject(msg));
  const bool no_responders = natsMsg_IsNoResponders(msg);
  natsMsg_Destroy(msg);
  if (token) c->link->on_reply(Reply{*token, no_responders});
}

void on_subscription_complete(void* closure) {
  delete static_cast<SubClosure*>(closure);
}

void ServerLink::run() {
  for (;;) {
    std::deque<Queued> batch;
    std::vector<Reply> replies;
    {
      std::unique_lock lock(mu_);
      busy_ = !pending_.empty();
      auto ready = [&] {
        return stopping_ || evicted_ || !queue_.empty() || !replies_.empty() || conn_event_;
      };
      if (deadlines_.empty()) {
        cv_.wait(lock, ready);
      } else {
        cv_.wait_until(lock, deadlines_.begin()->first, ready);
      }
      if (stopping_ || evicted_) break;
      const size_t n = std::min(queue_.size(), std::max<size_t>(options_.max_batch, 1));
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      replies.swap(replies_);
      conn_event_ = false;
      busy_ = true;
    }
    handle_replies(replies);
    if (nc_ != nullptr && natsConnection_IsClosed(nc_)) drop_connection("NATS connection lost");
    expire_requests(SteadyClock::now());
    if (!batch.empty()) process(batch);
  }

  std::deque<Queued> left;
  bool stopping = false;
  {
    std::lock_guard lock(mu_);
    left.swap(queue_);
    stopping = stopping_;
  }
  // An evicted link had nothing queued when it was picked, and nothing is pushed to it since.
  const Outcome outcome = stopping ? Outcome::kAborted : Outcome::kRetryable;
  const std::string why = stopping ? "transport stopped" : "NATS connection closed";
  fail_pending(outcome, why);
  for (Queued& q : left) complete(q, result(outcome, why));
  drop_connection(why);
  exited_.store(true);
}

void ServerLink::process(std::deque<Queued>& batch) {
  if (!ensure_connected()) {
    for (Queued& q : batch) complete(q, result(Outcome::kRetryable, connect_error_));
    return;
  }
  const auto now = SteadyClock::now();
  std::vector<Queued*> published;
  int64_t flush_ms = std::max<int64_t>(options_.flush_timeout_ms, 1);
  for (Queued& q : batch) {
    if (q.request && pending_.size() >= options_.max_pending_requests) {
      complete(q, result(Outcome::kRetryable, "too many NATS requests waiting for a reply"));
      continue;
    }
    std::string reply;
    uint64_t token = 0;
    if (q.request) {
      token = next_token_++;
      reply = inbox_prefix_ + std::to_string(token);
    }
    const natsStatus s = publish(q, reply);
    if (s != NATS_OK) {
      const Outcome o = s == NATS_MAX_PAYLOAD ? Outcome::kPermanent : Outcome::kRetryable;
      std::string detail = fmt::format("NATS publish failed: {}", natsStatus_GetText(s));
      uint64_t held = 0;
      if (send_log_.allow(&held)) {
        log::warn("nats transport: {} subject {}: {}{}", key_, q.subject, detail,
                  log::Limiter::note(held));
      }
      complete(q, result(o, std::move(detail)));
      continue;
    }
    if (q.request) {
      const auto deadline = now + std::chrono::milliseconds(job_timeout_ms(q.job));
      deadlines_.emplace(deadline, token);
      pending_.emplace(token, Pending{std::move(q), deadline});
    } else {
      flush_ms = std::min(flush_ms, job_timeout_ms(q.job));
      published.push_back(&q);
    }
  }
  if (!published.empty()) {
    // One PING/PONG covers every PUB before it on this connection.
    const natsStatus s = natsConnection_FlushTimeout(nc_, flush_ms);
    if (s == NATS_OK) {
      for (Queued* q : published) complete(*q, result(Outcome::kSuccess));
    } else {
      std::string detail = s == NATS_TIMEOUT
                               ? fmt::format("NATS did not confirm within {} ms", flush_ms)
                               : fmt::format("NATS flush failed: {}", natsStatus_GetText(s));
      uint64_t held = 0;
      if (send_log_.allow(&held)) {
        log::warn("nats transport: {}: {}; {} publishes retried{}", key_, detail, published.size(),
                  log::Limiter::note(held));
      }
      for (Queued* q : published) complete(*q, result(Outcome::kRetryable, detail));
      // A connection that does not answer a PING is not trusted with the next batch.
      drop_connection(detail);
    }
  }
  if (nc_ != nullptr && natsConnection_IsClosed(nc_)) drop_connection("NATS connection lost");
}

bool ServerLink::ensure_connected() {
  if (nc_ != nullptr) return true;
  const auto now = SteadyClock::now();
  if (now < connect_allowed_) return false;  // connect_error_ still says why
  connect_allowed_ =
      now + std::chrono::milliseconds(std::max<int64_t>(options_.reconnect_wait_ms, 0));
  auto failed = [&](const std::string& why) {
    connect_error_ = fmt::format("cannot connect to NATS {}: {}", key_, why);
    uint64_t held = 0;
    if (connect_log_.allow(&held)) {
      log::warn("nats transport: {}{}", connect_error_, log::Limiter::note(held));
    }
    return false;
  };

  open_library();
  natsOptions* raw = nullptr;
  if (natsStatus s = natsOptions_Create(&raw); s != NATS_OK) return failed(natsStatus_GetText(s));
  std::unique_ptr<natsOptions, OptionsDeleter> opts(raw);
  std::vector<const char*> ptrs;
  ptrs.reserve(urls_.size());
  for (const auto& u : urls_) ptrs.push_back(u.c_str());
  natsOptions* o = opts.get();
  natsStatus s = natsOptions_SetServers(o, ptrs.data(), static_cast<int>(ptrs.size()));
  if (s == NATS_OK) s = natsOptions_SetName(o, "skyring-delivery");
  if (s == NATS_OK)
    s = natsOptions_SetTimeout(o, std::max<int64_t>(options_.connect_timeout_ms, 1));
  // Our own reconnect (next attempt after reconnect_wait_ms): nothing waits in a buffer.
  if (s == NATS_OK) s = natsOptions_SetAllowReconnect(o, false);
  if (s == NATS_OK) s = natsOptions_UseGlobalMessageDelivery(o, true);
  auto* closure = new ConnClosure{shared_from_this()};
  if (s == NATS_OK) s = natsOptions_SetClosedCB(o, on_closed, closure);
  if (s != NATS_OK) {
    delete closure;
    return failed(nats_error_text(s));
  }
  natsConnection* nc = nullptr;
  s = natsConnection_Connect(&nc, o);
  if (s != NATS_OK) {
    std::string why = nats_error_text(s);
    if (nc != nullptr) {
      natsConnection_Destroy(nc);  // its closed callback frees the closure
    } else {
      delete closure;  // no connection object: no callback will come
    }
    return failed(why);
  }
  nc_ = nc;
  shared_.connections_opened.fetch_add(1);

  natsInbox* inbox = nullptr;
  s = natsInbox_Create(&inbox);
  if (s != NATS_OK) {
    drop_connection("inbox");
    return failed(nats_error_text(s));
  }
  inbox_prefix_ = std::string(inbox) + ".";
  natsInbox_Destroy(inbox);
  auto* sub_closure = new SubClosure{shared_from_this()};
  const std::string wildcard = inbox_prefix_ + "*";
  // The SUB goes out before any request on this connection: the server has it in time.
  s = natsConnection_Subscribe(&sub_, nc_, wildcard.c_str(), on_reply_msg, sub_closure);
  if (s != NATS_OK) {
    delete sub_closure;
    sub_ = nullptr;
    std::string why = nats_error_text(s);
    drop_connection("subscribe");
    return failed(why);
  }
  if (natsSubscription_SetOnCompleteCB(sub_, on_subscription_complete, sub_closure) != NATS_OK) {
    // Closed already: a handler may still be running, so the closure is left alone (leaked).
    log::warn("nats transport: {}: reply subscription closed at once", key_);
  }
  log::debug("nats transport: connected to {}", key_);
  return true;
}

natsStatus ServerLink::publish(const Queued& q, const std::string& reply) {
  const DeliveryJob& job = q.job;
  const bool has_data = job.data_kind != DataKind::kNone;
  if (has_data && job.data.size() > static_cast<size_t>(INT_MAX)) return NATS_MAX_PAYLOAD;
  const char* data = has_data ? job.data.data() : "";
  const int len = has_data ? static_cast<int>(job.data.size()) : 0;
  const char* reply_c = reply.empty() ? nullptr : reply.c_str();
  natsMsg* msg = nullptr;
  natsStatus s = natsMsg_Create(&msg, q.subject.c_str(), reply_c, data, len);
  if (s != NATS_OK) return s;
  const std::string attempt = std::to_string(job.attempt);
  s = natsMsgHeader_Set(msg, kTimerIdHeader, job.timer_id.c_str());
  if (s == NATS_OK) s = natsMsgHeader_Set(msg, kAttemptHeader, attempt.c_str());
  for (const auto& [name, value] : job.headers) {
    if (s == NATS_OK && forwarded(name, value)) {
      s = natsMsgHeader_Add(msg, name.c_str(), value.c_str());
    }
  }
  if (s == NATS_OK) s = natsConnection_PublishMsg(nc_, msg);
  natsMsg_Destroy(msg);
  if (s == NATS_NO_SERVER_SUPPORT) {  // a server before 2.2: the message without headers
    s = reply_c == nullptr
            ? natsConnection_Publish(nc_, q.subject.c_str(), data, len)
            : natsConnection_PublishRequest(nc_, q.subject.c_str(), reply_c, data, len);
  }
  return s;
}

void ServerLink::handle_replies(const std::vector<Reply>& replies) {
  for (const Reply& r : replies) {
    auto it = pending_.find(r.token);
    if (it == pending_.end()) continue;  // late (timed out) or from an old connection
    Pending p = std::move(it->second);
    pending_.erase(it);
    deadlines_.erase({p.deadline, r.token});
    if (r.no_responders) {
      complete(p.q, result(Outcome::kRetryable,
                           fmt::format("no responders on NATS subject {}", p.q.subject)));
    } else {
      complete(p.q, result(Outcome::kSuccess));
    }
  }
}

void ServerLink::expire_requests(SteadyClock::time_point now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t token = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = pending_.find(token);
    if (it == pending_.end()) continue;
    Pending p = std::move(it->second);
    pending_.erase(it);
    complete(p.q,
             result(Outcome::kRetryable, fmt::format("no reply on NATS subject {} within {} ms",
                                                     p.q.subject, job_timeout_ms(p.q.job))));
  }
}

void ServerLink::fail_pending(Outcome outcome, const std::string& reason) {
  std::unordered_map<uint64_t, Pending> pending;
  pending.swap(pending_);
  deadlines_.clear();
  for (auto& [token, p] : pending) complete(p.q, result(outcome, reason));
}

void ServerLink::drop_connection(const std::string& reason) {
  fail_pending(Outcome::kRetryable, reason);
  if (nc_ == nullptr) return;
  natsConnection_Close(nc_);
  if (sub_ != nullptr) natsSubscription_Destroy(sub_);
  natsConnection_Destroy(nc_);
  sub_ = nullptr;
  nc_ = nullptr;
}

}  // namespace

class NatsTransport::Impl {
 public:
  explicit Impl(NatsTransportOptions options)
      : shared_(std::move(options)), default_urls_(split_urls(shared_.options.default_urls)) {}

  ~Impl() { stop(); }

  Result<NatsUri> parse(std::string_view method, std::string_view uri, bool* request) const {
    const std::string m = ascii_lower(method);
    if (m != "publish" && m != "request") {
      return fail(Errc::kInvalidArgument, "callback.method must be publish or request");
    }
    *request = m == "request";
    auto u = parse_nats_uri(uri);
    if (u && u->use_default && default_urls_.empty()) {
      return fail(Errc::kInvalidArgument,
                  "callback.uri nats:<subject> publishes to the node's --nats servers, and this "
                  "node has no --nats: use nats://host:port/<subject>");
    }
    return u;
  }

  std::string destination(const NatsUri& u) const {
    return u.use_default ? default_destination(default_urls_) : authority_key(u);
  }

  void deliver(DeliveryJob job, DeliveryDone done) {
    SKYRING_ASSERT(static_cast<bool>(done), "deliver() needs a callback");
    bool request = false;
    auto u = parse(job.method, job.uri, &request);
    std::optional<DeliveryResult> rejected;
    if (!u) rejected = result(Outcome::kPermanent, u.error().message);
    if (!rejected) {
      std::lock_guard lock(shared_.mu);
      std::string why;
      std::shared_ptr<ServerLink> link;
      if (shared_.stopping) {
        rejected = result(Outcome::kAborted, "transport stopped");
      } else if (shared_.outstanding >= shared_.options.max_queue) {
        rejected = result(Outcome::kRetryable, "delivery queue full");
      } else if (link = link_for(*u, &why); link == nullptr) {
        rejected = result(Outcome::kRetryable, std::move(why));
      } else {
        ++shared_.outstanding;
        // Under Shared::mu: stop() cannot slip between the check above and the push.
        link->push(Queued{std::move(job), std::move(done), u->subject, request});
      }
    }
    if (rejected) call_done("nats", done, std::move(*rejected));
  }

  void stop() {
    std::vector<std::shared_ptr<ServerLink>> all;
    {
      std::lock_guard lock(shared_.mu);
      shared_.stopping = true;
      for (auto& [key, link] : links_) stopped_.push_back(std::move(link));
      links_.clear();
      for (auto& link : retired_) stopped_.push_back(std::move(link));
      retired_.clear();
      all = stopped_;
    }
    for (auto& link : all) link->request_stop();
    // From inside a `done` a worker only asks (it cannot join itself, and joining the others
    // could wait on a stop() that waits on it); each worker finishes once its callback returns.
    {
      std::lock_guard lock(shared_.mu);
      const auto self = std::this_thread::get_id();
      for (auto& l : stopped_) {
        if (l->thread_id() == self) return;
      }
    }
    std::lock_guard join_lock(join_mu_);
    for (auto& link : all) link->join();
  }

  bool on_worker_thread() {
    std::lock_guard lock(shared_.mu);
    const auto self = std::this_thread::get_id();
    for (auto& l : stopped_) {
      if (l->thread_id() == self) return true;
    }
    for (auto& [k, l] : links_) {
      if (l->thread_id() == self) return true;
    }
    return false;
  }

  uint64_t connections_opened() const { return shared_.connections_opened.load(); }

 private:
  // Under shared_.mu.
  std::shared_ptr<ServerLink> link_for(const NatsUri& u, std::string* why) {
    std::string key = destination(u);
    if (auto it = links_.find(key); it != links_.end()) return it->second;
    // Links that finished closing are joined at once (their last statement ran).
    std::erase_if(retired_, [](const std::shared_ptr<ServerLink>& l) {
      if (!l->exited()) return false;
      l->join();
      return true;
    });
    const size_t max = std::max<size_t>(shared_.options.max_connections, 1);
    if (links_.size() >= max) {
      for (auto it = links_.begin(); it != links_.end(); ++it) {
        if (it->second->try_evict()) {
          retired_.push_back(std::move(it->second));
          links_.erase(it);
          break;
        }
      }
    }
    if (links_.size() >= max) {
      *why = fmt::format("all {} NATS connections are busy", max);
      return nullptr;
    }
    std::vector<std::string> urls =
        u.use_default ? default_urls_ : std::vector<std::string>{authority_key(u)};
    auto link = std::make_shared<ServerLink>(shared_, key, std::move(urls));
    if (!link->start()) {
      *why = "cannot start a NATS worker thread";
      return nullptr;
    }
    links_.emplace(std::move(key), link);
    return link;
  }

  Shared shared_;
  const std::vector<std::string> default_urls_;
  // Guarded by shared_.mu.
  std::unordered_map<std::string, std::shared_ptr<ServerLink>> links_;
  std::vector<std::shared_ptr<ServerLink>> retired_;  // evicted, closing
  std::vector<std::shared_ptr<ServerLink>> stopped_;  // by stop(), joined there
  std::mutex join_mu_;  // serialises concurrent stop() calls around join()
};

NatsTransport::NatsTransport(NatsTransportOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

NatsTransport::~NatsTransport() {
  SKYRING_ASSERT(!impl_->on_worker_thread(),
                 "NatsTransport destroyed from its own delivery callback");
  stop();
}

Result<void> NatsTransport::validate(std::string_view method, std::string_view uri) const {
  bool request = false;
  auto u = impl_->parse(method, uri, &request);
  if (!u) return tl::unexpected(u.error());
  return {};
}

std::string NatsTransport::destination(std::string_view uri) const {
  auto u = parse_nats_uri(uri);
  if (!u) return std::string(uri);
  return impl_->destination(*u);
}

void NatsTransport::deliver(DeliveryJob job, DeliveryDone done) {
  impl_->deliver(std::move(job), std::move(done));
}

void NatsTransport::stop() {
  impl_->stop();
}

uint64_t NatsTransport::connections_opened() const {
  return impl_->connections_opened();
}

}  // namespace skyring
