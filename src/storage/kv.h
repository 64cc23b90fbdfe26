// The storage engine behind one small interface: an ordered key-value store with atomic,
// optionally synced batches. RocksDB (rocks_kv.cc) is the durable backend; MemoryKv keeps the
// same semantics in a std::map and survives nothing.
//
// Concurrency: get() and scan() may run on one thread while write() runs on another.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace skyring {

struct KvOp {
  enum class Kind : uint8_t { kPut, kDelete };
  Kind kind;
  std::string key;
  std::string value;
};
using KvBatch = std::vector<KvOp>;

// Called per key in order; return false to stop.
using KvVisitor = std::function<bool(std::string_view key, std::string_view value)>;

class Kv {
 public:
  virtual ~Kv() = default;
  virtual Result<std::optional<std::string>> get(std::string_view key) = 0;
  // Applies every op or none. With sync the call returns only after the batch is on stable
  // storage (fsync of the write-ahead log).
  virtual Result<void> write(const KvBatch& batch, bool sync) = 0;
  // Visits keys in [start, end) in byte order.
  virtual Result<void> scan(std::string_view start, std::string_view end, const KvVisitor& fn) = 0;
};

class FaultInjection;  // storage/fault_fs.h

struct RocksOptions {
  size_t block_cache_mb = 64;
  size_t write_buffer_mb = 64;
  // Table files RocksDB keeps open; it also holds a handful of others (WAL, MANIFEST, LOG,
  // LOCK). The node sizes this from its descriptor plan.
  size_t max_open_files = 512;
  // Write-ahead log files are written with zeros ahead of use, write_buffer_mb each, so commits
  // overwrite instead of appending (storage/prepared_wal.h); a log outgrowing that appends the
  // rest. Not over a FaultInjection, which models appended files only.
  bool prepared_wal = true;
  // Tests only: every file operation goes through this simulated disk, which can lose power
  // and drop what was not synced (fault_fs.h). After its cut_power() the Kv's destructor
  // cannot flush: destroying the Kv then is a crash, not a clean close. Null in production.
  std::shared_ptr<FaultInjection> fault;
};

Result<std::unique_ptr<Kv>> open_rocks_kv(const std::string& dir, const RocksOptions& options);
std::unique_ptr<Kv> make_memory_kv();

}  // namespace skyring
