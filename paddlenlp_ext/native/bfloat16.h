// bfloat16 <-> float32 for one value, as Paddle converts them (bfloat16_gemv.cc,
// rms_norm.cc): a bfloat16 is a float32's upper 16 bits; rounding is to nearest, ties to
// even, and a NaN stays a (quiet) NaN.
#pragma once

#include <cstdint>
#include <cstring>

namespace paddlenlp_ext {

inline float Bfloat16ToFloat(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof(result));
  return result;
}

inline uint16_t RoundToBfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace paddlenlp_ext
