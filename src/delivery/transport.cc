#include "delivery/transport.h"

namespace skyring {

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
