// The listing step of `capacity`: a walk through an empty waiting state among K pending timers
// must not stall the node.
//
// Operation
// * Baseline: /ping latency for a short window (2 s; 0.5 s with --smoke) with nothing else
//   running: a closed loop on one keep-alive connection (load_client, connections = 1).
// * Walk: a second thread pages GET /timer?state=retrying&limit=1000 (a fresh connection per
//   page, the cursor URL-encoded) until next_cursor is null. Each call visits at most 4096
//   index entries, so a page may be short or empty while next_cursor is not null: the walk over
//   K pending timers takes about K / 4096 pages. Meanwhile the main thread runs the same /ping
//   loop; it starts before the first page and stops issuing when the walk ends.
// * Rows: pages walked, time to walk them, timers listed (must be 0: none of the K is
//   retrying), /ping p50/p99/max during the walk (p99 goal 10 ms) and without it.
//
// Limits: at most K / 1000 + 100 pages and 30 s + 1 s per 10,000 pending for the walk; a
// cursor that does not advance, an error status or a walk cut by a bound fails the scenario.
// /ping samples are bounded by a request count. The /ping loop takes a core of its own while
// it runs, which on a small machine is a core the node does not have.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/load_client.h"
#include "bench/scenario.h"

namespace skyring::bench {
namespace {

constexpr std::string_view kPing = "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";
constexpr uint64_t kMaxPings = 4'000'000;  // 32 MB of samples
constexpr uint64_t kPageLimit = 1000;

struct Walk {
  uint64_t pages = 0;
  uint64_t listed = 0;
  int64_t elapsed_us = 0;
  bool finished = false;  // a page said next_cursor: null
  std::string error;
};

struct Pings {
  std::vector<int64_t> us;  // request written -> response read, 200s only
  uint64_t failures = 0;    // other statuses and transport failures
};

// Ids are [A-Za-z0-9._:-]; everything but the unreserved characters is percent-encoded.
std::string url_encode(std::string_view s) {
  std::string out;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += c;
    } else {
      out += fmt::format("%{:02X}", u);
    }
  }
  return out;
}

// The page's next_cursor: an id, or empty for null.
Result<std::string> next_cursor(std::string_view body) {
  constexpr std::string_view kKey = R"("next_cursor":)";
  size_t at = body.rfind(kKey);
  if (at == std::string_view::npos) return fail(Errc::kIo, "list: no next_cursor in the page");
  std::string_view v = body.substr(at + kKey.size());
  if (v.substr(0, 4) == "null") return std::string();
  size_t close = v.size() > 1 && v[0] == '"' ? v.find('"', 1) : std::string_view::npos;
  if (close == std::string_view::npos) return fail(Errc::kIo, "list: malformed next_cursor");
  return std::string(v.substr(1, close - 1));
}

uint64_t count_of(std::string_view body, std::string_view needle) {
  uint64_t n = 0;
  for (size_t at = body.find(needle); at != std::string_view::npos;
       at = body.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

Walk walk_state(uint16_t port, std::string_view state, uint64_t max_pages, int64_t until_us) {
  Walk w;
  std::string cursor;
  const int64_t t0 = monotonic_us();
  while (!interrupted().load()) {
    if (w.pages >= max_pages || monotonic_us() >= until_us) {
      w.error = fmt::format("list {}: next_cursor not null after {} pages, {:.1f} s", state,
                            w.pages, static_cast<double>(monotonic_us() - t0) / 1e6);
      break;
    }
    std::string path = fmt::format("/timer?state={}&limit={}", state, kPageLimit);
    if (!cursor.empty()) path += "&cursor=" + url_encode(cursor);
    auto r = http_request(port, "GET", path, 10'000);
    ++w.pages;
    if (!r || r->status != 200) {
      w.error = fmt::format("list {}: {}", state,
                            r ? fmt::format("status {}", r->status) : r.error().message);
      break;
    }
    // Each listed timer carries exactly one "state" member; the bench's data never does.
    w.listed += count_of(r->body, R"("state":)");
    auto next = next_cursor(r->body);
    if (!next) {
      w.error = next.error().message;
      break;
    }
    if (next->empty()) {
      w.finished = true;
      break;
    }
    if (*next <= cursor) {
      w.error =
          fmt::format("list {}: next_cursor '{}' does not advance past '{}'", state, *next, cursor);
      break;
    }
    cursor = std::move(*next);
  }
  w.elapsed_us = monotonic_us() - t0;
  return w;
}

// Closed-loop /ping on one connection until `stop` reads true or `until_us`. `first_sent` (if
// set) is set when the first request has been built.
Result<Pings> ping_loop(uint16_t port, const std::atomic<bool>* stop, int64_t until_us,
                        std::atomic<bool>* first_sent) {
  Pings p;
  LoadOptions lo;
  lo.port = port;
  lo.connections = 1;
  lo.max_requests = kMaxPings;
  lo.stop_issuing_us = until_us;
  lo.deadline_us = until_us + 10'000'000;
  lo.stop = stop;
  auto stats = run_load(
      lo,
      [&](uint64_t, std::string& out) {
        out.append(kPing);
        if (first_sent) first_sent->store(true, std::memory_order_release);
      },
      [&](const Outcome& r) {
        if (r.status == 200) {
          p.us.push_back(r.done_us - r.sent_us);
        } else {
          ++p.failures;
        }
      });
  if (!stats) return tl::unexpected(stats.error());
  std::sort(p.us.begin(), p.us.end());
  return p;
}

void ping_rows(Report& rep, const char* sc, std::string_view when, const Pings& p, bool goal) {
  auto ms = [](int64_t us) { return static_cast<double>(us) / 1000.0; };
  rep.info(sc, fmt::format("/ping samples {}", when), static_cast<double>(p.us.size()), "", 0);
  if (p.us.empty()) return;
  rep.info(sc, fmt::format("/ping p50 {}", when), ms(percentile(p.us, 0.50)), "ms", 3);
  if (goal) {
    rep.speed(sc, fmt::format("/ping p99 {}", when), ms(percentile(p.us, 0.99)), "ms", 3,
              Goal::kAtMost, 10);
  } else {
    rep.info(sc, fmt::format("/ping p99 {}", when), ms(percentile(p.us, 0.99)), "ms", 3);
  }
  rep.info(sc, fmt::format("/ping max {}", when), ms(p.us.back()), "ms", 3);
  if (p.failures > 0) {
    rep.speed(sc, fmt::format("/ping errors {}", when), static_cast<double>(p.failures), "", 0,
              Goal::kEqual, 0);
  }
}

}  // namespace

void measure_list_walk(const ScenarioContext& ctx, const char* sc, uint16_t port,
                       uint64_t pending) {
  Report& rep = ctx.report;
  const int64_t baseline_ms = ctx.options.smoke ? 500 : 2000;
  auto baseline = ping_loop(port, nullptr, monotonic_us() + baseline_ms * 1000, nullptr);
  if (!baseline) {
    rep.error(sc, "/ping baseline: " + baseline.error().message);
    return;
  }

  const uint64_t max_pages = pending / kPageLimit + 100;
  const int64_t walk_limit_us = (30 + static_cast<int64_t>(pending / 10'000)) * 1'000'000;
  fmt::print(stderr, "[{}] walking GET /timer?state=retrying among {} pending, /ping alongside\n",
             sc, pending);
  std::atomic<bool> pinging{false};
  std::atomic<bool> walk_done{false};
  Walk walk;
  Result<Pings> during = Pings{};
  {
    std::jthread walker([&] {
      // The /ping loop must be running before the first page, or a short walk goes unobserved.
      for (int64_t until = monotonic_us() + 5'000'000;
           !pinging.load(std::memory_order_acquire) && monotonic_us() < until;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      walk = walk_state(port, "retrying", max_pages, monotonic_us() + walk_limit_us);
      walk_done.store(true, std::memory_order_release);
    });
    during = ping_loop(port, &walk_done, monotonic_us() + walk_limit_us + 6'000'000, &pinging);
  }  // joins the walker
  fmt::print(stderr, "[{}] walk: {} pages in {:.3f} s{}\n", sc, walk.pages,
             static_cast<double>(walk.elapsed_us) / 1e6, walk.finished ? "" : " (not finished)");

  rep.info(sc, "list retrying: pages walked", static_cast<double>(walk.pages), "", 0);
  rep.info(sc, "list retrying: walk time", static_cast<double>(walk.elapsed_us) / 1e6, "s", 3);
  rep.must_be(sc, "list retrying: timers listed", static_cast<double>(walk.listed), 0);
  if (!walk.error.empty()) rep.error(sc, walk.error);
  ping_rows(rep, sc, "without listing", *baseline, false);
  if (!during) {
    rep.error(sc, "/ping during the walk: " + during.error().message);
    return;
  }
  ping_rows(rep, sc, "during the walk", *during, true);
}

}  // namespace skyring::bench
