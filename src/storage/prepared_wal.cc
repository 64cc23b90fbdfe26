// The third file that sees RocksDB (after rocks_kv.cc and fault_fs.cc): the prepared-log layer
// described in prepared_wal.h.
#include "storage/prepared_wal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rocksdb/file_system.h>
#include <rocksdb/io_status.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/log.h"
#include "base/thread.h"

namespace skyring {
namespace {

constexpr size_t kChunk = 1 << 20;
// Written back in steps, so preparing a spare does not leave the whole spare dirty at once
// (one long burst of writes in front of the next commits' fsyncs).
constexpr uint64_t kSyncEvery = 8 << 20;

// A RocksDB write-ahead log file name: digits, then ".log".
bool is_log_name(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string_view name(path);
  if (slash != std::string::npos) name.remove_prefix(slash + 1);
  if (name.size() <= 4 || name.substr(name.size() - 4) != ".log") return false;
  name.remove_suffix(4);
  return std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Writes `bytes` zeros to a new file at `path` and syncs it. On any failure, or when `stop`
// turns true, the partial file is removed.
Result<void> write_zeros(const std::string& path, uint64_t bytes, const std::atomic<bool>& stop) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return fail(Errc::kIo, fmt::format("cannot create {}: {}", path, std::strerror(errno)));
  std::vector<char> zeros(static_cast<size_t>(std::min<uint64_t>(kChunk, bytes)), 0);
  auto give_up = [&](std::string why) -> Result<void> {
    ::close(fd);
    ::unlink(path.c_str());
    return fail(Errc::kIo, std::move(why));
  };
  uint64_t done = 0, synced = 0;
  while (done < bytes) {
    if (stop.load(std::memory_order_relaxed)) return give_up("stopped");
    size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), bytes - done));
    ssize_t w = ::pwrite(fd, zeros.data(), n, static_cast<off_t>(done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return give_up(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
    done += static_cast<uint64_t>(w);
    if (done - synced >= kSyncEvery || done == bytes) {
      if (::fdatasync(fd) != 0)
        return give_up(fmt::format("cannot sync {}: {}", path, std::strerror(errno)));
      synced = done;
    }
  }
  if (::close(fd) != 0) {
    ::unlink(path.c_str());
    return fail(Errc::kIo, fmt::format("cannot close {}: {}", path, std::strerror(errno)));
  }
  return {};
}

class PreparedWalFs final : public rocksdb::FileSystemWrapper {
 public:
  PreparedWalFs(std::shared_ptr<rocksdb::FileSystem> base, const std::string& dir, uint64_t bytes)
      : FileSystemWrapper(std::move(base)),
        spare_(dir + "/wal-spare"),
        tmp_(dir + "/wal-spare.tmp"),
        bytes_(bytes) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);  // RocksDB reports a directory it cannot use
    // Only one process touches the spare: a second one started on this directory by mistake
    // (RocksDB's LOCK refuses it, but only after this runs) must not rename a spare over the one
    // the first is taking. Without the lock the layer stays off.
    dir_fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd_ < 0) return;                               // RocksDB's open reports it
    if (::flock(dir_fd_, LOCK_EX | LOCK_NB) != 0) return;  // RocksDB's LOCK refuses it next
    enabled_ = true;
    std::filesystem::remove(tmp_, ec);
    struct stat st {};
    if (::stat(spare_.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<uint64_t>(st.st_size) == bytes_) {
      state_ = State::kReady;  // renamed into place only after its sync: whole
    } else {
      std::filesystem::remove(spare_, ec);
      prepare();
    }
    thread_ = std::thread([this] { run(); });
  }

  ~PreparedWalFs() override {
    {
      std::lock_guard lock(mu_);  // so the thread cannot miss the wake-up between check and wait
      stop_.store(true);
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (dir_fd_ >= 0) ::close(dir_fd_);  // releases the flock
  }

  const char* Name() const override { return "SkyringPreparedWal"; }

  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& opts,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    if (enabled_ && is_log_name(fname)) {
      std::unique_lock lock(mu_);
      if (state_ == State::kReady) {
        // Under mu_: the preparing thread never renames over the spare while it is being
        // taken (a writer would keep the old file, unlinked, while the log's name pointed at
        // the new one).
        rocksdb::IOStatus s = target()->ReuseWritableFile(fname, spare_, opts, result, dbg);
        want_next(lock);
        if (s.ok()) return s;
        lock.unlock();
        log::warn("storage: could not use the prepared log file {}: {}; {} is a new file", spare_,
                  s.ToString(), fname);
      } else if (state_ == State::kNone) {
        want_next(lock);  // the last preparation failed: try again, once per new log
      }
    }
    return target()->NewWritableFile(fname, opts, result, dbg);
  }

 private:
  enum class State { kNone, kPreparing, kReady };

  void want_next(std::unique_lock<std::mutex>&) {
    state_ = State::kPreparing;
    cv_.notify_one();
  }

  // Writes a spare and renames it into place; with mu_ not held.
  void prepare() {
    auto r = write_zeros(tmp_, bytes_, stop_);
    std::unique_lock lock(mu_);
    if (r && ::rename(tmp_.c_str(), spare_.c_str()) != 0) {
      r = fail(Errc::kIo,
               fmt::format("cannot rename {} to {}: {}", tmp_, spare_, std::strerror(errno)));
      ::unlink(tmp_.c_str());
    }
    if (r) {
      state_ = State::kReady;
      return;
    }
    state_ = State::kNone;  // the next log file asks again: no retry loop on a full disk
    if (stop_.load()) return;
    lock.unlock();
    log::warn(
        "storage: could not prepare a log file ({}); log files are new files until one "
        "is prepared",
        r.error().message);
  }

  void run() {
    set_up_this_thread("sky-walprep", ThreadRole::kThroughput);
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_.load() || state_ == State::kPreparing; });
      if (stop_.load()) return;
      lock.unlock();
      prepare();
      lock.lock();
    }
  }

  const std::string spare_;
  const std::string tmp_;
  int dir_fd_ = -1;       // flock'ed while this layer may touch the spare
  bool enabled_ = false;  // the flock is held: set before the thread starts, then read-only
  const uint64_t bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kNone;
  std::atomic<bool> stop_{false};  // also read by write_zeros, which runs without mu_
  std::thread thread_;             // last: starts after everything it reads
};

}  // namespace

std::shared_ptr<rocksdb::FileSystem> make_prepared_wal_fs(std::shared_ptr<rocksdb::FileSystem> base,
                                                          const std::string& dir, uint64_t bytes) {
  return std::make_shared<PreparedWalFs>(std::move(base), dir, bytes);
}

}  // namespace skyring
