#include "bench/report.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>

#include <fmt/format.h>

namespace skyring::bench {
namespace {

// 1234567.5 -> "1,234,567.5". Built front to back into a new string: no in-place insert.
std::string with_commas(double v, int decimals) {
  std::string s = fmt::format("{:.{}f}", v, decimals);
  size_t start = (!s.empty() && s[0] == '-') ? 1 : 0;
  size_t int_end = std::min(s.find('.'), s.size());
  std::string out;
  out.reserve(s.size() + (int_end - start) / 3);
  out.append(s, 0, start);
  for (size_t i = start; i < int_end; ++i) {
    if (i > start && (int_end - i) % 3 == 0) out += ',';
    out += s[i];
  }
  out.append(s, int_end, std::string::npos);
  return out;
}

std::string format_value(const Row& r) {
  if (!r.text.empty()) return r.text;
  std::string v = with_commas(r.value, r.decimals);
  return r.unit.empty() ? v : (r.unit == "/s" ? v + " /s" : v + " " + r.unit);
}

std::string format_goal(const Row& r) {
  if (!r.goal_text.empty()) return r.goal_text;
  if (r.goal == Goal::kNone) return "-";
  const char* op = r.goal == Goal::kAtLeast ? ">= " : r.goal == Goal::kAtMost ? "<= " : "= ";
  Row b = r;
  b.value = r.bound;
  b.text.clear();
  b.decimals = r.bound == std::floor(r.bound) ? 0 : 1;
  return op + format_value(b);
}

std::string status(const Row& r) {
  if (r.goal == Goal::kNone) return "-";
  return r.met() ? "ok" : "MISS";
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{:.3f}", v);
}

}  // namespace

bool Row::met() const {
  if (!text.empty()) return goal == Goal::kNone;  // an error row never meets its goal
  switch (goal) {
    case Goal::kNone:
      return true;
    case Goal::kAtLeast:
      return value >= bound;
    case Goal::kAtMost:
      return value <= bound;
    case Goal::kEqual:
      return value == bound;
  }
  return false;
}

void Report::info(const std::string& scenario, const std::string& metric, double value,
                  const std::string& unit, int decimals) {
  add(Row{scenario, metric, value, unit, decimals});
}

void Report::speed(const std::string& scenario, const std::string& metric, double value,
                   const std::string& unit, int decimals, Goal goal, double bound) {
  add(Row{scenario, metric, value, unit, decimals, goal, bound});
}

void Report::must_be(const std::string& scenario, const std::string& metric, double value,
                     double expected) {
  add(Row{scenario, metric, value, "", 0, Goal::kEqual, expected, true});
}

void Report::error(const std::string& scenario, const std::string& message) {
  Row r{scenario, "completed", 0, "", 0, Goal::kEqual, 1, true};
  r.text = "no: " + message;
  r.goal_text = "yes";
  add(std::move(r));
}

void Report::note(const std::string& scenario, const std::string& metric, const std::string& text) {
  Row r{scenario, metric};
  r.text = text;
  add(std::move(r));
}

bool Report::correctness_ok() const {
  return std::all_of(rows_.begin(), rows_.end(),
                     [](const Row& r) { return !r.correctness || r.met(); });
}

std::string Report::table(const Machine& m, const std::string& config) const {
  std::vector<std::array<std::string, 5>> cells;
  cells.push_back({"scenario", "metric", "value", "goal", "ok"});
  for (const Row& r : rows_) {
    cells.push_back({r.scenario, r.metric, format_value(r), format_goal(r), status(r)});
  }
  std::array<size_t, 5> width{};
  for (const auto& c : cells) {
    for (size_t i = 0; i < 5; ++i) width[i] = std::max(width[i], c[i].size());
  }
  std::string out =
      fmt::format("machine: {} cpus, {}, Linux {}, {:.1f} GiB RAM\n", m.cpus, m.cpu_model, m.kernel,
                  static_cast<double>(m.mem_total_bytes) / (1 << 30));
  out += "config:  " + config + "\n\n";
  for (size_t row = 0; row < cells.size(); ++row) {
    const auto& c = cells[row];
    // Values and goals are right-aligned so the numbers line up.
    out += fmt::format("{:<{}}  {:<{}}  {:>{}}  {:>{}}  {}\n", c[0], width[0], c[1], width[1], c[2],
                       width[2], c[3], width[3], c[4]);
    if (row == 0) {
      out += fmt::format("{}  {}  {}  {}  {}\n", std::string(width[0], '-'),
                         std::string(width[1], '-'), std::string(width[2], '-'),
                         std::string(width[3], '-'), std::string(width[4], '-'));
    }
  }
  return out;
}

std::string Report::json(const Machine& m, const std::string& config) const {
  std::string out = "{\n";
  out += fmt::format(
      "  \"machine\": {{\"cpus\": {}, \"cpu_model\": {}, \"kernel\": {}, \"mem_total_bytes\": "
      "{}}},\n",
      m.cpus, json_string(m.cpu_model), json_string(m.kernel), m.mem_total_bytes);
  out += fmt::format("  \"config\": {},\n", json_string(config));
  out += "  \"results\": [\n";
  for (size_t i = 0; i < rows_.size(); ++i) {
    const Row& r = rows_[i];
    std::string goal = "null";
    if (r.goal != Goal::kNone) {
      const char* op = r.goal == Goal::kAtLeast ? ">=" : r.goal == Goal::kAtMost ? "<=" : "==";
      goal = fmt::format("{{\"op\": \"{}\", \"value\": {}}}", op, json_number(r.bound));
    }
    std::string value = r.text.empty() ? json_number(r.value) : json_string(r.text);
    out += fmt::format(
        "    {{\"scenario\": {}, \"metric\": {}, \"value\": {}, \"unit\": {}, \"goal\": {}, "
        "\"correctness\": {}, \"ok\": {}}}{}\n",
        json_string(r.scenario), json_string(r.metric), value, json_string(r.unit), goal,
        r.correctness ? "true" : "false",
        r.goal == Goal::kNone ? "null" : (r.met() ? "true" : "false"),
        i + 1 < rows_.size() ? "," : "");
  }
  out += "  ],\n";
  out += fmt::format("  \"correct\": {}\n}}\n", correctness_ok() ? "true" : "false");
  return out;
}

Machine describe_machine() {
  Machine m;
  m.cpus = sysconf(_SC_NPROCESSORS_ONLN);
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line)) {
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      m.cpu_model = line.substr(line.find(':') + 2);
      break;
    }
  }
  if (m.cpu_model.empty()) m.cpu_model = "unknown CPU";
  utsname u{};
  if (uname(&u) == 0) m.kernel = u.release;
  std::ifstream mem("/proc/meminfo");
  while (std::getline(mem, line)) {
    if (line.rfind("MemTotal:", 0) == 0) {
      m.mem_total_bytes = std::stoll(line.substr(9)) * 1024;
      break;
    }
  }
  return m;
}

int64_t percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

}  // namespace skyring::bench
