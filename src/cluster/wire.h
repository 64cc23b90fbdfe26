// Small helpers for the cluster's node-to-node formats (the move batches of mover.cc, the
// forward batches of forward_batch.cc): one copy for every file here. Header names compare with
// base/ascii.h's iequals.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/ascii.h"

namespace skyring::cluster {

// u32, little-endian.
inline void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Reads a u32 from the front of `in`; false (`in` unchanged) when it is too short.
inline bool get_u32(std::string_view& in, uint32_t* v) {
  if (in.size() < 4) return false;
  *v = 0;
  for (int i = 0; i < 4; ++i) *v |= static_cast<uint32_t>(static_cast<uint8_t>(in[i])) << (8 * i);
  in.remove_prefix(4);
  return true;
}

}  // namespace skyring::cluster
