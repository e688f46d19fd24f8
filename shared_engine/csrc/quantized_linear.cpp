// Int4 and int8 weight x int8 activation matmuls, made for decode-sized row counts: the activations are
// quantized per group of input features (symmetric int8, one float scale each) and multiplied in
// integers, four products per instruction lane (AVX-512 VNNI vpdpbusd, or AVX2 vpmaddubsw +
// vpmaddwd), with one float multiply-add per group to apply both sides' scales. Converting every
// weight to float instead (what ATen's weight-only kernels do) makes the matmul bound by arithmetic,
// not by reading the weights. As AVX2, int4 in groups of 32 has a second kernel for a prompt's many
// rows, which beats a float32 GEMM there too (AVX2 has no bf16 to do better with).
//
// Int4 layout, per block of 16 output rows and per 8 input features (64 bytes): byte 4 * r + i holds
// row r's features i (low nibble) and 4 + i (high nibble), so that one vector of low nibbles is 16 rows
// x 4 consecutive features, the shape vpdpbusd reduces. Scales and zeros are float16, [blocks, groups,
// 2, 16]; a weight is (q - 8) * scale + zero, as for ATen's int4 kernel.
// Int8 layout, per block of 16 rows and per 4 features (64 bytes): byte 4 * r + i is row r's feature i
// (symmetric, -127..127), one float32 scale per row. Signed x signed goes through the unsigned x
// signed instructions as |w| x (x with w's sign).
//
// Each instruction set is compiled into its own functions (target attributes) and chosen by the caller,
// which checks the CPU first (int_matmul_supported); without AVX2 callers use ATen's kernel. Rounding the
// rows to int8 follows the build's own flags instead (the AVX-512 build is loaded only on AVX-512 CPUs).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlockRows = 16;
// How far ahead of its reads a block prefetches its weights (bytes), into L2: at one row, 2 KiB into L1
// was ~10% faster than none on a Xeon whose L3 held every weight; on an AMD EPYC reading them from DRAM,
// 8 KiB into L2 took a decode step of the chat model from 2.6 to 2.25 ms (4 KiB: 2.3).
constexpr int64_t kPrefetchBytes = 8192;
constexpr _mm_hint kPrefetchHint = _MM_HINT_T1;
constexpr int64_t kStepFeatures = 8;
enum Isa : int64_t { kAvx2 = 1, kAvx512Vnni = 2 };

inline int32_t four_bytes(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// One row of activations per weight group: int8 values, their scale, scale * sum(values), which carries
// the weights' zero points, and 8 * sum(values), which the AVX2 int4 kernel takes from its integer sums
// to centre unsigned nibbles (q - 8). They live in a workspace of rows * (K + 12 * groups) bytes.
struct QuantizedRows {
  float* scales;  // [rows, groups]
  float* scaled_sums;  // [rows, groups]
  int32_t* sums_times_8;  // [rows, groups]
  int8_t* values;  // [rows, K]
};

int64_t workspace_bytes(int64_t rows, int64_t k, int64_t group) { return rows * (k + 12 * (k / group)); }

QuantizedRows rows_in(void* workspace, int64_t rows, int64_t k, int64_t group) {
  const int64_t entries = rows * (k / group);
  float* floats = static_cast<float*>(workspace);
  return {floats, floats + entries, reinterpret_cast<int32_t*>(floats + 2 * entries),
          reinterpret_cast<int8_t*>(floats + 3 * entries)};
}

// The calling thread's workspace of at least ``bytes``, kept for its next matmul: a decode step's
// matmuls would otherwise allocate four buffers each.
void* thread_workspace(int64_t bytes) {
  thread_local std::vector<float> buffer;
  const size_t floats = static_cast<size_t>(bytes + 3) / 4;
  if (buffer.size() < floats) buffer.resize(floats);
  return buffer.data();
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
template <typename T>
inline __m512 load_16_floats(const T* src);
template <>
inline __m512 load_16_floats(const float* src) {
  return _mm512_loadu_ps(src);
}
template <>
inline __m512 load_16_floats(const at::BFloat16* src) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// One group of quantize_rows_impl's (a multiple of 16 values), sixteen at an instruction, with the same
// results: the largest magnitude (exact in any order), each value times the inverse scale rounded to
// nearest even (std::nearbyint's rounding in the default mode), the same bytes; returns their sum. At
// one row the compiler's loops took ~0.1 ms of a decode step's ~120 matmul inputs.
template <typename T>
inline int32_t quantize_group_avx512(const T* src, int64_t group, int32_t offset, int8_t* dst, float& scale) {
  __m512 largest = _mm512_setzero_ps();
  for (int64_t i = 0; i < group; i += 16) largest = _mm512_max_ps(_mm512_abs_ps(load_16_floats(src + i)), largest);
  const float amax = _mm512_reduce_max_ps(largest);
  scale = amax / 127.f;
  const __m512 inverse = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
  const __m512i shift = _mm512_set1_epi32(offset);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t i = 0; i < group; i += 16) {
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load_16_floats(src + i), inverse));
    sum = _mm512_add_epi32(sum, v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm512_cvtepi32_epi8(_mm512_add_epi32(v, shift)));
  }
  return _mm512_reduce_add_epi32(sum);
}
#endif

// Rows [row_begin, row_end) of x into q. offset_to_unsigned: values are stored as x + 128 (1..255,
// unsigned bytes) for the many-rows kernel.
template <typename T>
void quantize_rows_impl(const T* x, int64_t row_begin, int64_t row_end, int64_t k, int64_t group,
                        bool offset_to_unsigned, const QuantizedRows& q) {
  int8_t* values = q.values;
  float* scales = q.scales;
  float* sums = q.scaled_sums;
  int32_t* sums_times_8 = q.sums_times_8;
  const int64_t groups = k / group;
  const int32_t offset = offset_to_unsigned ? 128 : 0;
  at::parallel_for(row_begin * groups, row_end * groups, 64, [&](int64_t begin, int64_t end) {
    float buffer[256];
    for (int64_t index = begin; index < end; ++index) {
      const int64_t row = index / groups, g = index % groups;
      const T* src = x + row * k + g * group;
      int8_t* dst = values + row * k + g * group;
      float scale;
      int32_t sum;
#if defined(__AVX512F__) && defined(__AVX512BW__)
      if (group % 16 == 0) {
        sum = quantize_group_avx512(src, group, offset, dst, scale);
      } else
#endif
      {
        float amax = 0.f;
#pragma omp simd reduction(max : amax)
        for (int64_t i = 0; i < group; ++i) {
          buffer[i] = static_cast<float>(src[i]);
          amax = std::max(amax, std::fabs(buffer[i]));
        }
        scale = amax / 127.f;
        const float inverse = amax > 0.f ? 127.f / amax : 0.f;
        sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < group; ++i) {
          const int32_t v = static_cast<int32_t>(std::nearbyint(buffer[i] * inverse));
          dst[i] = static_cast<int8_t>(static_cast<uint8_t>(v + offset));
          sum += v;
        }
      }
      scales[index] = scale;
      sums[index] = scale * static_cast<float>(sum);
      sums_times_8[index] = 8 * sum;
    }
  });
}

// The arguments of one block of 16 output rows against up to MT rows of activations.
struct BlockArgs {
  const uint8_t* weight;  // the block's weights (int4: K / 8 * 64 bytes, int8: K / 4 * 64)
  const void* scales;  // the block's int4 [groups, 2, 16] float16 scales and zeros, int8 [16] float32
  const int8_t* x;  // first activation row
  const float* x_scales;  // [rows, groups]
  const float* x_sums;
  const int32_t* x_sums_times_8;
  int64_t k, group;
  float* out;  // [MT, 16], contiguous
};

#define MMSERVE_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
#define MMSERVE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

template <int MT>
MMSERVE_TARGET_VNNI void block_vnni(const BlockArgs& a) {
  const int64_t groups = a.k / a.group, steps = a.group / kStepFeatures;
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i dots[MT], dots_hi[MT];
    for (int m = 0; m < MT; ++m) dots[m] = dots_hi[m] = _mm512_setzero_si512();
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t feature = (g * steps + s) * kStepFeatures;
      _mm_prefetch(reinterpret_cast<const char*>(a.weight + feature * kBlockRows / 2 + kPrefetchBytes), kPrefetchHint);
      const __m512i packed = _mm512_loadu_si512(a.weight + feature * kBlockRows / 2);
      const __m512i lo = _mm512_and_si512(packed, low_nibbles);
      // The high nibbles in place, 16 times their value: one instruction, not a shift and a mask; their
      // own sums, exact multiples of 16, are shifted back once per group.
      const __m512i hi = _mm512_andnot_si512(low_nibbles, packed);
      for (int m = 0; m < MT; ++m) {
        const int8_t* x = a.x + m * a.k + feature;
        dots[m] = _mm512_dpbusd_epi32(dots[m], lo, _mm512_set1_epi32(four_bytes(x)));
        dots_hi[m] = _mm512_dpbusd_epi32(dots_hi[m], hi, _mm512_set1_epi32(four_bytes(x + 4)));
      }
    }
    for (int m = 0; m < MT; ++m) dots[m] = _mm512_add_epi32(dots[m], _mm512_srai_epi32(dots_hi[m], 4));
    const uint16_t* sz = static_cast<const uint16_t*>(a.scales) + g * 2 * kBlockRows;
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sz)));
    const __m512 zero = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sz + kBlockRows)));
    const __m512 offset = _mm512_fnmadd_ps(_mm512_set1_ps(8.f), scale, zero);  // zero - 8 * scale
    for (int m = 0; m < MT; ++m) {
      const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(dots[m]), scale);
      acc[m] = _mm512_fmadd_ps(scaled, _mm512_set1_ps(a.x_scales[m * groups + g]), acc[m]);
      acc[m] = _mm512_fmadd_ps(offset, _mm512_set1_ps(a.x_sums[m * groups + g]), acc[m]);
    }
  }
  for (int m = 0; m < MT; ++m) _mm512_storeu_ps(a.out + m * kBlockRows, acc[m]);
}

// A group's share of a row's output: sum (q - 8) x times both scales, plus the zero point times the
// row's scaled sum, the same float operations in both AVX2 int4 kernels.
MMSERVE_TARGET_AVX2 inline __m256 scale_group(__m256i centred_dots, __m256 scale, __m256 zero, float x_scale,
                                              float x_sum, __m256 acc) {
  const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(centred_dots), scale);
  return _mm256_fmadd_ps(zero, _mm256_set1_ps(x_sum), _mm256_fmadd_ps(scaled, _mm256_set1_ps(x_scale), acc));
}

template <int MT>
MMSERVE_TARGET_AVX2 void block_avx2(const BlockArgs& a) {
  const int64_t groups = a.k / a.group, steps = a.group / kStepFeatures;
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MT][2];
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i dots[MT][2];
    for (int m = 0; m < MT; ++m) dots[m][0] = dots[m][1] = _mm256_setzero_si256();
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t feature = (g * steps + s) * kStepFeatures;
      const uint8_t* w = a.weight + feature * kBlockRows / 2;
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes), kPrefetchHint);
      __m256i lo[2], hi[2];
      for (int h = 0; h < 2; ++h) {
        const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * h));
        lo[h] = _mm256_and_si256(packed, low_nibbles);
        hi[h] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
      }
      for (int m = 0; m < MT; ++m) {
        const int8_t* x = a.x + m * a.k + feature;
        const __m256i x_lo = _mm256_set1_epi32(four_bytes(x)), x_hi = _mm256_set1_epi32(four_bytes(x + 4));
        for (int h = 0; h < 2; ++h) {
          // u8 (<= 15) x s8 (|x| <= 127): each pair sums to at most 3810, two pairs to 7620: no saturation.
          const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], x_lo), _mm256_maddubs_epi16(hi[h], x_hi));
          dots[m][h] = _mm256_add_epi32(dots[m][h], _mm256_madd_epi16(pairs, ones));
        }
      }
    }
    const uint16_t* sz = static_cast<const uint16_t*>(a.scales) + g * 2 * kBlockRows;
    for (int h = 0; h < 2; ++h) {
      const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sz + 8 * h)));
      const __m256 zero =
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sz + kBlockRows + 8 * h)));
      for (int m = 0; m < MT; ++m) {
        // sum (q - 8) x, exactly as the many-rows kernel has it: both round the same integers alike.
        const __m256i centred = _mm256_sub_epi32(dots[m][h], _mm256_set1_epi32(a.x_sums_times_8[m * groups + g]));
        acc[m][h] = scale_group(centred, scale, zero, a.x_scales[m * groups + g], a.x_sums[m * groups + g], acc[m][h]);
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(a.out + m * kBlockRows + 8 * h, acc[m][h]);
}

template <int MT>
MMSERVE_TARGET_VNNI void int8_block_vnni(const BlockArgs& a) {
  const int64_t groups = a.k / a.group, steps = a.group / 4;
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i dots[MT];
    for (int m = 0; m < MT; ++m) dots[m] = _mm512_setzero_si512();
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t feature = (g * steps + s) * 4;
      const uint8_t* w = a.weight + feature * kBlockRows;
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes), kPrefetchHint);
      const __m512i weights = _mm512_loadu_si512(w);
      const __m512i magnitudes = _mm512_abs_epi8(weights);
      const __mmask64 negative = _mm512_movepi8_mask(weights);
      for (int m = 0; m < MT; ++m) {
        const __m512i x = _mm512_set1_epi32(four_bytes(a.x + m * a.k + feature));
        const __m512i signed_x = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
        dots[m] = _mm512_dpbusd_epi32(dots[m], magnitudes, signed_x);
      }
    }
    for (int m = 0; m < MT; ++m)
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[m]), _mm512_set1_ps(a.x_scales[m * groups + g]), acc[m]);
  }
  const __m512 row_scales = _mm512_loadu_ps(static_cast<const float*>(a.scales));
  for (int m = 0; m < MT; ++m) _mm512_storeu_ps(a.out + m * kBlockRows, _mm512_mul_ps(acc[m], row_scales));
}

template <int MT>
MMSERVE_TARGET_AVX2 void int8_block_avx2(const BlockArgs& a) {
  const int64_t groups = a.k / a.group, steps = a.group / 4;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MT][2];
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i dots[MT][2];
    for (int m = 0; m < MT; ++m) dots[m][0] = dots[m][1] = _mm256_setzero_si256();
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t feature = (g * steps + s) * 4;
      const uint8_t* w = a.weight + feature * kBlockRows;
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes), kPrefetchHint);
      __m256i weights[2], magnitudes[2];
      for (int h = 0; h < 2; ++h) {
        weights[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * h));
        magnitudes[h] = _mm256_abs_epi8(weights[h]);
      }
      for (int m = 0; m < MT; ++m) {
        const __m256i x = _mm256_set1_epi32(four_bytes(a.x + m * a.k + feature));
        for (int h = 0; h < 2; ++h) {
          // |w| <= 127 times |x| <= 127, two per pair: at most 32258, no saturation.
          const __m256i pairs = _mm256_maddubs_epi16(magnitudes[h], _mm256_sign_epi8(x, weights[h]));
          dots[m][h] = _mm256_add_epi32(dots[m][h], _mm256_madd_epi16(pairs, ones));
        }
      }
    }
    for (int m = 0; m < MT; ++m) {
      const __m256 x_scale = _mm256_set1_ps(a.x_scales[m * groups + g]);
      for (int h = 0; h < 2; ++h) acc[m][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[m][h]), x_scale, acc[m][h]);
    }
  }
  for (int h = 0; h < 2; ++h) {
    const __m256 row_scales = _mm256_loadu_ps(static_cast<const float*>(a.scales) + 8 * h);
    for (int m = 0; m < MT; ++m)
      _mm256_storeu_ps(a.out + m * kBlockRows + 8 * h, _mm256_mul_ps(acc[m][h], row_scales));
  }
}

// Many rows against int4 weights in groups of 32 (AVX2). Each block's weights are widened once, per
// thread, to signed bytes (q - 8) that vpmaddubsw reads straight from memory, against activations stored
// as x + 128 (unsigned): per row and 8 features two broadcasts, four multiply-adds and four int16 sums,
// nothing spent unpacking nibbles again for every tile of rows. A group's eight products per lane are at
// most 8 * 2 * 255 * 8 = 32640, so they sum in int16. sum (q - 8) x = sum (q - 8)(x + 128) - 128 sum (q - 8),
// the last term a constant of the weights, computed once per block. On one core with everything in
// cache it is 15-20% faster than the narrow kernel from 16 rows; in a decode step of 8 or 32 rows it
// measured slower (reading the packed weights once for widening, not prefetched), so it takes over at
// 64 rows, where a prompt's rows are: 1.1-1.6x float32 at 158 rows (benchmarks/int4_kernel.py).
constexpr int64_t kWideGroup = 32;
constexpr int64_t kWideMinRows = 64;
// Rows per pass over a thread's blocks: a chunk's activations (128 x K bytes) stay in the core's cache.
constexpr int64_t kRowChunk = 128;
// Per 8 features, 128 bytes: low nibbles of rows 0-7 | of rows 8-15 | high nibbles of rows 0-7 | 8-15.
constexpr int64_t kWideStepBytes = 128;
// Per group of 32 features, 3 x 16 values: the scales (float), 128 * sum(q - 8) (int32), the zeros (float).
constexpr int64_t kWideParams = 48;

MMSERVE_TARGET_AVX2 void widen_int4_avx2(const uint8_t* packed, const void* scales, int64_t k, int8_t* weight,
                                         float* params) {
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  const uint16_t* sz = static_cast<const uint16_t*>(scales);
  for (int64_t g = 0; g < k / kWideGroup; ++g) {
    __m256i sums[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int64_t s = 0; s < kWideGroup / kStepFeatures; ++s) {
      const int64_t step = g * (kWideGroup / kStepFeatures) + s;
      const uint8_t* src = packed + step * 64;
      int8_t* dst = weight + step * kWideStepBytes;
      for (int h = 0; h < 2; ++h) {
        const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * h));
        const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(p, low_nibbles), eight);
        const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(p, 4), low_nibbles), eight);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32 * h), lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 64 + 32 * h), hi);
        sums[h] = _mm256_add_epi16(sums[h], _mm256_add_epi16(_mm256_maddubs_epi16(ones8, lo),
                                                             _mm256_maddubs_epi16(ones8, hi)));
      }
    }
    float* p = params + g * kWideParams;
    for (int h = 0; h < 2; ++h) {
      const __m256i weight_sum = _mm256_madd_epi16(sums[h], ones16);
      const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sz + g * 32 + 8 * h)));
      const __m256 zero =
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sz + g * 32 + 16 + 8 * h)));
      _mm256_storeu_ps(p + 8 * h, scale);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 16 + 8 * h), _mm256_slli_epi32(weight_sum, 7));
      _mm256_storeu_ps(p + 32 + 8 * h, zero);
    }
  }
}

template <int MT>
MMSERVE_TARGET_AVX2 void wide_block_avx2(const BlockArgs& a) {
  const int64_t k = a.k, groups = k / kWideGroup;
  const int8_t* const xq = a.x;
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* weight = reinterpret_cast<const int8_t*>(a.weight);
  const float* params = static_cast<const float*>(a.scales);
  for (int m = 0; m < MT * 2; ++m) _mm256_storeu_ps(a.out + 8 * m, _mm256_setzero_ps());
  for (int64_t g = 0; g < groups; ++g) {
    __m256i sums[MT][2];
    for (int m = 0; m < MT; ++m) sums[m][0] = sums[m][1] = _mm256_setzero_si256();
    // Unrolled, GCC computes all four steps' products before summing any, and spills them.
#pragma GCC unroll 1
    for (int64_t s = 0; s < kWideGroup / kStepFeatures; ++s) {
      const int64_t feature = g * kWideGroup + s * kStepFeatures;
      const __m256i* w = reinterpret_cast<const __m256i*>(weight + feature / kStepFeatures * kWideStepBytes);
      for (int m = 0; m < MT; ++m) {
        const int8_t* x = xq + m * k + feature;
        const __m256i x_lo = _mm256_set1_epi32(four_bytes(x)), x_hi = _mm256_set1_epi32(four_bytes(x + 4));
        for (int h = 0; h < 2; ++h) {
          const __m256i products = _mm256_add_epi16(_mm256_maddubs_epi16(x_lo, _mm256_loadu_si256(w + h)),
                                                    _mm256_maddubs_epi16(x_hi, _mm256_loadu_si256(w + 2 + h)));
          sums[m][h] = _mm256_add_epi16(sums[m][h], products);
        }
      }
    }
    const float* p = params + g * kWideParams;
    for (int h = 0; h < 2; ++h) {
      const __m256 scale = _mm256_loadu_ps(p + 8 * h), zero = _mm256_loadu_ps(p + 32 + 8 * h);
      const __m256i weight_sum = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 + 8 * h));
      for (int m = 0; m < MT; ++m) {
        const __m256i centred = _mm256_sub_epi32(_mm256_madd_epi16(sums[m][h], ones), weight_sum);
        float* out = a.out + m * kBlockRows + 8 * h;
        _mm256_storeu_ps(out, scale_group(centred, scale, zero, a.x_scales[m * groups + g],
                                          a.x_sums[m * groups + g], _mm256_loadu_ps(out)));
      }
    }
  }
}

using BlockFn = void (*)(const BlockArgs&);

// Row tiles: as many activation rows per pass over a block's weights as the registers hold.
template <int MT>
struct Int4Vnni {
  static void run(const BlockArgs& a) { block_vnni<MT>(a); }
};
template <int MT>
struct Int4Avx2 {
  static void run(const BlockArgs& a) { block_avx2<MT>(a); }
};
template <int MT>
struct Int8Vnni {
  static void run(const BlockArgs& a) { int8_block_vnni<MT>(a); }
};
template <int MT>
struct Int8Avx2 {
  static void run(const BlockArgs& a) { int8_block_avx2<MT>(a); }
};
template <int MT>
struct Int4WideAvx2 {
  static void run(const BlockArgs& a) { wide_block_avx2<MT>(a); }
};
constexpr int kMaxTileVnni = 4, kMaxTileAvx2 = 2, kMaxTileWide = 4;
constexpr int kMaxTile = std::max({kMaxTileVnni, kMaxTileAvx2, kMaxTileWide});

template <template <int> class Kernel, int MaxTile>
BlockFn tile_kernel(int64_t rows) {
  if constexpr (MaxTile == 1) {
    return &Kernel<1>::run;
  } else {
    return rows >= MaxTile ? &Kernel<MaxTile>::run : tile_kernel<Kernel, MaxTile - 1>(rows);
  }
}

template <typename T>
void store_rows(const float* src, T* dst, int64_t rows, int64_t n) {
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t r = 0; r < kBlockRows; ++r) dst[m * n + r] = static_cast<T>(src[m * kBlockRows + r]);
}

void check_common(const char* op, const at::Tensor& x, const at::Tensor& packed, int64_t group, int64_t isa,
                  int64_t step) {
  TORCH_CHECK(isa == kAvx2 || isa == kAvx512Vnni, op, ": unknown instruction set ", isa);
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": x must be contiguous [rows, in_features]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
              ": x must be float32 or bfloat16");
  TORCH_CHECK(group > 0 && group % step == 0 && group <= 256, op, ": group size must be a multiple of ", step,
              ", at most 256");
  TORCH_CHECK(x.size(1) % group == 0, op, ": in_features must be a multiple of the group size");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.dim() == 3 &&
                  packed.size(1) * step == x.size(1) && packed.size(2) == 64,
              op, ": packed weight must be uint8 [out_features / 16, in_features / ", step, ", 64]");
}

// Where a tile kernel reads a block from: the packed weights as they are, or, for the many-rows kernel,
// a buffer of the thread's that the block is widened into first.
struct Widening {
  void (*widen)(const uint8_t* packed, const void* scales, int64_t k, int8_t* weight, float* params);
  int64_t weight_bytes_per_step, params_per_group, step, group;
};

// One matmul's operands, x quantized into q: each thread takes blocks of 16 output rows and runs each
// against the rows, a tile at a time, storing in out's dtype (x's, or float32).
struct BlockPlan {
  const uint8_t* weight;
  const char* scales;
  int64_t scale_stride, block_bytes, rows, k, n, group;
  BlockFn (*select)(int64_t);
  int64_t max_tile;
  const Widening* widening;  // the many-rows kernel's, or null
  QuantizedRows q;
  float* out_float;
  at::BFloat16* out_bf16;

  void quantize(const at::Tensor& x, int64_t row_begin, int64_t row_end) const {
    const bool unsigned_x = widening != nullptr;
    if (x.scalar_type() == at::kFloat) {
      quantize_rows_impl(x.data_ptr<float>(), row_begin, row_end, k, group, unsigned_x, q);
    } else {
      quantize_rows_impl(x.data_ptr<at::BFloat16>(), row_begin, row_end, k, group, unsigned_x, q);
    }
  }

  void run_block(int64_t b, const uint8_t* block_weight, const void* block_scales, int64_t row_begin,
                 int64_t row_end, float* tile) const {
    const int64_t groups = k / group;
    for (int64_t m0 = row_begin; m0 < row_end; m0 += max_tile) {
      const int64_t tile_rows = std::min<int64_t>(max_tile, row_end - m0);
      const BlockArgs args{block_weight, block_scales, q.values + m0 * k, q.scales + m0 * groups,
                           q.scaled_sums + m0 * groups, q.sums_times_8 + m0 * groups, k, group, tile};
      select(tile_rows)(args);
      const int64_t offset = m0 * n + b * kBlockRows;
      if (out_float) {
        store_rows(tile, out_float + offset, tile_rows, n);
      } else {
        store_rows(tile, out_bf16 + offset, tile_rows, n);
      }
    }
  }

  // Output blocks [begin, end), every row.
  void multiply(int64_t begin, int64_t end) const {
    if (begin >= end || rows == 0) return;
    float tile[kMaxTile * kBlockRows];
    // Aligned: vpmaddubsw's 32-byte reads of the widened weights then never split a cache line (18% faster).
    std::vector<int8_t> wide_buffer(widening ? k / widening->step * widening->weight_bytes_per_step + 64 : 0);
    int8_t* wide_weight = reinterpret_cast<int8_t*>((reinterpret_cast<uintptr_t>(wide_buffer.data()) + 63) & ~uintptr_t{63});
    std::vector<float> wide_params(widening ? k / widening->group * widening->params_per_group : 0);
    // Many rows are taken a chunk at a time, each against all of the thread's blocks.
    const int64_t chunk = widening ? kRowChunk : rows;
    for (int64_t row_begin = 0; row_begin < rows; row_begin += chunk) {
      const int64_t row_end = std::min(rows, row_begin + chunk);
      for (int64_t b = begin; b < end; ++b) {
        const uint8_t* block_weight = weight + b * block_bytes;
        const void* block_scales = scales + b * scale_stride;
        if (widening) {
          widening->widen(block_weight, block_scales, k, wide_weight, wide_params.data());
          block_weight = reinterpret_cast<const uint8_t*>(wide_weight);
          block_scales = wide_params.data();
        }
        run_block(b, block_weight, block_scales, row_begin, row_end, tile);
      }
    }
  }
};

BlockPlan make_plan(const at::Tensor& x, const at::Tensor& packed, const void* scales, int64_t scale_stride,
                    int64_t group, BlockFn (*select)(int64_t), int64_t max_tile, const Widening* widening,
                    void* workspace, at::Tensor& out) {
  const int64_t rows = x.size(0), k = x.size(1);
  float* out_float = out.scalar_type() == at::kFloat ? out.data_ptr<float>() : nullptr;
  return {packed.data_ptr<uint8_t>(), static_cast<const char*>(scales), scale_stride,
          packed.size(1) * packed.size(2), rows, k, packed.size(0) * kBlockRows, group, select, max_tile,
          widening, rows_in(workspace, rows, k, group), out_float,
          out_float ? nullptr : out.data_ptr<at::BFloat16>()};
}

BlockPlan int4_plan(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros, int64_t group,
                    int64_t isa, void* workspace, at::Tensor& out) {
  const bool vnni = isa == kAvx512Vnni;
  const void* scales = scales_zeros.data_ptr<at::Half>();
  const int64_t scale_stride = x.size(1) / group * 2 * kBlockRows * 2;
  if (!vnni && group == kWideGroup && x.size(0) >= kWideMinRows) {
    static constexpr Widening widening{&widen_int4_avx2, kWideStepBytes, kWideParams, kStepFeatures, kWideGroup};
    return make_plan(x, packed, scales, scale_stride, group, &tile_kernel<Int4WideAvx2, kMaxTileWide>,
                     kMaxTileWide, &widening, workspace, out);
  }
  return make_plan(x, packed, scales, scale_stride, group,
                   vnni ? &tile_kernel<Int4Vnni, kMaxTileVnni> : &tile_kernel<Int4Avx2, kMaxTileAvx2>,
                   vnni ? kMaxTileVnni : kMaxTileAvx2, nullptr, workspace, out);
}

// The whole matmul on the calling thread's team: x quantized, then each thread streams one contiguous
// share of the blocks (taking small chunks as they come instead, against preemption by the server's
// other threads, broke the hardware prefetcher's streams and measured 20% slower at one row).
at::Tensor run_plan(const at::Tensor& x, const BlockPlan& plan, at::Tensor out) {
  plan.quantize(x, 0, plan.rows);
  at::parallel_for(0, plan.n / kBlockRows, 1, [&](int64_t begin, int64_t end) { plan.multiply(begin, end); });
  return out;
}

}  // namespace

namespace mmserve {

void check_int4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                       int64_t group, int64_t isa) {
  check_common("int4_linear", x, packed, group, isa, kStepFeatures);
  TORCH_CHECK(scales_zeros.scalar_type() == at::kHalf && scales_zeros.is_contiguous() &&
                  scales_zeros.dim() == 4 && scales_zeros.size(0) == packed.size(0) &&
                  scales_zeros.size(1) == x.size(1) / group && scales_zeros.size(2) == 2 &&
                  scales_zeros.size(3) == kBlockRows,
              "int4_linear: scales_zeros must be float16 [out_features / 16, groups, 2, 16]");
}

int64_t int4_linear_workspace_bytes(int64_t rows, int64_t k, int64_t group) {
  return workspace_bytes(rows, k, group);
}

void int4_linear_quantize(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                          int64_t group, int64_t isa, void* workspace, at::Tensor& out, int64_t row_begin,
                          int64_t row_end) {
  int4_plan(x, packed, scales_zeros, group, isa, workspace, out).quantize(x, row_begin, row_end);
}

void int4_linear_multiply(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                          int64_t group, int64_t isa, void* workspace, at::Tensor& out, int64_t block_begin,
                          int64_t block_end) {
  int4_plan(x, packed, scales_zeros, group, isa, workspace, out).multiply(block_begin, block_end);
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                       int64_t group, int64_t isa) {
  check_int4_linear(x, packed, scales_zeros, group, isa);
  at::Tensor out = at::empty({x.size(0), packed.size(0) * kBlockRows}, x.options());
  void* workspace = thread_workspace(workspace_bytes(x.size(0), x.size(1), group));
  return run_plan(x, int4_plan(x, packed, scales_zeros, group, isa, workspace, out), out);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t group,
                       int64_t isa, bool float_out) {
  check_common("int8_linear", x, packed, group, isa, 4);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 1 &&
                  scales.size(0) == packed.size(0) * kBlockRows,
              "int8_linear: scales must be float32 [out_features]");
  const bool vnni = isa == kAvx512Vnni;
  at::Tensor out = at::empty({x.size(0), packed.size(0) * kBlockRows}, float_out ? x.options().dtype(at::kFloat)
                                                                                  : x.options());
  void* workspace = thread_workspace(workspace_bytes(x.size(0), x.size(1), group));
  const BlockPlan plan = make_plan(x, packed, scales.data_ptr<float>(), kBlockRows * sizeof(float), group,
                                   vnni ? &tile_kernel<Int8Vnni, kMaxTileVnni> : &tile_kernel<Int8Avx2, kMaxTileAvx2>,
                                   vnni ? kMaxTileVnni : kMaxTileAvx2, nullptr, workspace, out);
  return run_plan(x, plan, out);
}

}  // namespace mmserve

namespace {

bool int_matmul_supported(int64_t isa) {
  __builtin_cpu_init();
  if (isa == kAvx512Vnni) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("f16c");
  }
  if (isa == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return false;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmserve_cpu, m) {
  m.def("int4_linear(Tensor x, Tensor packed, Tensor scales_zeros, int group_size, int isa) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scales, int group_size, int isa, "
        "bool float_out=False) -> Tensor");
  m.def("int_matmul_supported(int isa) -> bool", &int_matmul_supported);
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) {
  m.impl("int4_linear", &mmserve::int4_linear);
  m.impl("int8_linear", &mmserve::int8_linear);
}
