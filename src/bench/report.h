// Results of a bench run: rows of scenario | metric | value | goal | ok/MISS, printed as one
// aligned text table or one JSON object.
//
// A goal is either a speed goal from SPEC section 8 (a miss is reported, never fatal) or a
// correctness goal (early/duplicate/missing deliveries, lost timers, a scenario that did not
// complete): a missed correctness goal makes the exit code 1.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace skyring::bench {

enum class Goal { kNone, kAtLeast, kAtMost, kEqual };

struct Row {
  std::string scenario;
  std::string metric;
  double value = 0;
  std::string unit;  // "/s", "ms", "s", "B", "" (a count)
  int decimals = 0;
  Goal goal = Goal::kNone;
  double bound = 0;
  bool correctness = false;  // a miss fails the run (exit code 1)
  std::string text;          // replaces the number when set (errors, skipped scenarios)
  std::string goal_text;     // replaces the goal column when set

  bool met() const;
};

struct Machine {
  long cpus = 0;
  std::string cpu_model;
  std::string kernel;
  int64_t mem_total_bytes = 0;
};

Machine describe_machine();

class Report {
 public:
  void add(Row row) { rows_.push_back(std::move(row)); }
  // Shorthands for the common shapes.
  void info(const std::string& scenario, const std::string& metric, double value,
            const std::string& unit, int decimals);
  void speed(const std::string& scenario, const std::string& metric, double value,
             const std::string& unit, int decimals, Goal goal, double bound);
  void must_be(const std::string& scenario, const std::string& metric, double value,
               double expected);
  void error(const std::string& scenario, const std::string& message);
  void note(const std::string& scenario, const std::string& metric, const std::string& text);

  bool correctness_ok() const;
  const std::vector<Row>& rows() const { return rows_; }

  std::string table(const Machine& m, const std::string& config) const;
  std::string json(const Machine& m, const std::string& config) const;

 private:
  std::vector<Row> rows_;
};

// Nearest-rank percentile of an ascending sorted vector (q in [0, 1]); 0 when empty.
int64_t percentile(const std::vector<int64_t>& sorted, double q);

}  // namespace skyring::bench
