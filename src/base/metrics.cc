#include "base/metrics.h"

#include <algorithm>

#include <fmt/format.h>

namespace skyring {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::observe(double v) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  if (v > 0) sum_micro_.fetch_add(static_cast<uint64_t>(v * 1e6), std::memory_order_relaxed);
}

double Histogram::sum() const {
  return sum_micro_.load(std::memory_order_relaxed) / 1e6;
}

Counter& Registry::counter(std::string name, std::string help) {
  std::lock_guard lock(mu_);
  Counter& c = counters_.emplace_back();
  entries_.push_back({std::move(name), std::move(help), Kind::kCounter, &c});
  return c;
}

Gauge& Registry::gauge(std::string name, std::string help) {
  std::lock_guard lock(mu_);
  Gauge& g = gauges_.emplace_back();
  entries_.push_back({std::move(name), std::move(help), Kind::kGauge, &g});
  return g;
}

Histogram& Registry::histogram(std::string name, std::string help, std::vector<double> bounds) {
  std::lock_guard lock(mu_);
  Histogram& h = histograms_.emplace_back(std::move(bounds));
  entries_.push_back({std::move(name), std::move(help), Kind::kHistogram, &h});
  return h;
}

std::string Registry::render() const {
  std::lock_guard lock(mu_);
  std::string out;
  out.reserve(4096);
  for (const Entry& e : entries_) {
    switch (e.kind) {
      case Kind::kCounter:
        fmt::format_to(std::back_inserter(out), "# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n",
                       e.name, e.help, static_cast<Counter*>(e.metric)->value());
        break;
      case Kind::kGauge:
        fmt::format_to(std::back_inserter(out), "# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n",
                       e.name, e.help, static_cast<Gauge*>(e.metric)->value());
        break;
      case Kind::kHistogram: {
        auto* h = static_cast<Histogram*>(e.metric);
        fmt::format_to(std::back_inserter(out), "# HELP {0} {1}\n# TYPE {0} histogram\n", e.name,
                       e.help);
        uint64_t cumulative = 0;
        for (size_t i = 0; i < h->bounds().size(); ++i) {
          cumulative += h->bucket(i);
          fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"{}\"}} {}\n", e.name,
                         h->bounds()[i], cumulative);
        }
        cumulative += h->bucket(h->bounds().size());
        fmt::format_to(std::back_inserter(out),
                       "{0}_bucket{{le=\"+Inf\"}} {1}\n{0}_sum {2}\n{0}_count {1}\n", e.name,
                       cumulative, h->sum());
        break;
      }
    }
  }
  return out;
}

std::vector<double> latency_buckets_seconds() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10};
}

}  // namespace skyring
