// One hash for checksums, ids and routing: XXH3-64.
#pragma once

#include <cstdint>
#include <string_view>

namespace skyring {

uint64_t hash64(std::string_view bytes, uint64_t seed = 0);

}  // namespace skyring
