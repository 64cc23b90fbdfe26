// FaultInjection: a disk that loses power, for tests. It stands between RocksDB and the real
// filesystem (RocksOptions::fault) and remembers what was made durable; at a power cut it
// throws away everything else, as LevelDB's FaultInjectionTestEnv and RocksDB's
// FaultInjectionTestFS do. `kill -9` cannot show a missing fsync (the page cache survives the
// process); this can.
//
// Operation: every write goes to the real file at once (so the live DB reads what it wrote),
// and the layer keeps, per file opened for writing, how many bytes were appended and how many
// of those were synced, and per directory, which names appeared since its last fsync. What
// counts as durable:
//   * file data: the bytes appended before a Sync() or Fsync() of that file that returned OK.
//     RangeSync() (sync_file_range: starts writeback, waits for nothing), Flush() and Close()
//     make nothing durable. Truncating a file keeps at most the new length durable.
//   * a new name (a created file, a rename's target): only once its directory is fsynced
//     (FSDirectory::Fsync). Until then the cut removes the name; a rename that replaced an
//     older file puts that file's durable bytes back (the CURRENT pointer's case).
//   * files that existed before this layer saw them, and directories: durable as they are.
// The power goes out with cut_power(), or inside the n-th sync (of a file or a directory)
// after cut_power_at_sync(n): that sync fails, and what it would have made durable is not.
// From then on every write, sync, create, rename and delete fails with an I/O error (closing
// a file still works), so nothing the DB does afterwards reaches the disk, not even the
// memtable flush in the Kv's destructor. The test then destroys the Kv and calls
// restore_power(), which rewrites the directory into what the disk would hold: each tracked
// file truncated to its synced length, each undurable name removed or put back. After that
// the directory can be opened again, with or without this layer.
//
// Concurrency: every method may be called from any thread, cut_power() too (from a completion
// callback, say). File operations take one mutex around the real call, so a cut is atomic
// with respect to them: an operation either completed before the cut, with its effect
// recorded, or fails. restore_power() needs every file closed (the Kv destroyed): it asserts
// that no file it opened for writing is still open.
//
// Limitations: unsynced bytes are dropped whole (no torn sector, no partial survival, no
// reordering); a deleted file or the old name of a renamed file never comes back, even without
// a directory fsync; a directory itself (its creation) is always durable; hard links
// (LinkFile), random-write files (NewRandomRWFile) and recycled WAL files (ReuseWritableFile)
// are refused as unsupported, and so is a rename over a file larger than 64 KiB (whose old
// bytes the cut would have to put back); the info log (LOG) is written past the layer and is
// not part of the model. A real disk may keep some unsynced writes; this one keeps none, so a
// test can expect an unacknowledged write to be gone, but only here.
//
// This file and fault_fs.cc are the second wall behind which RocksDB lives (rocks_kv.cc is the
// first): the header includes no RocksDB header and names one RocksDB type, opaquely, for
// rocks_kv.cc.
#pragma once

#include <cstdint>
#include <memory>

#include "base/result.h"

namespace rocksdb {
class Env;
}

namespace skyring {

class FaultInjection {
 public:
  FaultInjection();
  ~FaultInjection();
  FaultInjection(const FaultInjection&) = delete;
  FaultInjection& operator=(const FaultInjection&) = delete;

  // The power goes out now (idempotent).
  void cut_power();
  // The power goes out inside the n-th sync from now (n >= 1): a file's Sync or Fsync, or a
  // directory's Fsync (RangeSync does not count). That sync fails without reaching the disk.
  // Replaces an earlier arming; cut_power() still cuts at once.
  void cut_power_at_sync(uint64_t n);
  bool power_is_cut() const;
  // Syncs (file and directory) that reached the disk since construction or the last
  // restore_power().
  uint64_t syncs() const;

  struct Loss {
    uint64_t bytes_dropped = 0;  // unsynced bytes cut off the ends of files
    size_t files_truncated = 0;  // files that lost bytes
    size_t names_removed = 0;    // files whose name was never made durable
    size_t names_restored = 0;   // rename targets put back to their earlier durable bytes
  };
  // After the Kv opened over this layer is destroyed: rewrites the directories to what the disk
  // holds after the cut (cutting the power first if it is still on), forgets everything it
  // tracked and turns the power back on. Fails with kIo if the real filesystem refuses.
  Result<Loss> restore_power();

  // For rocks_kv.cc only: the RocksDB environment that routes every file operation through this
  // layer. Lives as long as this object.
  rocksdb::Env* env();

  class Disk;  // the rocksdb::FileSystem, defined in fault_fs.cc

 private:
  std::shared_ptr<Disk> disk_;
  std::unique_ptr<rocksdb::Env> env_;  // routes file operations to disk_
};

}  // namespace skyring
