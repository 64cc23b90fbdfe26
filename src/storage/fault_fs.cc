// The second file that sees RocksDB (rocks_kv.cc is the first): a rocksdb::FileSystem that
// loses what was not synced. The model and its limits are in fault_fs.h.
#include "storage/fault_fs.h"

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/io_status.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace skyring {
namespace {

using rocksdb::FileOptions;
using rocksdb::FSDirectory;
using rocksdb::FSWritableFile;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

// The largest file whose durable bytes a rename may replace and the cut put back.
constexpr uintmax_t kMaxRestoredBytes = 64 << 10;

IOStatus power_is_out() {
  return IOStatus::IOError("fault injection: the power is cut");
}

// One spelling per path, so a file and its directory are found under the same keys: repeated
// slashes collapsed, no trailing slash.
std::string normalize(const std::string& path) {
  std::string out;
  out.reserve(path.size());
  for (char c : path) {
    if (c == '/' && !out.empty() && out.back() == '/') continue;
    out.push_back(c);
  }
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

// {directory, name} of a normalized file path.
std::pair<std::string, std::string> split(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return {".", path};
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

std::string join(const std::string& dir, const std::string& name) {
  return dir == "/" ? dir + name : dir + "/" + name;
}

// What the layer knows of one file opened for writing.
struct FileState {
  uint64_t size = 0;    // bytes written through the layer (the file's length)
  uint64_t synced = 0;  // leading bytes a successful Sync/Fsync made durable
};

}  // namespace

// The filesystem RocksDB sees. All state is guarded by mu_, which is also held around every
// real call that changes the disk, so a cut falls between two operations, never inside one.
class FaultInjection::Disk final : public rocksdb::FileSystemWrapper {
 public:
  Disk() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "SkyringFaultInjection"; }

  IOStatus NewWritableFile(const std::string& fname, const FileOptions& opts,
                           std::unique_ptr<FSWritableFile>* result, IODebugContext* dbg) override;
  IOStatus ReopenWritableFile(const std::string& fname, const FileOptions& opts,
                              std::unique_ptr<FSWritableFile>* result,
                              IODebugContext* dbg) override;
  IOStatus ReuseWritableFile(const std::string&, const std::string&, const FileOptions&,
                             std::unique_ptr<FSWritableFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("fault injection does not model recycled WAL files");
  }
  IOStatus NewRandomRWFile(const std::string&, const FileOptions&,
                           std::unique_ptr<rocksdb::FSRandomRWFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("fault injection does not model random-write files");
  }
  IOStatus LinkFile(const std::string&, const std::string&, const IOOptions&,
                    IODebugContext*) override {
    return IOStatus::NotSupported("fault injection does not model hard links");
  }
  IOStatus NewDirectory(const std::string& name, const IOOptions& options,
                        std::unique_ptr<FSDirectory>* result, IODebugContext* dbg) override;
  IOStatus DeleteFile(const std::string& fname, const IOOptions& options,
                      IODebugContext* dbg) override;
  IOStatus RenameFile(const std::string& src, const std::string& target, const IOOptions& options,
                      IODebugContext* dbg) override;
  IOStatus Truncate(const std::string& fname, size_t size, const IOOptions& options,
                    IODebugContext* dbg) override;
  IOStatus CreateDir(const std::string& dirname, const IOOptions& options,
                     IODebugContext* dbg) override {
    std::lock_guard lock(mu_);
    if (cut_) return power_is_out();
    return FileSystemWrapper::CreateDir(dirname, options, dbg);
  }
  IOStatus CreateDirIfMissing(const std::string& dirname, const IOOptions& options,
                              IODebugContext* dbg) override {
    std::lock_guard lock(mu_);
    if (cut_) return power_is_out();
    return FileSystemWrapper::CreateDirIfMissing(dirname, options, dbg);
  }
  IOStatus DeleteDir(const std::string& dirname, const IOOptions& options,
                     IODebugContext* dbg) override {
    std::lock_guard lock(mu_);
    if (cut_) return power_is_out();
    return FileSystemWrapper::DeleteDir(dirname, options, dbg);
  }

  // Called by TrackedFile and TrackedDir: every change to what they track happens here, under
  // mu_.
  IOStatus sync_file(FileState& state, const std::function<IOStatus()>& real_sync);
  IOStatus change_file(const std::function<IOStatus()>& real_call,
                       const std::function<void()>& record);
  void file_closed();
  IOStatus sync_dir(const std::string& dir, const std::function<IOStatus()>& real_fsync);

  void cut_power();
  void cut_power_at_sync(uint64_t n);
  bool power_is_cut();
  uint64_t syncs();
  Result<Loss> restore_power();

 private:
  // The first change to `path`'s name since its directory's last fsync records what the name
  // held durably before (nullopt: nothing); later changes keep that first record.
  void name_changed(const std::string& path, std::optional<std::string> before) {
    auto [dir, name] = split(path);
    undurable_[dir].emplace(name, std::move(before));
  }
  bool name_is_undurable(const std::string& path) {
    auto [dir, name] = split(path);
    auto it = undurable_.find(dir);
    return it != undurable_.end() && it->second.count(name) > 0;
  }
  // The durable bytes of an existing file that is about to be replaced by a rename.
  IOStatus durable_bytes(const std::string& path, std::string* out);

  std::mutex mu_;
  bool cut_ = false;
  uint64_t syncs_until_cut_ = 0;  // 0: no cut armed
  uint64_t syncs_ = 0;            // file and directory syncs that reached the disk
  size_t open_files_ = 0;
  std::map<std::string, std::shared_ptr<FileState>> files_;  // by normalized path
  // directory -> name -> the name's durable content before its first undurable change.
  std::map<std::string, std::map<std::string, std::optional<std::string>>> undurable_;
};

namespace {

// A file opened for writing: every call that changes it goes through the Disk.
class TrackedFile final : public rocksdb::FSWritableFileWrapper {
 public:
  TrackedFile(std::unique_ptr<FSWritableFile> real, FaultInjection::Disk* disk,
              std::shared_ptr<FileState> state)
      : FSWritableFileWrapper(real.get()),
        real_(std::move(real)),
        disk_(disk),
        state_(std::move(state)) {}
  ~TrackedFile() override {
    real_.reset();  // closes the descriptor before the Disk counts the file closed
    disk_->file_closed();
  }

  IOStatus Append(const Slice& data, const IOOptions& o, IODebugContext* dbg) override {
    return disk_->change_file([&] { return real_->Append(data, o, dbg); },
                              [&] { state_->size += data.size(); });
  }
  IOStatus Append(const Slice& data, const IOOptions& o, const rocksdb::DataVerificationInfo& info,
                  IODebugContext* dbg) override {
    return disk_->change_file([&] { return real_->Append(data, o, info, dbg); },
                              [&] { state_->size += data.size(); });
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& o,
                            IODebugContext* dbg) override {
    return disk_->change_file([&] { return real_->PositionedAppend(data, offset, o, dbg); },
                              [&] { positioned(offset, data.size()); });
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& o,
                            const rocksdb::DataVerificationInfo& info,
                            IODebugContext* dbg) override {
    return disk_->change_file([&] { return real_->PositionedAppend(data, offset, o, info, dbg); },
                              [&] { positioned(offset, data.size()); });
  }
  IOStatus Truncate(uint64_t size, const IOOptions& o, IODebugContext* dbg) override {
    return disk_->change_file([&] { return real_->Truncate(size, o, dbg); },
                              [&] {
                                state_->size = size;
                                state_->synced = std::min(state_->synced, size);
                              });
  }
  // Neither makes anything durable: Flush hands buffered bytes to the OS, RangeSync starts
  // writeback without waiting for it, Allocate reserves blocks.
  IOStatus Flush(const IOOptions& o, IODebugContext* dbg) override {
    return disk_->change_file([&] { return real_->Flush(o, dbg); }, [] {});
  }
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& o,
                     IODebugContext* dbg) override {
    return disk_->change_file([&] { return real_->RangeSync(offset, nbytes, o, dbg); }, [] {});
  }
  IOStatus Allocate(uint64_t offset, uint64_t len, const IOOptions& o,
                    IODebugContext* dbg) override {
    return disk_->change_file([&] { return real_->Allocate(offset, len, o, dbg); }, [] {});
  }
  IOStatus Sync(const IOOptions& o, IODebugContext* dbg) override {
    return disk_->sync_file(*state_, [&] { return real_->Sync(o, dbg); });
  }
  IOStatus Fsync(const IOOptions& o, IODebugContext* dbg) override {
    return disk_->sync_file(*state_, [&] { return real_->Fsync(o, dbg); });
  }
  // Close makes nothing durable and always reaches the real file, so its descriptor is
  // released even after a cut (what it writes then is undone by restore_power()).
  IOStatus Close(const IOOptions& o, IODebugContext* dbg) override { return real_->Close(o, dbg); }

 private:
  void positioned(uint64_t offset, uint64_t len) {
    state_->size = std::max(state_->size, offset + len);
    if (offset < state_->synced) state_->synced = offset;  // durable bytes were overwritten
  }

  std::unique_ptr<FSWritableFile> real_;
  FaultInjection::Disk* disk_;
  std::shared_ptr<FileState> state_;
};

// A directory handle: its fsync makes the names in it durable.
class TrackedDir final : public rocksdb::FSDirectoryWrapper {
 public:
  TrackedDir(std::unique_ptr<FSDirectory> real, FaultInjection::Disk* disk, std::string path)
      : FSDirectoryWrapper(std::move(real)), disk_(disk), path_(std::move(path)) {}

  IOStatus Fsync(const IOOptions& o, IODebugContext* dbg) override {
    return disk_->sync_dir(path_, [&] { return FSDirectoryWrapper::Fsync(o, dbg); });
  }
  IOStatus FsyncWithDirOptions(const IOOptions& o, IODebugContext* dbg,
                               const rocksdb::DirFsyncOptions& dir_options) override {
    return disk_->sync_dir(
        path_, [&] { return FSDirectoryWrapper::FsyncWithDirOptions(o, dbg, dir_options); });
  }

 private:
  FaultInjection::Disk* disk_;
  std::string path_;
};

}  // namespace

IOStatus FaultInjection::Disk::NewWritableFile(const std::string& fname, const FileOptions& opts,
                                               std::unique_ptr<FSWritableFile>* result,
                                               IODebugContext* dbg) {
  std::lock_guard lock(mu_);
  if (cut_) return power_is_out();
  std::string path = normalize(fname);
  bool existed = target()->FileExists(fname, IOOptions(), nullptr).ok();
  std::unique_ptr<FSWritableFile> real;
  IOStatus s = target()->NewWritableFile(fname, opts, &real, dbg);
  if (!s.ok()) return s;
  // Opening truncates: the file starts empty, and only a sync makes its new bytes durable.
  auto state = std::make_shared<FileState>();
  files_[path] = state;
  if (!existed) name_changed(path, std::nullopt);
  ++open_files_;
  *result = std::make_unique<TrackedFile>(std::move(real), this, std::move(state));
  return s;
}

IOStatus FaultInjection::Disk::ReopenWritableFile(const std::string& fname, const FileOptions& opts,
                                                  std::unique_ptr<FSWritableFile>* result,
                                                  IODebugContext* dbg) {
  std::lock_guard lock(mu_);
  if (cut_) return power_is_out();
  std::string path = normalize(fname);
  uint64_t size = 0;
  bool existed = target()->GetFileSize(fname, IOOptions(), &size, nullptr).ok();
  std::unique_ptr<FSWritableFile> real;
  IOStatus s = target()->ReopenWritableFile(fname, opts, &real, dbg);
  if (!s.ok()) return s;
  auto& state = files_[path];
  if (!state) {
    // Untracked bytes were there before the layer saw the file: durable.
    state = std::make_shared<FileState>();
    state->size = state->synced = existed ? size : 0;
  }
  if (!existed) name_changed(path, std::nullopt);
  ++open_files_;
  *result = std::make_unique<TrackedFile>(std::move(real), this, state);
  return s;
}

IOStatus FaultInjection::Disk::NewDirectory(const std::string& name, const IOOptions& options,
                                            std::unique_ptr<FSDirectory>* result,
                                            IODebugContext* dbg) {
  std::unique_ptr<FSDirectory> real;
  IOStatus s = target()->NewDirectory(name, options, &real, dbg);
  if (!s.ok()) return s;
  *result = std::make_unique<TrackedDir>(std::move(real), this, normalize(name));
  return s;
}

IOStatus FaultInjection::Disk::DeleteFile(const std::string& fname, const IOOptions& options,
                                          IODebugContext* dbg) {
  std::lock_guard lock(mu_);
  if (cut_) return power_is_out();
  IOStatus s = target()->DeleteFile(fname, options, dbg);
  if (s.ok()) files_.erase(normalize(fname));
  return s;
}

IOStatus FaultInjection::Disk::RenameFile(const std::string& src, const std::string& target_name,
                                          const IOOptions& options, IODebugContext* dbg) {
  std::lock_guard lock(mu_);
  if (cut_) return power_is_out();
  std::string from = normalize(src), to = normalize(target_name);
  std::optional<std::string> before;
  bool record = !name_is_undurable(to);
  if (record && target()->FileExists(target_name, IOOptions(), nullptr).ok()) {
    before.emplace();
    IOStatus s = durable_bytes(to, &*before);
    if (!s.ok()) return s;
  }
  IOStatus s = target()->RenameFile(src, target_name, options, dbg);
  if (!s.ok()) return s;
  auto it = files_.find(from);
  if (it != files_.end()) {
    files_[to] = it->second;
    files_.erase(from);
  } else {
    files_.erase(to);  // `to` now holds untracked, hence durable, bytes
  }
  if (record) name_changed(to, std::move(before));
  return s;
}

IOStatus FaultInjection::Disk::Truncate(const std::string& fname, size_t size,
                                        const IOOptions& options, IODebugContext* dbg) {
  std::lock_guard lock(mu_);
  if (cut_) return power_is_out();
  IOStatus s = target()->Truncate(fname, size, options, dbg);
  if (!s.ok()) return s;
  auto it = files_.find(normalize(fname));
  if (it != files_.end()) {
    it->second->size = size;
    it->second->synced = std::min<uint64_t>(it->second->synced, size);
  }
  return s;
}

IOStatus FaultInjection::Disk::durable_bytes(const std::string& path, std::string* out) {
  std::error_code ec;
  uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) return IOStatus::IOError("fault injection: cannot size " + path, ec.message());
  auto it = files_.find(path);
  if (it != files_.end()) size = std::min<uintmax_t>(size, it->second->synced);
  if (size > kMaxRestoredBytes) {
    return IOStatus::NotSupported("fault injection keeps at most 64 KiB of a replaced file", path);
  }
  std::ifstream in(path, std::ios::binary);
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) return IOStatus::IOError("fault injection: cannot read " + path);
  out->resize(std::min<uintmax_t>(out->size(), size));
  return IOStatus::OK();
}

IOStatus FaultInjection::Disk::sync_file(FileState& state,
                                         const std::function<IOStatus()>& real_sync) {
  std::lock_guard lock(mu_);
  if (cut_) return power_is_out();
  if (syncs_until_cut_ > 0 && --syncs_until_cut_ == 0) {
    cut_ = true;
    return power_is_out();
  }
  uint64_t length = state.size;
  IOStatus s = real_sync();
  if (s.ok()) {
    state.synced = std::max(state.synced, length);
    ++syncs_;
  }
  return s;
}

IOStatus FaultInjection::Disk::change_file(const std::function<IOStatus()>& real_call,
                                           const std::function<void()>& record) {
  std::lock_guard lock(mu_);
  if (cut_) return power_is_out();
  IOStatus s = real_call();
  if (s.ok()) record();
  return s;
}

void FaultInjection::Disk::file_closed() {
  std::lock_guard lock(mu_);
  --open_files_;
}

IOStatus FaultInjection::Disk::sync_dir(const std::string& dir,
                                        const std::function<IOStatus()>& real_fsync) {
  std::lock_guard lock(mu_);
  if (cut_) return power_is_out();
  if (syncs_until_cut_ > 0 && --syncs_until_cut_ == 0) {
    cut_ = true;
    return power_is_out();
  }
  IOStatus s = real_fsync();
  if (s.ok()) {
    undurable_.erase(dir);
    ++syncs_;
  }
  return s;
}

void FaultInjection::Disk::cut_power() {
  std::lock_guard lock(mu_);
  cut_ = true;
}

void FaultInjection::Disk::cut_power_at_sync(uint64_t n) {
  SKYRING_ASSERT(n >= 1, "cut_power_at_sync counts from 1");
  std::lock_guard lock(mu_);
  syncs_until_cut_ = n;
}

bool FaultInjection::Disk::power_is_cut() {
  std::lock_guard lock(mu_);
  return cut_;
}

uint64_t FaultInjection::Disk::syncs() {
  std::lock_guard lock(mu_);
  return syncs_;
}

Result<FaultInjection::Loss> FaultInjection::Disk::restore_power() {
  std::lock_guard lock(mu_);
  SKYRING_ASSERT(open_files_ == 0, "restore_power() while a file is open: destroy the Kv first");
  cut_ = true;
  Loss loss;
  std::error_code ec;
  for (const auto& [path, state] : files_) {
    uintmax_t size = std::filesystem::file_size(path, ec);
    if (ec) return fail(Errc::kIo, fmt::format("cannot size {}: {}", path, ec.message()));
    if (size <= state->synced) continue;
    std::filesystem::resize_file(path, state->synced, ec);
    if (ec) return fail(Errc::kIo, fmt::format("cannot truncate {}: {}", path, ec.message()));
    loss.bytes_dropped += size - state->synced;
    ++loss.files_truncated;
  }
  for (const auto& [dir, names] : undurable_) {
    for (const auto& [name, before] : names) {
      std::string path = join(dir, name);
      if (!before) {
        if (std::filesystem::remove(path, ec)) ++loss.names_removed;
        if (ec) return fail(Errc::kIo, fmt::format("cannot remove {}: {}", path, ec.message()));
        continue;
      }
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(before->data(), static_cast<std::streamsize>(before->size()));
      out.close();
      if (!out) return fail(Errc::kIo, fmt::format("cannot restore {}", path));
      ++loss.names_restored;
    }
  }
  files_.clear();
  undurable_.clear();
  syncs_ = 0;
  syncs_until_cut_ = 0;
  cut_ = false;
  return loss;
}

FaultInjection::FaultInjection()
    : disk_(std::make_shared<Disk>()), env_(rocksdb::NewCompositeEnv(disk_)) {}

FaultInjection::~FaultInjection() = default;

void FaultInjection::cut_power() {
  disk_->cut_power();
}
void FaultInjection::cut_power_at_sync(uint64_t n) {
  disk_->cut_power_at_sync(n);
}
bool FaultInjection::power_is_cut() const {
  return disk_->power_is_cut();
}
uint64_t FaultInjection::syncs() const {
  return disk_->syncs();
}
Result<FaultInjection::Loss> FaultInjection::restore_power() {
  return disk_->restore_power();
}
rocksdb::Env* FaultInjection::env() {
  return env_.get();
}

}  // namespace skyring
