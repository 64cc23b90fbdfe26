#include "delivery/transport.h"

#include <exception>

#include "base/log.h"

namespace skyring {

void call_done(std::string_view transport, DeliveryDone& done, DeliveryResult result) noexcept {
  try {
    done(std::move(result));
  } catch (const std::exception& e) {
    log::error("{} transport: delivery callback threw: {}", transport, e.what());
  } catch (...) {
    log::error("{} transport: delivery callback threw", transport);
  }
}

std::optional<uint16_t> parse_port(std::string_view digits) {
  if (digits.empty() || digits.size() > 5) return std::nullopt;
  uint32_t n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<uint32_t>(c - '0');
  }
  if (n == 0 || n > 65535) return std::nullopt;
  return static_cast<uint16_t>(n);
}

void TransportRegistry::add(std::unique_ptr<Transport> t) {
  std::string name(t->name());
  SKYRING_ASSERT(by_name_.find(name) == by_name_.end(), "transport registered twice");
  by_name_.emplace(std::move(name), std::move(t));
}

Transport* TransportRegistry::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second.get();
}

void TransportRegistry::stop_all() {
  for (auto& [name, t] : by_name_) t->stop();
}

}  // namespace skyring
