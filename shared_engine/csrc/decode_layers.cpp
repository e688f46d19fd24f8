// A Llama-family decoder's layer stack for a step of decode tokens only, in one call: the same kernels,
// in the same order, as the layers' modules call one by one (so the same results), without the ~15
// Python-level operator calls a layer costs there (about a third of a one-request step on two cores).
//
// Per layer, weights holds kWeightsPerLayer tensors: the int4 qkv projection (packed, scales and zeros,
// bias or an empty tensor), the output projection, gate/up and down (packed, scales and zeros each),
// then the post-attention norm's weight and the weight of the norm after the layer (the next layer's
// input norm, or the final one).

#include <ATen/ATen.h>
#include <torch/library.h>

#include "kernels.h"

namespace {

constexpr int64_t kWeightsPerLayer = 11;

// x: the first layer's normalised input [tokens, hidden]; residual: the un-normalised stream, updated in
// place. Returns the last layer's output after the final norm.
at::Tensor decode_layers(const at::Tensor& x_in, at::Tensor residual, at::TensorList weights,
                         at::TensorList kv_caches, const at::Tensor& positions, const at::Tensor& cos,
                         const at::Tensor& signed_sin, const at::Tensor& slots, const at::Tensor& block_tables,
                         const at::Tensor& context_lens, int64_t heads, int64_t kv_heads, double scale,
                         double eps, int64_t group, int64_t isa) {
  const int64_t layers = static_cast<int64_t>(kv_caches.size());
  TORCH_CHECK(layers > 0 && static_cast<int64_t>(weights.size()) == layers * kWeightsPerLayer,
              "decode_layers: ", kWeightsPerLayer, " weights per layer expected");
  TORCH_CHECK(x_in.dim() == 2 && x_in.is_contiguous(), "decode_layers: x must be contiguous [tokens, hidden]");
  const int64_t tokens = x_in.size(0), dim = kv_caches[0].size(4);
  at::Tensor x = x_in;
  for (int64_t layer = 0; layer < layers; ++layer) {
    const at::Tensor* w = weights.data() + layer * kWeightsPerLayer;
    const at::Tensor& cache = kv_caches[layer];
    at::Tensor qkv = mmserve::int4_linear(x, w[0], w[1], group, isa);
    if (w[2].numel()) qkv.add_(w[2]);
    mmserve::rotary_cache_write(qkv, positions, cos, signed_sin, cache, slots, heads, kv_heads);
    const at::Tensor query = qkv.view({tokens, heads + 2 * kv_heads, dim}).narrow(1, 0, heads);
    at::Tensor attention = at::empty({tokens, heads, dim}, x.options());
    mmserve::paged_decode_attention(attention, query, cache, block_tables, context_lens, scale);
    at::Tensor hidden = mmserve::int4_linear(attention.view({tokens, heads * dim}), w[3], w[4], group, isa);
    mmserve::fused_add_rms_norm(hidden, residual, w[9], eps);
    const at::Tensor gate_up = mmserve::int4_linear(hidden, w[5], w[6], group, isa);
    at::Tensor activation = at::empty({tokens, gate_up.size(1) / 2}, x.options());
    mmserve::silu_mul(activation, gate_up);
    x = mmserve::int4_linear(activation, w[7], w[8], group, isa);
    mmserve::fused_add_rms_norm(x, residual, w[10], eps);
  }
  return x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmserve_cpu, m) {
  m.def("decode_layers(Tensor x, Tensor(a!) residual, Tensor[] weights, Tensor(b!)[] kv_caches, "
        "Tensor positions, Tensor cos, Tensor signed_sin, Tensor slots, Tensor block_tables, "
        "Tensor context_lens, int heads, int kv_heads, float scale, float eps, int group_size, int isa) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) { m.impl("decode_layers", &decode_layers); }
