// CPU kernels for the decode step's small operators, where the step at low batch sizes is bound by the
// number of ATen calls rather than by arithmetic: attention of one new token per request straight over
// the paged KV cache (no gathered copy, no mask), and RMSNorm with the residual add fused in.
// Arithmetic is in float32 whatever the storage dtype; loops are written for the compiler to vectorize.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <utility>
#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename T>
inline void load_float(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <>
inline void load_float(const c10::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint32_t>(bits[i]) << 16;
}

template <typename T>
inline void store_float(const float* src, T* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// Round to nearest even, as c10::BFloat16 does for finite values, in a form the compiler vectorizes.
template <>
inline void store_float(const float* src, c10::BFloat16* dst, int64_t n) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(src);
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint16_t>((bits[i] + 0x7FFFu + ((bits[i] >> 16) & 1u)) >> 16);
}

// n values of src into dst's dtype: a copy when they match, else through float32 (``buf``: n floats).
template <typename T, typename C>
inline void store_as(const T* src, C* dst, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, C>) {
    std::copy(src, src + n, dst);
  } else {
    load_float(src, buf, n);
    store_float(buf, dst, n);
  }
}

// Eight floats, in whatever registers the build's instruction set has (one AVX register, two SSE ones);
// Float8Unaligned reads and writes them anywhere in a float array. FloatLanes: as many as one register of
// the build's widest vectors holds (16 with AVX-512, else 8).
typedef float Float8 __attribute__((vector_size(32)));
typedef float Float8Unaligned __attribute__((vector_size(32), aligned(4), may_alias));
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
typedef float FloatLanes __attribute__((vector_size(4 * kLanes)));
typedef float FloatLanesUnaligned __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));

// bfloat16 rows to float32 with no shuffles: a 32-bit lane holds two values, the even one in its low half
// (shifted up, it is that value's float32) and the odd one in its high half (masked, likewise). Each
// kPermutedChunk values (two registers' worth) come out as their even ones, then their odd ones: dot
// products are the same when the query is permuted alike, and sums of rows keep the permutation, undone
// once at the end. n: a multiple of kPermutedChunk.
constexpr int64_t kPermutedChunk = 2 * kLanes;
typedef uint32_t Lanes __attribute__((vector_size(4 * kLanes)));
typedef uint32_t LanesUnaligned __attribute__((vector_size(4 * kLanes), aligned(2), may_alias));

inline void load_bf16_permuted(const c10::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; i += kPermutedChunk) {
    const Lanes pairs = *reinterpret_cast<const LanesUnaligned*>(bits + i);
    *reinterpret_cast<LanesUnaligned*>(dst + i) = pairs << 16;
    *reinterpret_cast<LanesUnaligned*>(dst + i + kLanes) = pairs & 0xFFFF0000u;
  }
}

// Whether attend_group keeps D-sized vectors in the permuted order of load_bf16_permuted.
template <typename C, int64_t D>
constexpr bool kPermutedRows = std::is_same_v<C, c10::BFloat16> && D > 0 && D % kPermutedChunk == 0;

// Whether attend_group reads a cache of dtype C's rows of D values straight from the cache into
// registers (row_lanes), rather than widening each block into a float32 buffer first (load_rows): for
// float32 rows and load_bf16_permuted's, in builds with AVX (store_sums).
#if defined(__AVX__) && defined(__FMA__)
constexpr bool kRowsInRegisters = true;
#else
constexpr bool kRowsInRegisters = false;
#endif
template <typename C, int64_t D>
constexpr bool kDirectRows = kRowsInRegisters && D > 0 && D <= 128 &&
                             (std::is_same_v<C, float> ? D % kLanes == 0 : kPermutedRows<C, D>);

// Vector j (of D / kLanes) of a cache row of D values, in the order attend_group computes in: float32 as
// it is, bfloat16 widened in registers as load_bf16_permuted widens it (kDirectRows<C, D>).
template <typename C, int64_t D>
inline FloatLanes row_lanes(const C* row, int64_t j) {
  if constexpr (std::is_same_v<C, float>) {
    return *reinterpret_cast<const FloatLanesUnaligned*>(row + kLanes * j);
  } else {
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(row) + (j / 2) * kPermutedChunk;
    const Lanes pairs = *reinterpret_cast<const LanesUnaligned*>(bits);
    return reinterpret_cast<FloatLanes>(j % 2 ? pairs & 0xFFFF0000u : pairs << 16);  // the same bits as floats
  }
}

// Dot products of q with four rows of k at once: four independent accumulations for the FMA units.
template <int64_t D>
inline void dot4(const float* q, const float* k, int64_t dim, float* out) {
#if defined(__AVX__) && defined(__FMA__)
  if constexpr (D > 0 && D % 8 == 0 && D <= 128) {
    // Whole vectors multiply-added, then the four rows' sums taken together by pairwise adds.
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
#pragma GCC unroll 16
    for (int64_t i = 0; i < D; i += 8) {
      const __m256 x = _mm256_loadu_ps(q + i);
      a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + i), a0);
      a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + D + i), a1);
      a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 2 * D + i), a2);
      a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 3 * D + i), a3);
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    return;
  }
#endif
  const int64_t n = D ? D : dim;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t i = 0; i < n; ++i) {
    a0 += q[i] * k[i];
    a1 += q[i] * k[n + i];
    a2 += q[i] * k[2 * n + i];
    a3 += q[i] * k[3 * n + i];
  }
  out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
}

#if defined(__AVX__) && defined(__FMA__)
// out[r] = the sum of a[r]'s eight lanes, for the eight vectors together, by pairwise adds.
inline void store_sums(const __m256 (&a)[8], float* out) {
  const __m256 low = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 high = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(low, high, 0x20),
                                      _mm256_permute2f128_ps(low, high, 0x31)));
}
#endif

// Dot products of q with eight rows of k: eight independent accumulations (the multiply-adds' latency
// hidden), their sums taken together by pairwise adds.
template <int64_t D>
inline void dot8(const float* q, const float* k, int64_t dim, float* out) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  if constexpr (D > 0 && D % 16 == 0 && D <= 128) {
    // Sixteen lanes a multiply-add (half the instructions of eight), each row's two halves added first.
    __m512 wide[8];
    for (int r = 0; r < 8; ++r) wide[r] = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int64_t i = 0; i < D; i += 16) {
      const __m512 x = _mm512_loadu_ps(q + i);
      for (int r = 0; r < 8; ++r) wide[r] = _mm512_fmadd_ps(x, _mm512_loadu_ps(k + r * D + i), wide[r]);
    }
    __m256 a[8];
    for (int r = 0; r < 8; ++r)
      a[r] = _mm256_add_ps(_mm512_castps512_ps256(wide[r]), _mm512_extractf32x8_ps(wide[r], 1));
    store_sums(a, out);
    return;
  }
#endif
#if defined(__AVX__) && defined(__FMA__)
  if constexpr (D > 0 && D % 8 == 0 && D <= 128) {
    __m256 a[8];
    for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int64_t i = 0; i < D; i += 8) {
      const __m256 x = _mm256_loadu_ps(q + i);
      for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + r * D + i), a[r]);
    }
    store_sums(a, out);
    return;
  }
#endif
  dot4<D>(q, k, dim, out);
  dot4<D>(q, k + 4 * (D ? D : dim), dim, out + 4);
}

// dot8 over eight cache rows read straight into registers (kDirectRows<C, D>), without the float32 copy
// of the rows that every query head of the group reread: a multiply-add a vector, its sums taken as
// dot8 takes them.
template <int64_t D, typename C>
inline void dot8_rows(const float* q, const C* k, float* out) {
  constexpr int64_t kVectors = D / kLanes;
  FloatLanes a[8];
  for (int r = 0; r < 8; ++r) a[r] = FloatLanes{};
#pragma GCC unroll 16
  for (int64_t j = 0; j < kVectors; ++j) {
    const FloatLanes x = *reinterpret_cast<const FloatLanesUnaligned*>(q + kLanes * j);
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) a[r] += x * row_lanes<C, D>(k + r * D, j);
  }
#if defined(__AVX512F__)
  __m256 halves[8];
  for (int r = 0; r < 8; ++r) {
    const __m512d wide = reinterpret_cast<__m512d>(a[r]);
    halves[r] = _mm256_add_ps(_mm256_castpd_ps(_mm512_castpd512_pd256(wide)),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(wide, 1)));
  }
  store_sums(halves, out);
#elif defined(__AVX__) && defined(__FMA__)
  __m256 halves[8];
  for (int r = 0; r < 8; ++r) halves[r] = reinterpret_cast<__m256>(a[r]);
  store_sums(halves, out);
#else
  for (int r = 0; r < 8; ++r) {
    out[r] = 0.f;
    for (int64_t i = 0; i < kLanes; ++i) out[r] += a[r][i];
  }
#endif
}

template <int64_t D>
inline float dot(const float* q, const float* k, int64_t dim) {
  const int64_t n = D ? D : dim;
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += q[i] * k[i];
  return acc;
}

// acc[h] += sum over rows p < count of weights[h * stride + p] * v[p], for heads h < H together: each row is
// loaded once for all of them, and H x D / kLanes accumulations run side by side (one head's D / kLanes
// alone wait on the multiply-add's latency at every row). The accumulators stay in registers across the
// rows; each element still adds its rows in order, one multiply-add each.
template <int64_t D, int64_t H, typename C>
inline void weighted_rows_heads(const float* weights, int64_t stride, const C* v, int64_t count, float* acc) {
  constexpr int64_t kVectors = D / kLanes;
  FloatLanes a[H][kVectors];
#pragma GCC unroll 16
  for (int64_t h = 0; h < H; ++h)
#pragma GCC unroll 16
    for (int64_t j = 0; j < kVectors; ++j)
      a[h][j] = *reinterpret_cast<const FloatLanesUnaligned*>(acc + h * D + kLanes * j);
  for (int64_t p = 0; p < count; ++p) {
    const C* row = v + p * D;
    FloatLanes r[kVectors];
#pragma GCC unroll 16
    for (int64_t j = 0; j < kVectors; ++j) r[j] = row_lanes<C, D>(row, j);
#pragma GCC unroll 16
    for (int64_t h = 0; h < H; ++h) {
      const FloatLanes w = FloatLanes{} + weights[h * stride + p];
#pragma GCC unroll 16
      for (int64_t j = 0; j < kVectors; ++j) a[h][j] += w * r[j];
    }
  }
#pragma GCC unroll 16
  for (int64_t h = 0; h < H; ++h)
#pragma GCC unroll 16
    for (int64_t j = 0; j < kVectors; ++j)
      *reinterpret_cast<FloatLanesUnaligned*>(acc + h * D + kLanes * j) = a[h][j];
}

// weighted_rows_heads for ``heads`` query heads (their weights ``stride`` apart, their sums D apart), as many
// at a time (up to 4) as the build's vector registers hold accumulators for beside the row and the weight:
// with AVX-512's 32, four heads of 64 or two of 128; with AVX2's 16, one. Rows of float32 or, where
// kDirectRows<C, D>, of the cache's own dtype.
template <int64_t D, typename C>
inline void weighted_rows(const float* weights, int64_t stride, const C* v, int64_t count, int64_t heads,
                          int64_t dim, float* acc) {
  if constexpr (D > 0 && D % kLanes == 0 && D <= 128) {
    constexpr int64_t kRegisters = kLanes == 16 ? 32 : 16, kVectors = D / kLanes;
    constexpr int64_t kAtOnce = std::max<int64_t>(1, (kRegisters - kVectors - 1) / kVectors);
    int64_t h = 0;
    if constexpr (kAtOnce >= 4) {
      for (; h + 4 <= heads; h += 4) weighted_rows_heads<D, 4>(weights + h * stride, stride, v, count, acc + h * D);
    }
    if constexpr (kAtOnce >= 3) {
      if (h + 3 == heads) return weighted_rows_heads<D, 3>(weights + h * stride, stride, v, count, acc + h * D);
    }
    if constexpr (kAtOnce >= 2) {
      for (; h + 2 <= heads; h += 2) weighted_rows_heads<D, 2>(weights + h * stride, stride, v, count, acc + h * D);
    }
    for (; h < heads; ++h) weighted_rows_heads<D, 1>(weights + h * stride, stride, v, count, acc + h * D);
  } else {
    static_assert(std::is_same_v<C, float>, "rows of other dtypes are widened into float32 first");
    const int64_t n = D ? D : dim;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t p = 0; p < count; ++p) {
        const float w = weights[h * stride + p];
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) acc[h * n + i] += w * v[p * n + i];
      }
    }
  }
}

// Requests the cache lines of ``count`` values from memory without waiting for them. A request's blocks
// lie anywhere in the KV cache, where the hardware prefetcher cannot follow: attend_group asks for each
// block kAhead blocks before it reads it (into L1; Locality 2: into L2, for the values' pass to come).
template <int Locality = 3, typename C>
inline void prefetch_rows(const C* rows, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(rows);
  for (int64_t offset = 0; offset < count * static_cast<int64_t>(sizeof(C)); offset += 64)
    __builtin_prefetch(bytes + offset, 0, Locality);
}

// Rows of a cache of dtype C into float32, in the order attend_group computes in.
template <typename C, int64_t D>
inline void load_rows(const C* src, float* dst, int64_t n) {
  if constexpr (kPermutedRows<C, D>) {
    load_bf16_permuted(src, dst, n);
  } else {
    load_float(src, dst, n);
  }
}

// A vector of D floats between the natural order and load_bf16_permuted's (``to_permuted``: which way).
template <int64_t D>
inline void permute_vector(const float* src, float* dst, bool to_permuted) {
  for (int64_t c = 0; c < D; c += kPermutedChunk) {
    for (int64_t j = 0; j < kLanes; ++j) {
      if (to_permuted) {
        dst[c + j] = src[c + 2 * j], dst[c + kLanes + j] = src[c + 2 * j + 1];
      } else {
        dst[c + 2 * j] = src[c + j], dst[c + 2 * j + 1] = src[c + kLanes + j];
      }
    }
  }
}

// How many blocks ahead of its reads attend_group requests a pass's rows: at 32 requests of ~220 tokens
// (SmolLM2's 3 kv heads), 1 block ahead left 35% of the decode attention's time waiting, 4 about half as much.
constexpr int64_t kAhead = 4;
// How many of a thread's tasks after the first have their first kAhead blocks of keys requested at once.
constexpr int64_t kTasksAhead = 3;

// The largest of n > 0 floats, eight lanes at a time (a scalar loop is one dependent max per element).
inline float max_of(const float* x, int64_t n) {
  Float8 m = Float8{} + x[0];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const Float8 v = *reinterpret_cast<const Float8Unaligned*>(x + i);
    m = m > v ? m : v;
  }
  float best = m[0];
  for (int j = 1; j < 8; ++j) best = std::max(best, m[j]);
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

// Where a task that attends over part of a context leaves, per query head, the sum of its positions'
// values weighted by exp(score - max) (unnormalised: dim floats), that max and the sum of the weights.
constexpr int64_t kPartialExtra = 2;
// A part's max where it has no position: exp(kNoScore - max) is 0 against any real score.
constexpr float kNoScore = -1e30f;
// A batch of at least this many (request, kv head) pairs a thread is shared evenly enough whole; below
// it, each pair's context is split so that the tasks divide among the threads (one request's 3 kv heads
// on two threads: 2 and 1 whole, 3 and 3 halves), into parts of at least kMinSplitBlocks blocks. A
// split context is summed in another order: a request's rounding then depends on the thread count and
// on the batch it is in, as a batched matmul's may.
constexpr int64_t kPairsPerThreadUnsplit = 4;
constexpr int64_t kMinSplitBlocks = 4;

// One (request, kv head): the query heads of its group attend over the positions of its blocks
// [first_block, end_block) of ``len``. D is the head size when known at compile time (0: ``dim``), which
// lets the compiler keep a row in registers. Without ``partial`` the blocks are the whole context and
// the output is written to o_dst; with it, the part's sums go to partial ([group, dim + kPartialExtra]).
template <typename T, typename C, int64_t D>
void attend_group(const T* q_src, int64_t q_stride, const C* keys, const C* values, const int64_t* table,
                  int64_t len, int64_t first_block, int64_t end_block, int64_t block_size, int64_t group,
                  int64_t dim, float scale, T* o_dst, int64_t o_stride, float* partial, std::vector<float>& buf) {
  const int64_t begin = first_block * block_size, n = std::min(len, end_block * block_size) - begin;
  if (n <= 0) {  // nothing to attend to (never for a whole decode, whose own token is cached): zeros
    for (int64_t g = 0; g < group; ++g) {
      if (partial) {
        float* part = partial + g * (dim + kPartialExtra);
        std::fill(part, part + dim, 0.f);
        part[dim] = kNoScore, part[dim + 1] = 0.f;
      } else {
        std::fill(o_dst + g * o_stride, o_dst + g * o_stride + dim, T(0));
      }
    }
    return;
  }
  buf.resize(group * dim * 2 + block_size * dim + group * n + 2 * group);
  float* q = buf.data();
  float* acc = q + group * dim;
  float* rows = acc + group * dim;
  float* scores = rows + block_size * dim;
  float* maxima = scores + group * n;  // per query head: its scores' max and the sum of its weights
  float* sums = maxima + group;
  constexpr bool permuted = kPermutedRows<C, D>;
  for (int64_t g = 0; g < group; ++g) {
    load_float(q_src + g * q_stride, q + g * dim, dim);
    for (int64_t i = 0; i < dim; ++i) q[g * dim + i] *= scale;
    if constexpr (permuted) {
      float natural[D];
      std::copy(q + g * dim, q + (g + 1) * dim, natural);
      permute_vector<D>(natural, q + g * dim, true);
    }
  }
  // Blocks are requested kAhead ahead of their use, a block's values while its keys are read.
  const int64_t blocks = (begin + n + block_size - 1) / block_size;
  const auto block_keys = [&](int64_t b) { return keys + table[b] * block_size * dim; };
  const auto block_values = [&](int64_t b) { return values + table[b] * block_size * dim; };
  const auto values_in = [&](int64_t b) { return std::min(block_size, len - b * block_size) * dim; };
  for (int64_t b = first_block; b < std::min(first_block + kAhead, blocks); ++b)
    prefetch_rows(block_keys(b), values_in(b));
  for (int64_t b = first_block; b < blocks; ++b) {
    const int64_t start = b * block_size - begin, count = std::min(block_size, len - b * block_size);
    if (b + kAhead < blocks) prefetch_rows(block_keys(b + kAhead), values_in(b + kAhead));
    prefetch_rows<2>(block_values(b), values_in(b));
    // Rows [0, direct) straight from the cache (kDirectRows), the rest from a float32 copy.
    const int64_t direct = kDirectRows<C, D> ? count / 8 * 8 : 0;
    if (direct < count) load_rows<C, D>(block_keys(b) + direct * dim, rows, (count - direct) * dim);
    for (int64_t g = 0; g < group; ++g) {
      float* s = scores + g * n + start;
      int64_t p = 0;
      if constexpr (kDirectRows<C, D>) {
        for (; p < direct; p += 8) dot8_rows<D>(q + g * dim, block_keys(b) + p * dim, s + p);
      }
      const auto copied = [&](int64_t row) { return rows + (row - direct) * dim; };
      for (; p + 8 <= count; p += 8) dot8<D>(q + g * dim, copied(p), dim, s + p);
      for (; p + 4 <= count; p += 4) dot4<D>(q + g * dim, copied(p), dim, s + p);
      for (; p < count; ++p) s[p] = dot<D>(q + g * dim, copied(p), dim);
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    float* s = scores + g * n;
    const float m = max_of(s, n);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t p = 0; p < n; ++p) {
      s[p] = std::exp(s[p] - m);
      sum += s[p];
    }
    maxima[g] = m, sums[g] = sum;
    if (!partial) {
      const float inv = 1.f / sum;
#pragma omp simd
      for (int64_t p = 0; p < n; ++p) s[p] *= inv;
    }
  }
  std::fill(acc, acc + group * dim, 0.f);
  for (int64_t b = first_block; b < std::min(first_block + kAhead, blocks); ++b)
    prefetch_rows(block_values(b), values_in(b));
  for (int64_t b = first_block; b < blocks; ++b) {
    const int64_t start = b * block_size - begin, count = std::min(block_size, len - b * block_size);
    if (b + kAhead < blocks) prefetch_rows(block_values(b + kAhead), values_in(b + kAhead));
    if constexpr (kDirectRows<C, D>) {
      weighted_rows<D>(scores + start, n, block_values(b), count, group, dim, acc);
    } else {
      load_rows<C, D>(block_values(b), rows, count * dim);
      weighted_rows<D>(scores + start, n, static_cast<const float*>(rows), count, group, dim, acc);
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    const float* a = acc + g * dim;
    if constexpr (permuted) {
      float natural[D];
      permute_vector<D>(a, natural, false);
      std::copy(natural, natural + D, acc + g * dim);
    }
    if (partial) {
      float* part = partial + g * (dim + kPartialExtra);
      std::copy(a, a + dim, part);
      part[dim] = maxima[g], part[dim + 1] = sums[g];
    } else {
      T* o = o_dst + g * o_stride;
      for (int64_t i = 0; i < dim; ++i) o[i] = static_cast<T>(a[i]);
    }
  }
}

// query [b, heads, dim] (any strides, last one 1); kv_cache [2, kv_heads, blocks, block_size, dim]
// contiguous, of dtype C (T's, or a 16-bit one for a float32 model); block_tables [b, max_blocks] int64;
// context_lens [b] int64; out [b, heads, dim].
// Tasks [task_begin, task_end) of the plan's: a (request, kv head) pair's whole context, or a part of it
// whose sums go to scratch.
template <typename T, typename C>
void decode_attention_impl(at::Tensor& out, const at::Tensor& query, const at::Tensor& kv_cache,
                           const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                           const mmserve::DecodeAttentionPlan& plan, float* scratch, int64_t task_begin,
                           int64_t task_end) {
  const int64_t heads = query.size(1), dim = query.size(2);
  const int64_t kv_heads = kv_cache.size(1), num_blocks = kv_cache.size(2), block_size = kv_cache.size(3);
  const int64_t group = heads / kv_heads, splits = plan.splits;
  const int64_t plane = num_blocks * block_size * dim;  // one kv head's keys (or values)
  const T* q_base = query.data_ptr<T>();
  const C* cache = kv_cache.data_ptr<C>();
  T* o_base = out.data_ptr<T>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  const int64_t table_width = block_tables.size(1);
  const int64_t qs0 = query.stride(0), qs1 = query.stride(1), os0 = out.stride(0), os1 = out.stride(1);
  const auto attend =
      dim == 64 ? attend_group<T, C, 64> : dim == 128 ? attend_group<T, C, 128> : attend_group<T, C, 0>;

  // A task's blocks: [first, end) of the request's table.
  const auto task_blocks = [&](int64_t task) {
    return mmserve::decode_attention_part_blocks(plan, lens[task / splits / kv_heads], block_size, task % splits);
  };
  at::parallel_for(task_begin, task_end, 1, [&](int64_t begin, int64_t end) {
    // The first keys of this thread's next few tasks are requested now, while the first task's are read:
    // each would otherwise start by waiting for memory (one request's kv heads run one after another).
    for (int64_t task = begin + 1; task < std::min(end, begin + 1 + kTasksAhead); ++task) {
      const int64_t r = task / splits / kv_heads, h = task / splits % kv_heads;
      const auto [first, last] = task_blocks(task);
      for (int64_t b = first; b < std::min(last, first + kAhead); ++b) {
        const int64_t rows = std::min(block_size, lens[r] - b * block_size);
        prefetch_rows(cache + h * plane + tables[r * table_width + b] * block_size * dim, rows * dim);
      }
    }
    std::vector<float> buf;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / splits, r = pair / kv_heads, h = pair % kv_heads;
      const auto [first_block, end_block] = task_blocks(task);
      attend(q_base + r * qs0 + h * group * qs1, qs1, cache + h * plane, cache + (kv_heads + h) * plane,
             tables + r * table_width, lens[r], first_block, end_block, block_size, group, dim,
             static_cast<float>(scale), o_base + r * os0 + h * group * os1, os1,
             splits > 1 ? scratch + task * group * (dim + kPartialExtra) : nullptr, buf);
    }
  });
}

// Pairs [pair_begin, pair_end): each query head's parts combined, out = sum_i e_i acc_i / sum_i e_i sum_i
// with e_i = exp(max_i - the largest max).
template <typename T>
void merge_parts(at::Tensor& out, const mmserve::DecodeAttentionPlan& plan, const float* scratch, int64_t kv_heads,
                 int64_t pair_begin, int64_t pair_end) {
  const int64_t heads = out.size(1), dim = out.size(2), group = heads / kv_heads, width = dim + kPartialExtra;
  T* o_base = out.data_ptr<T>();
  std::vector<float> sum(dim);
  for (int64_t pair = pair_begin; pair < pair_end; ++pair) {
    const int64_t r = pair / kv_heads, h = pair % kv_heads;
    for (int64_t g = 0; g < group; ++g) {
      const auto part = [&](int64_t i) { return scratch + ((pair * plan.splits + i) * group + g) * width; };
      float largest = kNoScore;
      for (int64_t i = 0; i < plan.splits; ++i) largest = std::max(largest, part(i)[dim]);
      float weight = 0.f;
      std::fill(sum.begin(), sum.end(), 0.f);
      for (int64_t i = 0; i < plan.splits; ++i) {
        const float e = std::exp(part(i)[dim] - largest);
        weight += e * part(i)[dim + 1];
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) sum[d] += e * part(i)[d];
      }
      const float inv = weight > 0.f ? 1.f / weight : 0.f;  // no position in any part: zeros
      T* o = o_base + r * out.stride(0) + (h * group + g) * out.stride(1);
      for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<T>(sum[d] * inv);
    }
  }
}

// Calls fn(T(), C()) for a query/projection dtype T and a cache dtype C: the same, or float32 computation
// over a bfloat16 or float16 cache (half the bytes each decode step reads).
template <typename Fn>
void dispatch_cache_dtypes(at::ScalarType compute, at::ScalarType cache, const char* name, Fn&& fn) {
  if (compute == at::kFloat && cache == at::kBFloat16) return fn(float(), c10::BFloat16());
  if (compute == at::kFloat && cache == at::kHalf) return fn(float(), c10::Half());
  TORCH_CHECK(compute == cache, name, ": the cache must have the computation's dtype, or be bfloat16 or "
              "float16 under float32, got ", cache, " under ", compute);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, compute, "dispatch_cache_dtypes",
                                  [&] { fn(scalar_t(), scalar_t()); });
}

}  // namespace

namespace mmserve {

void check_paged_decode_attention(const at::Tensor& out, const at::Tensor& query, const at::Tensor& kv_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens) {
  TORCH_CHECK(query.dim() == 3 && query.stride(2) == 1, "query must be [batch, heads, dim], last dim dense");
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.is_contiguous(), "kv_cache must be a contiguous 5-d tensor");
  TORCH_CHECK(out.sizes() == query.sizes() && out.stride(2) == 1, "out must match query");
  TORCH_CHECK(out.scalar_type() == query.scalar_type(), "query and out must share a dtype");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && block_tables.is_contiguous(), "block_tables: int64");
  TORCH_CHECK(context_lens.scalar_type() == at::kLong && context_lens.is_contiguous(), "context_lens: int64");
  TORCH_CHECK(query.size(1) % kv_cache.size(1) == 0, "heads must be a multiple of kv heads");
  TORCH_CHECK(kv_cache.size(0) == 2 && kv_cache.size(3) > 0 && kv_cache.size(4) == query.size(2),
              "kv_cache must be [2, kv_heads, blocks, block_size, dim] of the query's head size");
  TORCH_CHECK(context_lens.numel() >= query.size(0) && block_tables.dim() == 2 &&
                  block_tables.size(0) >= query.size(0),
              "block_tables and context_lens must have a row per request");
  // Each request's blocks in use: within its table's row, and within the cache.
  const int64_t* lens = context_lens.const_data_ptr<int64_t>();
  const int64_t* tables = block_tables.const_data_ptr<int64_t>();
  const int64_t width = block_tables.size(1), block_size = kv_cache.size(3), blocks = kv_cache.size(2);
  for (int64_t r = 0; r < query.size(0); ++r) {
    TORCH_CHECK(lens[r] >= 0 && lens[r] <= width * block_size, "request ", r, "'s context of ", lens[r],
                " positions does not fit its block table (", width * block_size, ")");
    for (int64_t b = 0; b < (lens[r] + block_size - 1) / block_size; ++b)
      TORCH_CHECK(tables[r * width + b] >= 0 && tables[r * width + b] < blocks, "block ", tables[r * width + b],
                  " of request ", r, " is outside the KV cache (", blocks, " blocks)");
  }
  // The query/cache dtype pair's own check, with nothing to run.
  dispatch_cache_dtypes(query.scalar_type(), kv_cache.scalar_type(), "paged_decode_attention", [](auto, auto) {});
}

DecodeAttentionPlan plan_paged_decode_attention(const at::Tensor& query, const at::Tensor& kv_cache,
                                                const at::Tensor& context_lens, int64_t threads) {
  DecodeAttentionPlan plan;
  plan.pairs = query.size(0) * kv_cache.size(1);
  plan.scratch_floats_per_task = query.size(1) / kv_cache.size(1) * (query.size(2) + kPartialExtra);
  if (threads <= 1 || plan.pairs == 0 || plan.pairs >= kPairsPerThreadUnsplit * threads) return plan;
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  const int64_t longest = *std::max_element(lens, lens + context_lens.numel());
  const int64_t most = longest / (kMinSplitBlocks * kv_cache.size(3));  // parts of at least that many blocks
  plan.splits = std::max<int64_t>(1, std::min(threads / std::gcd(plan.pairs, threads), most));
  return plan;
}

void paged_decode_attention_range(at::Tensor out, const at::Tensor& query, const at::Tensor& kv_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  const DecodeAttentionPlan& plan, float* scratch, int64_t begin, int64_t end) {
  dispatch_cache_dtypes(query.scalar_type(), kv_cache.scalar_type(), "paged_decode_attention", [&](auto t, auto c) {
    decode_attention_impl<decltype(t), decltype(c)>(out, query, kv_cache, block_tables, context_lens, scale, plan,
                                                    scratch, begin, end);
  });
}

void paged_decode_attention_merge(at::Tensor out, const at::Tensor& kv_cache, const DecodeAttentionPlan& plan,
                                  const float* scratch, int64_t pair_begin, int64_t pair_end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "paged_decode_attention", [&] {
    merge_parts<scalar_t>(out, plan, scratch, kv_cache.size(1), pair_begin, pair_end);
  });
}

void paged_decode_attention(at::Tensor out, const at::Tensor& query, const at::Tensor& kv_cache,
                            const at::Tensor& block_tables, const at::Tensor& context_lens, double scale) {
  check_paged_decode_attention(out, query, kv_cache, block_tables, context_lens);
  const DecodeAttentionPlan plan = plan_paged_decode_attention(query, kv_cache, context_lens, at::get_num_threads());
  std::vector<float> scratch(plan.splits > 1 ? plan.scratch_floats() : 0);
  paged_decode_attention_range(out, query, kv_cache, block_tables, context_lens, scale, plan, scratch.data(), 0,
                               plan.tasks());
  if (plan.splits > 1) {
    at::parallel_for(0, plan.pairs, 1, [&](int64_t begin, int64_t end) {
      paged_decode_attention_merge(out, kv_cache, plan, scratch.data(), begin, end);
    });
  }
}

}  // namespace mmserve

namespace {

// residual += x (rounded to the storage dtype, as a separate add would), then
// x = rms_norm(residual) * weight; both [tokens, hidden] contiguous. Without ``add``, x = rms_norm(residual).
template <typename T>
void add_rms_norm_impl(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, double eps, bool add) {
  const int64_t rows = x.size(0), hidden = x.size(1);
  T* xs = x.data_ptr<T>();
  T* rs = residual.data_ptr<T>();
  std::vector<float> w(hidden);
  load_float(weight.data_ptr<T>(), w.data(), hidden);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(2 * hidden);
    float* __restrict r = buf.data();
    float* __restrict y = r + hidden;
    for (int64_t row = begin; row < end; ++row) {
      load_float(rs + row * hidden, r, hidden);
      if (add) {
        load_float(xs + row * hidden, y, hidden);
#pragma omp simd
        for (int64_t i = 0; i < hidden; ++i) r[i] += y[i];
        store_float(r, rs + row * hidden, hidden);
        load_float(rs + row * hidden, r, hidden);  // the rounded sum, as the next layer reads it
      }
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < hidden; ++i) ss += r[i] * r[i];
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(hidden) + static_cast<float>(eps));
#pragma omp simd
      for (int64_t i = 0; i < hidden; ++i) y[i] = r[i] * inv * w[i];
      store_float(y, xs + row * hidden, hidden);
    }
  });
}

void check_norm_args(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && residual.is_contiguous() && weight.is_contiguous(),
              "x and residual must be contiguous [tokens, hidden]");
  TORCH_CHECK(x.sizes() == residual.sizes() && weight.dim() == 1 && weight.size(0) == x.size(1),
              "x, residual and weight sizes disagree");
  TORCH_CHECK(x.scalar_type() == residual.scalar_type() && weight.scalar_type() == x.scalar_type(),
              "x, residual and weight must share a dtype");
}

}  // namespace

namespace mmserve {

void fused_add_rms_norm(at::Tensor x, at::Tensor residual, const at::Tensor& weight, double eps) {
  check_norm_args(x, residual, weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fused_add_rms_norm", [&] {
    add_rms_norm_impl<scalar_t>(x, residual, weight, eps, true);
  });
}

void rms_norm(at::Tensor out, const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_args(out, x, weight);
  at::Tensor source = x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    add_rms_norm_impl<scalar_t>(out, source, weight, eps, false);
  });
}

}  // namespace mmserve

namespace {

// In place on the fused projection qkv [tokens, (heads + 2 * kv_heads) * dim], its heads [head_begin,
// head_end) of all tokens (the query heads, then the key heads, then the value heads): rotary position
// embedding of the query and key heads (rotate-half convention: x * cos + roll(x, dim / 2) * signed_sin,
// the tables [positions, dim] float32 indexed by each token's position), and each token's key and value
// heads written to its slot of kv_cache [2, kv_heads, blocks, block_size, dim].
template <typename T, typename C>
void rotary_cache_write_heads(at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& cos,
                              const at::Tensor& signed_sin, at::Tensor& kv_cache, const at::Tensor& slots,
                              int64_t heads, int64_t kv_heads, int64_t token_begin, int64_t token_end,
                              int64_t head_begin, int64_t head_end) {
  const int64_t dim = kv_cache.size(4), half = dim / 2;
  const int64_t width = (heads + 2 * kv_heads) * dim;
  const int64_t plane = kv_cache.size(2) * kv_cache.size(3) * dim;  // one kv head's keys (or values)
  T* data = qkv.data_ptr<T>();
  C* cache = kv_cache.data_ptr<C>();
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  const int64_t* slot = slots.const_data_ptr<int64_t>();
  const float* cos_table = cos.const_data_ptr<float>();
  const float* sin_table = signed_sin.const_data_ptr<float>();
  std::vector<float> buffer(2 * dim);
  float* x = buffer.data();
  float* y = x + dim;
  for (int64_t t = token_begin; t < token_end; ++t) {
    T* row = data + t * width;
    const float* c = cos_table + pos[t] * dim;
    const float* sn = sin_table + pos[t] * dim;
    for (int64_t h = head_begin; h < head_end; ++h) {
      T* head = row + h * dim;
      if (h < heads + kv_heads) {
        load_float(head, x, dim);
        for (int64_t i = 0; i < half; ++i) {
          y[i] = x[i] * c[i] + x[i + half] * sn[i];
          y[i + half] = x[i + half] * c[i + half] + x[i] * sn[i + half];
        }
        store_float(y, head, dim);
      }
      // the key heads' planes come first in the cache, then the value heads'
      if (h >= heads) store_as(head, cache + (h - heads) * plane + slot[t] * dim, dim, x);
    }
  }
}

// out [rows, n] = silu(gate) * up of gate_up [rows, 2 * n] (gate the first half), in float32.
template <typename T>
void silu_mul_impl(at::Tensor& out, const at::Tensor& gate_up) {
  const int64_t rows = out.size(0), n = out.size(1);
  const T* src = gate_up.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(3 * n);
    float* __restrict gate = buf.data();
    float* __restrict up = gate + n;
    float* __restrict y = up + n;
    for (int64_t row = begin; row < end; ++row) {
      load_float(src + row * 2 * n, gate, n);
      load_float(src + row * 2 * n + n, up, n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        // exp of at most 80 stays finite (-ffast-math assumes no infinities); silu is then ~0 anyway
        y[i] = gate[i] / (1.f + std::exp(std::min(-gate[i], 80.f))) * up[i];
      }
      store_float(y, dst + row * n, n);
    }
  });
}

}  // namespace

namespace mmserve {

void silu_mul(at::Tensor out, const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 2 == 0,
              "gate_up must be contiguous [rows, 2 * n]");
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous() && out.size(0) == gate_up.size(0) &&
                  out.size(1) * 2 == gate_up.size(1) && out.scalar_type() == gate_up.scalar_type(),
              "out must be contiguous [rows, n] of gate_up's dtype");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "silu_mul", [&] {
    silu_mul_impl<scalar_t>(out, gate_up);
  });
}

void check_rotary_cache_write(const at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& cos,
                              const at::Tensor& signed_sin, const at::Tensor& kv_cache, const at::Tensor& slots,
                              int64_t heads, int64_t kv_heads) {
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.is_contiguous() && kv_cache.size(1) == kv_heads,
              "kv_cache must be a contiguous [2, kv_heads, blocks, block_size, dim] tensor");
  const int64_t dim = kv_cache.size(4);
  TORCH_CHECK(dim % 2 == 0, "the head size must be even");
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && qkv.size(1) == (heads + 2 * kv_heads) * dim,
              "qkv must be contiguous [tokens, (heads + 2 * kv_heads) * dim]");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && signed_sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
                  signed_sin.is_contiguous() && cos.size(1) == dim && signed_sin.sizes() == cos.sizes(),
              "cos and signed_sin must be contiguous float32 [positions, dim]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && slots.scalar_type() == at::kLong &&
                  positions.is_contiguous() && slots.is_contiguous() && positions.numel() == qkv.size(0) &&
                  slots.numel() == qkv.size(0),
              "positions and slots: int64, one per token");
  const int64_t* position = positions.const_data_ptr<int64_t>();
  const int64_t* slot = slots.const_data_ptr<int64_t>();
  const int64_t table_rows = cos.size(0), cache_slots = kv_cache.size(2) * kv_cache.size(3);
  for (int64_t t = 0; t < qkv.size(0); ++t) {
    TORCH_CHECK(position[t] >= 0 && position[t] < table_rows, "position ", position[t],
                " is outside the rotary tables (", table_rows, " positions)");
    TORCH_CHECK(slot[t] >= 0 && slot[t] < cache_slots, "slot ", slot[t], " is outside the KV cache (",
                cache_slots, " slots)");
  }
  dispatch_cache_dtypes(qkv.scalar_type(), kv_cache.scalar_type(), "rotary_cache_write", [](auto, auto) {});
}

void rotary_cache_write(at::Tensor qkv, const at::Tensor& positions, const at::Tensor& cos,
                        const at::Tensor& signed_sin, at::Tensor kv_cache, const at::Tensor& slots,
                        int64_t heads, int64_t kv_heads) {
  check_rotary_cache_write(qkv, positions, cos, signed_sin, kv_cache, slots, heads, kv_heads);
  const int64_t all_heads = heads + 2 * kv_heads;
  at::parallel_for(0, qkv.size(0), 16, [&](int64_t begin, int64_t end) {
    rotary_cache_write_range(qkv, positions, cos, signed_sin, kv_cache, slots, heads, kv_heads, begin, end, 0,
                             all_heads);
  });
}

void rotary_cache_write_range(at::Tensor qkv, const at::Tensor& positions, const at::Tensor& cos,
                              const at::Tensor& signed_sin, at::Tensor kv_cache, const at::Tensor& slots,
                              int64_t heads, int64_t kv_heads, int64_t token_begin, int64_t token_end,
                              int64_t head_begin, int64_t head_end) {
  dispatch_cache_dtypes(qkv.scalar_type(), kv_cache.scalar_type(), "rotary_cache_write", [&](auto t, auto c) {
    rotary_cache_write_heads<decltype(t), decltype(c)>(qkv, positions, cos, signed_sin, kv_cache, slots, heads,
                                                       kv_heads, token_begin, token_end, head_begin, head_end);
  });
}

}  // namespace mmserve

TORCH_LIBRARY(mmserve_cpu, m) {
  m.def("paged_decode_attention(Tensor(a!) out, Tensor query, Tensor kv_cache, Tensor block_tables, "
        "Tensor context_lens, float scale) -> ()");
  m.def("fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("rms_norm(Tensor(a!) out, Tensor x, Tensor weight, float eps) -> ()");
  m.def("rotary_cache_write(Tensor(a!) qkv, Tensor positions, Tensor cos, Tensor signed_sin, "
        "Tensor(b!) kv_cache, Tensor slots, int heads, int kv_heads) -> ()");
  m.def("silu_mul(Tensor(a!) out, Tensor gate_up) -> ()");
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) {
  m.impl("paged_decode_attention", &mmserve::paged_decode_attention);
  m.impl("fused_add_rms_norm", &mmserve::fused_add_rms_norm);
  m.impl("rms_norm", &mmserve::rms_norm);
  m.impl("rotary_cache_write", &mmserve::rotary_cache_write);
  m.impl("silu_mul", &mmserve::silu_mul);
}
