#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "base/hash.h"
#include "base/result.h"
#include "model/backoff.h"
#include "model/codec.h"
#include "model/request.h"
#include "model/timer.h"

namespace skyring {
namespace {

// 2023-11-14T22:13:20Z, the ManualClock default.
constexpr int64_t kNowUs = 1'700'000'000'000'000;
constexpr int64_t kNowMs = kNowUs / 1000;

constexpr std::string_view kCallback =
    R"("callback":{"transport":"http","method":"post","uri":"http://example/hook"})";

// A body with the given fields plus a valid callback.
std::string with_callback(std::string_view fields) {
  std::string b = "{";
  b.append(fields);
  if (!fields.empty()) b.append(",");
  b.append(kCallback);
  b.append("}");
  return b;
}

// A body with a valid timeout and the given fields (which may include "callback").
std::string with_timeout(std::string_view fields) {
  std::string b = R"({"timeout":1000)";
  if (!fields.empty()) b.append(",").append(fields);
  b.append("}");
  return b;
}

// A valid timeout + callback body, with `callback` replaced by the given JSON value.
std::string with_callback_value(std::string_view callback) {
  return with_timeout(std::string(R"("callback":)") + std::string(callback));
}

std::string with_headers(std::string_view headers) {
  return with_callback_value(
      std::string(R"({"transport":"http","method":"post","uri":"http://x/","headers":)") +
      std::string(headers) + "}");
}

std::string with_retry(std::string_view retry) {
  return with_callback(std::string(R"("timeout":1000,"retry":)") + std::string(retry));
}

Result<TimerRecord> parse(std::string_view body) {
  return parse_timer_request(body, kNowUs);
}

// Expects a 400-class failure whose message contains `needle` (the field it names).
void expect_invalid(std::string_view body, std::string_view needle) {
  SCOPED_TRACE(std::string(body.substr(0, 200)));
  auto r = parse(body);
  ASSERT_FALSE(r.has_value()) << "parsed unexpectedly";
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_NE(r.error().message.find(needle), std::string::npos)
      << "message '" << r.error().message << "' does not mention '" << needle << "'";
}

TimerRecord parse_ok(std::string_view body) {
  auto r = parse(body);
  EXPECT_TRUE(r.has_value()) << body << " -> " << (r ? "" : r.error().message);
  return r ? *r : TimerRecord{};
}

// ---------------------------------------------------------------------------------------------
// parse_timer_request: timeout

TEST(ParseTimerRequest, MinimalTimeoutBody) {
  TimerRecord r = parse_ok(with_callback(R"("timeout":6000)"));
  EXPECT_TRUE(r.id.empty());
  EXPECT_EQ(r.state, State::kPending);
  EXPECT_EQ(r.created_us, kNowUs);
  EXPECT_EQ(r.timeout_ms, 6000);
  EXPECT_EQ(r.due_us, kNowUs + 6'000'000);
  EXPECT_EQ(r.next_us, r.due_us);
  EXPECT_EQ(r.attempts, 0u);
  EXPECT_EQ(r.completed_us, 0);
  EXPECT_EQ(r.data_kind, DataKind::kNone);
  EXPECT_TRUE(r.data.empty());
  EXPECT_EQ(r.callback.transport, "http");
  EXPECT_EQ(r.callback.method, "post");
  EXPECT_EQ(r.callback.uri, "http://example/hook");
  EXPECT_TRUE(r.callback.headers.empty());
  EXPECT_EQ(r.retry, RetryPolicy{});
  EXPECT_TRUE(r.last_error.empty());
}

TEST(ParseTimerRequest, TimeoutMissing) {
  expect_invalid(with_callback(""), "timeout");
  expect_invalid(with_callback(R"("data":"x")"), "timeout");
}

TEST(ParseTimerRequest, TimeoutWrongType) {
  expect_invalid(with_callback(R"("timeout":"1000")"), "timeout");
  expect_invalid(with_callback(R"("timeout":null)"), "timeout");
  expect_invalid(with_callback(R"("timeout":true)"), "timeout");
  expect_invalid(with_callback(R"("timeout":[1000])"), "timeout");
  expect_invalid(with_callback(R"("timeout":{"ms":1000})"), "timeout");
}

TEST(ParseTimerRequest, TimeoutMustBePositive) {
  expect_invalid(with_callback(R"("timeout":0)"), "timeout");
  expect_invalid(with_callback(R"("timeout":-1)"), "timeout");
  expect_invalid(with_callback(R"("timeout":-9223372036854775808)"), "timeout");
}

TEST(ParseTimerRequest, TimeoutMustBeAnInteger) {
  expect_invalid(with_callback(R"("timeout":1.5)"), "timeout");
  expect_invalid(with_callback(R"("timeout":0.999)"), "timeout");
  expect_invalid(with_callback(R"("timeout":1e300)"), "timeout");
  expect_invalid(with_callback(R"("timeout":18446744073709551615)"), "timeout");
}

TEST(ParseTimerRequest, TimeoutUpToTenYears) {
  EXPECT_EQ(kMaxTimeoutMs, 315'576'000'000LL);  // 10 x 365.25 days
  TimerRecord r = parse_ok(with_callback("\"timeout\":" + std::to_string(kMaxTimeoutMs)));
  EXPECT_EQ(r.timeout_ms, kMaxTimeoutMs);
  EXPECT_EQ(r.due_us, kNowUs + kMaxTimeoutMs * 1000);
  expect_invalid(with_callback("\"timeout\":" + std::to_string(kMaxTimeoutMs + 1)), "timeout");
  EXPECT_EQ(parse_ok(with_callback(R"("timeout":1)")).due_us, kNowUs + 1000);
  // More than the 24.8-day limit of the Node.js Skyring.
  EXPECT_EQ(parse_ok(with_callback(R"("timeout":2147483648)")).timeout_ms, 2147483648LL);
}

// ---------------------------------------------------------------------------------------------
// parse_timer_request: at

TEST(ParseTimerRequest, AtEpochMilliseconds) {
  TimerRecord r = parse_ok(with_callback("\"at\":" + std::to_string(kNowMs + 5000)));
  EXPECT_EQ(r.due_us, (kNowMs + 5000) * 1000);
  EXPECT_EQ(r.next_us, r.due_us);
  EXPECT_EQ(r.timeout_ms, 0);
  EXPECT_EQ(r.created_us, kNowUs);
  // In the past is allowed: the timer is overdue and fires at once.
  EXPECT_EQ(parse_ok(with_callback(R"("at":0)")).due_us, 0);
  EXPECT_EQ(parse_ok(with_callback("\"at\":" + std::to_string(kNowMs - 1))).due_us,
            (kNowMs - 1) * 1000);
}

TEST(ParseTimerRequest, AtRfc3339) {
  TimerRecord z = parse_ok(with_callback(R"("at":"2024-02-29T23:59:59Z")"));
  EXPECT_EQ(z.due_us, 1'709'251'199'000'000);
  TimerRecord off = parse_ok(with_callback(R"("at":"2026-12-01T10:00:00+02:00")"));
  EXPECT_EQ(off.due_us, 1'796'112'000'000'000);
  TimerRecord frac = parse_ok(with_callback(R"("at":"2026-12-01T10:00:00.250+02:00")"));
  EXPECT_EQ(frac.due_us, 1'796'112'000'250'000);
  EXPECT_EQ(frac.timeout_ms, 0);
}

TEST(ParseTimerRequest, AtInvalid) {
  expect_invalid(with_callback(R"("at":"2026-13-01T00:00:00Z")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-00-01T00:00:00Z")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-02-30T00:00:00Z")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-04-31T00:00:00Z")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-04-00T00:00:00Z")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-04-01T24:00:00Z")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-04-01T10:60:00Z")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-04-01T10:00:61Z")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-04-01")"), "at ");
  expect_invalid(with_callback(R"("at":"tomorrow")"), "at ");
  expect_invalid(with_callback(R"("at":"")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-4-1T10:00:00Z")"), "at ");
  expect_invalid(with_callback(R"("at":true)"), "at ");
  expect_invalid(with_callback(R"("at":null)"), "at ");
  expect_invalid(with_callback(R"("at":{"ms":1})"), "at ");
  expect_invalid(with_callback(R"("at":1.5)"), "at ");
  expect_invalid(with_callback(R"("at":-1)"), "at ");
}

TEST(ParseTimerRequest, AtNeedsAZone) {
  expect_invalid(with_callback(R"("at":"2026-12-01T10:00:00")"), "time zone");
  expect_invalid(with_callback(R"("at":"2026-12-01T10:00:00.5")"), "time zone");
  expect_invalid(with_callback(R"("at":"2026-12-01T10:00:00+0200")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-12-01T10:00:00+24:00")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-12-01T10:00:00+02")"), "at ");
  expect_invalid(with_callback(R"("at":"2026-12-01T10:00:00.Z")"), "at ");
}

TEST(ParseTimerRequest, AtTrailingCharacters) {
  expect_invalid(with_callback(R"("at":"2026-12-01T10:00:00Zjunk")"), "trailing");
  expect_invalid(with_callback(R"("at":"2026-12-01T10:00:00+02:00 ")"), "trailing");
}

TEST(ParseTimerRequest, AtAtMostTenYearsAhead) {
  expect_invalid(with_callback(R"("at":"2040-01-01T00:00:00Z")"), "10 years");
  expect_invalid(with_callback("\"at\":" + std::to_string(kNowMs + kMaxTimeoutMs + 1)), "at ");
  EXPECT_EQ(parse_ok(with_callback("\"at\":" + std::to_string(kNowMs + kMaxTimeoutMs))).due_us,
            (kNowMs + kMaxTimeoutMs) * 1000);
}

TEST(ParseTimerRequest, TimeoutAndAtTogether) {
  expect_invalid(with_callback("\"timeout\":1000,\"at\":" + std::to_string(kNowMs + 1000)),
                 "timeout or at");
}

// ---------------------------------------------------------------------------------------------
// parse_timer_request: data

TEST(ParseTimerRequest, DataString) {
  TimerRecord r = parse_ok(with_callback(R"("timeout":10,"data":"hello \"world\"")"));
  EXPECT_EQ(r.data_kind, DataKind::kString);
  EXPECT_EQ(r.data, "hello \"world\"");
  TimerRecord empty = parse_ok(with_callback(R"("timeout":10,"data":"")"));
  EXPECT_EQ(empty.data_kind, DataKind::kString);
  EXPECT_EQ(empty.data, "");
}

TEST(ParseTimerRequest, DataObject) {
  TimerRecord r = parse_ok(with_callback(R"("timeout":10,"data":{ "a" : 1, "b" : [true, null] })"));
  EXPECT_EQ(r.data_kind, DataKind::kJson);
  EXPECT_EQ(r.data, R"({"a":1,"b":[true,null]})");
  TimerRecord empty = parse_ok(with_callback(R"("timeout":10,"data":{})"));
  EXPECT_EQ(empty.data_kind, DataKind::kJson);
  EXPECT_EQ(empty.data, "{}");
}

TEST(ParseTimerRequest, DataOtherTypes) {
  expect_invalid(with_callback(R"("timeout":10,"data":5)"), "data");
  expect_invalid(with_callback(R"("timeout":10,"data":1.5)"), "data");
  expect_invalid(with_callback(R"("timeout":10,"data":[1,2])"), "data");
  expect_invalid(with_callback(R"("timeout":10,"data":null)"), "data");
  expect_invalid(with_callback(R"("timeout":10,"data":true)"), "data");
  expect_invalid(with_callback(R"("timeout":10,"data":false)"), "data");
}

// ---------------------------------------------------------------------------------------------
// parse_timer_request: callback

TEST(ParseTimerRequest, CallbackMissing) {
  expect_invalid(R"({"timeout":1000})", "callback");
  expect_invalid(R"({"timeout":1000,"data":"x"})", "callback is required");
}

TEST(ParseTimerRequest, CallbackNotAnObject) {
  expect_invalid(with_callback_value(R"("http://x/")"), "callback must be an object");
  expect_invalid(with_callback_value("[]"), "callback must be an object");
  expect_invalid(with_callback_value("5"), "callback must be an object");
  expect_invalid(with_callback_value("null"), "callback must be an object");
}

TEST(ParseTimerRequest, CallbackTransport) {
  expect_invalid(with_callback_value(R"({"method":"post","uri":"http://x/"})"),
                 "callback.transport");
  expect_invalid(with_callback_value(R"({"transport":5,"method":"post","uri":"http://x/"})"),
                 "callback.transport");
  expect_invalid(with_callback_value(R"({"transport":"","method":"post","uri":"http://x/"})"),
                 "callback.transport");
  expect_invalid(with_callback_value(R"({"transport":null,"method":"post","uri":"http://x/"})"),
                 "callback.transport");
}

TEST(ParseTimerRequest, CallbackMethod) {
  expect_invalid(with_callback_value(R"({"transport":"http","uri":"http://x/"})"),
                 "callback.method");
  expect_invalid(with_callback_value(R"({"transport":"http","method":["post"],"uri":"http://x/"})"),
                 "callback.method");
  expect_invalid(with_callback_value(R"({"transport":"http","method":"","uri":"http://x/"})"),
                 "callback.method");
}

TEST(ParseTimerRequest, CallbackUri) {
  expect_invalid(with_callback_value(R"({"transport":"http","method":"post"})"), "callback.uri");
  expect_invalid(with_callback_value(R"({"transport":"http","method":"post","uri":{}})"),
                 "callback.uri");
  expect_invalid(with_callback_value(R"({"transport":"http","method":"post","uri":""})"),
                 "callback.uri");
}

TEST(ParseTimerRequest, CallbackLowerCasesMethodAndTransport) {
  TimerRecord r = parse_ok(with_callback_value(
      R"({"transport":"HTTP","method":"PoSt","uri":"http://Example/Hook?A=B"})"));
  EXPECT_EQ(r.callback.transport, "http");
  EXPECT_EQ(r.callback.method, "post");
  EXPECT_EQ(r.callback.uri, "http://Example/Hook?A=B");  // the uri is kept as given
}

TEST(ParseTimerRequest, HeadersObjectOfStrings) {
  TimerRecord r = parse_ok(with_headers(R"({"X-Custom":"v","Authorization":"Bearer a:b c"})"));
  ASSERT_EQ(r.callback.headers.size(), 2u);
  EXPECT_EQ(r.callback.headers[0], (std::pair<std::string, std::string>{"X-Custom", "v"}));
  EXPECT_EQ(r.callback.headers[1],
            (std::pair<std::string, std::string>{"Authorization", "Bearer a:b c"}));
  EXPECT_TRUE(parse_ok(with_headers("{}")).callback.headers.empty());
  EXPECT_EQ(parse_ok(with_headers(R"({"X-Empty":""})")).callback.headers.size(), 1u);
}

TEST(ParseTimerRequest, HeadersInvalid) {
  expect_invalid(with_headers(R"("X-A: v")"), "callback.headers");
  expect_invalid(with_headers(R"([["X-A","v"]])"), "callback.headers");
  expect_invalid(with_headers(R"({"X-Num":1})"), "callback.headers.X-Num");
  expect_invalid(with_headers(R"({"X-Null":null})"), "callback.headers.X-Null");
  expect_invalid(with_headers(R"({"X-Obj":{}})"), "callback.headers.X-Obj");
  expect_invalid(with_headers(R"({"Bad:Name":"v"})"), "callback.headers");
  expect_invalid(with_headers(R"({"Bad Name":"v"})"), "callback.headers");
  expect_invalid(with_headers(R"({"":"v"})"), "callback.headers");
  expect_invalid(with_headers(R"({"Bad\tName":"v"})"), "callback.headers");
  expect_invalid(with_headers(R"({"X-A":"v\r\nInjected: 1"})"), "callback.headers.X-A");
  expect_invalid(with_headers(R"({"X-A":"v\nInjected: 1"})"), "callback.headers.X-A");
  expect_invalid(with_headers(R"({"X-A":"v\r"})"), "callback.headers.X-A");
}

// ---------------------------------------------------------------------------------------------
// parse_timer_request: retry

TEST(ParseTimerRequest, RetryDefaults) {
  TimerRecord r = parse_ok(with_retry("{}"));
  EXPECT_EQ(r.retry.attempts, 5u);
  EXPECT_EQ(r.retry.backoff_ms, 1000u);
  EXPECT_EQ(r.retry.max_backoff_ms, 60000u);
  EXPECT_EQ(parse_ok(with_callback(R"("timeout":1)")).retry, r.retry);
}

TEST(ParseTimerRequest, RetryAllFields) {
  TimerRecord r = parse_ok(with_retry(R"({"attempts":3,"backoff_ms":500,"max_backoff_ms":4000})"));
  EXPECT_EQ(r.retry, (RetryPolicy{3, 500, 4000}));
  EXPECT_EQ(parse_ok(with_retry(R"({"attempts":1})")).retry.attempts, 1u);
  EXPECT_EQ(parse_ok(with_retry(R"({"attempts":100})")).retry.attempts, 100u);
  EXPECT_EQ(parse_ok(with_retry(R"({"backoff_ms":0,"max_backoff_ms":0})")).retry,
            (RetryPolicy{5, 0, 0}));
}

TEST(ParseTimerRequest, RetryAttemptsRange) {
  expect_invalid(with_retry(R"({"attempts":0})"), "retry.attempts");
  expect_invalid(with_retry(R"({"attempts":101})"), "retry.attempts");
  expect_invalid(with_retry(R"({"attempts":-1})"), "retry.attempts");
  expect_invalid(with_retry(R"({"attempts":2.5})"), "retry.attempts");
  expect_invalid(with_retry(R"({"attempts":"3"})"), "retry.attempts");
  expect_invalid(with_retry(R"({"attempts":4294967297})"), "retry.attempts");
}

TEST(ParseTimerRequest, RetryBackoffRange) {
  expect_invalid(with_retry(R"({"backoff_ms":-1})"), "retry.backoff_ms");
  expect_invalid(with_retry(R"({"backoff_ms":"1s"})"), "retry.backoff_ms");
  expect_invalid(with_retry(R"({"backoff_ms":86400001})"), "retry.backoff_ms");
  expect_invalid(with_retry(R"({"max_backoff_ms":-1})"), "retry.max_backoff_ms");
  expect_invalid(with_retry(R"({"max_backoff_ms":86400001})"), "retry.max_backoff_ms");
  expect_invalid(with_retry(R"({"backoff_ms":5000,"max_backoff_ms":4000})"),
                 "retry.max_backoff_ms");
  expect_invalid(with_retry("[]"), "retry");
  expect_invalid(with_retry("5"), "retry");
}

TEST(ParseTimerRequest, RetryOnlyBackoffRaisesMax) {
  EXPECT_EQ(parse_ok(with_retry(R"({"backoff_ms":120000})")).retry,
            (RetryPolicy{5, 120000, 120000}));
  // A backoff below the default maximum keeps that maximum.
  EXPECT_EQ(parse_ok(with_retry(R"({"backoff_ms":500})")).retry, (RetryPolicy{5, 500, 60000}));
}

TEST(ParseTimerRequest, LimitsAreConfigurable) {
  ParseLimits limits;
  limits.max_attempts = 3;
  auto r = parse_timer_request(with_retry(R"({"attempts":4})"), kNowUs, limits);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("retry.attempts must be an integer from 1 to 3"),
            std::string::npos);
  EXPECT_TRUE(parse_timer_request(with_retry(R"({"attempts":3})"), kNowUs, limits).has_value());
}

// ---------------------------------------------------------------------------------------------
// parse_timer_request: the body as a whole

TEST(ParseTimerRequest, InvalidJson) {
  expect_invalid("", "body is not valid JSON");
  expect_invalid("not json", "body is not valid JSON");
  expect_invalid("{timeout:1000}", "body is not valid JSON");
  expect_invalid(with_callback(R"("timeout":1000,)"), "body is not valid JSON");
  expect_invalid(with_callback(R"("timeout":1000)") + " trailing", "body is not valid JSON");
  expect_invalid(with_callback(R"("timeout":1000)") + "{}", "body is not valid JSON");
}

TEST(ParseTimerRequest, TruncatedJson) {
  std::string full = with_callback(R"("timeout":1000,"data":{"k":"v"})");
  ASSERT_TRUE(parse(full).has_value());
  for (size_t n = 0; n < full.size(); ++n) {
    expect_invalid(std::string_view(full).substr(0, n), "body");
  }
}

TEST(ParseTimerRequest, BodyNotAnObject) {
  expect_invalid("[]", "body must be a JSON object");
  expect_invalid("[1,2]", "body must be a JSON object");
  expect_invalid(R"("timeout")", "body must be a JSON object");
  expect_invalid("42", "body must be a JSON object");
  expect_invalid("null", "body must be a JSON object");
  expect_invalid("true", "body must be a JSON object");
}

TEST(ParseTimerRequest, InvalidUtf8InAString) {
  expect_invalid(with_callback("\"timeout\":10,\"data\":\"\xff\xfe\""), "body is not valid JSON");
  expect_invalid(with_callback("\"timeout\":10,\"data\":\"\xc3\""), "body is not valid JSON");
  expect_invalid(with_callback("\"timeout\":10,\"data\":\"\xed\xa0\x80\""),
                 "body is not valid JSON");  // an encoded surrogate
  // Valid multi-byte UTF-8 is fine.
  EXPECT_EQ(parse_ok(with_callback("\"timeout\":10,\"data\":\"gr\xc3\xbc\xc3\x9f\"")).data,
            "gr\xc3\xbc\xc3\x9f");
}

TEST(ParseTimerRequest, DeeplyNestedJson) {
  std::string arrays = std::string(1000, '[') + std::string(1000, ']');
  expect_invalid(arrays, "nested too deeply");
  std::string objects;
  for (int i = 0; i < 1000; ++i) objects += R"({"a":)";
  objects += "1";
  objects += std::string(1000, '}');
  expect_invalid(with_callback("\"timeout\":10,\"data\":" + objects), "nested too deeply");
  // Within the limit it is fine.
  std::string shallow;
  for (int i = 0; i < 10; ++i) shallow += R"({"a":)";
  shallow += "1" + std::string(10, '}');
  EXPECT_EQ(parse_ok(with_callback("\"timeout\":10,\"data\":" + shallow)).data_kind,
            DataKind::kJson);
}

TEST(ParseTimerRequest, BodyHash) {
  std::string a = with_callback(R"("timeout":1000,"data":"a")");
  std::string b = with_callback(R"("timeout":1000,"data":"b")");
  std::string c = with_callback(R"("timeout":1001,"data":"a")");
  uint64_t ha = parse_ok(a).body_hash;
  EXPECT_EQ(ha, parse_ok(a).body_hash);
  // The hash is of the body only, not of the time it arrived.
  EXPECT_EQ(ha, parse_timer_request(a, kNowUs + 123'456'789).value().body_hash);
  EXPECT_NE(ha, parse_ok(b).body_hash);
  EXPECT_NE(ha, parse_ok(c).body_hash);
  EXPECT_NE(parse_ok(b).body_hash, parse_ok(c).body_hash);
}

// ---------------------------------------------------------------------------------------------
// parse_rfc3339_ms, valid_timer_id

TEST(ParseRfc3339, KnownValues) {
  EXPECT_EQ(parse_rfc3339_ms("1970-01-01T00:00:00Z").value(), 0);
  EXPECT_EQ(parse_rfc3339_ms("1970-01-01T00:00:00.001Z").value(), 1);
  EXPECT_EQ(parse_rfc3339_ms("1970-01-01T00:00:01+00:00").value(), 1000);
  EXPECT_EQ(parse_rfc3339_ms("2023-11-14T22:13:20Z").value(), kNowMs);
  EXPECT_EQ(parse_rfc3339_ms("2026-12-01T10:00:00.250+02:00").value(), 1'796'112'000'250);
  EXPECT_EQ(parse_rfc3339_ms("2026-12-01T08:00:00.250Z").value(), 1'796'112'000'250);
  EXPECT_EQ(parse_rfc3339_ms("2000-01-01T00:00:00-05:30").value(), 946'704'600'000);
  EXPECT_EQ(parse_rfc3339_ms("2024-02-29T23:59:59Z").value(), 1'709'251'199'000);
  // Lower-case separators and a space instead of T (RFC 3339 section 5.6 note).
  EXPECT_EQ(parse_rfc3339_ms("2023-11-14t22:13:20z").value(), kNowMs);
  EXPECT_EQ(parse_rfc3339_ms("2023-11-14 22:13:20Z").value(), kNowMs);
  // Fractions: tenths, and digits past milliseconds are truncated.
  EXPECT_EQ(parse_rfc3339_ms("1970-01-01T00:00:00.5Z").value(), 500);
  EXPECT_EQ(parse_rfc3339_ms("1970-01-01T00:00:00.123456789Z").value(), 123);
}

TEST(ParseRfc3339, Rejects) {
  for (const char* bad :
       {"", "1970", "1970-01-01", "1970-01-01T00:00:00", "1970-01-01T00:00Z",
        "1970-01-01X00:00:00Z", "1970/01/01T00:00:00Z", "1970-01-01T00:00:00ZZ",
        "1970-01-01T00:00:00+01", "1970-01-01T00:00:00+01:0", "1970-01-01T00:00:00+0100",
        "1970-01-01T00:00:00+01:60", "1970-01-01T00:00:00.Z", "1970-02-30T00:00:00Z",
        "1970-01-32T00:00:00Z", "1970-01-01T25:00:00Z", "+1970-01-01T00:00:00Z",
        "1970-01-01T00:00:00 Z"}) {
    EXPECT_FALSE(parse_rfc3339_ms(bad).has_value()) << bad;
    if (auto r = parse_rfc3339_ms(bad); !r) {
      EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    }
  }
}

// February has 29 days in leap years only (divisible by 4, centuries only when divisible by
// 400): February 29 of a common year is rejected, not read as March 1.
TEST(ParseRfc3339, RejectsFebruary29InACommonYear) {
  EXPECT_FALSE(parse_rfc3339_ms("2023-02-29T00:00:00Z").has_value());
  EXPECT_FALSE(parse_rfc3339_ms("2100-02-29T00:00:00Z").has_value());
  EXPECT_TRUE(parse_rfc3339_ms("2000-02-29T00:00:00Z").has_value());
}

TEST(ValidTimerId, Accepts) {
  EXPECT_TRUE(valid_timer_id("a"));
  EXPECT_TRUE(valid_timer_id("0"));
  EXPECT_TRUE(valid_timer_id("Az09._:-"));
  EXPECT_TRUE(valid_timer_id("order:1234.retry-2_x"));
  EXPECT_TRUE(valid_timer_id(std::string(kMaxIdLength, 'x')));
}

TEST(ValidTimerId, Rejects) {
  EXPECT_FALSE(valid_timer_id(""));
  EXPECT_FALSE(valid_timer_id(std::string(kMaxIdLength + 1, 'x')));
  for (const char* bad : {"a/b", "a b", "a?b", "a%2Fb", "a#b", "a\nb", "gr\xc3\xbc\xc3\x9f", "\"",
                          "a\\b", "a+b", "a,b", "*"}) {
    EXPECT_FALSE(valid_timer_id(bad)) << bad;
  }
  EXPECT_FALSE(valid_timer_id(std::string_view("a\0b", 3)));
}

TEST(State, NamesRoundTrip) {
  for (State s : {State::kPending, State::kExecuting, State::kRetrying, State::kSucceeded,
                  State::kFailed, State::kCancelled}) {
    State back = State::kPending;
    ASSERT_TRUE(parse_state(state_name(s), &back)) << state_name(s);
    EXPECT_EQ(back, s);
  }
  State out = State::kFailed;
  EXPECT_FALSE(parse_state("Pending", &out));
  EXPECT_FALSE(parse_state("", &out));
  EXPECT_EQ(out, State::kFailed);
  EXPECT_TRUE(awaits_attempt(State::kPending));
  EXPECT_TRUE(awaits_attempt(State::kRetrying));
  EXPECT_FALSE(awaits_attempt(State::kExecuting));
  EXPECT_TRUE(is_final(State::kSucceeded));
  EXPECT_TRUE(is_final(State::kFailed));
  EXPECT_TRUE(is_final(State::kCancelled));
  EXPECT_FALSE(is_final(State::kPending));
}

// ---------------------------------------------------------------------------------------------
// timer_to_json

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(TimerToJson, ParsedRequestRoundTrip) {
  TimerRecord r = parse_ok(
      R"({"timeout":6000,"data":{"k":"v","n":[1,2]},)"
      R"("callback":{"transport":"http","method":"PUT","uri":"http://example/hook",)"
      R"("headers":{"X-Custom":"v"}},"retry":{"attempts":3,"backoff_ms":10,"max_backoff_ms":20}})");
  r.id = "timer-1";
  std::string j = timer_to_json(r);
  EXPECT_EQ(j.front(), '{');
  EXPECT_EQ(j.back(), '}');
  EXPECT_TRUE(contains(j, R"("id":"timer-1")")) << j;
  EXPECT_TRUE(contains(j, R"("state":"pending")")) << j;
  EXPECT_TRUE(contains(j, "\"created\":" + std::to_string(kNowMs))) << j;
  EXPECT_TRUE(contains(j, "\"due\":" + std::to_string(kNowMs + 6000))) << j;
  EXPECT_TRUE(contains(j, R"("timeout":6000)")) << j;
  EXPECT_TRUE(contains(j, R"("attempts":0)")) << j;
  EXPECT_TRUE(contains(
      j,
      R"("callback":{"transport":"http","method":"put","uri":"http://example/hook","headers":{"X-Custom":"v"}})"))
      << j;
  EXPECT_TRUE(contains(j, R"("retry":{"attempts":3,"backoff_ms":10,"max_backoff_ms":20})")) << j;
  // The object comes back as an object, not as a string holding JSON.
  EXPECT_TRUE(contains(j, R"("data":{"k":"v","n":[1,2]})")) << j;
  EXPECT_TRUE(contains(j, R"("last_error":null)")) << j;
  EXPECT_FALSE(contains(j, "next_attempt")) << j;
  EXPECT_FALSE(contains(j, "completed")) << j;
}

TEST(TimerToJson, StringDataIsEscaped) {
  TimerRecord r = parse_ok(with_callback(R"("timeout":5,"data":"he said \"hi\"\n")"));
  r.id = "t";
  std::string j = timer_to_json(r);
  EXPECT_TRUE(contains(j, R"("data":"he said \"hi\"\n")")) << j;
  EXPECT_FALSE(contains(j, "headers")) << j;
}

TEST(TimerToJson, AtTimerReportsRemainingTimeout) {
  TimerRecord r = parse_ok(with_callback("\"at\":" + std::to_string(kNowMs + 2500)));
  r.id = "t";
  std::string j = timer_to_json(r);
  EXPECT_TRUE(contains(j, R"("timeout":2500)")) << j;
  EXPECT_TRUE(contains(j, R"("data":null)")) << j;
}

TEST(TimerToJson, RetryingAndFinalStates) {
  TimerRecord r = parse_ok(with_callback(R"("timeout":1000)"));
  r.id = "t";
  r.state = State::kRetrying;
  r.attempts = 2;
  r.next_us = kNowUs + 7'000'000;
  r.last_error = "HTTP 503 \"busy\"";
  std::string j = timer_to_json(r);
  EXPECT_TRUE(contains(j, R"("state":"retrying")")) << j;
  EXPECT_TRUE(contains(j, R"("attempts":2)")) << j;
  EXPECT_TRUE(contains(j, "\"next_attempt\":" + std::to_string(kNowMs + 7000))) << j;
  EXPECT_TRUE(contains(j, R"("last_error":"HTTP 503 \"busy\"")")) << j;
  EXPECT_FALSE(contains(j, "completed")) << j;

  for (State s : {State::kSucceeded, State::kFailed, State::kCancelled}) {
    r.state = s;
    r.completed_us = kNowUs + 9'000'000;
    j = timer_to_json(r);
    EXPECT_TRUE(contains(j, std::string("\"state\":\"") + state_name(s) + "\"")) << j;
    EXPECT_TRUE(contains(j, "\"completed\":" + std::to_string(kNowMs + 9000))) << j;
    EXPECT_FALSE(contains(j, "next_attempt")) << j;
  }
}

// ---------------------------------------------------------------------------------------------
// Codec

TimerRecord full_record() {
  TimerRecord r;
  r.id = "order:1234.retry-2_x";
  r.state = State::kRetrying;
  r.created_us = kNowUs;
  r.due_us = kNowUs + 6'000'000;
  r.next_us = kNowUs + 9'000'000;
  r.timeout_ms = 6000;
  r.completed_us = 0;
  r.attempts = 2;
  r.body_hash = 0xfedcba9876543210ULL;
  r.callback.transport = "http";
  r.callback.method = "post";
  r.callback.uri = "http://example.com:8080/hook?x=1";
  r.callback.headers = {{"X-Custom", "v"}, {"Authorization", "Bearer abc"}, {"X-Empty", ""}};
  r.retry = RetryPolicy{7, 250, 30'000};
  r.data_kind = DataKind::kJson;
  r.data = R"({"k":"v","n":[1,2,3]})";
  r.last_error = "HTTP 503";
  return r;
}

// Appends a valid checksum to hand-made record bytes.
std::string reseal(std::string body) {
  uint64_t sum = hash64(body);
  for (int i = 0; i < 8; ++i) body.push_back(static_cast<char>((sum >> (8 * i)) & 0xff));
  return body;
}

std::string unseal(const std::string& bytes) {
  return bytes.substr(0, bytes.size() - 8);
}

TEST(Codec, RoundTripFullRecord) {
  TimerRecord r = full_record();
  std::string bytes = encode_record(r);
  EXPECT_EQ(static_cast<uint8_t>(bytes[0]), kRecordVersion);
  auto back = decode_record(bytes);
  ASSERT_TRUE(back.has_value()) << back.error().message;
  EXPECT_EQ(*back, r);
}

TEST(Codec, RoundTripEveryStateAndDataKind) {
  for (State s : {State::kPending, State::kExecuting, State::kRetrying, State::kSucceeded,
                  State::kFailed, State::kCancelled}) {
    for (DataKind k : {DataKind::kNone, DataKind::kString, DataKind::kJson}) {
      TimerRecord r = full_record();
      r.state = s;
      r.data_kind = k;
      r.data = k == DataKind::kNone     ? std::string()
               : k == DataKind::kString ? std::string("plain \0text", 11)
                                        : std::string("{}");
      if (is_final(s)) r.completed_us = kNowUs + 1;
      auto back = decode_record(encode_record(r));
      ASSERT_TRUE(back.has_value()) << state_name(s) << " " << static_cast<int>(k);
      EXPECT_EQ(*back, r);
    }
  }
}

TEST(Codec, RoundTripEdgeValues) {
  TimerRecord empty;
  auto back = decode_record(encode_record(empty));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, empty);

  TimerRecord r = full_record();
  r.created_us = -1;
  r.due_us = INT64_MIN;
  r.next_us = INT64_MAX;
  r.body_hash = UINT64_MAX;
  r.attempts = UINT32_MAX;
  r.retry = RetryPolicy{UINT32_MAX, UINT64_MAX, UINT64_MAX};
  r.data = std::string(100'000, 'x');  // multi-byte varint length
  r.data.push_back('\0');
  r.data += "\xff\xfe binary";
  r.callback.headers.clear();
  for (int i = 0; i < 300; ++i) r.callback.headers.emplace_back("X-H" + std::to_string(i), "v");
  back = decode_record(encode_record(r));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, r);
}

TEST(Codec, EncodeIntoReusesBuffer) {
  std::string buf = "stale bytes that must go";
  encode_record(full_record(), &buf);
  EXPECT_EQ(buf, encode_record(full_record()));
}

TEST(Codec, EverySingleByteFlipIsDetected) {
  std::string good = encode_record(full_record());
  for (size_t i = 0; i < good.size(); ++i) {
    for (uint8_t mask : {0x01, 0x10, 0x80, 0xff}) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      auto r = decode_record(bad);
      ASSERT_FALSE(r.has_value()) << "flip at " << i << " mask " << int{mask};
      EXPECT_EQ(r.error().code, Errc::kCorruption);
    }
  }
}

TEST(Codec, EveryTruncationIsDetected) {
  std::string good = encode_record(full_record());
  for (size_t n = 0; n < good.size(); ++n) {
    auto r = decode_record(std::string_view(good).substr(0, n));
    ASSERT_FALSE(r.has_value()) << "truncated to " << n;
    EXPECT_EQ(r.error().code, Errc::kCorruption);
  }
  auto longer = decode_record(good + "x");
  ASSERT_FALSE(longer.has_value());
  EXPECT_EQ(longer.error().code, Errc::kCorruption);
}

TEST(Codec, UnknownVersionIsDetected) {
  std::string body = unseal(encode_record(full_record()));
  for (uint8_t v : {0, 2, 255}) {
    body[0] = static_cast<char>(v);
    auto r = decode_record(reseal(body));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kCorruption);
    EXPECT_NE(r.error().message.find("version"), std::string::npos) << r.error().message;
  }
}

TEST(Codec, ValidChecksumButBadFieldsIsDetected) {
  std::string body = unseal(encode_record(full_record()));
  // State byte out of range.
  for (uint8_t s : {0, 7, 255}) {
    std::string b = body;
    b[1] = static_cast<char>(s);
    auto r = decode_record(reseal(b));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kCorruption);
  }
  // Data kind byte out of range: it follows the fixed fields and the four one-byte varints of
  // this record (attempts 2, retry 7 / 250 (two bytes) / 30000 (three bytes)).
  size_t kind_at = 2 + 6 * 8 + 1 + 1 + 2 + 3;
  ASSERT_EQ(static_cast<uint8_t>(body[kind_at]), static_cast<uint8_t>(DataKind::kJson));
  {
    std::string b = body;
    b[kind_at] = 3;
    auto r = decode_record(reseal(b));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kCorruption);
  }
  // The id length claims more bytes than there are.
  {
    std::string b = body;
    b.replace(kind_at + 1, 1, "\xff\xff\xff\x7f");  // about 2^28
    auto r = decode_record(reseal(b));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kCorruption);
  }
  // Every truncation of the body with a valid checksum: never read past the end.
  for (size_t n = 0; n < body.size(); ++n) {
    auto r = decode_record(reseal(body.substr(0, n)));
    ASSERT_FALSE(r.has_value()) << n;
    EXPECT_EQ(r.error().code, Errc::kCorruption);
  }
  // Trailing bytes after the headers.
  auto r = decode_record(reseal(body + "x"));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kCorruption);
}

TEST(Codec, RandomBytesWithValidChecksumNeverCrash) {
  std::string body = unseal(encode_record(full_record()));
  std::mt19937_64 rng(42);
  for (int round = 0; round < 2000; ++round) {
    std::string b = body;
    size_t at = rng() % b.size();
    b[at] = static_cast<char>(rng());
    auto r = decode_record(reseal(b));
    if (!r) {
      EXPECT_EQ(r.error().code, Errc::kCorruption);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backoff

TEST(Backoff, NominalDoublesAndCaps) {
  RetryPolicy p;  // 1000 ms doubling to 60000 ms
  EXPECT_EQ(nominal_backoff_ms(p, 1), 1000u);
  EXPECT_EQ(nominal_backoff_ms(p, 2), 2000u);
  EXPECT_EQ(nominal_backoff_ms(p, 3), 4000u);
  EXPECT_EQ(nominal_backoff_ms(p, 4), 8000u);
  EXPECT_EQ(nominal_backoff_ms(p, 5), 16000u);
  EXPECT_EQ(nominal_backoff_ms(p, 6), 32000u);
  EXPECT_EQ(nominal_backoff_ms(p, 7), 60000u);
  EXPECT_EQ(nominal_backoff_ms(p, 8), 60000u);
  EXPECT_EQ(nominal_backoff_ms(p, 100), 60000u);
  EXPECT_EQ(nominal_backoff_ms(p, UINT32_MAX), 60000u);
}

TEST(Backoff, FirstRetryIsTheBaseDelay) {
  EXPECT_EQ(nominal_backoff_ms(RetryPolicy{1, 1000, 60000}, 1), 1000u);
  EXPECT_EQ(nominal_backoff_ms(RetryPolicy{1, 7, 7}, 1), 7u);
  EXPECT_EQ(nominal_backoff_ms(RetryPolicy{1, 500, 60000}, 0), 500u);  // no failures yet
  // A maximum equal to the base means no growth at all.
  EXPECT_EQ(nominal_backoff_ms(RetryPolicy{5, 300, 300}, 4), 300u);
}

TEST(Backoff, ZeroBackoff) {
  RetryPolicy p{5, 0, 60000};
  for (uint32_t n : {1u, 2u, 10u, 1000u}) {
    EXPECT_EQ(nominal_backoff_ms(p, n), 0u);
    EXPECT_EQ(backoff_ms(p, n, 0), 0u);
    EXPECT_EQ(backoff_ms(p, n, UINT64_MAX), 0u);
  }
  EXPECT_EQ(backoff_ms(RetryPolicy{5, 0, 0}, 3, 12345), 0u);
}

TEST(Backoff, JitterWithinHalfAndFull) {
  std::mt19937_64 rng(7);
  for (RetryPolicy p : {RetryPolicy{}, RetryPolicy{5, 1, 1}, RetryPolicy{5, 3, 100},
                        RetryPolicy{100, 86'400'000, 86'400'000}, RetryPolicy{5, 999, 60001}}) {
    for (uint32_t n = 1; n <= 12; ++n) {
      uint64_t d = nominal_backoff_ms(p, n);
      for (uint64_t random : {uint64_t{0}, uint64_t{1}, UINT64_MAX, d, d / 2, d - d / 2}) {
        uint64_t j = backoff_ms(p, n, random);
        EXPECT_GE(j, d / 2) << d;
        EXPECT_LE(j, d) << d;
      }
      for (int i = 0; i < 200; ++i) {
        uint64_t j = backoff_ms(p, n, rng());
        EXPECT_GE(j, d / 2) << d;
        EXPECT_LE(j, d) << d;
      }
      // Both ends are reachable.
      EXPECT_EQ(backoff_ms(p, n, 0), d / 2);
      EXPECT_EQ(backoff_ms(p, n, d - d / 2), d);
    }
  }
}

TEST(Backoff, JitterSpreads) {
  RetryPolicy p;
  std::mt19937_64 rng(1);
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int i = 0; i < 1000; ++i) {
    uint64_t j = backoff_ms(p, 3, rng());
    lo = std::min(lo, j);
    hi = std::max(hi, j);
  }
  EXPECT_LT(lo, 2200u);
  EXPECT_GT(hi, 3800u);
}

// callback.headers: NUL and other control characters are rejected in names and values (only
// horizontal tab is allowed, in values); the 400 names the header.
TEST(ParseTimerRequest, HeaderValuesWithControlCharactersAreRejected) {
  for (std::string_view v : {R"(a\u0000b)", R"(\u0000)", R"(a\u0001)", R"(a\u001fb)", R"(a\u007f)",
                             R"(a\u000bb)", R"(a\u000cb)", R"(\u001b[31m)"}) {
    SCOPED_TRACE(std::string(v));
    expect_invalid(with_headers(std::string(R"({"X-Ctl":")") + std::string(v) + "\"}"),
                   "callback.headers.X-Ctl");
  }
}

TEST(ParseTimerRequest, HeaderNamesWithControlCharactersAreRejected) {
  for (std::string_view n : {R"(X\u0000)", R"(\u0000X)", R"(X\u0001Y)", R"(X\u007f)"}) {
    SCOPED_TRACE(std::string(n));
    auto r = parse(with_headers(std::string(R"({")") + std::string(n) + R"(":"v"})"));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_NE(r.error().message.find("callback.headers."), std::string::npos) << r.error().message;
    // The message shows the name's control bytes escaped, never raw.
    EXPECT_EQ(r.error().message.find('\0'), std::string::npos);
    for (char c : r.error().message) EXPECT_GE(static_cast<unsigned char>(c), 0x20);
  }
  expect_invalid(with_headers(R"({"X\u0000":"v"})"), R"(callback.headers.X\x00)");
}

TEST(ParseTimerRequest, HeaderValuesKeepTabsAndUtf8) {
  TimerRecord r = parse_ok(with_headers(R"({"X-Tab":"a\tb","X-Utf8":"caf\u00e9 \u6f22"})"));
  ASSERT_EQ(r.callback.headers.size(), 2u);
  EXPECT_EQ(r.callback.headers[0].second, "a\tb");
  EXPECT_EQ(r.callback.headers[1].second, "caf\xc3\xa9 \xe6\xbc\xa2");
}

}  // namespace
}  // namespace skyring
