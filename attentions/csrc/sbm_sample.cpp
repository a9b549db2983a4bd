// Drawing the SBM-Transformer's attention graph on the CPU, a block of query rows at a time: every edge drawn, the
// pairs that are not allowed cleared, every self-edge kept, and the sums the plugin needs taken in the same pass.
//
// torch's bernoulli_ draws from one mt19937 stream, serially: 57 ms per layer for the 4 x 2048 x 2048 probabilities of
// a causal LM at 2K, a fifth of sbm's training step. Here the uniform of pair (i, j) is a hash of (seed, row, column):
// counter-based, so rows are drawn in parallel and the graph is the same for any thread count.
// ``attentions.sbm._draw_rows_reference`` computes the same bits with torch operators; it is the path off the CPU and
// the tests' oracle.
//
// The hash: a row key mixes the seed with the row's global index (sequence * L + row); the uniform of column j is
// mix(key + j * 0x9E3779B9) >> 8, in units of 2^-24, where mix is a 32-bit integer hash with full avalanche (two
// multiply-xorshift rounds). An edge is drawn when that uniform is below p (training) or when p >= 0.5 (eval).
#include "kernels.h"

#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace {

inline uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

inline uint32_t row_key(uint64_t seed, uint64_t row) {
  const uint32_t low = mix(static_cast<uint32_t>(seed) ^ static_cast<uint32_t>(row));
  return mix(low ^ static_cast<uint32_t>(seed >> 32) ^ (static_cast<uint32_t>(row >> 32) * 0x85ebca6bu));
}

}  // namespace

std::vector<double> sbm_draw_rows(torch::Tensor p, torch::Tensor graph, int64_t row0, int64_t global_row0,
                                  c10::optional<torch::Tensor> valid, bool causal, bool training, int64_t seed) {
  TORCH_CHECK(p.dim() == 2 && p.scalar_type() == torch::kFloat32 && p.is_contiguous(),
              "sbm_draw_rows: p must be a contiguous (rows, cols) float32 tensor, got ", p.sizes(), " ",
              p.scalar_type());
  TORCH_CHECK(graph.dim() == 2 && graph.scalar_type() == torch::kBool && graph.is_contiguous() &&
                  graph.size(0) == graph.size(1),
              "sbm_draw_rows: graph must be a contiguous (L, L) bool tensor, got ", graph.sizes());
  const int64_t rows = p.size(0), cols = p.size(1), length = graph.size(0);
  TORCH_CHECK(row0 >= 0 && row0 + rows <= length && cols <= length,
              "sbm_draw_rows: rows [", row0, ", ", row0 + rows, ") x ", cols, " columns do not fit a graph of ",
              length);
  const bool* ok = nullptr;
  if (valid.has_value()) {
    TORCH_CHECK(valid->dim() == 1 && valid->size(0) == length && valid->scalar_type() == torch::kBool &&
                    valid->is_contiguous(),
                "sbm_draw_rows: valid must be a contiguous (L,) bool tensor, got ", valid->sizes());
    ok = valid->data_ptr<bool>();
  }
  const float* prob = p.data_ptr<float>();
  bool* out = graph.data_ptr<bool>();
  // Per row: the sum of p over its allowed pairs, its allowed edges (self-edge included where allowed), all its edges.
  std::vector<double> p_sums(rows, 0.0);
  std::vector<int64_t> allowed_edges(rows, 0), edges(rows, 0);
  constexpr float kUnit = 1.0f / 16777216.0f;  // 2^-24
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = row0 + i;  // the query's position in the sequence
      const float* pr = prob + i * cols;
      bool* g = out + r * length;
      const int64_t visible = causal ? std::min(cols, r + 1) : cols;  // causal: keys j <= r only
      const bool live = ok == nullptr || ok[r];
      const uint32_t key = row_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(global_row0 + i));
      double p_sum = 0.0;
      int64_t kept = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const bool allowed = live && j < visible && (ok == nullptr || ok[j]);
        bool edge;
        if (training) {
          const uint32_t x = mix(key + static_cast<uint32_t>(j) * 0x9E3779B9u);
          edge = static_cast<float>(x >> 8) * kUnit < pr[j];
        } else {
          edge = pr[j] >= 0.5f;
        }
        edge = allowed && edge;
        g[j] = edge;
        kept += edge;
        p_sum += allowed ? pr[j] : 0.0;
      }
      int64_t all = kept;
      if (r < length && !g[r]) {  // every query keeps its self-edge (a padded one too; it carries no gradient)
        g[r] = true;
        ++all;
        if (live && r < visible && (ok == nullptr || ok[r])) ++kept;  // an allowed self-edge the draw missed
      }
      p_sums[i] = p_sum;
      allowed_edges[i] = kept;
      edges[i] = all;
    }
  });
  double p_total = 0.0;
  int64_t kept_total = 0, all_total = 0;
  for (int64_t i = 0; i < rows; ++i) {
    p_total += p_sums[i];
    kept_total += allowed_edges[i];
    all_total += edges[i];
  }
  return {p_total, static_cast<double>(kept_total), static_cast<double>(all_total)};
}
