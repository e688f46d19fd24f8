// A Llama-family decoder's layer stack for a step of decode tokens only, in one call: the same kernels,
// in the same order, as the layers' modules call one by one (so the same results), without the ~15
// Python-level operator calls a layer costs there (about a third of a one-request step on two cores).
//
// The whole stack runs in one parallel region: its threads split each phase (a matmul's output blocks,
// the qkv projection's in whole heads that the same thread then rotates and writes to the KV cache;
// attention's heads; at more than kRowsQuantizedByEach rows the norms' rows) and meet at a barrier
// between phases. A region per kernel, five a layer, cost ~1.7 us each to
// open and close at one row, and the serial work between them (rounding a matmul's input to int8, the
// norms) left the other threads waiting; the matmuls' buffers are allocated once per call, not per
// layer. The barrier is the team's own (SpinBarrier): OpenMP's took ~0.5 us to let its threads go at two
// threads, ~0.1 ms of a one-request step's ~270; and a thread waiting at it requests the weights it
// multiplies next (ReadPrefetcher), which are read from memory while another thread finishes a phase
// (~0.1 ms of a ~2.5 ms step). At up to kRowsQuantizedByEach rows, the keys and values a thread attends
// over are requested as its layer's qkv projection starts (request_attention_reads, ~4% of a step at
// one row).
//
// The call starts from the step's token ids: their embeddings (the residual stream's first rows) and the
// first layer's norm of them are its first phase, ~0.1 ms a step less than three Python-level calls.
//
// The weights come in a LayerStack, made once per model: the token embedding and the first layer's input
// norm, then per layer the int4 qkv projection (packed, scales and zeros, bias or an empty tensor), the
// output projection, gate/up and down (packed, scales and zeros each), then the post-attention norm's
// weight and the weight of the norm after the layer (the next layer's input norm, or the final one).

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include "kernels.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kWeightsPerLayer = 11;
constexpr int64_t kBlockColumns = 16;  // int4_linear's output block
// Up to this many rows every thread rounds a matmul's whole input to int8 itself, in its own workspace
// (at one row ~1 us), rather than each some rows of a shared one and then a barrier. So too the small
// steps between matmuls (the norms with their residual adds, SiLU): every thread computes them on all the
// rows, in its own copy of the residual stream, just before it rounds the next matmul's input, rather
// than one thread in a phase of its own while the others wait at its barrier (at one row three phases a
// layer, each ~1 us of one thread's work and a barrier). So too, where attention is split, the merge of
// its parts, before the o projection. The arithmetic is the same, in the same order.
constexpr int64_t kRowsQuantizedByEach = 8;

bool rounded_by_each(int64_t tokens) { return tokens <= kRowsQuantizedByEach; }

// Threads wait for the last of the team by spinning on a generation count. The last to arrive releases
// the others (its release store after every thread's acquire-release arrival: all writes before the
// barrier are seen after it). A thread that has spun for long (its team descheduled by a busy machine)
// yields its core between looks rather than taking it from the thread it waits for.
class SpinBarrier {
 public:
  // idle(): a little work of the waiting thread's own, and whether there was any.
  template <typename Idle>
  void wait(int threads, Idle&& idle) {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    for (int64_t spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (idle()) continue;
      if (spins < kSpinsBeforeYield) {
        _mm_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int64_t kSpinsBeforeYield = 1 << 14;  // ~0.1-0.5 ms of pauses
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
};

// What one thread reads, in the order it reads it (per matmul its blocks' scales and zeros, then its
// blocks), requested a few cache lines at a time into L2 while it waits at a barrier: up to
// kPrefetchAheadBytes past the end of the last matmul it has done, which a core's L2 holds on any x86
// CPU with AVX2 (256 KiB or more). At one row, 128 KiB to 2 MiB all gave the same ~0.1 ms a step.
class ReadPrefetcher {
 public:
  static constexpr int64_t kPrefetchAheadBytes = 128 * 1024;
  static constexpr int64_t kLinesPerRequest = 4;

  void add(const void* data, int64_t bytes) {
    if (bytes <= 0) return;
    parts_.push_back({static_cast<const char*>(data), total_, bytes});
    total_ += bytes;
  }
  // The parts added since the last matmul's end (or the start) are a matmul's.
  void end_matmul() { matmul_ends_.push_back(total_); }
  // Matmul `index` (in order of end_matmul) has been read: what follows it is wanted.
  void done_with(int64_t index) {
    floor_ = matmul_ends_[static_cast<size_t>(index)];
    if (position_ < floor_) seek(floor_);
  }
  // Requests the next few lines, if any are wanted; whether it did.
  bool step() {
    if (position_ >= total_ || position_ - floor_ >= kPrefetchAheadBytes) return false;
    const Part& part = parts_[part_];
    const int64_t offset = position_ - part.start, n = std::min(kLinesPerRequest * 64, part.bytes - offset);
    for (int64_t i = 0; i < n; i += 64) _mm_prefetch(part.data + offset + i, _MM_HINT_T1);
    seek(position_ + n);
    return true;
  }

 private:
  struct Part {
    const char* data;
    int64_t start, bytes;
  };
  void seek(int64_t position) {
    position_ = position;
    while (part_ < parts_.size() && position_ >= parts_[part_].start + parts_[part_].bytes) ++part_;
  }
  std::vector<Part> parts_;
  std::vector<int64_t> matmul_ends_;
  size_t part_ = 0;
  int64_t total_ = 0, position_ = 0, floor_ = 0;
};

// One thread of the region: its share of each phase, and the barrier after it, where it prefetches. An
// exception in a phase (a kernel's check) is kept and rethrown after the region; until then every thread
// skips the remaining phases but still meets every barrier, so none waits forever.
class TeamThread {
 public:
  // What the team's threads share: their barrier and the first failure.
  struct Shared {
    SpinBarrier barrier;
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::exception_ptr error;
  };

  explicit TeamThread(Shared& shared)
      : shared_(shared), thread_(omp_get_thread_num()), threads_(omp_get_num_threads()) {}

  int64_t thread() const { return thread_; }
  int64_t threads() const { return threads_; }
  ReadPrefetcher prefetcher;

  // Thread `thread`'s contiguous share [begin, end) of count items, as at::parallel_for splits them.
  std::pair<int64_t, int64_t> share(int64_t count, int64_t thread) const {
    const int64_t chunk = (count + threads_ - 1) / threads_;
    const int64_t begin = std::min(count, thread * chunk);
    return {begin, std::min(count, begin + chunk)};
  }
  std::pair<int64_t, int64_t> share(int64_t count) const { return share(count, thread_); }

  template <typename Fn>
  void phase(Fn&& fn) {
    if (!shared_.failed.load(std::memory_order_relaxed)) {
      try {
        fn();
      } catch (...) {
        std::lock_guard<std::mutex> lock(shared_.mutex);
        if (!shared_.error) shared_.error = std::current_exception();
        shared_.failed.store(true, std::memory_order_relaxed);
      }
    }
    shared_.barrier.wait(threads_, [this] { return prefetcher.step(); });
  }

 private:
  Shared& shared_;
  int thread_, threads_;
};

// A decoder's layer weights in the stack's order and the shapes they make, checked once, when the model's
// plan is made: a step passes the object, not its ~330 tensors (~25 us to convert from Python each call)
// to be checked again.
class LayerStack : public torch::CustomClassHolder {
 public:
  LayerStack(at::Tensor token_embedding, at::Tensor input_norm, std::vector<at::Tensor> weights, int64_t heads,
             int64_t kv_heads, int64_t head_dim, double scale, double eps, int64_t group, int64_t isa)
      : embedding(std::move(token_embedding)), first_norm(std::move(input_norm)), weights_(std::move(weights)),
        heads(heads), kv_heads(kv_heads), dim(head_dim), scale(scale), eps(eps), group(group), isa(isa) {
    TORCH_CHECK(group > 0, "decode_layers: the group size must be positive");
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim > 0,
                "decode_layers: heads must be a positive multiple of kv_heads, the head size positive");
    TORCH_CHECK(!weights_.empty() && weights_.size() % kWeightsPerLayer == 0,
                "decode_layers: ", kWeightsPerLayer, " weights per layer expected");
    const at::Tensor& norm = weights_[9];
    TORCH_CHECK(norm.dim() == 1, "decode_layers: a norm's weight must be [hidden]");
    hidden = norm.size(0);
    intermediate = weights_[5].size(0) * kBlockColumns / 2;
    TORCH_CHECK(hidden > 0 && intermediate > 0, "decode_layers: the hidden and intermediate sizes must be positive");
    TORCH_CHECK(embedding.dim() == 2 && embedding.size(0) > 0 && embedding.size(1) == hidden &&
                    embedding.is_contiguous() && embedding.scalar_type() == norm.scalar_type() &&
                    embedding.device() == norm.device(),
                "decode_layers: the token embedding must be contiguous [vocab, hidden], of the norms' dtype");
    TORCH_CHECK(first_norm.sizes() == norm.sizes() && first_norm.is_contiguous() &&
                    first_norm.scalar_type() == norm.scalar_type() && first_norm.device() == norm.device(),
                "decode_layers: the first norm's weight must be contiguous [hidden], of the other norms' dtype");
    const at::TensorOptions options = norm.options();
    const at::Tensor x = at::empty({0, hidden}, options), attention = at::empty({0, heads * dim}, options);
    const at::Tensor activation = at::empty({0, intermediate}, options);
    for (int64_t layer = 0; layer < layers(); ++layer) {
      const at::Tensor* w = layer_weights(layer);
      mmserve::check_int4_linear(x, w[0], w[1], group, isa);
      mmserve::check_int4_linear(attention, w[3], w[4], group, isa);
      mmserve::check_int4_linear(x, w[5], w[6], group, isa);
      mmserve::check_int4_linear(activation, w[7], w[8], group, isa);
      TORCH_CHECK(w[0].size(0) * kBlockColumns == qkv_width() && w[3].size(0) * kBlockColumns == hidden &&
                      w[5].size(0) * kBlockColumns == 2 * intermediate && w[7].size(0) * kBlockColumns == hidden,
                  "decode_layers: every layer's projections must have the first layer's shapes");
      TORCH_CHECK(w[2].numel() == 0 || (w[2].dim() == 1 && w[2].size(0) == qkv_width()),
                  "decode_layers: the qkv bias must be empty or [qkv features]");
      for (const at::Tensor& t : {w[2], w[9], w[10]})
        TORCH_CHECK(t.scalar_type() == norm.scalar_type() && t.is_contiguous(),
                    "decode_layers: biases and norms must be contiguous, of one dtype");
      TORCH_CHECK(w[9].sizes() == norm.sizes() && w[10].sizes() == norm.sizes(),
                  "decode_layers: a norm's weight must be [hidden]");
    }
  }

  int64_t layers() const { return static_cast<int64_t>(weights_.size()) / kWeightsPerLayer; }
  int64_t vocab() const { return embedding.size(0); }
  int64_t qkv_width() const { return (heads + 2 * kv_heads) * dim; }
  at::ScalarType dtype() const { return weights_[9].scalar_type(); }
  // qkv (packed, scales and zeros, bias or empty), o, gate/up, down (packed, scales and zeros each),
  // the post-attention norm's weight, the next norm's.
  const at::Tensor* layer_weights(int64_t layer) const { return weights_.data() + layer * kWeightsPerLayer; }

 public:
  const at::Tensor embedding, first_norm;

 private:
  std::vector<at::Tensor> weights_;

 public:
  const int64_t heads, kv_heads, dim;
  const double scale, eps;
  const int64_t group, isa;
  int64_t hidden = 0, intermediate = 0;
};

// The output blocks [begin, end) of projection w[i] (0: qkv, 3: o, 5: gate/up, 7: down) that thread
// `thread` computes. The qkv projection's are whole heads (as few as make whole blocks too), so that the
// thread that computes a head also rotates it and writes it to the cache, in the matmul's phase: a phase
// and a barrier fewer a layer than rotating in one of its own. Whole heads rarely share out evenly (15
// heads of 4 blocks: 32 and 28 blocks on two threads), so at up to kRowsQuantizedByEach rows the o
// projection's blocks make up for it: each thread's bytes of the two together as even as whole blocks
// allow (16 and 20 of 36 there). Uneven shares cost more than their own bytes there: the thread that
// arrives first at each barrier requests its next weights while it waits, and keeps its lead through the
// layer (one row, development timers: the thread with 4 blocks more of the qkv projection 15-35% slower
// in every phase). Integer arithmetic: every thread must find the same boundaries.
std::pair<int64_t, int64_t> projection_share(const TeamThread& team, const LayerStack& s, int i, int64_t tokens,
                                             int64_t thread) {
  const at::Tensor* w = s.layer_weights(0);
  if (i == 0) {
    const int64_t unit = std::lcm(s.dim, kBlockColumns) / kBlockColumns;
    const auto [begin, end] = team.share(w[0].size(0) / unit, thread);
    return {begin * unit, end * unit};
  }
  if (i != 3 || !rounded_by_each(tokens)) return team.share(w[i].size(0), thread);
  const auto block_bytes = [&](int j) {
    return static_cast<int64_t>(w[j].nbytes() + w[j + 1].nbytes()) / w[j].size(0);
  };
  const int64_t blocks = w[3].size(0), qkv_bytes = block_bytes(0), o_bytes = block_bytes(3);
  const int64_t total = w[0].size(0) * qkv_bytes + blocks * o_bytes;
  int64_t begin = 0, end = 0;
  for (int64_t t = 0; t <= thread; ++t) {
    begin = end;
    const int64_t wanted = std::max<int64_t>(
        0, total * (t + 1) / team.threads() - projection_share(team, s, 0, tokens, t).second * qkv_bytes);
    end = t + 1 == team.threads() ? blocks : std::clamp<int64_t>((wanted + o_bytes / 2) / o_bytes, begin, blocks);
  }
  return {begin, end};
}
// This thread's output blocks of each projection (of[i] for w[i]), the same in every layer: found once a call.
struct ProjectionShares {
  std::pair<int64_t, int64_t> of[8];
};

ProjectionShares projection_shares(const TeamThread& team, const LayerStack& s, int64_t tokens) {
  ProjectionShares shares;
  for (const int i : {0, 3, 5, 7}) shares.of[i] = projection_share(team, s, i, tokens, team.thread());
  return shares;
}

// This thread's blocks of every projection, in the order the stack multiplies them, into its prefetcher.
void queue_reads(TeamThread& team, const LayerStack& s, const ProjectionShares& shares) {
  for (int64_t layer = 0; layer < s.layers(); ++layer) {
    const at::Tensor* w = s.layer_weights(layer);
    for (const int i : {0, 3, 5, 7}) {
      const auto [begin, end] = shares.of[i];
      const int64_t packed = w[i].nbytes() / w[i].size(0), scales = w[i + 1].nbytes() / w[i + 1].size(0);
      team.prefetcher.add(static_cast<const char*>(w[i + 1].const_data_ptr()) + begin * scales, (end - begin) * scales);
      team.prefetcher.add(static_cast<const char*>(w[i].const_data_ptr()) + begin * packed, (end - begin) * packed);
      team.prefetcher.end_matmul();
    }
  }
}

// Requests into L2 the keys and values this thread's attention tasks read in the layer of kv_cache, up
// to kPrefetchAheadBytes (what a core's L2 holds beside the weights streaming through it), at the start
// of the layer's qkv projection: they arrive while its weights are read. At few rows attention waits on
// memory for most of its time otherwise (its rows lie in scattered blocks, a few requested ahead of their
// use); at many it keeps the memory busy itself.
void request_attention_reads(const TeamThread& team, const mmserve::DecodeAttentionPlan& attention,
                             const at::Tensor& kv_cache, const at::Tensor& block_tables,
                             const at::Tensor& context_lens) {
  int64_t requested = 0;
  const auto request = [&](const void* data, int64_t bytes) {
    const char* lines = static_cast<const char*>(data);
    for (int64_t i = 0; i < bytes && requested < ReadPrefetcher::kPrefetchAheadBytes; i += 64, requested += 64)
      _mm_prefetch(lines + i, _MM_HINT_T1);
  };
  const auto [first_task, end_task] = team.share(attention.tasks());
  for (int64_t task = first_task; task < end_task && requested < ReadPrefetcher::kPrefetchAheadBytes; ++task)
    mmserve::for_each_decode_attention_read(attention, kv_cache, block_tables, context_lens, task, request);
}

struct Buffers {
  at::Tensor residual, qkv, attention, hidden, gate_up, activation, out, result;
  // The quantized input of the matmul running: one per thread (rounded_by_each), or one shared.
  std::vector<std::vector<float>> workspaces;
};

Buffers make_buffers(const LayerStack& s, int64_t tokens) {
  const at::TensorOptions options = s.embedding.options();
  const auto rows = [&](int64_t width) { return at::empty({tokens, width}, options); };
  // Where each thread has its own rows (and residual stream, and SiLU output), the last norm's output is
  // copied out by one while the others still read the last matmul's; else it is that matmul's output,
  // normalised in place.
  const bool shared = !rounded_by_each(tokens);
  Buffers b{shared ? rows(s.hidden) : at::Tensor(), rows(s.qkv_width()), at::empty({tokens, s.heads, s.dim}, options),
            rows(s.hidden), rows(2 * s.intermediate), shared ? rows(s.intermediate) : at::Tensor(), rows(s.hidden),
            {}, {}};
  b.result = shared ? b.out : rows(s.hidden);
  int64_t bytes = 0;
  for (const int64_t k : {s.hidden, s.heads * s.dim, s.intermediate})
    bytes = std::max(bytes, mmserve::int4_linear_workspace_bytes(tokens, k, s.group));
  const int64_t count = rounded_by_each(tokens) ? at::get_num_threads() : 1;
  b.workspaces.assign(count, std::vector<float>(static_cast<size_t>(bytes + 3) / 4));
  return b;
}

// Rows [begin, end) of the residual stream: the tokens' embeddings; of x: the first layer's norm of them.
void embed(const LayerStack& s, const int64_t* ids, at::Tensor& residual, at::Tensor& x, int64_t begin,
           int64_t end) {
  if (begin >= end) return;
  const int64_t row_bytes = s.hidden * s.embedding.element_size();
  const char* table = static_cast<const char*>(s.embedding.const_data_ptr());
  char* rows = static_cast<char*>(residual.data_ptr());
  for (int64_t t = begin; t < end; ++t) std::memcpy(rows + t * row_bytes, table + ids[t] * row_bytes, row_bytes);
  mmserve::rms_norm(x.narrow(0, begin, end - begin), residual.narrow(0, begin, end - begin), s.first_norm, s.eps);
}

// One thread's own rows (rounded_by_each): its copy of the residual stream, the input of the matmul it
// rounds next (a norm's output), SiLU's, and, where attention is split, its parts merged ([tokens, heads,
// dim], every thread merging all of them rather than each some and then a barrier).
struct OwnRows {
  at::Tensor residual, x, activation, attention, attention_rows;
};

// Columns [first, first + columns) of every row of x [rows, width] += bias[first, first + columns), rounded
// as a PyTorch add rounds them. By hand, not by at::add_: the team's other threads are not in the caller's
// inference mode, which an in-place PyTorch op on the step's tensors needs.
void add_bias_columns(at::Tensor& x, const at::Tensor& bias, int64_t first, int64_t columns) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "decode_layers", [&] {
    const scalar_t* b = bias.const_data_ptr<scalar_t>() + first;
    for (int64_t row = 0; row < x.size(0); ++row) {
      scalar_t* y = x.data_ptr<scalar_t>() + row * x.size(1) + first;
      using opmath_t = at::opmath_type<scalar_t>;
      for (int64_t i = 0; i < columns; ++i) y[i] = static_cast<scalar_t>(opmath_t(y[i]) + opmath_t(b[i]));
    }
  });
}

// dst = src, both contiguous, of one shape and dtype.
void copy_rows(const at::Tensor& src, at::Tensor& dst) { std::memcpy(dst.data_ptr(), src.const_data_ptr(), src.nbytes()); }

// input_ids [tokens]: the step's tokens, one per request. Returns the last layer's output after the final
// norm.
at::Tensor decode_layers(const c10::intrusive_ptr<LayerStack>& stack, const at::Tensor& input_ids,
                         at::TensorList kv_caches, const at::Tensor& positions, const at::Tensor& cos,
                         const at::Tensor& signed_sin, const at::Tensor& slots, const at::Tensor& block_tables,
                         const at::Tensor& context_lens) {
  const LayerStack& s = *stack;
  const int64_t layers = s.layers(), heads = s.heads, kv_heads = s.kv_heads, group = s.group, isa = s.isa;
  TORCH_CHECK(static_cast<int64_t>(kv_caches.size()) == layers, "decode_layers: one KV cache per layer expected");
  TORCH_CHECK(input_ids.dim() == 1 && input_ids.numel() > 0 && input_ids.is_contiguous() &&
                  input_ids.scalar_type() == at::kLong && input_ids.device() == s.embedding.device(),
              "decode_layers: input_ids must be a contiguous int64 [tokens] of at least one token");
  const int64_t tokens = input_ids.numel();
  const int64_t* ids = input_ids.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(ids[t] >= 0 && ids[t] < s.vocab(), "decode_layers: token id ", ids[t], " is outside the vocabulary (",
                s.vocab(), " tokens)");
  TORCH_CHECK(positions.numel() == tokens && slots.numel() == tokens,
              "decode_layers: positions and slots must have one entry per token");
  Buffers b = make_buffers(s, tokens);
  const at::Tensor query = b.qkv.view({tokens, heads + 2 * kv_heads, s.dim}).narrow(1, 0, heads);
  const at::Tensor attention_rows = b.attention.view({tokens, heads * s.dim});
  // The first layer's cache fully (its shape, and every request's blocks against it); the others as like it.
  const at::Tensor& first_cache = kv_caches[0];
  mmserve::check_paged_decode_attention(b.attention, query, first_cache, block_tables, context_lens);
  for (const at::Tensor& cache : kv_caches)
    TORCH_CHECK(cache.sizes() == first_cache.sizes() && cache.scalar_type() == first_cache.scalar_type() &&
                    cache.is_contiguous(),
                "decode_layers: every layer's KV cache must be contiguous, of the first one's shape and dtype");
  const mmserve::DecodeAttentionPlan attention = mmserve::plan_paged_decode_attention(
      query, kv_caches[0], context_lens, at::get_num_threads());
  std::vector<float> attention_parts(attention.splits > 1 ? attention.scratch_floats() : 0);
  TeamThread::Shared team_state;

#pragma omp parallel num_threads(at::get_num_threads())
  {
    TeamThread team(team_state);
    const ProjectionShares shares = projection_shares(team, s, tokens);
    const bool shared = !rounded_by_each(tokens);
    void* workspace = b.workspaces[shared ? 0 : team.thread()].data();
    OwnRows own;
    team.phase([&] {  // a failure here too is rethrown after the region, before anything is written
      // the rotary kernel's checks (of positions and slots too), which only its unchecked part follows
      if (team.thread() == 0)
        mmserve::check_rotary_cache_write(b.qkv, positions, cos, signed_sin, first_cache, slots, heads, kv_heads);
      queue_reads(team, s, shares);
      if (shared) {
        const auto [begin, end] = team.share(tokens);
        embed(s, ids, b.residual, b.out, begin, end);
      } else {
        const at::TensorOptions options = s.embedding.options();
        own = {at::empty({tokens, s.hidden}, options), at::empty({tokens, s.hidden}, options),
               at::empty({tokens, s.intermediate}, options),
               attention.splits > 1 ? at::empty({tokens, heads, s.dim}, options) : at::Tensor(), at::Tensor()};
        if (own.attention.defined()) own.attention_rows = own.attention.view({tokens, heads * s.dim});
        embed(s, ids, own.residual, own.x, 0, tokens);
      }
    });
    // fn(rows of each tensor) on this thread's rows, where it has any (all of them: the tensors as they are).
    const auto by_rows = [&](auto&& fn, auto&... tensors) {
      team.phase([&] {
        const auto [begin, end] = team.share(tokens);
        if (begin == 0 && end == tokens) {
          fn(tensors...);
        } else if (begin < end) {
          fn(tensors.narrow(0, begin, end - begin)...);
        }
      });
    };
    // The small steps before a matmul, each returning its input: where the threads share the rows, in
    // phases of their own on the shared buffers; else by this thread alone, inside the matmul's phase.
    // The residual add and norm of x (a matmul's output), with norm weight `weight`.
    const auto add_norm = [&](at::Tensor& x, const at::Tensor& weight) -> const at::Tensor& {
      if (shared) {
        by_rows([&](const at::Tensor& rows, const at::Tensor& r) { mmserve::fused_add_rms_norm(rows, r, weight, s.eps); },
                x, b.residual);
        return x;
      }
      copy_rows(x, own.x);
      mmserve::fused_add_rms_norm(own.x, own.residual, weight, s.eps);
      return own.x;
    };
    const auto silu = [&]() -> const at::Tensor& {
      if (shared) {
        by_rows([](const at::Tensor& out, const at::Tensor& in) { mmserve::silu_mul(out, in); }, b.activation,
                b.gate_up);
        return b.activation;
      }
      mmserve::silu_mul(own.activation, b.gate_up);
      return own.activation;
    };
    int64_t matmul_index = 0;  // in the prefetcher's order
    // One matmul of input() (see above) by projection w[i]: its input rounded to int8 (by every thread, or
    // each some rows and then a barrier), then output blocks, each thread some, and then after(begin, end)
    // on those blocks of all rows.
    const auto matmul = [&](auto&& input, const at::Tensor* w, int i, at::Tensor& out, auto&& after) {
      const at::Tensor &packed = w[i], &scales_zeros = w[i + 1];
      const auto multiply = [&](const at::Tensor& x) {
        const auto [begin, end] = shares.of[i];
        mmserve::int4_linear_multiply(x, packed, scales_zeros, group, isa, workspace, out, begin, end);
        after(begin, end);
        team.prefetcher.done_with(matmul_index);  // before the barrier, where the next matmul's are wanted
      };
      if (shared) {
        const at::Tensor& x = input();
        team.phase([&] {
          const auto [begin, end] = team.share(tokens);
          mmserve::int4_linear_quantize(x, packed, scales_zeros, group, isa, workspace, out, begin, end);
        });
        team.phase([&] { multiply(x); });
      } else {
        team.phase([&] {
          const at::Tensor& x = input();
          mmserve::int4_linear_quantize(x, packed, scales_zeros, group, isa, workspace, out, 0, tokens);
          multiply(x);
        });
      }
      ++matmul_index;
    };
    const auto nothing_after = [](int64_t, int64_t) {};
    for (int64_t layer = 0; layer < layers; ++layer) {
      const at::Tensor* w = s.layer_weights(layer);
      const at::Tensor& cache = kv_caches[layer];
      // the bias, the rotary embedding and the cache write of the heads whose blocks this thread computed
      const auto rotate = [&](int64_t begin, int64_t end) {
        const int64_t first = begin * kBlockColumns, columns = (end - begin) * kBlockColumns;
        if (w[2].numel()) add_bias_columns(b.qkv, w[2], first, columns);
        mmserve::rotary_cache_write_range(b.qkv, positions, cos, signed_sin, cache, slots, heads, kv_heads, 0,
                                          tokens, first / s.dim, (first + columns) / s.dim);
      };
      matmul(
          [&]() -> const at::Tensor& {
            if (!shared) request_attention_reads(team, attention, cache, block_tables, context_lens);
            if (layer) return add_norm(b.out, s.layer_weights(layer - 1)[10]);
            return shared ? b.out : own.x;  // the embeddings' norm
          },
          w, 0, b.qkv, rotate);
      team.phase([&] {
        const auto [begin, end] = team.share(attention.tasks());
        mmserve::paged_decode_attention_range(b.attention, query, cache, block_tables, context_lens, s.scale,
                                              attention, attention_parts.data(), begin, end);
      });
      if (attention.splits > 1 && shared) {
        team.phase([&] {
          const auto [begin, end] = team.share(attention.pairs);
          mmserve::paged_decode_attention_merge(b.attention, cache, attention, attention_parts.data(), begin, end);
        });
      }
      matmul(
          [&]() -> const at::Tensor& {
            if (attention.splits == 1 || shared) return attention_rows;
            mmserve::paged_decode_attention_merge(own.attention, cache, attention, attention_parts.data(), 0,
                                                  attention.pairs);
            return own.attention_rows;
          },
          w, 3, b.hidden, nothing_after);
      matmul([&]() -> const at::Tensor& { return add_norm(b.hidden, w[9]); }, w, 5, b.gate_up, nothing_after);
      matmul(silu, w, 7, b.out, nothing_after);
    }
    const at::Tensor& final_norm = s.layer_weights(layers - 1)[10];
    if (shared) {
      add_norm(b.out, final_norm);  // b.result is b.out
    } else {
      team.phase([&] {
        const at::Tensor& x = add_norm(b.out, final_norm);
        if (team.thread() == 0) copy_rows(x, b.result);
      });
    }
  }
  if (team_state.error) std::rethrow_exception(team_state.error);
  return b.result;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmserve_cpu, m) {
  m.class_<LayerStack>("LayerStack")
      .def(torch::init<at::Tensor, at::Tensor, std::vector<at::Tensor>, int64_t, int64_t, int64_t, double, double,
                       int64_t, int64_t>());
  m.def("decode_layers(__torch__.torch.classes.mmserve_cpu.LayerStack stack, Tensor input_ids, "
        "Tensor(a!)[] kv_caches, Tensor positions, Tensor cos, Tensor signed_sin, Tensor slots, "
        "Tensor block_tables, Tensor context_lens) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) { m.impl("decode_layers", &decode_layers); }
