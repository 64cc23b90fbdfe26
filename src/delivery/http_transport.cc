#include "delivery/http_transport.h"

#include <array>
#include <chrono>
#include <deque>
#include <exception>
#include <iterator>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <curl/curl.h>
#include <boost/url/parse.hpp>

#include "base/ascii.h"
#include "base/log.h"
#include "base/thread.h"
#include "base/version.h"
#include "delivery/plain_http_client.h"

namespace skyring {
namespace {

constexpr std::array<std::string_view, 7> kMethods = {"post", "put",     "patch", "delete",
                                                      "get",  "options", "head"};
// The loop's longest sleep when nothing happens; curl_multi_poll shortens it to curl's own next
// timeout, and deliver()/stop() cut it short with curl_multi_wakeup.
constexpr int kMaxPollMs = 1000;
constexpr int64_t kDefaultTimeoutMs = 10'000;  // a job without a timeout must still end

// Job headers we never pass on: ours (receivers must be able to trust them) and the ones that
// frame the message (a wrong Content-Length would desynchronise a pooled connection).
// Hop-by-hop headers belong to the connection, which the pool shares between timers.
constexpr std::array<std::string_view, 13> kReservedHeaders = {
    "user-agent",      "x-skyring-timer-id", "idempotency-key",   "x-skyring-attempt",
    "content-type",    "content-length",     "transfer-encoding", "expect",
    "connection",      "keep-alive",         "upgrade",           "te",
    "proxy-connection"};

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

bool is_reserved_header(std::string_view name) {
  for (std::string_view r : kReservedHeaders) {
    if (iequals(name, r)) return true;
  }
  return false;
}

struct HttpUri {
  std::string scheme;  // "http" or "https"
  std::string host;    // lower case, IPv6 literals keep their brackets
  uint16_t port = 0;   // default filled in
  std::string target;  // encoded path (at least "/") and query
  bool userinfo = false;
  bool ip_literal = false;  // the host is an IPv4 or IPv6 address, not a name
};

// Stricter than Boost.URL 1.81, which wraps out-of-range ports in port_number() and accepts
// "http://h:12x/" as port 12 with the path "x/".
std::optional<HttpUri> parse_http_uri(std::string_view text) {
  auto parsed = boost::urls::parse_uri(text);
  if (!parsed) return std::nullopt;
  const boost::urls::url_view& u = *parsed;
  HttpUri out;
  if (u.scheme_id() == boost::urls::scheme::http) {
    out.scheme = "http";
    out.port = 80;
  } else if (u.scheme_id() == boost::urls::scheme::https) {
    out.scheme = "https";
    out.port = 443;
  } else {
    return std::nullopt;
  }
  std::string_view host = u.encoded_host();
  if (host.empty()) return std::nullopt;
  out.host = ascii_lower(host);
  std::string_view path = u.encoded_path();
  if (!path.empty() && path.front() != '/') return std::nullopt;
  std::string_view port = u.port();
  if (!port.empty()) {
    std::optional<uint16_t> n = parse_port(port);
    if (!n) return std::nullopt;
    out.port = *n;
  }
  out.target = path.empty() ? "/" : std::string(path);
  if (u.has_query()) {
    out.target += '?';
    out.target += u.encoded_query();
  }
  out.userinfo = u.has_userinfo();
  out.ip_literal = u.host_type() == boost::urls::host_type::ipv4 ||
                   u.host_type() == boost::urls::host_type::ipv6;
  return out;
}

DeliveryResult result_for_status(long status) {
  DeliveryResult r;
  r.status = static_cast<int>(status);
  if (status < 100 || status > 999) {
    r.outcome = Outcome::kRetryable;
    r.status = 0;
    r.detail = "no HTTP status in the response";
  } else if (status >= 200 && status < 300) {
    r.outcome = Outcome::kSuccess;
  } else if (status >= 500 || status == 408 || status == 429) {
    r.outcome = Outcome::kRetryable;
    r.detail = fmt::format("HTTP {}", status);
  } else {
    r.outcome = Outcome::kPermanent;
    r.detail = fmt::format("HTTP {}", status);
  }
  return r;
}

DeliveryResult failure(Outcome outcome, std::string detail) {
  DeliveryResult r;
  r.outcome = outcome;
  r.detail = std::move(detail);
  return r;
}

// What a job's request carries, the same on both paths (curl and PlainHttpClient).
struct BodyPlan {
  // HEAD is the one method that never carries the data: its answer announces a body it never
  // sends, so the client must not wait for one either.
  bool has_body = false;
  // POST, PUT and PATCH without data still say "Content-Length: 0": some servers answer 411
  // to a body-less request of a method that defines one.
  bool empty_body = false;
  std::string_view content_type;  // empty: none
};

BodyPlan body_plan(const DeliveryJob& job) {
  BodyPlan p;
  p.has_body = job.data_kind != DataKind::kNone && job.method != "head";
  p.empty_body =
      !p.has_body && (job.method == "post" || job.method == "put" || job.method == "patch");
  if (p.has_body && job.data_kind == DataKind::kString) {
    p.content_type = "text/plain; charset=utf-8";
  } else if (p.has_body && job.data_kind == DataKind::kJson) {
    p.content_type = "application/json";
  }
  return p;
}

// A job header that is passed on: not one of ours nor a framing or hop-by-hop one, and nothing
// that could end its header line early.
bool forwarded(std::string_view name, std::string_view value) {
  return !name.empty() && !is_reserved_header(name) &&
         name.find_first_of(":\r\n") == std::string_view::npos &&
         value.find_first_of("\r\n") == std::string_view::npos;
}

// The request PlainHttpClient sends: the same method, headers and body the curl path sends.
std::string serialize_request(const DeliveryJob& job, const HttpUri& u) {
  const BodyPlan plan = body_plan(job);
  std::string w;
  w.reserve(256 + job.data.size());
  w += upper(job.method);
  w += ' ';
  w += u.target;
  w += " HTTP/1.1\r\n";
  std::string_view host_value;
  for (const auto& [name, value] : job.headers) {
    if (iequals(name, "host") && value.find_first_of("\r\n") == std::string::npos)
      host_value = value;
  }
  if (!host_value.empty()) {
    fmt::format_to(std::back_inserter(w), "Host: {}\r\n", host_value);
  } else if (u.port == 80) {
    fmt::format_to(std::back_inserter(w), "Host: {}\r\n", u.host);
  } else {
    fmt::format_to(std::back_inserter(w), "Host: {}:{}\r\n", u.host, u.port);
  }
  fmt::format_to(std::back_inserter(w),
                 "User-Agent: skyring/{}\r\nX-Skyring-Timer-Id: {}\r\nIdempotency-Key: {}\r\n"
                 "X-Skyring-Attempt: {}\r\n",
                 kVersion, job.timer_id, job.timer_id, job.attempt);
  if (!plan.content_type.empty()) {
    fmt::format_to(std::back_inserter(w), "Content-Type: {}\r\n", plan.content_type);
  }
  if (plan.has_body || plan.empty_body) {
    fmt::format_to(std::back_inserter(w), "Content-Length: {}\r\n",
                   plan.has_body ? job.data.size() : 0);
  }
  for (const auto& [name, value] : job.headers) {
    if (!forwarded(name, value) || iequals(name, "host")) continue;  // Host: written above
    w += name;
    w += ": ";
    w += value;
    w += "\r\n";
  }
  w += "\r\n";
  if (plan.has_body) w += job.data;
  return w;
}

DeliveryResult result_for_reply(const PlainReply& r) {
  switch (r.kind) {
    case PlainReply::Kind::kStatus:
      return result_for_status(r.status);
    case PlainReply::Kind::kFailed:
    case PlainReply::Kind::kRefused:
      return failure(Outcome::kRetryable, r.error);
    case PlainReply::Kind::kAborted:
      return failure(Outcome::kAborted, "transport stopped");
  }
  SKYRING_ASSERT(false, "unknown PlainReply kind");
  return {};
}

size_t discard_body(char*, size_t size, size_t nmemb, void*) {
  return size * nmemb;
}

std::once_flag g_curl_init_once;

// curl_global_init is not thread-safe and must precede the first multi handle.
CURLM* new_multi() {
  std::call_once(g_curl_init_once, [] {
    CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    SKYRING_ASSERT(rc == CURLE_OK, "curl_global_init failed");
  });
  return curl_multi_init();
}

}  // namespace

// Everything below `curl thread only` is touched by the loop thread alone (and by the destructor
// once that thread is joined); the rest is guarded by mu_ or immutable.
class HttpTransport::Loop {
 public:
  explicit Loop(HttpTransportOptions options);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void deliver(DeliveryJob job, DeliveryDone done);
  void stop();

 private:
  struct Queued {
    DeliveryJob job;
    DeliveryDone done;
  };
  // Heap-allocated so that the pointers curl keeps (body, header list, CURLOPT_PRIVATE) stay
  // valid until the easy handle leaves the multi handle.
  struct Transfer {
    DeliveryJob job;
    DeliveryDone done;
    curl_slist* headers = nullptr;
  };

  void run();
  void start(Queued queued);
  CURLcode configure(CURL* easy, Transfer& t);
  void drain_finished();
  // Detaches the easy handle from the multi handle and keeps it for the next job.
  void release(CURL* easy, Transfer& t);
  void complete(DeliveryDone& done, DeliveryResult result);
  void abort_everything(std::deque<Queued> queued);

  const HttpTransportOptions options_;
  CURLM* const multi_;

  std::mutex mu_;
  std::deque<Queued> queue_;  // guarded by mu_
  size_t outstanding_ = 0;    // guarded by mu_: queued + in flight, bounded by max_queue
  bool stopping_ = false;     // guarded by mu_

  std::mutex join_mu_;  // serialises concurrent stop() calls around join()
  std::thread thread_;
  std::thread::id thread_id_;  // set once in the constructor

  // curl thread only.
  std::unordered_map<CURL*, std::unique_ptr<Transfer>> active_;
  std::vector<CURL*> idle_easy_;  // reset handles, at most max_connections_total
};

HttpTransport::Loop::Loop(HttpTransportOptions options) : options_(options), multi_(new_multi()) {
  SKYRING_ASSERT(multi_ != nullptr, "curl_multi_init failed");
  // The connection cache belongs to the multi handle, so every transfer shares the keep-alive
  // pool. Transfers beyond a limit wait inside curl for a connection of their own host.
  curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                    static_cast<long>(options_.max_connections_total));
  curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(options_.max_connections_per_host));
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS,
                    static_cast<long>(options_.max_connections_total));
  try {
    thread_ = std::thread([this] {
      set_up_this_thread("sky-http-curl");
      run();
    });
  } catch (...) {
    SKYRING_ASSERT(false, "cannot start the http transport thread");
  }
  thread_id_ = thread_.get_id();
}

HttpTransport::Loop::~Loop() {
  SKYRING_ASSERT(std::this_thread::get_id() != thread_id_,
                 "HttpTransport destroyed from its own delivery callback");
  stop();
  for (CURL* easy : idle_easy_) curl_easy_cleanup(easy);
  curl_multi_cleanup(multi_);
}

void HttpTransport::Loop::deliver(DeliveryJob job, DeliveryDone done) {
  SKYRING_ASSERT(static_cast<bool>(done), "deliver() needs a callback");
  std::optional<DeliveryResult> rejected;
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      rejected = failure(Outcome::kAborted, "transport stopped");
    } else if (outstanding_ >= options_.max_queue) {
      rejected = failure(Outcome::kRetryable, "delivery queue full");
    } else {
      // Only the first job after the loop emptied the queue needs to wake it.
      wake = queue_.empty();
      queue_.push_back(Queued{std::move(job), std::move(done)});
      ++outstanding_;
    }
  }
  if (rejected) {
    call_done("http", done, std::move(*rejected));
  } else if (wake) {
    curl_multi_wakeup(multi_);
  }
}

void HttpTransport::Loop::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  curl_multi_wakeup(multi_);
  // From inside a callback the loop cannot be joined; it finishes once the callback returns.
  if (std::this_thread::get_id() == thread_id_) return;
  std::lock_guard lock(join_mu_);
  if (thread_.joinable()) thread_.join();
}

void HttpTransport::Loop::run() {
  for (;;) {
    std::deque<Queued> batch;
    bool stopping = false;
    {
      std::lock_guard lock(mu_);
      batch.swap(queue_);
      stopping = stopping_;
    }
    if (stopping) {
      abort_everything(std::move(batch));
      return;
    }
    for (Queued& q : batch) start(std::move(q));
    int running = 0;
    CURLMcode mc = curl_multi_perform(multi_, &running);
    if (mc != CURLM_OK)
      log::error("http transport: curl_multi_perform: {}", curl_multi_strerror(mc));
    drain_finished();
    mc = curl_multi_poll(multi_, nullptr, 0, kMaxPollMs, nullptr);
    if (mc != CURLM_OK) {
      log::error("http transport: curl_multi_poll: {}", curl_multi_strerror(mc));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // do not spin on a bad poll
    }
  }
}

void HttpTransport::Loop::start(Queued queued) {
  auto t = std::make_unique<Transfer>();
  t->job = std::move(queued.job);
  t->done = std::move(queued.done);
  CURL* easy = nullptr;
  if (!idle_easy_.empty()) {
    easy = idle_easy_.back();
    idle_easy_.pop_back();
  } else {
    easy = curl_easy_init();
    if (easy == nullptr) {
      complete(t->done, failure(Outcome::kRetryable, "curl_easy_init failed"));
      return;
    }
  }
  CURLcode rc = configure(easy, *t);
  if (rc != CURLE_OK) {
    release(easy, *t);
    complete(t->done, failure(Outcome::kRetryable, curl_easy_strerror(rc)));
    return;
  }
  CURLMcode mc = curl_multi_add_handle(multi_, easy);
  if (mc != CURLM_OK) {
    release(easy, *t);
    complete(t->done, failure(Outcome::kRetryable, curl_multi_strerror(mc)));
    return;
  }
  active_.emplace(easy, std::move(t));
}

CURLcode HttpTransport::Loop::configure(CURL* easy, Transfer& t) {
  const DeliveryJob& job = t.job;
  const bool head = job.method == "head";
  const BodyPlan plan = body_plan(job);

  std::vector<std::string> lines;
  lines.reserve(8 + job.headers.size());
  lines.push_back(fmt::format("User-Agent: skyring/{}", kVersion));
  lines.push_back(fmt::format("X-Skyring-Timer-Id: {}", job.timer_id));
  lines.push_back(fmt::format("Idempotency-Key: {}", job.timer_id));
  lines.push_back(fmt::format("X-Skyring-Attempt: {}", job.attempt));
  if (!plan.content_type.empty()) {
    lines.push_back(fmt::format("Content-Type: {}", plan.content_type));
  } else if (plan.empty_body) {
    lines.emplace_back("Content-Type:");  // "Name:" removes curl's form-urlencoded default
  }
  lines.emplace_back("Expect:");  // no 100-continue round trip before the body
  for (const auto& [name, value] : job.headers) {
    if (!forwarded(name, value)) continue;
    // curl drops "Name:" headers; "Name;" is how it sends an empty value.
    lines.push_back(value.empty() ? fmt::format("{};", name) : fmt::format("{}: {}", name, value));
  }
  for (const std::string& line : lines) {
    curl_slist* next = curl_slist_append(t.headers, line.c_str());
    if (next == nullptr) return CURLE_OUT_OF_MEMORY;
    t.headers = next;
  }

  const int64_t timeout_ms = job.timeout_ms > 0 ? job.timeout_ms : kDefaultTimeoutMs;
  const std::string method = upper(job.method);
  CURLcode rc = CURLE_OK;
  auto set = [&](CURLoption option, auto value) {
    if (rc == CURLE_OK) rc = curl_easy_setopt(easy, option, value);
  };
  set(CURLOPT_PRIVATE, static_cast<void*>(&t));
  set(CURLOPT_URL, job.uri.c_str());
  set(CURLOPT_PROTOCOLS_STR, "http,https");
  set(CURLOPT_NOSIGNAL, 1L);
  set(CURLOPT_FOLLOWLOCATION, 0L);
  set(CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
  set(CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options_.connect_timeout_ms));
  set(CURLOPT_TCP_KEEPALIVE, 1L);
  set(CURLOPT_WRITEFUNCTION, &discard_body);
  set(CURLOPT_HTTPHEADER, t.headers);
  if (head) set(CURLOPT_NOBODY, 1L);  // CUSTOMREQUEST "HEAD" alone would wait for a body
  if (plan.has_body || plan.empty_body) {
    set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(job.data.size()));
    set(CURLOPT_POSTFIELDS, job.data.c_str());  // not copied: t outlives the transfer
  }
  set(CURLOPT_CUSTOMREQUEST, method.c_str());  // curl copies it
  return rc;
}

void HttpTransport::Loop::drain_finished() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* easy = msg->easy_handle;
    const CURLcode rc = msg->data.result;  // msg is invalid once the handle is removed
    auto it = active_.find(easy);
    SKYRING_ASSERT(it != active_.end(), "curl finished a transfer we do not know");
    std::unique_ptr<Transfer> t = std::move(it->second);
    active_.erase(it);
    DeliveryResult result;
    if (rc == CURLE_OK) {
      long status = 0;
      curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
      result = result_for_status(status);
    } else {
      result = failure(Outcome::kRetryable, curl_easy_strerror(rc));
    }
    release(easy, *t);
    complete(t->done, std::move(result));
  }
}

void HttpTransport::Loop::release(CURL* easy, Transfer& t) {
  curl_multi_remove_handle(multi_, easy);  // a no-op for a handle that was never added
  curl_slist_free_all(t.headers);
  t.headers = nullptr;
  if (idle_easy_.size() < options_.max_connections_total) {
    curl_easy_reset(easy);
    idle_easy_.push_back(easy);
  } else {
    curl_easy_cleanup(easy);
  }
}

void HttpTransport::Loop::complete(DeliveryDone& done, DeliveryResult result) {
  {
    std::lock_guard lock(mu_);
    --outstanding_;
  }
  call_done("http", done, std::move(result));
}

void HttpTransport::Loop::abort_everything(std::deque<Queued> queued) {
  std::vector<std::unique_ptr<Transfer>> in_flight;
  in_flight.reserve(active_.size());
  for (auto& [easy, t] : active_) {
    release(easy, *t);
    in_flight.push_back(std::move(t));
  }
  active_.clear();
  const size_t aborted = in_flight.size() + queued.size();
  if (aborted > 0) log::debug("http transport: stopping, {} deliveries aborted", aborted);
  for (auto& t : in_flight) complete(t->done, failure(Outcome::kAborted, "transport stopped"));
  for (Queued& q : queued) complete(q.done, failure(Outcome::kAborted, "transport stopped"));
}

HttpTransport::HttpTransport(HttpTransportOptions options)
    : loop_(std::make_unique<Loop>(options)) {
  PlainHttpOptions plain;
  plain.max_queue = options.max_queue;
  plain.max_connections_per_host = options.max_connections_per_host;
  plain.max_connections_total = options.max_connections_total;
  plain.connect_timeout_ms = options.connect_timeout_ms;
  plain_ = std::make_unique<PlainHttpClient>(plain);
}

HttpTransport::~HttpTransport() {
  stop();
}

Result<void> HttpTransport::validate(std::string_view method, std::string_view uri) const {
  bool known = false;
  for (std::string_view m : kMethods) known = known || method == m;
  if (!known) {
    return fail(Errc::kInvalidArgument,
                "callback.method must be one of post, put, patch, delete, get, options, head");
  }
  if (!parse_http_uri(uri)) {
    return fail(Errc::kInvalidArgument, "callback.uri must be an http or https URL");
  }
  return {};
}

std::string HttpTransport::destination(std::string_view uri) const {
  std::optional<HttpUri> u = parse_http_uri(uri);
  if (!u) return std::string(uri);
  return fmt::format("{}://{}:{}", u->scheme, u->host, u->port);
}

void HttpTransport::deliver(DeliveryJob job, DeliveryDone done) {
  std::optional<HttpUri> u = parse_http_uri(job.uri);
  if (!u || u->scheme != "http" || u->userinfo || !u->ip_literal) {
    return loop_->deliver(std::move(job), std::move(done));
  }
  PlainRequest req;
  req.host = u->host;
  req.port = u->port;
  req.head = job.method == "head";
  req.timeout_ms = job.timeout_ms > 0 ? job.timeout_ms : kDefaultTimeoutMs;
  req.wire = serialize_request(job, *u);
  plain_->send(std::move(req), [done = std::move(done)](PlainReply r) mutable {
    call_done("http", done, result_for_reply(r));
  });
}

void HttpTransport::stop() {
  plain_->stop();
  loop_->stop();
}

}  // namespace skyring
