#pragma once

namespace skyring {

inline constexpr const char* kVersion = "0.1.0";

}  // namespace skyring
