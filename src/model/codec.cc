#include "model/codec.h"

#include <cstring>

#include <fmt/format.h>

#include "base/hash.h"

namespace skyring {
namespace {

void put_u64(std::string* out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out->append(b, 8);
}

void put_varint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void put_str(std::string* out, std::string_view s) {
  put_varint(out, s.size());
  out->append(s);
}

class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  bool u8(uint8_t* v) {
    if (pos_ + 1 > b_.size()) return false;
    *v = static_cast<uint8_t>(b_[pos_++]);
    return true;
  }
  bool u64(uint64_t* v) {
    if (pos_ + 8 > b_.size()) return false;
    uint64_t x = 0;
    for (int i = 0; i < 8; ++i)
      x |= static_cast<uint64_t>(static_cast<uint8_t>(b_[pos_ + i])) << (8 * i);
    pos_ += 8;
    *v = x;
    return true;
  }
  bool i64(int64_t* v) {
    uint64_t x;
    if (!u64(&x)) return false;
    *v = static_cast<int64_t>(x);
    return true;
  }
  bool varint(uint64_t* v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t byte;
      if (!u8(&byte)) return false;
      x |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) {
        *v = x;
        return true;
      }
    }
    return false;
  }
  bool str(std::string* s) {
    uint64_t n;
    if (!varint(&n) || n > b_.size() - pos_) return false;
    s->assign(b_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  std::string_view b_;
  size_t pos_ = 0;
};

}  // namespace

void encode_record(const TimerRecord& r, std::string* out) {
  out->clear();
  out->reserve(64 + r.id.size() + r.callback.uri.size() + r.data.size() + r.last_error.size());
  out->push_back(static_cast<char>(kRecordVersion));
  out->push_back(static_cast<char>(r.state));
  put_u64(out, static_cast<uint64_t>(r.created_us));
  put_u64(out, static_cast<uint64_t>(r.due_us));
  put_u64(out, static_cast<uint64_t>(r.next_us));
  put_u64(out, static_cast<uint64_t>(r.timeout_ms));
  put_u64(out, static_cast<uint64_t>(r.completed_us));
  put_u64(out, r.body_hash);
  put_varint(out, r.attempts);
  put_varint(out, r.retry.attempts);
  put_varint(out, r.retry.backoff_ms);
  put_varint(out, r.retry.max_backoff_ms);
  out->push_back(static_cast<char>(r.data_kind));
  put_str(out, r.id);
  put_str(out, r.callback.transport);
  put_str(out, r.callback.method);
  put_str(out, r.callback.uri);
  put_str(out, r.data);
  put_str(out, r.last_error);
  put_varint(out, r.callback.headers.size());
  for (const auto& [k, v] : r.callback.headers) {
    put_str(out, k);
    put_str(out, v);
  }
  put_u64(out, hash64(*out));
}

std::string encode_record(const TimerRecord& r) {
  std::string out;
  encode_record(r, &out);
  return out;
}

Result<TimerRecord> decode_record(std::string_view bytes) {
  auto corrupt = [](const char* what) {
    return fail(Errc::kCorruption, fmt::format("timer record corrupt: {}", what));
  };
  if (bytes.size() < 2 + 8) return corrupt("too short");
  std::string_view body = bytes.substr(0, bytes.size() - 8);
  Reader tail(bytes.substr(bytes.size() - 8));
  uint64_t sum;
  tail.u64(&sum);
  if (hash64(body) != sum) return corrupt("checksum mismatch");
  Reader in(body);
  TimerRecord r;
  uint8_t version, state, kind;
  uint64_t attempts, retry_attempts, headers;
  if (!in.u8(&version)) return corrupt("no version");
  if (version != kRecordVersion) return corrupt("unknown format version");
  if (!in.u8(&state) || state < 1 || state > 6) return corrupt("bad state");
  r.state = static_cast<State>(state);
  if (!in.i64(&r.created_us) || !in.i64(&r.due_us) || !in.i64(&r.next_us) ||
      !in.i64(&r.timeout_ms) || !in.i64(&r.completed_us) || !in.u64(&r.body_hash))
    return corrupt("truncated times");
  if (!in.varint(&attempts) || !in.varint(&retry_attempts) || !in.varint(&r.retry.backoff_ms) ||
      !in.varint(&r.retry.max_backoff_ms) || attempts > UINT32_MAX || retry_attempts > UINT32_MAX)
    return corrupt("bad counters");
  r.attempts = static_cast<uint32_t>(attempts);
  r.retry.attempts = static_cast<uint32_t>(retry_attempts);
  if (!in.u8(&kind) || kind > 2) return corrupt("bad data kind");
  r.data_kind = static_cast<DataKind>(kind);
  if (!in.str(&r.id) || !in.str(&r.callback.transport) || !in.str(&r.callback.method) ||
      !in.str(&r.callback.uri) || !in.str(&r.data) || !in.str(&r.last_error))
    return corrupt("truncated strings");
  if (!in.varint(&headers) || headers > 10000) return corrupt("bad header count");
  for (uint64_t i = 0; i < headers; ++i) {
    std::string k, v;
    if (!in.str(&k) || !in.str(&v)) return corrupt("truncated header");
    r.callback.headers.emplace_back(std::move(k), std::move(v));
  }
  if (!in.done()) return corrupt("trailing bytes");
  return r;
}

}  // namespace skyring
