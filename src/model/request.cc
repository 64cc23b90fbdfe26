#include "model/request.h"

#include <charconv>
#include <ctime>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "base/ascii.h"
#include "base/hash.h"

namespace skyring {
namespace json = boost::json;
namespace {

tl::unexpected<Error> bad(std::string msg) {
  return fail(Errc::kInvalidArgument, std::move(msg));
}

// Integral JSON number as int64 (doubles with a fraction are not integers).
bool as_int64(const json::value& v, int64_t* out) {
  if (v.is_int64()) {
    *out = v.get_int64();
    return true;
  }
  if (v.is_uint64()) {
    if (v.get_uint64() > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(v.get_uint64());
    return true;
  }
  if (v.is_double()) {
    double d = v.get_double();
    if (d != d || d < -9.2e18 || d > 9.2e18 || static_cast<double>(static_cast<int64_t>(d)) != d)
      return false;
    *out = static_cast<int64_t>(d);
    return true;
  }
  return false;
}

// A header name is a token: visible ASCII without separators we could misframe (':').
bool header_name_ok(std::string_view name) {
  if (name.empty()) return false;
  for (char ch : name) {
    auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f || c == ':') return false;
  }
  return true;
}

// A header value may not carry control characters (RFC 9110 section 5.5): NUL, CR and LF
// would end or split the header line on the way out, the others are rejected by receivers.
// Horizontal tab is allowed; bytes from 0x80 (UTF-8) are passed on as they are.
bool header_value_ok(std::string_view value) {
  for (char ch : value) {
    auto c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

// A header name for an error message: control and non-ASCII bytes as \xNN.
std::string printable(std::string_view s) {
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c >= 0x7f) {
      fmt::format_to(std::back_inserter(out), "\\x{:02x}", c);
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

Result<void> parse_callback(const json::value* v, Callback* cb) {
  if (v == nullptr) return bad("callback is required");
  if (!v->is_object()) return bad("callback must be an object");
  const json::object& o = v->get_object();
  const json::value* transport = o.if_contains("transport");
  if (transport == nullptr) return bad("callback.transport is required");
  if (!transport->is_string() || transport->get_string().empty())
    return bad("callback.transport must be a non-empty string");
  const json::value* method = o.if_contains("method");
  if (method == nullptr) return bad("callback.method is required");
  if (!method->is_string() || method->get_string().empty())
    return bad("callback.method must be a non-empty string");
  const json::value* uri = o.if_contains("uri");
  if (uri == nullptr) return bad("callback.uri is required");
  if (!uri->is_string() || uri->get_string().empty())
    return bad("callback.uri must be a non-empty string");
  cb->transport = ascii_lower(transport->get_string());
  cb->method = ascii_lower(method->get_string());
  cb->uri = std::string(uri->get_string());
  if (const json::value* headers = o.if_contains("headers")) {
    if (!headers->is_object()) return bad("callback.headers must be an object of strings");
    for (const auto& kv : headers->get_object()) {
      if (!kv.value().is_string())
        return bad(fmt::format("callback.headers.{} must be a string", std::string(kv.key())));
      std::string_view name = kv.key();
      if (!header_name_ok(name)) {
        return bad(fmt::format("callback.headers.{}: the name is not a valid HTTP header name",
                               printable(name)));
      }
      std::string_view value = kv.value().get_string();
      if (!header_value_ok(value)) {
        return bad(fmt::format(
            "callback.headers.{}: the value contains a control character (NUL, CR, LF, ...)",
            printable(name)));
      }
      cb->headers.emplace_back(std::string(name), std::string(value));
    }
  }
  return {};
}

Result<void> parse_retry(const json::value* v, const ParseLimits& limits, RetryPolicy* p) {
  if (v == nullptr) return {};
  if (!v->is_object()) return bad("retry must be an object");
  const json::object& o = v->get_object();
  int64_t n = 0;
  if (const json::value* a = o.if_contains("attempts")) {
    if (!as_int64(*a, &n) || n < 1 || n > static_cast<int64_t>(limits.max_attempts))
      return bad(
          fmt::format("retry.attempts must be an integer from 1 to {}", limits.max_attempts));
    p->attempts = static_cast<uint32_t>(n);
  }
  if (const json::value* b = o.if_contains("backoff_ms")) {
    if (!as_int64(*b, &n) || n < 0 || static_cast<uint64_t>(n) > limits.max_backoff_ms)
      return bad(
          fmt::format("retry.backoff_ms must be an integer from 0 to {}", limits.max_backoff_ms));
    p->backoff_ms = static_cast<uint64_t>(n);
  }
  if (const json::value* m = o.if_contains("max_backoff_ms")) {
    if (!as_int64(*m, &n) || n < 0 || static_cast<uint64_t>(n) > limits.max_backoff_ms)
      return bad(fmt::format("retry.max_backoff_ms must be an integer from 0 to {}",
                             limits.max_backoff_ms));
    p->max_backoff_ms = static_cast<uint64_t>(n);
  } else if (p->max_backoff_ms < p->backoff_ms) {
    p->max_backoff_ms = p->backoff_ms;
  }
  if (p->max_backoff_ms < p->backoff_ms)
    return bad("retry.max_backoff_ms must be >= retry.backoff_ms");
  return {};
}

bool digits(std::string_view s, size_t pos, size_t n, int* out) {
  if (pos + n > s.size()) return false;
  int v = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

int64_t days_from_civil(int y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return static_cast<int64_t>(era) * 146097 + static_cast<int64_t>(doe) - 719468;
}

}  // namespace

Result<int64_t> parse_rfc3339_ms(std::string_view s) {
  // YYYY-MM-DD(T|t| )HH:MM:SS[.fraction](Z|z|(+|-)HH:MM)
  int y, mo, d, h, mi, sec;
  if (!digits(s, 0, 4, &y) || s.size() < 19 || s[4] != '-' || !digits(s, 5, 2, &mo) ||
      s[7] != '-' || !digits(s, 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      !digits(s, 11, 2, &h) || s[13] != ':' || !digits(s, 14, 2, &mi) || s[16] != ':' ||
      !digits(s, 17, 2, &sec))
    return bad("at must be epoch milliseconds or an RFC 3339 timestamp");
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo < 1 || mo > 12 || d < 1 || d > kDays[mo - 1] || (mo == 2 && d == 29 && !leap) || h > 23 ||
      mi > 59 || sec > 60)
    return bad("at is not a valid date and time");
  size_t pos = 19;
  int64_t ms = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    size_t start = pos;
    int64_t scale = 100;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      ms += (s[pos] - '0') * scale;
      scale /= 10;
      ++pos;
    }
    if (pos == start) return bad("at has an empty fraction of a second");
  }
  int64_t offset_min = 0;
  if (pos < s.size() && (s[pos] == 'Z' || s[pos] == 'z')) {
    ++pos;
  } else if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
    int oh, om;
    if (!digits(s, pos + 1, 2, &oh) || pos + 3 >= s.size() || s[pos + 3] != ':' ||
        !digits(s, pos + 4, 2, &om) || oh > 23 || om > 59)
      return bad("at has an invalid time zone offset");
    offset_min = (oh * 60 + om) * (s[pos] == '-' ? -1 : 1);
    pos += 6;
  } else {
    return bad("at needs a time zone (Z or +HH:MM)");
  }
  if (pos != s.size()) return bad("at has trailing characters");
  int64_t days = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d));
  int64_t secs = days * 86400 + h * 3600 + mi * 60 + (sec == 60 ? 59 : sec) - offset_min * 60;
  return secs * 1000 + ms;
}

bool valid_timer_id(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdLength) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Result<TimerRecord> parse_timer_request(std::string_view body, int64_t now_us,
                                        const ParseLimits& limits) {
  json::parse_options opts;
  opts.max_depth = limits.max_depth;
  boost::system::error_code ec;
  // A stack arena: typical bodies parse without touching the heap (and without large mallocs).
  alignas(16) unsigned char arena[4096];
  json::monotonic_resource mr(arena, sizeof(arena));
  json::value root = json::parse(json::string_view(body.data(), body.size()), ec, &mr, opts);
  if (ec) {
    if (ec == json::error::too_deep) return bad("body is nested too deeply");
    return bad(fmt::format("body is not valid JSON: {}", ec.message()));
  }
  if (!root.is_object()) return bad("body must be a JSON object");
  const json::object& o = root.get_object();

  TimerRecord r;
  r.created_us = now_us;
  const json::value* timeout = o.if_contains("timeout");
  const json::value* at = o.if_contains("at");
  if (timeout != nullptr && at != nullptr) return bad("give either timeout or at, not both");
  if (timeout == nullptr && at == nullptr) return bad("timeout is required (or at)");
  if (timeout != nullptr) {
    int64_t t = 0;
    if (!as_int64(*timeout, &t)) return bad("timeout must be an integer number of milliseconds");
    if (t < 1) return bad("timeout must be >= 1");
    if (t > kMaxTimeoutMs)
      return bad(fmt::format("timeout must be <= {} (10 years)", kMaxTimeoutMs));
    r.timeout_ms = t;
    r.due_us = now_us + t * 1000;
  } else {
    int64_t at_ms = 0;
    if (at->is_string()) {
      auto parsed = parse_rfc3339_ms(std::string_view(at->get_string()));
      if (!parsed) return tl::unexpected(parsed.error());
      at_ms = *parsed;
    } else if (!as_int64(*at, &at_ms)) {
      return bad("at must be epoch milliseconds or an RFC 3339 timestamp");
    }
    if (at_ms < 0) return bad("at must not be before 1970");
    if (at_ms > now_us / 1000 + kMaxTimeoutMs) return bad("at must be at most 10 years from now");
    r.due_us = at_ms * 1000;
  }
  r.next_us = r.due_us;

  if (const json::value* data = o.if_contains("data")) {
    if (data->is_string()) {
      r.data_kind = DataKind::kString;
      r.data = std::string(data->get_string());
    } else if (data->is_object()) {
      r.data_kind = DataKind::kJson;
      r.data = json::serialize(*data);
    } else {
      return bad("data must be a string or a JSON object");
    }
  }
  if (auto cb = parse_callback(o.if_contains("callback"), &r.callback); !cb) {
    return tl::unexpected(cb.error());
  }
  if (auto rp = parse_retry(o.if_contains("retry"), limits, &r.retry); !rp) {
    return tl::unexpected(rp.error());
  }
  r.body_hash = hash64(body);
  return r;
}

std::string timer_to_json(const TimerRecord& r) {
  json::object o;
  o["id"] = r.id;
  o["state"] = state_name(r.state);
  o["created"] = r.created_us / 1000;
  o["due"] = r.due_us / 1000;
  o["timeout"] = r.timeout_ms > 0 ? r.timeout_ms : (r.due_us - r.created_us) / 1000;
  o["attempts"] = r.attempts;
  if (r.state == State::kRetrying) o["next_attempt"] = r.next_us / 1000;
  if (is_final(r.state)) o["completed"] = r.completed_us / 1000;
  json::object cb;
  cb["transport"] = r.callback.transport;
  cb["method"] = r.callback.method;
  cb["uri"] = r.callback.uri;
  if (!r.callback.headers.empty()) {
    json::object h;
    for (const auto& [k, v] : r.callback.headers) h[k] = v;
    cb["headers"] = std::move(h);
  }
  o["callback"] = std::move(cb);
  o["retry"] = json::object{{"attempts", r.retry.attempts},
                            {"backoff_ms", r.retry.backoff_ms},
                            {"max_backoff_ms", r.retry.max_backoff_ms}};
  switch (r.data_kind) {
    case DataKind::kNone:
      o["data"] = nullptr;
      break;
    case DataKind::kString:
      o["data"] = r.data;
      break;
    case DataKind::kJson: {
      boost::system::error_code ec;
      json::value v = json::parse(r.data, ec);
      o["data"] = ec ? json::value(r.data) : std::move(v);
      break;
    }
  }
  if (r.last_error.empty()) {
    o["last_error"] = nullptr;
  } else {
    o["last_error"] = r.last_error;
  }
  return json::serialize(o);
}

}  // namespace skyring
