#include <map>
#include <mutex>
#include <shared_mutex>

#include "storage/kv.h"

namespace skyring {
namespace {

class MemoryKv final : public Kv {
 public:
  Result<std::optional<std::string>> get(std::string_view key) override {
    std::shared_lock lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }

  Result<void> write(const KvBatch& batch, bool /*sync*/) override {
    std::unique_lock lock(mu_);
    for (const KvOp& op : batch) {
      if (op.kind == KvOp::Kind::kPut) {
        map_.insert_or_assign(op.key, op.value);
      } else {
        auto it = map_.find(op.key);
        if (it != map_.end()) map_.erase(it);
      }
    }
    return {};
  }

  Result<void> scan(std::string_view start, std::string_view end, const KvVisitor& fn) override {
    // Copy out under the lock in bounded chunks so the visitor may take its time.
    std::string from(start);
    bool first = true;
    for (;;) {
      std::vector<std::pair<std::string, std::string>> chunk;
      {
        std::shared_lock lock(mu_);
        auto it = first ? map_.lower_bound(from) : map_.upper_bound(from);
        for (; it != map_.end() && it->first < end && chunk.size() < 1024; ++it) {
          chunk.emplace_back(it->first, it->second);
        }
      }
      first = false;
      for (const auto& [k, v] : chunk) {
        if (!fn(k, v)) return {};
      }
      if (chunk.size() < 1024) return {};
      from = chunk.back().first;
    }
  }

 private:
  std::shared_mutex mu_;
  std::map<std::string, std::string, std::less<>> map_;
};

}  // namespace

std::unique_ptr<Kv> make_memory_kv() {
  return std::make_unique<MemoryKv>();
}

}  // namespace skyring
