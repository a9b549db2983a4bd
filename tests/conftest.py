import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Triton kernels run on the CPU under Triton's interpreter in the tests. Triton reads this when it is first imported
# (its own library functions are decorated then), and torch or another test module may import it before any kernel
# test does, so it is set here; TRITON_INTERPRET=0 runs them compiled on a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Without a GPU the Triton kernels run on CPU tensors under Triton's interpreter. Triton reads the switch when it is
# imported (its own library) and when a kernel is decorated, and torch imports it early, so it is set here, first.
import torch  # noqa: E402 - torch itself does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Sets Ray's environment (usage stats off, token auth on) before any test imports Ray, as the CLI does.
import harness.running.scheduler  # noqa: E402,F401
