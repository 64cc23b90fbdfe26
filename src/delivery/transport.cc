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
