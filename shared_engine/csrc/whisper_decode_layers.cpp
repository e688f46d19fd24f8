// Whisper's decoder layers for a step of decode tokens only, in one call: the same ATen operators and
// kernels, in the same order, as the layers' modules call them one by one (so the same results), without
// the ~40 Python-level operator calls a layer costs there.
//
// Per layer, weights holds kWeightsPerLayer tensors: for each of the self-attention's fused qkv and
// output projections, the cross-attention's query and output projections, fc1 and fc2, three tensors
// (weight, then scales or an empty tensor, then bias or an empty tensor: a float weight is applied as
// F.linear does, an int8 one as its layer's kernel does), and for
// each of the three layer norms, weight and bias; after the last layer, the final norm's weight and bias.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "kernels.h"

namespace {

constexpr int64_t kWeightsPerLayer = 24;

// One projection, plus bias: float (F.linear), int8 on the engine's kernel (a weight packed in its
// three-dimensional layout; rows rounded to int8 per group), or int8 on torch's weight-only kernel (rows
// rounded to bfloat16).
at::Tensor project(const at::Tensor& x, const at::Tensor* w, int64_t int8_group, int64_t isa) {
  const at::Tensor& weight = w[0];
  const at::Tensor& scales = w[1];
  const at::Tensor& bias = w[2];
  if (!scales.numel()) return bias.numel() ? at::linear(x, weight, bias) : at::linear(x, weight);
  at::Tensor y;
  if (weight.dim() == 3) {
    y = mmserve::int8_linear(x, weight, scales, int8_group, isa);
  } else {
    const bool bf16 = x.scalar_type() == at::kBFloat16;
    y = at::_weight_int8pack_mm((bf16 ? x : x.to(at::kBFloat16)).contiguous(), weight, scales);
    if (!bf16) y = y.to(x.scalar_type());
  }
  return bias.numel() ? y + bias : y;
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor* w, double eps) {
  return at::layer_norm(x, {x.size(1)}, w[0], w[1], eps);
}

// h: the embedded tokens [tokens, d]. cross_kv: per layer, per token, that request's cross-attention
// keys and values [2, heads, 1, frames, head_dim]. Returns the final norm's output.
at::Tensor whisper_decode_layers(const at::Tensor& h_in, at::TensorList weights, at::TensorList kv_caches,
                                 at::TensorList cross_kv, const at::Tensor& slots, const at::Tensor& block_tables,
                                 const at::Tensor& context_lens, int64_t heads, double scale, double eps,
                                 int64_t int8_group, int64_t isa) {
  const int64_t layers = static_cast<int64_t>(kv_caches.size());
  TORCH_CHECK(layers > 0 && static_cast<int64_t>(weights.size()) == layers * kWeightsPerLayer + 2,
              "whisper_decode_layers: ", kWeightsPerLayer, " weights per layer and the final norm's two expected");
  const int64_t tokens = h_in.size(0), d = h_in.size(1), dim = d / heads;
  TORCH_CHECK(static_cast<int64_t>(cross_kv.size()) == layers * tokens,
              "whisper_decode_layers: one cross-attention state per layer and token expected");
  const at::Tensor one_block = at::zeros({1, 1}, block_tables.options());  // every frame in block 0
  at::Tensor h = h_in;
  for (int64_t layer = 0; layer < layers; ++layer) {
    const at::Tensor* w = weights.data() + layer * kWeightsPerLayer;
    const at::Tensor& cache = kv_caches[layer];
    const int64_t kv_heads = cache.size(1);

    const at::Tensor qkv = project(layer_norm(h, w + 6, eps), w, int8_group, isa);
    const auto parts = qkv.chunk(3, -1);
    const at::Tensor q = parts[0].view({tokens, heads, dim});
    const at::Tensor k = parts[1].view({tokens, kv_heads, dim});
    const at::Tensor v = parts[2].view({tokens, kv_heads, dim});
    cache[0].view({kv_heads, -1, dim}).index_copy_(1, slots, k.transpose(0, 1).to(cache.scalar_type()));
    cache[1].view({kv_heads, -1, dim}).index_copy_(1, slots, v.transpose(0, 1).to(cache.scalar_type()));
    at::Tensor attention = at::empty({tokens, heads, dim}, h.options());
    mmserve::paged_decode_attention(attention, q, cache, block_tables, context_lens, scale);
    h = h + project(attention.view({tokens, d}), w + 3, int8_group, isa);

    const at::Tensor cross_q =
        project(layer_norm(h, w + 14, eps), w + 8, int8_group, isa).view({tokens, heads, dim});
    at::Tensor cross = at::empty({tokens, heads, dim}, h.options());
    for (int64_t t = 0; t < tokens; ++t) {
      const at::Tensor& kv = cross_kv[layer * tokens + t];
      const at::Tensor frames = at::full({1}, kv.size(3), context_lens.options());
      mmserve::paged_decode_attention(cross.narrow(0, t, 1), cross_q.narrow(0, t, 1), kv, one_block, frames,
                                      scale);
    }
    h = h + project(cross.view({tokens, d}), w + 11, int8_group, isa);

    const at::Tensor hidden = at::gelu(project(layer_norm(h, w + 22, eps), w + 16, int8_group, isa));
    h = h + project(hidden, w + 19, int8_group, isa);
  }
  return layer_norm(h, weights.data() + layers * kWeightsPerLayer, eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmserve_cpu, m) {
  m.def("whisper_decode_layers(Tensor h, Tensor[] weights, Tensor(a!)[] kv_caches, Tensor[] cross_kv, "
        "Tensor slots, Tensor block_tables, Tensor context_lens, int heads, float scale, float eps, "
        "int int8_group, int isa) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) { m.impl("whisper_decode_layers", &whisper_decode_layers); }
