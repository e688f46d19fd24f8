// The two memory passes around an int8 GEMM of many rows (row_int8_linear.py): each row of float32
// activations rounded to int8 with a scale of its own, and the int32 products turned back into float32
// in place, with the rows' and output channels' scales and the bias applied on the way.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

namespace {

constexpr int64_t kRowsPerTask = 16;

std::tuple<at::Tensor, at::Tensor> quantize_rows_int8(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "quantize_rows_int8 takes a contiguous float32 [rows, features] tensor");
  const int64_t rows = x.size(0), k = x.size(1);
  at::Tensor q = at::empty({rows, k}, x.options().dtype(at::kChar));
  at::Tensor scales = at::empty({rows}, x.options());
  const float* src = x.data_ptr<float>();
  int8_t* dst = q.data_ptr<int8_t>();
  float* scale = scales.data_ptr<float>();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = src + r * k;
      float amax = 0.f;
      for (int64_t i = 0; i < k; ++i) amax = std::fmax(amax, std::fabs(row[i]));
      // An all-zero row keeps scale 0: its products are 0 whatever it is rounded to.
      const float inverse = amax > 0.f ? 127.f / amax : 0.f;
      scale[r] = amax / 127.f;
      int8_t* out = dst + r * k;
      for (int64_t i = 0; i < k; ++i) out[i] = static_cast<int8_t>(std::nearbyint(row[i] * inverse));
    }
  });
  return {q, scales};
}

// acc [rows, n] int32 becomes acc * row_scales[:, None] * col_scales[None, :] (+ bias), then GELU (exact,
// erf) when asked, then + residual when given, as float32 in the same memory; the float32 view of it is
// returned. What a transformer layer does after a matmul, without a pass over memory for each step.
at::Tensor dequantize_rows_(at::Tensor acc, const at::Tensor& row_scales, const at::Tensor& col_scales,
                            const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                            bool gelu) {
  TORCH_CHECK(acc.dim() == 2 && acc.scalar_type() == at::kInt && acc.is_contiguous(),
              "dequantize_rows_ takes a contiguous int32 [rows, n] tensor");
  const int64_t rows = acc.size(0), n = acc.size(1);
  TORCH_CHECK(row_scales.numel() == rows && col_scales.numel() == n, "dequantize_rows_: scales' sizes");
  TORCH_CHECK(row_scales.scalar_type() == at::kFloat && col_scales.scalar_type() == at::kFloat &&
                  row_scales.is_contiguous() && col_scales.is_contiguous(),
              "dequantize_rows_: scales must be contiguous float32");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->numel() == n && bias->scalar_type() == at::kFloat && bias->is_contiguous(),
                "dequantize_rows_: the bias must be contiguous float32 [n]");
  }
  const bool has_residual = residual.has_value() && residual->defined();
  if (has_residual) {
    TORCH_CHECK(residual->numel() == rows * n && residual->scalar_type() == at::kFloat &&
                    residual->is_contiguous(),
                "dequantize_rows_: the residual must be contiguous float32 [rows, n]");
  }
  int32_t* data = acc.data_ptr<int32_t>();
  const float* rs = row_scales.data_ptr<float>();
  const float* cs = col_scales.data_ptr<float>();
  const float* b = has_bias ? bias->data_ptr<float>() : nullptr;
  const float* res = has_residual ? residual->data_ptr<float>() : nullptr;
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int32_t* in = data + r * n;
      float* out = reinterpret_cast<float*>(in);
      const float s = rs[r];
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(in[j]) * s * cs[j];
      if (b != nullptr) {
        for (int64_t j = 0; j < n; ++j) out[j] += b[j];
      }
      if (gelu) {
        for (int64_t j = 0; j < n; ++j) out[j] = 0.5f * out[j] * (1.f + std::erf(out[j] * 0.70710678f));
      }
      if (res != nullptr) {
        const float* add = res + r * n;
        for (int64_t j = 0; j < n; ++j) out[j] += add[j];
      }
    }
  });
  return acc.view(at::kFloat);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmserve_cpu, m) {
  m.def("quantize_rows_int8(Tensor x) -> (Tensor, Tensor)");
  m.def("dequantize_rows_(Tensor(a!) acc, Tensor row_scales, Tensor col_scales, Tensor? bias, Tensor? residual, "
        "bool gelu) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) {
  m.impl("quantize_rows_int8", &quantize_rows_int8);
  m.impl("dequantize_rows_", &dequantize_rows_);
}
