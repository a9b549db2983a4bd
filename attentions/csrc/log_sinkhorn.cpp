// Log-domain Sinkhorn balancing of small matrices (the sinkhorn family's blocks x blocks sort matrices), forward and
// backward, for the CPU.
//
// In operators, each of the ten balancing steps of a 64 x 64 sort matrix is half a dozen calls on 16 KiB tensors, and
// the exp of masked entries (the dtype's most negative value) takes torch's slow path: 2.9 ms per layer for what is a
// few hundred thousand exps. Here one task balances one matrix with ATen's vectorized exp and log, and masked entries
// are -inf while it works (exp(-inf) is 0 on the fast path); they come back as the dtype's most negative value, as
// ``sinkhorn/reference.py``'s ``reference_log_sinkhorn`` writes them.
//
// Steps alternate, rows first: a row step subtracts each row's logsumexp; a column step each column's; a prefix step
// (causal) each entry's logsumexp over its column's rows up to and including it, computed in one pass down the rows
// with a running maximum (the online form of logsumexp: no prefix can underflow). The backward of a row or column
// step is g - exp(y) * (sum of g over the row or column). For a prefix step y_r = x_r - P_r it is g_r - exp(y_r) *
// A_r with A_r = g_r + exp(P_r - P_{r+1}) * A_{r+1}, one pass up the rows (every exp argument is <= 0, since P only
// grows down a column).
#include "kernels.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace {

// f(j, count) over the vector-wide chunks of [0, n); the last chunk may be partial.
template <typename T, typename F>
inline void chunks(int64_t n, F f) {
  constexpr int64_t W = at::vec::Vectorized<T>::size();
  int64_t j = 0;
  for (; j + W <= n; j += W) f(j, W);
  if (j < n) f(j, n - j);
}

template <typename T>
struct Balancer {
  using Vec = at::vec::Vectorized<T>;
  int64_t n;
  static constexpr T kInf = std::numeric_limits<T>::infinity();

  // out_r = x_r - logsumexp(x_r) for every row; a row with nothing allowed stays -inf.
  void rows(const T* x, T* out) const {
    for (int64_t r = 0; r < n; ++r) {
      const T* in = x + r * n;
      T* o = out + r * n;
      const T mx = at::vec::reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, in, n);
      if (mx == -kInf) {
        std::fill(o, o + n, -kInf);
        continue;
      }
      const T sum = at::vec::map_reduce_all<T>(
          [mx](Vec v) { return (v - Vec(mx)).exp(); }, [](Vec a, Vec b) { return a + b; }, in, n);
      const T lse = mx + std::log(sum);
      at::vec::map([lse](Vec v) { return v - Vec(lse); }, o, in, n);
    }
  }

  // out[r, j] = x[r, j] - logsumexp over rows of column j; -inf entries stay -inf.
  void columns(const T* x, T* out, T* lse) const {
    std::fill(lse, lse + n, -kInf);
    for (int64_t r = 0; r < n; ++r)
      chunks<T>(n, [&](int64_t j, int64_t c) {
        at::vec::maximum(Vec::loadu(lse + j, c), Vec::loadu(x + r * n + j, c)).store(lse + j, c);
      });
    std::vector<T> sum(n, T(0));
    chunks<T>(n, [&](int64_t j, int64_t c) {  // a column with nothing allowed is shifted by 0, not -inf
      const Vec m = Vec::loadu(lse + j, c);
      Vec::blendv(m, Vec(0), m == Vec(-kInf)).store(lse + j, c);
    });
    for (int64_t r = 0; r < n; ++r)
      chunks<T>(n, [&](int64_t j, int64_t c) {
        const Vec s = Vec::loadu(sum.data() + j, c) + (Vec::loadu(x + r * n + j, c) - Vec::loadu(lse + j, c)).exp();
        s.store(sum.data() + j, c);
      });
    chunks<T>(n, [&](int64_t j, int64_t c) {
      (Vec::loadu(lse + j, c) + Vec::loadu(sum.data() + j, c).log()).store(lse + j, c);
    });
    for (int64_t r = 0; r < n; ++r)
      chunks<T>(n, [&](int64_t j, int64_t c) {
        const Vec v = Vec::loadu(x + r * n + j, c);
        Vec::blendv(v - Vec::loadu(lse + j, c), v, v == Vec(-kInf)).store(out + r * n + j, c);
      });
  }

  // out[r, j] = x[r, j] - P[r, j], P[r, j] = logsumexp of column j over rows 0..r (written to ``prefix``).
  void prefixes(const T* x, T* out, T* prefix) const {
    std::vector<T> run_max(n, -kInf), run_sum(n, T(0));
    for (int64_t r = 0; r < n; ++r)
      chunks<T>(n, [&](int64_t j, int64_t c) {
        const Vec v = Vec::loadu(x + r * n + j, c), m = Vec::loadu(run_max.data() + j, c);
        const Vec top = at::vec::maximum(m, v);
        const Vec shift = Vec::blendv(top, Vec(0), top == Vec(-kInf));  // nothing allowed yet: sums stay 0
        const Vec s = Vec::loadu(run_sum.data() + j, c) * (m - shift).exp() + (v - shift).exp();
        top.store(run_max.data() + j, c);
        s.store(run_sum.data() + j, c);
        const Vec p = shift + s.log();  // -inf while nothing is allowed
        p.store(prefix + r * n + j, c);
        Vec::blendv(v - p, v, v == Vec(-kInf)).store(out + r * n + j, c);
      });
  }

  // g <- gradient before a row (dim = row) or column step with output y.
  void rows_backward(const T* y, T* g) const {
    for (int64_t r = 0; r < n; ++r) {
      T* gr = g + r * n;
      const T sum = at::vec::reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, gr, n);
      at::vec::map2([sum](Vec gv, Vec yv) { return gv - yv.exp() * Vec(sum); }, gr, gr, y + r * n, n);
    }
  }

  void columns_backward(const T* y, T* g) const {
    std::vector<T> sum(n, T(0));
    for (int64_t r = 0; r < n; ++r)
      chunks<T>(n, [&](int64_t j, int64_t c) {
        (Vec::loadu(sum.data() + j, c) + Vec::loadu(g + r * n + j, c)).store(sum.data() + j, c);
      });
    for (int64_t r = 0; r < n; ++r)
      chunks<T>(n, [&](int64_t j, int64_t c) {
        const Vec gv = Vec::loadu(g + r * n + j, c), yv = Vec::loadu(y + r * n + j, c);
        (gv - yv.exp() * Vec::loadu(sum.data() + j, c)).store(g + r * n + j, c);
      });
  }

  void prefixes_backward(const T* y, const T* prefix, T* g) const {
    std::vector<T> acc(n, T(0));
    for (int64_t r = n - 1; r >= 0; --r)
      chunks<T>(n, [&](int64_t j, int64_t c) {
        const Vec gv = Vec::loadu(g + r * n + j, c);
        Vec a = gv;
        if (r + 1 < n) {
          const Vec p = Vec::loadu(prefix + r * n + j, c), next = Vec::loadu(prefix + (r + 1) * n + j, c);
          const Vec carry = Vec::blendv((p - next).exp(), Vec(0), p == Vec(-kInf));
          a = a + carry * Vec::loadu(acc.data() + j, c);
        }
        a.store(acc.data() + j, c);
        (gv - Vec::loadu(y + r * n + j, c).exp() * a).store(g + r * n + j, c);
      });
  }
};

// The mask of matrix m, or nullptr (no mask).
inline const bool* mask_of(const c10::optional<torch::Tensor>& mask, int64_t m, int64_t nn) {
  if (!mask.has_value() || !mask->defined()) return nullptr;
  return mask->data_ptr<bool>() + (mask->size(0) == 1 ? 0 : m * nn);
}

void check_mask(const c10::optional<torch::Tensor>& mask, int64_t matrices, int64_t n) {
  if (!mask.has_value() || !mask->defined()) return;
  TORCH_CHECK(mask->scalar_type() == torch::kBool && mask->is_contiguous() && mask->dim() == 3 &&
                  (mask->size(0) == 1 || mask->size(0) == matrices) && mask->size(1) == n && mask->size(2) == n,
              "log_sinkhorn: expected a contiguous bool mask of shape (1 or ", matrices, ", ", n, ", ", n, "), got ",
              mask->sizes());
}

}  // namespace

std::vector<torch::Tensor> log_sinkhorn_forward(torch::Tensor x, int64_t steps, c10::optional<torch::Tensor> mask,
                                                bool causal, bool record) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == x.size(2) && x.is_contiguous(),
              "log_sinkhorn: expected contiguous (matrices, n, n), got ", x.sizes());
  TORCH_CHECK(steps >= 0, "log_sinkhorn: steps must be >= 0, got ", steps);
  const int64_t M = x.size(0), n = x.size(1), nn = n * n;
  check_mask(mask, M, n);
  // ``record``: keep every step's output (trace[s], the backward's y) and every prefix step's logsumexps
  // (prefix[s / 2] for the odd steps s); otherwise two slots of the trace take turns and the prefixes go to scratch.
  // The masked input, step 0's, is per-task scratch: the backward never reads it.
  auto trace = torch::empty({record ? steps : std::min<int64_t>(steps, 2), M, n, n}, x.options());
  auto prefix = torch::empty({causal && record ? steps / 2 : 0, M, n, n}, x.options());
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "log_sinkhorn_forward", [&] {
    const Balancer<scalar_t> bal{n};
    const scalar_t floor = std::numeric_limits<scalar_t>::lowest(), inf = std::numeric_limits<scalar_t>::infinity();
    const scalar_t* X = x.data_ptr<scalar_t>();
    scalar_t *Y = trace.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>();
    scalar_t* P = causal && record ? prefix.data_ptr<scalar_t>() : nullptr;
    auto output = [&](int64_t s, int64_t m) { return Y + ((record ? s : s % 2) * M + m) * nn; };
    at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> lse(n), input(nn), scratch(causal && !record ? nn : 0);
      for (int64_t m = begin; m < end; ++m) {
        const bool* ok = mask_of(mask, m, nn);
        for (int64_t e = 0; e < nn; ++e) input[e] = (ok && !ok[e]) ? -inf : X[m * nn + e];
        for (int64_t s = 0; s < steps; ++s) {
          const scalar_t* in = s == 0 ? input.data() : output(s - 1, m);
          scalar_t* o = output(s, m);
          if (s % 2 == 0)
            bal.rows(in, o);
          else if (causal)
            bal.prefixes(in, o, P ? P + (s / 2 * M + m) * nn : scratch.data());
          else
            bal.columns(in, o, lse.data());
        }
        const scalar_t* last = steps == 0 ? input.data() : output(steps - 1, m);
        for (int64_t e = 0; e < nn; ++e) O[m * nn + e] = last[e] == -inf ? floor : last[e];
      }
    });
  });
  return {out, trace, prefix};
}

torch::Tensor log_sinkhorn_backward(torch::Tensor grad, torch::Tensor trace, torch::Tensor prefix,
                                    c10::optional<torch::Tensor> mask, bool causal) {
  const int64_t steps = trace.size(0), M = trace.size(1), n = trace.size(2), nn = n * n;
  TORCH_CHECK(grad.is_contiguous() && grad.dim() == 3 && grad.size(0) == M && grad.size(1) == n && grad.size(2) == n,
              "log_sinkhorn: expected a contiguous (", M, ", ", n, ", ", n, ") gradient, got ", grad.sizes());
  TORCH_CHECK(!causal || prefix.size(0) == steps / 2, "log_sinkhorn: ", prefix.size(0), " prefix slots for ", steps,
              " steps: the forward did not record them");
  check_mask(mask, M, n);
  auto g = grad.clone();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "log_sinkhorn_backward", [&] {
    const Balancer<scalar_t> bal{n};
    const scalar_t* Y = trace.data_ptr<scalar_t>();
    const scalar_t* P = causal ? prefix.data_ptr<scalar_t>() : nullptr;
    scalar_t* G = g.data_ptr<scalar_t>();
    at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const bool* ok = mask_of(mask, m, nn);
        scalar_t* gm = G + m * nn;
        if (ok)  // masked entries are constants of the output
          for (int64_t e = 0; e < nn; ++e) gm[e] = ok[e] ? gm[e] : scalar_t(0);
        for (int64_t s = steps - 1; s >= 0; --s) {
          const scalar_t* y = Y + (s * M + m) * nn;
          if (s % 2 == 0)
            bal.rows_backward(y, gm);
          else if (causal)
            bal.prefixes_backward(y, P + (s / 2 * M + m) * nn, gm);
          else
            bal.columns_backward(y, gm);
        }
        if (ok)
          for (int64_t e = 0; e < nn; ++e) gm[e] = ok[e] ? gm[e] : scalar_t(0);
      }
    });
  });
  return g;
}
