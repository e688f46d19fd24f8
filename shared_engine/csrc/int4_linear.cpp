// Int4 weight x int8 activation matmul for decode-sized row counts: the activations are quantized per
// weight group (symmetric int8, one float scale each) and multiplied in integers, four products per
// instruction lane (AVX-512 VNNI vpdpbusd, or AVX2 vpmaddubsw + vpmaddwd), with one float
// multiply-add per group to apply both sides' scales. Converting every int4 weight to float instead
// (what ATen's int4 kernel does) makes the matmul bound by arithmetic, not by reading the weights.
//
// Weight layout, per block of 16 output rows and per 8 input features (64 bytes): byte 4 * r + i holds
// row r's features i (low nibble) and 4 + i (high nibble), so that one vector of low nibbles is 16 rows
// x 4 consecutive features, the shape vpdpbusd reduces. Scales and zeros are float16, [blocks, groups,
// 2, 16]; a weight is (q - 8) * scale + zero, as for ATen's int4 kernel.
//
// Each instruction set is compiled into its own functions (target attributes) and chosen by the caller,
// which checks the CPU first (int4_linear_supported); without AVX2 callers use ATen's kernel.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace {

constexpr int64_t kBlockRows = 16;
// How far ahead of its reads a block prefetches its weights (bytes): ~10% faster at one row, measured.
constexpr int64_t kPrefetchBytes = 2048;
constexpr int64_t kStepFeatures = 8;
enum Isa : int64_t { kAvx2 = 1, kAvx512Vnni = 2 };

inline int32_t four_bytes(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// One row of activations per weight group: int8 values, their scale, and scale * sum(values), which
// carries the weights' zero points.
struct QuantizedRows {
  at::Tensor values;  // int8 [rows, K]
  at::Tensor scales;  // float [rows, groups]
  at::Tensor scaled_sums;  // float [rows, groups]
};

template <typename T>
void quantize_rows_impl(const T* x, int64_t rows, int64_t k, int64_t group, QuantizedRows& q) {
  int8_t* values = q.values.data_ptr<int8_t>();
  float* scales = q.scales.data_ptr<float>();
  float* sums = q.scaled_sums.data_ptr<float>();
  const int64_t groups = k / group;
  at::parallel_for(0, rows * groups, 64, [&](int64_t begin, int64_t end) {
    float buffer[256];
    for (int64_t index = begin; index < end; ++index) {
      const int64_t row = index / groups, g = index % groups;
      const T* src = x + row * k + g * group;
      float amax = 0.f;
#pragma omp simd reduction(max : amax)
      for (int64_t i = 0; i < group; ++i) {
        buffer[i] = static_cast<float>(src[i]);
        amax = std::max(amax, std::fabs(buffer[i]));
      }
      const float scale = amax / 127.f;
      const float inverse = amax > 0.f ? 127.f / amax : 0.f;
      int8_t* dst = values + row * k + g * group;
      int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < group; ++i) {
        const int32_t v = static_cast<int32_t>(std::nearbyint(buffer[i] * inverse));
        dst[i] = static_cast<int8_t>(v);
        sum += v;
      }
      scales[index] = scale;
      sums[index] = scale * static_cast<float>(sum);
    }
  });
}

// The arguments of one block of 16 output rows against up to MT rows of activations.
struct BlockArgs {
  const uint8_t* weight;  // the block's K / 8 * 64 bytes
  const uint16_t* scales_zeros;  // the block's [groups, 2, 16] float16
  const int8_t* x;  // first activation row
  const float* x_scales;  // [rows, groups]
  const float* x_sums;
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
    __m512i dots[MT];
    for (int m = 0; m < MT; ++m) dots[m] = _mm512_setzero_si512();
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t feature = (g * steps + s) * kStepFeatures;
      _mm_prefetch(reinterpret_cast<const char*>(a.weight + feature * kBlockRows / 2 + kPrefetchBytes), _MM_HINT_T0);
      const __m512i packed = _mm512_loadu_si512(a.weight + feature * kBlockRows / 2);
      const __m512i lo = _mm512_and_si512(packed, low_nibbles);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibbles);
      for (int m = 0; m < MT; ++m) {
        const int8_t* x = a.x + m * a.k + feature;
        dots[m] = _mm512_dpbusd_epi32(dots[m], lo, _mm512_set1_epi32(four_bytes(x)));
        dots[m] = _mm512_dpbusd_epi32(dots[m], hi, _mm512_set1_epi32(four_bytes(x + 4)));
      }
    }
    const uint16_t* sz = a.scales_zeros + g * 2 * kBlockRows;
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
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes), _MM_HINT_T0);
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
    const uint16_t* sz = a.scales_zeros + g * 2 * kBlockRows;
    for (int h = 0; h < 2; ++h) {
      const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sz + 8 * h)));
      const __m256 zero =
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sz + kBlockRows + 8 * h)));
      const __m256 offset = _mm256_fnmadd_ps(_mm256_set1_ps(8.f), scale, zero);
      for (int m = 0; m < MT; ++m) {
        const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(dots[m][h]), scale);
        acc[m][h] = _mm256_fmadd_ps(scaled, _mm256_set1_ps(a.x_scales[m * groups + g]), acc[m][h]);
        acc[m][h] = _mm256_fmadd_ps(offset, _mm256_set1_ps(a.x_sums[m * groups + g]), acc[m][h]);
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(a.out + m * kBlockRows + 8 * h, acc[m][h]);
}

using BlockFn = void (*)(const BlockArgs&);

// Row tiles: as many activation rows per pass over a block's weights as the registers hold.
template <int MT>
struct VnniBlock {
  static void run(const BlockArgs& a) { block_vnni<MT>(a); }
};
template <int MT>
struct Avx2Block {
  static void run(const BlockArgs& a) { block_avx2<MT>(a); }
};

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

void check_args(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros, int64_t group,
                int64_t isa) {
  TORCH_CHECK(isa == kAvx2 || isa == kAvx512Vnni, "int4_linear: unknown instruction set ", isa);
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "int4_linear: x must be contiguous [rows, in_features]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "int4_linear: x must be float32 or bfloat16");
  TORCH_CHECK(group % kStepFeatures == 0 && group <= 256, "int4_linear: group size must be a multiple of 8, <= 256");
  const int64_t k = x.size(1);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.dim() == 3 &&
                  packed.size(1) * kStepFeatures == k && packed.size(2) == kBlockRows * kStepFeatures / 2,
              "int4_linear: packed weight must be uint8 [out_features / 16, in_features / 8, 64]");
  TORCH_CHECK(k % group == 0, "int4_linear: in_features must be a multiple of the group size");
  TORCH_CHECK(scales_zeros.scalar_type() == at::kHalf && scales_zeros.is_contiguous() &&
                  scales_zeros.dim() == 4 && scales_zeros.size(0) == packed.size(0) &&
                  scales_zeros.size(1) == k / group && scales_zeros.size(2) == 2 &&
                  scales_zeros.size(3) == kBlockRows,
              "int4_linear: scales_zeros must be float16 [out_features / 16, groups, 2, 16]");
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                       int64_t group, int64_t isa) {
  check_args(x, packed, scales_zeros, group, isa);
  const int64_t rows = x.size(0), k = x.size(1), blocks = packed.size(0), n = blocks * kBlockRows;
  const int64_t groups = k / group;
  QuantizedRows q{at::empty({rows, k}, x.options().dtype(at::kChar)),
                  at::empty({rows, groups}, x.options().dtype(at::kFloat)),
                  at::empty({rows, groups}, x.options().dtype(at::kFloat))};
  at::Tensor out = at::empty({rows, n}, x.options());
  if (rows == 0) return out;
  if (x.scalar_type() == at::kFloat) {
    quantize_rows_impl(x.data_ptr<float>(), rows, k, group, q);
  } else {
    quantize_rows_impl(x.data_ptr<at::BFloat16>(), rows, k, group, q);
  }
  const int max_tile = isa == kAvx512Vnni ? 4 : 2;
  const uint8_t* weight = packed.data_ptr<uint8_t>();
  const uint16_t* sz = reinterpret_cast<const uint16_t*>(scales_zeros.data_ptr<at::Half>());
  const int8_t* xq = q.values.data_ptr<int8_t>();
  const float* x_scales = q.scales.data_ptr<float>();
  const float* x_sums = q.scaled_sums.data_ptr<float>();
  const bool is_float = x.scalar_type() == at::kFloat;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    float tile[4 * kBlockRows];
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t m0 = 0; m0 < rows; m0 += max_tile) {
        const int64_t tile_rows = std::min<int64_t>(max_tile, rows - m0);
        const BlockArgs args{weight + b * k * kBlockRows / 2, sz + b * groups * 2 * kBlockRows, xq + m0 * k,
                             x_scales + m0 * groups, x_sums + m0 * groups, k, group, tile};
        const BlockFn fn = isa == kAvx512Vnni ? tile_kernel<VnniBlock, 4>(tile_rows)
                                              : tile_kernel<Avx2Block, 2>(tile_rows);
        fn(args);
        const int64_t offset = m0 * n + b * kBlockRows;
        if (is_float) {
          store_rows(tile, out.data_ptr<float>() + offset, tile_rows, n);
        } else {
          store_rows(tile, out.data_ptr<at::BFloat16>() + offset, tile_rows, n);
        }
      }
    }
  });
  return out;
}

bool int4_linear_supported(int64_t isa) {
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
  m.def("int4_linear_supported(int isa) -> bool", &int4_linear_supported);
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) { m.impl("int4_linear", &int4_linear); }
