// The kernels one source file calls from another (each file registers its own as torch operators; the
// decode-layers kernel calls them directly, with none of the dispatcher's or Python's per-call cost).
#pragma once

#include <ATen/ATen.h>

namespace mmserve {

// cpu_kernels.cpp
void paged_decode_attention(at::Tensor out, const at::Tensor& query, const at::Tensor& kv_cache,
                            const at::Tensor& block_tables, const at::Tensor& context_lens, double scale);
// Its checks alone; its tasks (one per request and kv head); and tasks [begin, end) of it, unchecked,
// for a caller whose team of threads splits them.
void check_paged_decode_attention(const at::Tensor& out, const at::Tensor& query, const at::Tensor& kv_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens);
int64_t paged_decode_attention_tasks(const at::Tensor& query, const at::Tensor& kv_cache);
void paged_decode_attention_range(at::Tensor out, const at::Tensor& query, const at::Tensor& kv_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  int64_t begin, int64_t end);
void fused_add_rms_norm(at::Tensor x, at::Tensor residual, const at::Tensor& weight, double eps);
void rms_norm(at::Tensor out, const at::Tensor& x, const at::Tensor& weight, double eps);
void rotary_cache_write(at::Tensor qkv, const at::Tensor& positions, const at::Tensor& cos,
                        const at::Tensor& signed_sin, at::Tensor kv_cache, const at::Tensor& slots,
                        int64_t heads, int64_t kv_heads);
void silu_mul(at::Tensor out, const at::Tensor& gate_up);

// quantized_linear.cpp
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                       int64_t group, int64_t isa);
// int4_linear in parts, for a caller whose team of threads is already running (no checks: those of
// check_int4_linear first): rows of x quantized into a shared workspace of
// int4_linear_workspace_bytes(rows, in_features, group) bytes, then, once every row is, output blocks of
// 16 columns [block_begin, block_end) into out [rows, out_features].
void check_int4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                       int64_t group, int64_t isa);
int64_t int4_linear_workspace_bytes(int64_t rows, int64_t k, int64_t group);
void int4_linear_quantize(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                          int64_t group, int64_t isa, void* workspace, at::Tensor& out, int64_t row_begin,
                          int64_t row_end);
void int4_linear_multiply(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_zeros,
                          int64_t group, int64_t isa, void* workspace, at::Tensor& out, int64_t block_begin,
                          int64_t block_end);
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t group,
                       int64_t isa);

}  // namespace mmserve
