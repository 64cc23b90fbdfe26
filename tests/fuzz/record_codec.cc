// Fuzz target: the stored-record decoder (decode_record, model/codec.h).
//
// Random bytes almost never carry a valid XXH3 checksum, so each input is decoded twice: as
// given (the checksum path) and with a correct checksum appended (the field parser behind it).
// Whatever decodes must re-encode to bytes that decode to an equal record, and encoding must
// be a fixed point after one round (varints written by us are canonical).
#include <cstdint>
#include <string>
#include <string_view>

#include "base/hash.h"
#include "base/result.h"
#include "model/codec.h"

namespace {

void check_round_trip(const skyring::TimerRecord& r) {
  std::string again = skyring::encode_record(r);
  auto back = skyring::decode_record(again);
  SKYRING_ASSERT(back.has_value(), "a decoded record re-encodes to bytes that do not decode");
  SKYRING_ASSERT(*back == r, "a decoded record does not survive encode + decode");
  SKYRING_ASSERT(skyring::encode_record(*back) == again, "encoding is not deterministic");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (auto r = skyring::decode_record(bytes)) {
    check_round_trip(*r);
  } else {
    SKYRING_ASSERT(r.error().code == skyring::Errc::kCorruption,
                   "decode failed but not kCorruption");
  }

  // The same bytes as a record body with a valid checksum after it.
  std::string sealed(bytes);
  uint64_t sum = skyring::hash64(sealed);
  for (int i = 0; i < 8; ++i) sealed.push_back(static_cast<char>((sum >> (8 * i)) & 0xff));
  if (auto r = skyring::decode_record(sealed)) {
    check_round_trip(*r);
  } else {
    SKYRING_ASSERT(r.error().code == skyring::Errc::kCorruption,
                   "decode failed but not kCorruption");
  }
  return 0;
}
