// Write-ahead log files written with zeros before RocksDB uses them, so a commit overwrites
// bytes the file already has instead of appending.
//
// Why: RocksDB's log grows by appends. On ext4, fdatasync after an append must also write the
// inode (the file's new size), so each durable commit costs three disk requests (data, inode,
// cache flush); an overwrite inside the file's size costs two. On the benchmark VM that is
// ~40 µs of CPU and ~70 µs of wall time less per commit (docs/performance.md).
//
// How: a spare file, `wal-spare` in the data directory, is written with `bytes` zeros and
// synced ahead of time. When RocksDB creates a log file, the layer renames the spare to the
// log's name (RocksDB's ReuseWritableFile) and RocksDB writes it from offset 0; a thread
// (`sky-walprep`) then prepares the next spare. Without a spare (not ready yet, or an error) the
// log is an ordinary new file. RocksDB's log format reserves record type 0 for preallocated
// space, and its reader skips zero blocks, so a zero tail reads as the end of the log.
//
// Safety: only a file that this layer wrote with zeros and synced is ever handed out, never a
// file RocksDB wrote before (stale records in a recycled log would be replayed). The spare is
// renamed into place only after its fdatasync, so a `wal-spare` found at startup is whole and
// is used; a `wal-spare.tmp` is a preparation cut short and is deleted.
//
// Limits: one spare of `bytes` on disk besides the live logs; preparing it writes `bytes` once
// per log file (the first before the store opens, the rest in the background).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace rocksdb {
class FileSystem;
}

namespace skyring {

// The layer over `base` for the store in `dir`, to be RocksDB's file system. The first spare
// is prepared before this returns, so the store's first log is one. Failing to prepare a spare
// (a full disk) is logged, never fatal: log files are then new files, as without the layer.
// Another process holding the directory (flock) leaves the layer off.
std::shared_ptr<rocksdb::FileSystem> make_prepared_wal_fs(std::shared_ptr<rocksdb::FileSystem> base,
                                                          const std::string& dir, uint64_t bytes);

}  // namespace skyring
