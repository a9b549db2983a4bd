"""The pieces of ``bench --device cuda`` that do not need a GPU: the timing protocol (warm-up, L2 flush, clock),
the idle-share arithmetic on synthetic and real profiler traces, the analytic FLOP counts against torch's own
counter, the peak table, and the detailed rows through the store into the report's table."""

from __future__ import annotations

import time

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from harness.benchmarking import bench, flops, idle
from harness.benchmarking.timing import MIN_FLUSH_BYTES, Timing, l2_flush_bytes

CPU = torch.device("cpu")


def test_timing_flushes_before_every_timed_run_and_never_times_the_warm_up():
    events = []
    ticks = iter([0.5, 0.25, 0.75])

    def clock(work):
        events.append("start")
        work()
        events.append("stop")
        return next(ticks)

    timing = Timing(clock=clock, flush=lambda: events.append("flush"), warmup=2)
    times = timing.repeats(lambda: events.append("work"), 3)
    assert times == [0.5, 0.25, 0.75]
    assert events == ["work", "work"] + ["flush", "start", "work", "stop"] * 3


def test_l2_flush_buffer_exceeds_the_cache():
    h100_l2 = 50 * 2**20
    assert l2_flush_bytes(h100_l2) == 2 * h100_l2
    assert l2_flush_bytes(0) == MIN_FLUSH_BYTES > 2 * h100_l2


@pytest.mark.parametrize(
    "intervals,windows,expected",
    [
        ([], [(0, 10)], 1.0),  # nothing ran
        ([(0, 10)], [(0, 10)], 0.0),  # busy throughout
        ([(1, 3), (2, 5), (7, 8)], [(0, 10)], 0.5),  # overlapping kernels count once: busy 1-5 and 7-8
        ([(-5, 2), (9, 20)], [(0, 10)], 0.7),  # clipped to the window: 0-2 and 9-10
        ([(1, 2), (11, 13)], [(0, 4), (10, 14)], 0.625),  # two steps: busy 1 + 2 of 8
        ([(2, 3), (2, 3), (2.5, 2.75)], [(0, 4)], 0.75),  # duplicates and nested intervals
    ],
)
def test_idle_share_of_synthetic_intervals(intervals, windows, expected):
    assert idle.idle_share(intervals, windows) == pytest.approx(expected)


def test_idle_share_needs_a_window():
    with pytest.raises(ValueError, match="no length"):
        idle.idle_share([(0, 1)], [(3, 3)])


def test_idle_share_of_a_real_cpu_trace_sees_the_host_waiting():
    """On the CPU profiler's trace the "device" is the CPU: a step that mostly sleeps (no operator runs) is mostly
    idle, a step of back-to-back matrix products is mostly busy."""
    small, a = torch.ones(8), torch.randn(128, 128)

    def waits():
        torch.add(small, 1)
        time.sleep(0.1)

    def works():
        for _ in range(20):
            torch.mm(a, a)

    waiting, working = idle.profile_device(waits, CPU, steps=2), idle.profile_device(works, CPU, steps=2)
    assert 0.8 < waiting.idle_share <= 1.0
    assert 0.0 <= working.idle_share < 0.5
    # the CPU's "launches" are the operators the profiler records (nested calls included): twice the products, twice
    # the count; the sleeping step launches almost nothing
    twice = idle.profile_device(lambda: (works(), works()), CPU, steps=2)
    assert working.launches >= 20 and twice.launches == 2 * working.launches
    assert waiting.launches < working.launches / 4


def test_launches_count_the_work_that_starts_inside_each_step():
    windows = [(0, 10), (20, 30)]
    assert idle.launches_per_step([(1, 2), (3, 12), (12, 15), (21, 22), (29, 40)], windows) == 2.0
    assert idle.launches_per_step([], windows) == 0.0
    with pytest.raises(ValueError, match="no step windows"):
        idle.launches_per_step([(1, 2)], [])


def test_trace_intervals_split_steps_from_device_work():
    class Range:
        def __init__(self, start, end):
            self.start, self.end = start, end

    class Event:
        def __init__(self, name, device, start, end):
            self.name, self.device_type, self.time_range = name, device, Range(start, end)

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [
        Event(idle.STEP, cpu, 0, 100),
        Event("aten::mm", cpu, 1, 5),  # host-side launch: not device time
        Event("gemm_kernel", cuda, 10, 30),
        Event(idle.STEP, cuda, 5, 95),  # the step's range mirrored on the device timeline: not work
        Event("my_range", cpu, 20, 90),
        Event("my_range", cuda, 20, 90),  # likewise for any other host range
        Event(idle.STEP, cpu, 200, 300),
        Event("softmax_kernel", cuda, 250, 260),
    ]
    busy, windows = idle.trace_intervals(events, device_type=cuda)
    assert busy == [(10, 30), (250, 260)] and windows == [(0, 100), (200, 300)]
    assert idle.idle_share(busy, windows) == pytest.approx(1 - 30 / 200)


COUNTED = ["vanilla", "local", "sparse", "sinkhorn", "sortcut", "sinkhorn_mixture", "sinkformer", "routing"]


@pytest.mark.parametrize("name", COUNTED)
@pytest.mark.parametrize("length,block", [(256, 32), (320, 64)])
def test_analytic_flops_equal_torch_flop_counter(name, length, block, monkeypatch):
    """On the plain-torch paths (SDPA's math backend, the Sinkhorn block attention's autograd reference; the CPU
    kernels and fused SDPA are invisible to the counter), forward and forward+backward FLOPs match exactly."""
    from attentions.sinkhorn import block_attention, plugins

    monkeypatch.setattr(plugins, "sinkhorn_block_attention", block_attention.reference)
    monkeypatch.setenv("ATTNBENCH_FUSED_CPU", "0")  # the balancing's torch operators, not the C++ kernel
    batch, heads, dim = 2, 2, 16
    torch.manual_seed(0)
    module = bench.build_plugin(name, length, heads=heads, head_dim=dim, block_size=block).train()
    q, k, v = bench.make_inputs(length, batch=batch, heads=heads, head_dim=dim, device=CPU, dtype=torch.float32)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            module(q, k, v)
        with FlopCounterMode(display=False) as both:
            bench.forward_backward(module, q, k, v)
    expected = flops.attention_flops(name, module, length, batch=batch, heads=heads, head_dim=dim)
    assert expected == (forward.get_total_flops(), both.get_total_flops())


def test_sinkhorn_flops_follow_the_method_at_4k():
    """At 4K (64 blocks of 64, 4 heads, D=64) the count is the earlier sinkhorn_flops plus the sort net."""
    module = bench.build_plugin("sinkhorn", 4096).train()
    _, both = flops.attention_flops("sinkhorn", module, 4096, batch=1, heads=4, head_dim=64)
    sortnet = 2 * 64 * 64 * 64 * 4  # (n x D) @ (D x n) per head
    assert both == bench.sinkhorn_flops(4096) + 3 * sortnet


def test_no_count_where_flops_depend_on_the_data_or_the_shape_is_causal():
    sbm = bench.build_plugin("sbm", 64)
    assert flops.attention_flops("sbm", sbm, 64, batch=1, heads=4, head_dim=64) is None
    causal = bench.build_plugin("local", 64, causal=True)
    assert flops.attention_flops("local", causal, 64, batch=1, heads=4, head_dim=64) is None


def test_bf16_peaks_by_device_name_and_override():
    assert flops.bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert flops.bf16_peak("NVIDIA H200") == 989e12
    assert flops.bf16_peak("NVIDIA A100-SXM4-80GB") is None
    assert flops.bf16_peak("NVIDIA A100-SXM4-80GB", 312) == 312e12
    with pytest.raises(ValueError, match="--peak-tflops must be > 0"):
        flops.bf16_peak("NVIDIA H100", 0)


class Uncounted(torch.nn.Module):
    """A peer with no FLOP count: its roofline share must stay empty."""

    def forward(self, q, k, v):
        return (q * k).softmax(-1) * v


@pytest.fixture(scope="module")
def detailed_rows() -> list[dict]:
    """The detailed sweep on the CPU with a fake clock (forward 2 then 3 ms, forward+backward 6 then 7 ms) and a
    fake profile (idle 25%, 42 launches)."""
    durations = iter([0.002, 0.003, 0.006, 0.007] * 3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "profile_device", lambda step, device, steps: step() or idle.DeviceProfile(0.25, 42.0))
        timing = Timing(clock=lambda work: (work(), next(durations))[1], warmup=1)
        return bench.sweep(
            ["vanilla", "local"],
            [64],
            batch=2,
            heads=2,
            head_dim=8,
            block_size=16,
            repeats=2,
            configs=[("cpu", torch.float32)],
            extra={"uncounted": lambda length: Uncounted()},
            detailed=True,
            timing=timing,
            peak_tflops=1e-3,
        )


def test_detailed_rows_time_forward_and_backward_apart_and_compute_both_shares(detailed_rows):
    rows = detailed_rows
    local = next(r for r in rows if r["attention"] == "local")
    assert (local["forward_seconds_min"], local["seconds_min"]) == (0.002, 0.006)
    assert local["forward_seconds"] == pytest.approx(0.0025) and local["batch"] == 2
    forward, both = flops.attention_flops("local", bench.build_plugin("local", 64, heads=2, head_dim=8, block_size=16),
                                          64, batch=2, heads=2, head_dim=8)  # fmt: skip
    assert local["roofline_share_forward"] == pytest.approx(forward / 0.002 / 1e9)
    assert local["roofline_share"] == pytest.approx(both / 0.006 / 1e9)
    assert local["idle_share"] == 0.25 and local["launches"] == 42.0
    uncounted = next(r for r in rows if r["attention"] == "uncounted")
    assert uncounted["roofline_share"] != uncounted["roofline_share"]  # NaN: no count, not a made-up figure
    assert "forward_seconds" not in bench.sweep(["local"], [64], repeats=1, configs=[("cpu", torch.float32)])[0]


def test_detailed_rows_reach_the_store_and_the_report_table(tmp_path, detailed_rows):
    import pandas as pd

    from harness.reporting.efficiency import attention_table
    from harness.reporting.figures import latest_speed_rows

    rows = detailed_rows
    config = {"block_size": 16, "block_plugins": ["local"], "batch": [1, 2], "run": "gpu"}
    assert bench.store_sweep(tmp_path, rows, config) == 3
    frame = pd.read_parquet(tmp_path)
    local = frame[frame["attention"] == "local"].set_index(["split", "metric"])["value"]
    assert local[("forward", "seconds")] == pytest.approx(0.0025)
    assert local[("forward_backward", "idle_share")] == 0.25 and local[("forward_backward", "launches")] == 42.0
    assert {("forward", "roofline_share"), ("forward_backward", "flops")} <= set(local.index)
    assert ("forward_backward", "roofline_share") not in set(
        frame[frame["attention"] == "uncounted"].set_index(["split", "metric"]).index
    )
    table = {t["label"].split(" ")[0]: t for t in attention_table(frame)}
    assert table["Local"]["batch"] == 2 and table["Local"]["idle"] == "25.0%" and table["Local"]["launches"] == "42"
    assert table["Local"]["forward_ms"] == "2.500" and table["Local"]["ms"] == "6.500"
    assert table["Transformer"]["vs_vanilla"] == "1.00x" and table["uncounted"]["roofline"] == "–"
    figure_rows = latest_speed_rows(frame)
    assert set(figure_rows["split"]) == {"forward_backward"}  # the forward times do not replace the figure's
    assert all(label.endswith("(B=2)") for label in figure_rows["label"])


def test_the_report_renders_where_the_time_goes(tmp_path, detailed_rows):
    from harness.reporting.report import write_report

    bench.store_sweep(tmp_path / "store", detailed_rows, {"block_size": 16, "block_plugins": ["local"], "run": "gpu"})
    html = write_report(tmp_path / "store", tmp_path / "report.html").read_text()
    table = html[html.index('id="attention-efficiency"') :]
    assert "<td>6.500</td>" in table and "<td>25.0%</td>" in table
