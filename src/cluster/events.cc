#include "cluster/events.h"

#include <fmt/format.h>

#include "model/json_text.h"

namespace skyring::cluster {
namespace {

using Buffer = fmt::memory_buffer;

// A JSON string. Values may carry bytes that are not UTF-8 (an error text from a remote
// server): such a byte becomes U+FFFD, so the event stays valid JSON.
void quoted(Buffer& out, std::string_view s) {
  out.push_back('"');
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    switch (c) {
      case '"':
        fmt::format_to(std::back_inserter(out), "\\\"");
        ++i;
        continue;
      case '\\':
        fmt::format_to(std::back_inserter(out), "\\\\");
        ++i;
        continue;
      case '\n':
        fmt::format_to(std::back_inserter(out), "\\n");
        ++i;
        continue;
      case '\r':
        fmt::format_to(std::back_inserter(out), "\\r");
        ++i;
        continue;
      case '\t':
        fmt::format_to(std::back_inserter(out), "\\t");
        ++i;
        continue;
      default:
        break;
    }
    if (c < 0x20) {
      fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
      ++i;
      continue;
    }
    size_t n = utf8_char_length(s, i);
    if (n == 0) {
      out.append(std::string_view("\xEF\xBF\xBD"));
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  out.push_back('"');
}

void field(Buffer& out, std::string_view key, std::string_view value) {
  out.push_back(',');
  quoted(out, key);
  out.push_back(':');
  quoted(out, value);
}

int64_t ms(int64_t us) {
  return us / 1000;
}

const Clock& system_clock() {
  static const SystemClock clock;
  return clock;
}

}  // namespace

EventPublisher::EventPublisher(NatsBus& bus, std::string node_id, std::string cluster,
                               const Clock* clock)
    : bus_(bus),
      node_id_(std::move(node_id)),
      cluster_(std::move(cluster)),
      clock_(clock != nullptr ? *clock : system_clock()) {}

void EventPublisher::on_timer(TimerEvent event, const TimerRecord& r) {
  Buffer out;
  out.append(std::string_view(R"({"type":)"));
  quoted(out, timer_event_name(event));
  field(out, "node", node_id_);
  field(out, "cluster", cluster_);
  field(out, "timer", r.id);
  fmt::format_to(std::back_inserter(out), R"(,"created":{},"due":{},"timeout":{},"attempt":{})",
                 ms(r.created_us), ms(r.due_us), r.timeout_ms, r.attempts);
  field(out, "state", state_name(r.state));
  if (!r.last_error.empty()) field(out, "error", r.last_error);
  out.append(std::string_view(R"(,"callback":{"transport":)"));
  quoted(out, r.callback.transport);
  field(out, "method", r.callback.method);
  field(out, "uri", r.callback.uri);
  fmt::format_to(std::back_inserter(out), R"(}},"time":{}}})", ms(clock_.now_us()));
  bus_.publish(std::string(kTimerEventsSubject), fmt::to_string(out), NatsBus::Send::kGathered);
}

void EventPublisher::node_event(std::string_view type, std::string_view fields) {
  Buffer out;
  out.append(std::string_view(R"({"type":)"));
  quoted(out, type);
  field(out, "node", node_id_);
  field(out, "cluster", cluster_);
  fmt::format_to(std::back_inserter(out), R"(,"time":{})", ms(clock_.now_us()));
  if (!fields.empty()) {
    out.push_back(',');
    out.append(fields);
  }
  out.push_back('}');
  bus_.publish(std::string(kNodeEventsSubject), fmt::to_string(out), NatsBus::Send::kGathered);
}

}  // namespace skyring::cluster
