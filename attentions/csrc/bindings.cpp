// The Python module of the CPU kernels (see kernels.h).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "Sinkhorn block attention forward (CPU, fused per query block)");
  m.def("backward", &backward, "Sinkhorn block attention backward (CPU, fused per query block)");
  m.def("log_sinkhorn_forward", &log_sinkhorn_forward, "Log-domain Sinkhorn balancing, forward (CPU)");
  m.def("log_sinkhorn_backward", &log_sinkhorn_backward, "Log-domain Sinkhorn balancing, backward (CPU)");
  m.def("sbm_draw_rows", &sbm_draw_rows, "SBM attention graph for a block of query rows (CPU, counter-based)");
}
