// Sinkhorn block attention (sorted block + own block, one softmax) fused per query block, for the CPU.
//
// The batched-product kernel in _block_attention.py writes every intermediate (scores, weights, score gradients) out
// to memory between operators, so each of its twelve tile products reads operands that are no longer in cache. Here
// one task handles one query block at a time: its scores, softmax, output, and in the backward its score gradients
// and the six gradient products, all on 16 KiB tiles that stay in cache. The sorting products (sort matrix times
// key and value blocks, and their gradients) are wide and stay batched in Python. The tile products are a small
// register-tiled kernel below; the softmax uses ATen's vectorized exp.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int width = 8;
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int width = 4;
};

// Row-major C (M x N, ldc) = alpha * A (M x K, lda) @ B (K x N, ldb), added to C when ``accumulate``. The register
// tile is 4 rows x 2 vectors (8 accumulators, two loads of B per four broadcasts of A), which on these 64-tiles runs
// faster than a BLAS call per tile (that packs its operands for every call); leftovers are plain loops. ``TA``: A is
// stored transposed (K x M, lda). ``shape`` skips structural zeros of a causal own block in the register tiles:
// kLowerA, op(A) is lower-triangular (k <= row); kUpperA, op(A) is upper-triangular (k >= row); kLowerC, only the
// lower triangle of C is wanted (tiles strictly above it are written as zeros). Leftover rows and columns are computed
// in full, which is correct either way.
enum Shape { kFull, kLowerA, kUpperA, kLowerC };

template <bool TA, typename T>
void gemm(int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, bool accumulate, T* C, int ldc,
          Shape shape) {
  using V = typename VecOf<T>::type;
  auto a_at = [&](int i, int k) { return TA ? A[k * lda + i] : A[i * lda + k]; };  // A^T needs no copy
  constexpr int W = VecOf<T>::width, MR = 4, NR = 2 * W;
  auto finish = [&](int i, int j, T sum) { C[i * ldc + j] = alpha * sum + (accumulate ? C[i * ldc + j] : T(0)); };
  int i = 0;
  for (; i + MR <= M; i += MR) {
    const int k_begin = shape == kUpperA ? i : 0, k_end = shape == kLowerA ? std::min(K, i + MR) : K;
    int j = 0;
    for (; j + NR <= N; j += NR) {
      if (shape == kLowerC && j >= i + MR) {
        for (int r = 0; r < MR; ++r) std::fill(C + (i + r) * ldc + j, C + (i + r) * ldc + j + NR, T(0));
        continue;
      }
      V acc[MR][2] = {};
      for (int k = k_begin; k < k_end; ++k) {
        V b0, b1;
        __builtin_memcpy(&b0, B + k * ldb + j, sizeof(V));
        __builtin_memcpy(&b1, B + k * ldb + j + W, sizeof(V));
        for (int r = 0; r < MR; ++r) {
          const T a = a_at(i + r, k);
          acc[r][0] += a * b0;
          acc[r][1] += a * b1;
        }
      }
      for (int r = 0; r < MR; ++r) {
        T* c = C + (i + r) * ldc + j;
        V c0 = acc[r][0] * alpha, c1 = acc[r][1] * alpha;
        if (accumulate) {
          V o0, o1;
          __builtin_memcpy(&o0, c, sizeof(V));
          __builtin_memcpy(&o1, c + W, sizeof(V));
          c0 += o0;
          c1 += o1;
        }
        __builtin_memcpy(c, &c0, sizeof(V));
        __builtin_memcpy(c + W, &c1, sizeof(V));
      }
    }
    for (; j < N; ++j)
      for (int r = 0; r < MR; ++r) {
        T sum = 0;
        for (int k = 0; k < K; ++k) sum += a_at(i + r, k) * B[k * ldb + j];
        finish(i + r, j, sum);
      }
  }
  for (; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      T sum = 0;
      for (int k = 0; k < K; ++k) sum += a_at(i, k) * B[k * ldb + j];
      finish(i, j, sum);
    }
}

// out (cols x rows, row-major) = in (rows x cols, ld) transposed.
template <typename T>
void transpose(int rows, int cols, const T* in, int ld, T* out) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) out[c * rows + r] = in[r * ld + c];
}

// C (M x N) = alpha * op(A) @ op(B) (+ C). A transposed A is read in place (the kernel broadcasts single elements of
// A); a transposed B is first copied out transposed into ``scratch`` (one tile, in cache).
template <typename T>
void mm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, bool accumulate,
        T* C, int ldc, T* scratch, Shape shape = kFull) {
  if (tb) {
    transpose(N, K, B, ldb, scratch);  // B is stored N x K
    B = scratch, ldb = N;
  }
  if (ta)
    gemm<true>(M, N, K, alpha, A, lda, B, ldb, accumulate, C, ldc, shape);
  else
    gemm<false>(M, N, K, alpha, A, lda, B, ldb, accumulate, C, ldc, shape);
}

// Visibility of query block i: two bool masks, (blocks or 1, rows or 1, b) each, or absent (all visible).
struct Mask {
  const bool* data = nullptr;
  int64_t block_stride = 0, row_stride = 0;
  Mask(const c10::optional<torch::Tensor>& t, int64_t b) {
    if (t.has_value() && t->defined()) {
      data = t->data_ptr<bool>();
      block_stride = t->size(0) == 1 ? 0 : t->size(1) * b;
      row_stride = t->size(1) == 1 ? 0 : b;
    }
  }
  const bool* row(int64_t block, int64_t r) const { return data ? data + block * block_stride + r * row_stride : nullptr; }
};

// Softmax of one row of 2b scores in place; hidden entries get weight 0, a row that sees nothing is uniform (as the
// batched kernel's finite fill value gives). Returns whether the row sees anything.
template <typename T>
bool softmax_row(T* row, int64_t b, const bool* sorted_ok, const bool* local_ok) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t n = 2 * b;
  const T hidden = -std::numeric_limits<T>::infinity();
  if (sorted_ok)
    for (int64_t c = 0; c < b; ++c)
      if (!sorted_ok[c]) row[c] = hidden;
  if (local_ok)
    for (int64_t c = 0; c < b; ++c)
      if (!local_ok[c]) row[b + c] = hidden;
  const T mx = at::vec::reduce_all<T>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, row, n);
  if (mx == hidden) {
    std::fill(row, row + n, T(1) / T(n));
    return false;
  }
  at::vec::map([mx](Vec x) { return (x - Vec(mx)).exp(); }, row, row, n);
  const T sum = at::vec::reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, row, n);
  const T inv = T(1) / sum;
  at::vec::map([inv](Vec x) { return x * Vec(inv); }, row, row, n);
  return true;
}

void check(std::initializer_list<const torch::Tensor*> tensors, int64_t N, int64_t rows, int64_t cols) {
  for (const torch::Tensor* t : tensors)
    TORCH_CHECK(t->is_contiguous() && t->dim() == 3 && t->size(0) == N && t->size(1) == rows && t->size(2) == cols,
                "sinkhorn_block: expected contiguous (", N, ", ", rows, ", ", cols, ") tensors, got ", t->sizes());
}

}  // namespace

// q, ks, kb, vs, vb: (N, b, D) contiguous, N = batch * heads * blocks; ks already carries the score scale, the own
// block's scores get ``scale`` here. Masks: bool (N or 1, b or 1, b). Returns the output (N, b, D) and the weights
// (N, b, 2b) the backward needs. ``causal_own``: the own-block mask is exactly the causal triangle, so the own
// block's products skip the tiles that only meet its structural zeros.
std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor ks, torch::Tensor kb, torch::Tensor vs,
                                   torch::Tensor vb, double scale, c10::optional<torch::Tensor> sorted_ok,
                                   c10::optional<torch::Tensor> local_ok, bool causal_own) {
  const int64_t N = q.size(0), b = q.size(1), D = q.size(2);
  check({&q, &ks, &kb, &vs, &vb}, N, b, D);
  const Shape lower_c = causal_own ? kLowerC : kFull, lower_a = causal_own ? kLowerA : kFull;
  auto out = torch::empty_like(q);
  auto p = torch::empty({N, b, 2 * b}, q.options());
  const Mask m1(sorted_ok, b), m2(local_ok, b);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sinkhorn_block_forward", [&] {
    const scalar_t *Q = q.data_ptr<scalar_t>(), *KS = ks.data_ptr<scalar_t>(), *KB = kb.data_ptr<scalar_t>();
    const scalar_t *VS = vs.data_ptr<scalar_t>(), *VB = vb.data_ptr<scalar_t>();
    scalar_t *O = out.data_ptr<scalar_t>(), *P = p.data_ptr<scalar_t>();
    const int ib = b, iD = D, i2b = 2 * b;
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(2 * b * std::max(b, D));
      scalar_t* tile = scratch.data();
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t = i * b * D;
        scalar_t* pi = P + i * b * 2 * b;
        mm<scalar_t>(false, true, ib, ib, iD, 1, Q + t, iD, KS + t, iD, false, pi, i2b, tile);
        mm<scalar_t>(false, true, ib, ib, iD, scalar_t(scale), Q + t, iD, KB + t, iD, false, pi + b, i2b, tile, lower_c);
        for (int64_t r = 0; r < b; ++r) softmax_row<scalar_t>(pi + r * 2 * b, b, m1.row(i, r), m2.row(i, r));
        mm<scalar_t>(false, false, ib, iD, ib, 1, pi, i2b, VS + t, iD, false, O + t, iD, tile);
        mm<scalar_t>(false, false, ib, iD, ib, 1, pi + b, i2b, VB + t, iD, true, O + t, iD, tile, lower_a);
      }
    });
  });
  return {out, p};
}

// Gradients of forward's inputs except the sorting: d_q, d_ks (w.r.t. the scaled sorted keys), d_vs, and the own
// blocks' parts of d_kb and d_vb; d_q, d_kb and d_vb have ``input_shape``. dS = P * (dP - rowsum(dO * O)); a row
// that saw nothing sends no gradient.
std::vector<torch::Tensor> backward(torch::Tensor d_out, torch::Tensor q, torch::Tensor ks, torch::Tensor kb,
                                    torch::Tensor vs, torch::Tensor vb, torch::Tensor p, torch::Tensor out,
                                    double scale, c10::optional<torch::Tensor> sorted_ok,
                                    c10::optional<torch::Tensor> local_ok, bool causal_own, at::IntArrayRef input_shape) {
  const int64_t N = q.size(0), b = q.size(1), D = q.size(2);
  const Shape lower_c = causal_own ? kLowerC : kFull, lower_a = causal_own ? kLowerA : kFull;
  const Shape upper_a = causal_own ? kUpperA : kFull;
  check({&d_out, &q, &ks, &kb, &vs, &vb, &out}, N, b, D);
  check({&p}, N, b, 2 * b);
  TORCH_CHECK(c10::multiply_integers(input_shape) == q.numel(), "sinkhorn_block: input_shape ", input_shape,
              " does not hold ", q.sizes());
  // The inputs' own gradients come out in their own shape, not as views: autograd can then add another gradient
  // of the same input (the sort net's, of the key blocks) into them in place.
  auto d_q = torch::empty(input_shape, q.options()), d_kb = torch::empty(input_shape, q.options());
  auto d_vb = torch::empty(input_shape, q.options());
  auto d_ks = torch::empty_like(q), d_vs = torch::empty_like(q);
  const Mask m1(sorted_ok, b), m2(local_ok, b);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sinkhorn_block_backward", [&] {
    const scalar_t *dO = d_out.data_ptr<scalar_t>(), *Q = q.data_ptr<scalar_t>(), *KS = ks.data_ptr<scalar_t>();
    const scalar_t *KB = kb.data_ptr<scalar_t>(), *VS = vs.data_ptr<scalar_t>(), *VB = vb.data_ptr<scalar_t>();
    const scalar_t *P = p.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>();
    scalar_t *dQ = d_q.data_ptr<scalar_t>(), *dKS = d_ks.data_ptr<scalar_t>(), *dVS = d_vs.data_ptr<scalar_t>();
    scalar_t *dKB = d_kb.data_ptr<scalar_t>(), *dVB = d_vb.data_ptr<scalar_t>();
    const int ib = b, iD = D, i2b = 2 * b;
    const scalar_t s = scalar_t(scale);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> ds(2 * b * b), scratch(2 * b * std::max(b, D));
      scalar_t* tile = scratch.data();
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t = i * b * D;
        const scalar_t* pi = P + i * b * 2 * b;
        mm<scalar_t>(false, true, ib, ib, iD, 1, dO + t, iD, VS + t, iD, false, ds.data(), i2b, tile);  // dP, sorted half
        mm<scalar_t>(false, true, ib, ib, iD, 1, dO + t, iD, VB + t, iD, false, ds.data() + b, i2b, tile, lower_c);  // own half
        for (int64_t r = 0; r < b; ++r) {
          scalar_t* row = ds.data() + r * 2 * b;
          const scalar_t* pr = pi + r * 2 * b;
          bool sees = false;
          const bool *ok1 = m1.row(i, r), *ok2 = m2.row(i, r);
          if (!ok1 || !ok2) sees = true;  // a half without a mask sees everything
          for (int64_t c = 0; c < b && !sees; ++c) sees = ok1[c] || ok2[c];
          if (!sees) {
            std::fill(row, row + 2 * b, scalar_t(0));
            continue;
          }
          using Vec = at::vec::Vectorized<scalar_t>;
          const scalar_t delta = at::vec::map2_reduce_all<scalar_t>(
              [](Vec x, Vec y) { return x * y; }, [](Vec x, Vec y) { return x + y; }, dO + t + r * D, O + t + r * D, D);
          for (int64_t c = 0; c < 2 * b; ++c) row[c] = pr[c] * (row[c] - delta);
        }
        const scalar_t* ds1 = ds.data();
        const scalar_t* ds2 = ds.data() + b;
        mm<scalar_t>(false, false, ib, iD, ib, 1, ds1, i2b, KS + t, iD, false, dQ + t, iD, tile);
        mm<scalar_t>(false, false, ib, iD, ib, s, ds2, i2b, KB + t, iD, true, dQ + t, iD, tile, lower_a);
        mm<scalar_t>(true, false, ib, iD, ib, 1, ds1, i2b, Q + t, iD, false, dKS + t, iD, tile);
        mm<scalar_t>(true, false, ib, iD, ib, 1, pi, i2b, dO + t, iD, false, dVS + t, iD, tile);
        mm<scalar_t>(true, false, ib, iD, ib, s, ds2, i2b, Q + t, iD, false, dKB + t, iD, tile, upper_a);
        mm<scalar_t>(true, false, ib, iD, ib, 1, pi + b, i2b, dO + t, iD, false, dVB + t, iD, tile, upper_a);
      }
    });
  });
  return {d_q, d_ks, d_vs, d_kb, d_vb};
}
