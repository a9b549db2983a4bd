// The CPU kernels of the sinkhorn family, built into one extension by ``attentions/_fused_cpu.py``.
#pragma once

#include <torch/extension.h>

#include <vector>

// sinkhorn_block.cpp: Sinkhorn block attention (sorted block + own block, one softmax), fused per query block.
std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor ks, torch::Tensor kb, torch::Tensor vs,
                                   torch::Tensor vb, double scale, c10::optional<torch::Tensor> sorted_ok,
                                   c10::optional<torch::Tensor> local_ok, bool causal_own);
std::vector<torch::Tensor> backward(torch::Tensor d_out, torch::Tensor q, torch::Tensor ks, torch::Tensor kb,
                                    torch::Tensor vs, torch::Tensor vb, torch::Tensor p, torch::Tensor out,
                                    double scale, c10::optional<torch::Tensor> sorted_ok,
                                    c10::optional<torch::Tensor> local_ok, bool causal_own, at::IntArrayRef input_shape);

// log_sinkhorn.cpp: log-domain Sinkhorn balancing of (matrices, n, n), rows first; causal column steps use prefixes.
std::vector<torch::Tensor> log_sinkhorn_forward(torch::Tensor x, int64_t steps, c10::optional<torch::Tensor> mask,
                                                bool causal, bool record);
torch::Tensor log_sinkhorn_backward(torch::Tensor grad, torch::Tensor trace, torch::Tensor prefix,
                                    c10::optional<torch::Tensor> mask, bool causal);

// sbm_sample.cpp: SBM's attention graph, drawn for a block of query rows of one sequence (counter-based uniforms).
// Returns {sum of p over allowed pairs, allowed edges, all edges}.
std::vector<double> sbm_draw_rows(torch::Tensor p, torch::Tensor graph, int64_t row0, int64_t global_row0,
                                  c10::optional<torch::Tensor> valid, bool causal, bool training, int64_t seed);
