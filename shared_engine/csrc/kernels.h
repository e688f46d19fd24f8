// The kernels one source file calls from another (each file registers its own as torch operators; the
// decode-layers kernel calls them directly, with none of the dispatcher's or Python's per-call cost).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

namespace mmserve {

// cpu_kernels.cpp
void paged_decode_attention(at::Tensor out, const at::Tensor& query, const at::Tensor& kv_cache,
                            const at::Tensor& block_tables, const at::Tensor& context_lens, double scale);
// Its checks alone. Its tasks, as a team of ``threads`` splits them: one per (request, kv head) pair, or,
// where there are too few pairs for the threads to share evenly (one request's few kv heads), ``splits``
// per pair, each a part of the context whose sums go to a scratch buffer (scratch_floats()) and are
// merged after every part is done. Tasks [begin, end) of the plan, unchecked; and pairs' merges.
void check_paged_decode_attention(const at::Tensor& out, const at::Tensor& query, const at::Tensor& kv_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens);
struct DecodeAttentionPlan {
  int64_t pairs = 0, splits = 1, scratch_floats_per_task = 0;
  int64_t tasks() const { return pairs * splits; }
  int64_t scratch_floats() const { return tasks() * scratch_floats_per_task; }
};
DecodeAttentionPlan plan_paged_decode_attention(const at::Tensor& query, const at::Tensor& kv_cache,
                                                const at::Tensor& context_lens, int64_t threads);
void paged_decode_attention_range(at::Tensor out, const at::Tensor& query, const at::Tensor& kv_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  const DecodeAttentionPlan& plan, float* scratch, int64_t begin, int64_t end);
void paged_decode_attention_merge(at::Tensor out, const at::Tensor& kv_cache, const DecodeAttentionPlan& plan,
                                  const float* scratch, int64_t pair_begin, int64_t pair_end);
// The blocks [first, end) of a request's table that part ``part`` of its context of ``len`` positions is.
inline std::pair<int64_t, int64_t> decode_attention_part_blocks(const DecodeAttentionPlan& plan, int64_t len,
                                                                int64_t block_size, int64_t part) {
  const int64_t blocks = (std::max<int64_t>(len, 0) + block_size - 1) / block_size;
  return {part * blocks / plan.splits, (part + 1) * blocks / plan.splits};
}
// Calls read(address, bytes) for each block's keys, then its values, that task ``task`` of the plan reads.
template <typename Read>
void for_each_decode_attention_read(const DecodeAttentionPlan& plan, const at::Tensor& kv_cache,
                                    const at::Tensor& block_tables, const at::Tensor& context_lens, int64_t task,
                                    Read&& read) {
  const int64_t kv_heads = kv_cache.size(1), block_size = kv_cache.size(3), dim = kv_cache.size(4);
  const int64_t plane = kv_cache.size(2) * block_size * dim, item = kv_cache.element_size();
  const int64_t r = task / plan.splits / kv_heads, h = task / plan.splits % kv_heads, part = task % plan.splits;
  const int64_t len = context_lens.const_data_ptr<int64_t>()[r];
  const int64_t* table = block_tables.const_data_ptr<int64_t>() + r * block_tables.size(1);
  const char* base = static_cast<const char*>(kv_cache.const_data_ptr());
  const auto [first, end] = decode_attention_part_blocks(plan, len, block_size, part);
  for (int64_t b = first; b < end; ++b) {
    const int64_t offset = table[b] * block_size * dim;
    const int64_t bytes = std::min(block_size, len - b * block_size) * dim * item;
    read(base + (h * plane + offset) * item, bytes);
    read(base + ((kv_heads + h) * plane + offset) * item, bytes);
  }
}
void fused_add_rms_norm(at::Tensor x, at::Tensor residual, const at::Tensor& weight, double eps);
void rms_norm(at::Tensor out, const at::Tensor& x, const at::Tensor& weight, double eps);
void rotary_cache_write(at::Tensor qkv, const at::Tensor& positions, const at::Tensor& cos,
                        const at::Tensor& signed_sin, at::Tensor kv_cache, const at::Tensor& slots,
                        int64_t heads, int64_t kv_heads);
// Its checks alone; and, unchecked, its work on tokens [token_begin, token_end) and, of the fused
// projection's heads (the query heads, the key heads, the value heads), [head_begin, head_end).
void check_rotary_cache_write(const at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& cos,
                              const at::Tensor& signed_sin, const at::Tensor& kv_cache, const at::Tensor& slots,
                              int64_t heads, int64_t kv_heads);
void rotary_cache_write_range(at::Tensor qkv, const at::Tensor& positions, const at::Tensor& cos,
                              const at::Tensor& signed_sin, at::Tensor kv_cache, const at::Tensor& slots,
                              int64_t heads, int64_t kv_heads, int64_t token_begin, int64_t token_end,
                              int64_t head_begin, int64_t head_end);
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
// float_out: the products in float32 rather than rounded to x's dtype (an LM head's logits).
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t group,
                       int64_t isa, bool float_out = false);

}  // namespace mmserve
