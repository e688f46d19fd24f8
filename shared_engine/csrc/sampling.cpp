// The sampler's one pass over a batch of logits: each row's distribution at its temperature, reduced to
// what the sampler's race needs, its k most likely tokens with their probabilities and the mass of all
// the others. Done in torch this is a scaled copy, a softmax, a top-k and a masked sum, four full passes
// over [rows, vocab] float32 with a tensor written by each (~5 ms for 32 rows of a 49k vocabulary, a
// tenth of a decode step); here each row stays in one thread's cache.
//
// A row's result does not depend on the rows beside it or on where it lies in memory: one thread takes
// the whole row, and every float operation runs on a copy at the start of an aligned buffer, so the
// compiler's vectorized loops group the sums the same way for every row.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace {

// Stands in for -inf and NaN (a masked token): the kernels are built with -ffast-math, which assumes
// neither exists, and exp of this after the max is subtracted is exactly 0 at any temperature.
constexpr float kMasked = -1e30f;
constexpr int kShift = 20;  // 31 value bits of a non-negative float -> 2048 buckets of its top bits

// Copies a row into `e` with non-finite values replaced, and returns its largest value.
float load_row(const float* src, float* e, int64_t n) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(src);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    // By the bits: under -ffinite-math-only a test with std::isfinite may be compiled away.
    e[i] = (bits[i] & 0x7F800000u) == 0x7F800000u ? kMasked : src[i];
  }
  float largest = kMasked;
#pragma omp simd reduction(max : largest)
  for (int64_t i = 0; i < n; ++i) largest = e[i] > largest ? e[i] : largest;  // std::max: not vectorized
  return largest;
}

// The k largest of non-negative `e`, of equal values the first ones: a radix select (non-negative floats
// order as their bits do), counting entries per bucket of top bits, then ordering only the bucket where the
// k-th largest falls. Writes values and indices; returns the sum of the entries not chosen.
float select_top(const float* e, int64_t n, int64_t k, float* values, int64_t* indices,
                 std::vector<int32_t>& count, std::vector<int64_t>& boundary) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(e);
  // Four histograms, entry i counted in the (i % 4)-th: softmax values crowd into few buckets, and
  // counting them all in one would make each increment wait for the one before.
  constexpr int64_t kBuckets = int64_t{1} << (31 - kShift);
  std::fill(count.begin(), count.end(), 0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int64_t lane = 0; lane < 4; ++lane) ++count[lane * kBuckets + (bits[i + lane] >> kShift)];
  }
  for (; i < n; ++i) ++count[bits[i] >> kShift];
  int64_t bucket = kBuckets - 1, above = 0;
  auto in_bucket = [&](int64_t b) {
    return count[b] + count[kBuckets + b] + count[2 * kBuckets + b] + count[3 * kBuckets + b];
  };
  while (above + in_bucket(bucket) < k) above += in_bucket(bucket--);
  const uint32_t lowest = static_cast<uint32_t>(bucket) << kShift;  // entries below this are all in the rest
  double rest = 0.0;  // double: float sums of ~50k entries lose ~1e-5 where vectors are narrow (SSE)
#pragma omp simd reduction(+ : rest)
  for (int64_t x = 0; x < n; ++x) rest += bits[x] < lowest ? e[x] : 0.f;
  // The entries at or above `lowest` (~k of them), found 8 at a time by a mask of compares and taken
  // from it bit by bit: a branch per entry would be mispredicted at nearly every one of them.
  const uint32_t head_from = static_cast<uint32_t>(bucket + 1) << kShift;
  int64_t out = 0;
  boundary.clear();
  auto take = [&](int64_t j) {
    if (bits[j] >= head_from) {
      values[out] = e[j];
      indices[out++] = j;
    } else {
      boundary.push_back(j);
    }
  };
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    uint32_t mask = 0;
#pragma omp simd reduction(| : mask)
    for (int lane = 0; lane < 8; ++lane) mask |= static_cast<uint32_t>(bits[j + lane] >= lowest) << lane;
    for (; mask; mask &= mask - 1) take(j + __builtin_ctz(mask));
  }
  for (; j < n; ++j) {
    if (bits[j] >= lowest) take(j);
  }
  const int64_t wanted = k - above;
  std::nth_element(boundary.begin(), boundary.begin() + (wanted - 1), boundary.end(),
                   [e](int64_t a, int64_t b) { return e[a] > e[b] || (e[a] == e[b] && a < b); });
  for (int64_t b = 0; b < wanted; ++b) {
    values[out] = e[boundary[b]];
    indices[out++] = boundary[b];
  }
  for (size_t b = wanted; b < boundary.size(); ++b) rest += e[boundary[b]];
  return static_cast<float>(rest);
}

// For each row r of `logits` [rows, n] (float32): p = softmax(logits[r] * inverse_temperatures[r]); returns
// the k largest p [rows, k] (in no particular order), their token ids [rows, k], and the sum of the other
// p [rows] (summed on its own, not as 1 minus the head, which would lose a small tail to rounding).
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_head(const at::Tensor& logits,
                                                            const at::Tensor& inverse_temperatures, int64_t k) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.scalar_type() == at::kFloat,
              "softmax_head: logits must be contiguous float32 [rows, vocab]");
  const int64_t rows = logits.size(0), n = logits.size(1);
  TORCH_CHECK(inverse_temperatures.scalar_type() == at::kFloat && inverse_temperatures.is_contiguous() &&
                  inverse_temperatures.numel() == rows,
              "softmax_head: inverse_temperatures must be float32, one per row");
  TORCH_CHECK(k >= 1 && k <= n, "softmax_head: k must be in [1, vocab]");
  at::Tensor head = at::empty({rows, k}, logits.options());
  at::Tensor ids = at::empty({rows, k}, logits.options().dtype(at::kLong));
  at::Tensor tail = at::empty({rows}, logits.options());
  const float* src = logits.data_ptr<float>();
  const float* inverse = inverse_temperatures.data_ptr<float>();
  float* head_p = head.data_ptr<float>();
  int64_t* head_ids = ids.data_ptr<int64_t>();
  float* tail_p = tail.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(n);
    std::vector<int32_t> count(4 << (31 - kShift));
    std::vector<int64_t> boundary;
    float* e = buffer.data();
    for (int64_t r = begin; r < end; ++r) {
      const float largest = load_row(src + r * n, e, n);
      const float scale = inverse[r];
      double total = 0.0;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) e[i] = std::exp((e[i] - largest) * scale);
#pragma omp simd reduction(+ : total)
      for (int64_t i = 0; i < n; ++i) total += e[i];
      float* values = head_p + r * k;
      const float rest = select_top(e, n, k, values, head_ids + r * k, count, boundary);
      const float normalize = static_cast<float>(1.0 / total);
      for (int64_t j = 0; j < k; ++j) values[j] *= normalize;
      tail_p[r] = rest * normalize;
    }
  });
  return {head, ids, tail};
}

// A greedy token: the index of a row's largest value, the first of equal ones, a NaN being the largest
// (as torch.argmax has it), in two vectorized passes where a compiled index-tracking loop is not
// (torch.argmax: ~27 us for a 49k row, here ~5): the largest key, then the first chunk holding it.
//
// The passes compare integer keys that order as the floats do: the kernels are built with -ffast-math,
// under which a float comparison with NaN or infinity may be compiled as if neither could occur.
inline int32_t order_key(uint32_t bits) {
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return std::numeric_limits<int32_t>::max();  // NaN, of either sign
  if (magnitude == 0) return 0;  // -0 equals +0
  // A negative float's other bits grow with its magnitude: flipped, they order as the value does.
  return static_cast<int32_t>(bits & 0x80000000u ? bits ^ 0x7FFFFFFFu : bits);
}

typedef uint32_t FloatBits __attribute__((may_alias));  // a float's bits, read through a float array

int64_t argmax_row(const float* x, int64_t n) {
  constexpr int64_t kChunk = 64;
  const FloatBits* bits = reinterpret_cast<const FloatBits*>(x);
  int32_t largest = std::numeric_limits<int32_t>::min();
#pragma omp simd reduction(max : largest)
  for (int64_t i = 0; i < n; ++i) largest = std::max(largest, order_key(bits[i]));
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t end = std::min(n, begin + kChunk);
    uint32_t any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t i = begin; i < end; ++i) any |= static_cast<uint32_t>(order_key(bits[i]) == largest);
    if (!any) continue;
    for (int64_t i = begin; i < end; ++i) {
      if (order_key(bits[i]) == largest) return i;
    }
  }
  return 0;  // not reached: some entry holds the largest key
}

// Per row of `logits` [rows, n] (float32), argmax_row: int64 [rows].
at::Tensor argmax_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.scalar_type() == at::kFloat &&
                  logits.size(1) > 0,
              "argmax_rows: logits must be contiguous float32 [rows, vocab] with vocab > 0");
  const int64_t rows = logits.size(0), n = logits.size(1);
  at::Tensor out = at::empty({rows}, logits.options().dtype(at::kLong));
  const float* src = logits.const_data_ptr<float>();
  int64_t* ids = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) ids[r] = argmax_row(src + r * n, n);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmserve_cpu, m) {
  m.def("softmax_head(Tensor logits, Tensor inverse_temperatures, int k) -> (Tensor, Tensor, Tensor)");
  m.def("argmax_rows(Tensor logits) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) {
  m.impl("softmax_head", &softmax_head);
  m.impl("argmax_rows", &argmax_rows);
}
