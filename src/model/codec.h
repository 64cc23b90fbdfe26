// Binary encoding of a TimerRecord as stored on disk. The layout is documented in
// docs/storage-format.md; change kRecordVersion whenever it changes.
//
//   u8  version (= kRecordVersion)       u8 state
//   6 x u64le: created_us due_us next_us timeout_ms completed_us body_hash
//   4 x varint: attempts retry.attempts retry.backoff_ms retry.max_backoff_ms
//   u8  data_kind
//   6 x string (varint length + bytes): id transport method uri data last_error
//   varint header count, then per header: string name, string value
//   u64le XXH3-64 of every byte before it
//
// decode_record() checks the checksum first, then every length against the remaining bytes,
// so a torn or flipped record is reported as kCorruption, never read past its end.
#pragma once

#include <string>
#include <string_view>

#include "base/result.h"
#include "model/timer.h"

namespace skyring {

inline constexpr uint8_t kRecordVersion = 1;

void encode_record(const TimerRecord& r, std::string* out);
std::string encode_record(const TimerRecord& r);
Result<TimerRecord> decode_record(std::string_view bytes);

}  // namespace skyring
