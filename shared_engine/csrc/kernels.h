// The kernels one source file calls from another (each file registers its own as torch operators; the
// decode-layers kernel calls them directly, with none of the dispatcher's or Python's per-call cost).
#pragma once

#include <ATen/ATen.h>

namespace mmserve {

// cpu_kernels.cpp
void paged_decode_attention(at::Tensor out, const at::Tensor& query, const at::Tensor& kv_cache,
                            const at::Tensor& block_tables, const at::Tensor& context_lens, double scale);
void fused_add_rms_norm(at::Tensor x, at::Tensor residual, const at::Tensor& weight, double eps);
void rms_norm(at::Tensor out, const at::Tensor& x, const at::Tensor& weight, double eps);
void rotary_cache_write(at::Tensor qkv, const at::Tensor& positions, const at::Tensor& cos,
                        const at::Tensor& signed_sin, at::Tensor kv_cache, const at::Tensor& slots,
                        int64_t heads, int64_t kv_heads);
void silu_mul(at::Tensor out, const at::Tensor& gate_up);

// quantized_linear.cpp
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                       int64_t group, int64_t isa);
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t group,
                       int64_t isa);

}  // namespace mmserve
