// One of the three files that see RocksDB; the others are prepared_wal.cc (log files written
// with zeros ahead of use) and fault_fs.cc, the power-cut simulation for tests.
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/perf_level.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <algorithm>

#include <fmt/format.h>

#include "storage/fault_fs.h"
#include "storage/kv.h"
#include "storage/prepared_wal.h"

namespace skyring {
namespace {

// RocksDB's default perf level counts into a thread-local perf context on every key comparison
// (`__tls_get_addr` and the counters were ~8% of the committer thread). The level is per
// thread, so each thread that calls in turns it off once.
void without_perf_counters() {
  thread_local bool done = false;
  if (!done) {
    rocksdb::SetPerfLevel(rocksdb::PerfLevel::kDisable);
    done = true;
  }
}

Error to_error(const rocksdb::Status& s) {
  return Error{s.IsCorruption() ? Errc::kCorruption : Errc::kIo, s.ToString()};
}

class RocksKv final : public Kv {
 public:
  RocksKv(std::unique_ptr<rocksdb::DB> db, std::shared_ptr<FaultInjection> fault,
          std::shared_ptr<rocksdb::FileSystem> wal_fs, std::unique_ptr<rocksdb::Env> wal_env)
      : fault_(std::move(fault)),
        wal_fs_(std::move(wal_fs)),
        wal_env_(std::move(wal_env)),
        db_(std::move(db)) {}
  // A clean close: the memtable is flushed to a synced table file. Over a FaultInjection whose
  // power is cut, the flush and the close fail and nothing more reaches the disk.
  ~RocksKv() override {
    if (db_) {
      rocksdb::FlushOptions fo;
      db_->Flush(fo);
      db_->Close();
    }
  }

  Result<std::optional<std::string>> get(std::string_view key) override {
    without_perf_counters();
    std::string value;
    rocksdb::Status s =
        db_->Get(rocksdb::ReadOptions(), rocksdb::Slice(key.data(), key.size()), &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return tl::unexpected(to_error(s));
    return std::optional<std::string>(std::move(value));
  }

  Result<void> write(const KvBatch& batch, bool sync) override {
    without_perf_counters();
    rocksdb::WriteBatch wb;
    for (const KvOp& op : batch) {
      rocksdb::Status s =
          op.kind == KvOp::Kind::kPut ? wb.Put(op.key, op.value) : wb.Delete(op.key);
      if (!s.ok()) return tl::unexpected(to_error(s));
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    rocksdb::Status s = db_->Write(wo, &wb);
    if (!s.ok()) return tl::unexpected(to_error(s));
    return {};
  }

  Result<void> scan(std::string_view start, std::string_view end, const KvVisitor& fn) override {
    without_perf_counters();
    rocksdb::ReadOptions ro;
    rocksdb::Slice upper(end.data(), end.size());
    ro.iterate_upper_bound = &upper;
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    for (it->Seek(rocksdb::Slice(start.data(), start.size())); it->Valid(); it->Next()) {
      rocksdb::Slice k = it->key(), v = it->value();
      if (!fn(std::string_view(k.data(), k.size()), std::string_view(v.data(), v.size()))) break;
    }
    if (!it->status().ok()) return tl::unexpected(to_error(it->status()));
    return {};
  }

 private:
  std::shared_ptr<FaultInjection> fault_;        // outlives db_, whose Env it owns
  std::shared_ptr<rocksdb::FileSystem> wal_fs_;  // outlive db_: its Env and file system
  std::unique_ptr<rocksdb::Env> wal_env_;
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace

Result<std::unique_ptr<Kv>> open_rocks_kv(const std::string& dir, const RocksOptions& options) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.IncreaseParallelism(2);
  o.max_background_jobs = 2;
  o.write_buffer_size = options.write_buffer_mb << 20;
  o.max_write_buffer_number = 3;
  o.compression = rocksdb::kNoCompression;
  o.memtable_whole_key_filtering = true;
  o.memtable_prefix_bloom_size_ratio = 0.02;
  o.max_open_files = static_cast<int>(std::max<size_t>(options.max_open_files, 16));
  o.keep_log_file_num = 3;
  rocksdb::BlockBasedTableOptions t;
  t.block_cache = rocksdb::NewLRUCache(options.block_cache_mb << 20);
  t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  t.cache_index_and_filter_blocks = true;
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
  std::shared_ptr<rocksdb::FileSystem> wal_fs;
  std::unique_ptr<rocksdb::Env> wal_env;
  if (options.fault) {
    o.env = options.fault->env();
  } else if (options.prepared_wal && options.write_buffer_mb > 0) {
    wal_fs = make_prepared_wal_fs(rocksdb::FileSystem::Default(), dir,
                                  uint64_t{options.write_buffer_mb} << 20);
    wal_env = rocksdb::NewCompositeEnv(wal_fs);
    o.env = wal_env.get();
  }
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, dir, &raw);
  if (!s.ok()) {
    return fail(s.IsIOError() ? Errc::kIo : Errc::kCorruption,
                fmt::format("cannot open storage in {}: {}", dir, s.ToString()));
  }
  return std::unique_ptr<Kv>(new RocksKv(std::unique_ptr<rocksdb::DB>(raw), options.fault,
                                         std::move(wal_fs), std::move(wal_env)));
}

}  // namespace skyring
