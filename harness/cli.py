"""The ``attnbench`` command: run grids, list what exists, render reports.

Bad input (a grid with a YAML error, an unknown key, plugin, task or parameter, a wrong type) exits with status 2 and
one line naming the file and the field, before Ray starts or the store is touched.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

EXIT_BAD_INPUT, EXIT_TRIALS_FAILED = 2, 1


def _run(args: argparse.Namespace, console: Console) -> int:
    import attentions
    from harness.running.grid import load_trials
    from harness.running.scheduler import run_grid
    from harness.store import ResultStore

    for folder in args.plugins:
        attentions.load_plugin_dir(folder)
    grid, trials = load_trials(args.grid)
    console.print(f"grid [bold]{grid.name}[/bold]: {len(trials)} trials -> {args.results}")
    summary = run_grid(
        trials,
        ResultStore(args.results),
        address=args.address,
        max_concurrent=args.max_concurrent,
        plugin_dirs=args.plugins,
        console=console,
    )
    console.print(
        f"done in {summary.seconds:.1f}s: {len(summary.ok)} ok, {len(summary.failed)} failed, "
        f"{summary.skipped} already stored; results in {args.results}"
    )
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} trials failed; their errors are stored (status = failed)[/red]")
        return EXIT_TRIALS_FAILED
    return 0


def _list(args: argparse.Namespace, console: Console) -> int:
    import attentions
    import tasks
    from harness.running.grid import shipped_grids

    for folder in args.plugins:
        attentions.load_plugin_dir(folder)
    console.print("[bold]attentions[/bold]")
    for name in attentions.names():
        params = ", ".join(f"{k}={p.default!r}" for k, p in attentions.parameters(name).items())
        causal = "causal" if attentions.get(name).supports_causal else "encoder only"
        console.print(f"  {name:<18} {causal:<13} {params}", highlight=False, soft_wrap=True)
    console.print("[bold]tasks[/bold]")
    for name in tasks.names():
        console.print(f"  {name:<18} {', '.join(tasks.parameters(name))}", highlight=False, soft_wrap=True)
    console.print("[bold]grids[/bold]")
    for name in shipped_grids():
        console.print(f"  {name}", highlight=False)
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    from harness.reporting.report import write_report

    path = write_report(args.results, args.out)
    console.print(f"report written to {path}")
    return 0


def _configs(args: argparse.Namespace) -> list:
    from harness.benchmarking import bench

    configs = [(d, t) for d, t in bench.default_configs() if args.device in ("all", d.type)]
    if not configs:
        raise ValueError(f"--device {args.device}: no such device here")
    return configs


def _measure_plugins(names: list[str], lengths: list[int], args: argparse.Namespace, console: Console) -> list[dict]:
    """Forward + backward of each plugin alone; prints the machine's 64-tile bmm throughput beside sinkhorn's."""
    from harness.benchmarking import bench

    rows = []
    for name in names:  # one plugin at a time, so progress shows
        with console.status(f"measuring {name}"):
            measured = bench.sweep(
                [name],
                lengths,
                batch=args.batch,
                heads=args.heads,
                head_dim=args.head_dim,
                block_size=args.block_size,
                repeats=args.repeats,
                configs=_configs(args),
            )
        rows += measured
        for row in measured:
            console.print(
                f"  {name:<18} L={row['length']:<6} {row['device']:<5} {row['seconds_min'] * 1e3:9.2f} ms  "
                f"peak {row['peak_memory_bytes'] / 2**20:9.2f} MiB  saved {row['saved_bytes'] / 2**20:9.2f} MiB",
                highlight=False,
                soft_wrap=True,
            )
    for line in bench.roofline_lines(
        rows, batch=args.batch, heads=args.heads, head_dim=args.head_dim, block_size=args.block_size
    ):
        console.print(line, highlight=False, soft_wrap=True)
    return rows


def _measure_models(names: list[str], lengths: list[int], args: argparse.Namespace, console: Console) -> list[dict]:
    """One training step of the whole model with each plugin, interleaved; prints the table relative to vanilla."""
    from harness.benchmarking import model_bench

    rows = []
    for device, dtype in _configs(args):
        with console.status(f"training steps on {device.type} ({', '.join(map(str, lengths))})"):
            rows += model_bench.model_sweep(
                names,
                lengths,
                batch=args.batch,
                block_size=args.block_size,
                dim=args.heads * args.head_dim,
                heads=args.heads,
                repeats=args.repeats,
                device=device,
                dtype=dtype,
            )
    for line in model_bench.table_lines(rows):
        console.print(line, highlight=False, soft_wrap=True)
    return rows


def _bench(args: argparse.Namespace, console: Console) -> int:
    import datetime as dt

    import attentions
    from harness.benchmarking import bench, model_bench, regression

    for folder in args.plugins:
        attentions.load_plugin_dir(folder)
    names = args.attentions or (model_bench.causal_plugins() if args.model else attentions.names())
    for name in names:
        attentions.get(name)  # unknown names fail here, with a suggestion, before anything is measured
    if regression.REFERENCE not in names:
        names = [regression.REFERENCE, *names]  # time is judged relative to vanilla in the same run
    lengths = args.lengths or ([1024, 2048, 3072, 4096] if args.model else [256, 512, 1024, 2048])
    config = {
        "run": dt.datetime.now(dt.UTC).isoformat(),
        "lengths": lengths,
        "batch": args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "block_size": args.block_size,
        "repeats": args.repeats,
        "block_plugins": sorted(n for n in names if "block_size" in attentions.parameters(n)),
    }
    if args.model:
        config["model"] = {"kind": "lm", "layers": 2, "dim": args.heads * args.head_dim, "optimizer": "AdamW"}
    console.print(f"bench{' --model' if args.model else ''}: {', '.join(names)} at L = {', '.join(map(str, lengths))}")
    rows = (_measure_models if args.model else _measure_plugins)(names, lengths, args, console)
    stored = bench.store_sweep(args.results, rows, config, model=args.model)
    console.print(f"{stored} measurements stored in {args.results}")
    section = "model" if args.model else "attention"
    if not args.model:
        for name, exponent in sorted(regression.memory_exponents(rows).items()):
            console.print(f"  memory of {name:<18} ~ L^{exponent:.2f}", highlight=False)
    cpu = [row for row in rows if row["device"] == "cpu"]  # the committed baseline is a CPU one
    if args.save_baseline:
        regression.save_baseline(args.save_baseline, regression.make_baseline(cpu, config), section=section)
        console.print(f"baseline ({section} section) written to {args.save_baseline}")
    problems = [] if args.model else regression.complexity(rows)
    if args.check:
        problems += regression.compare(regression.load_baseline(args.check, section=section), cpu)
    for problem in problems:
        console.print(f"[red]regression:[/red] {problem}", highlight=False)
    if args.check or problems:
        console.print(
            "bench check: " + (f"[red]{len(problems)} regressions[/red]" if problems else "[green]ok[/green]")
        )
    return EXIT_TRIALS_FAILED if problems else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="attnbench", description=__doc__.splitlines()[0])
    verbs = top.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("run", help="run a grid (a YAML file or the name of a shipped grid)")
    run.add_argument("grid")
    run.add_argument("--address", default=None, help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001")
    run.add_argument("--results", type=Path, default=Path("results"), help="Parquet store directory")
    run.add_argument("--plugins", action="append", default=[], metavar="DIR", help="load every *.py in DIR")
    run.add_argument("--max-concurrent", type=int, default=None, help="at most N trials at once")
    listing = verbs.add_parser("list", help="list attentions, tasks and shipped grids")
    listing.add_argument("--plugins", action="append", default=[], metavar="DIR")
    report = verbs.add_parser("report", help="render the store as one HTML page")
    report.add_argument("--results", type=Path, default=Path("results"))
    report.add_argument("--out", type=Path, default=Path("reports/report.html"))
    sweep = verbs.add_parser("bench", help="speed & memory sweep of plugins (forward + backward) -> the store")
    sweep.add_argument("--lengths", type=int, nargs="+", default=None, help="default 256 512 1024 2048; --model: 1K-4K")
    sweep.add_argument("--model", action="store_true", help="whole-model training steps/s and peak memory per plugin")
    sweep.add_argument("--batch", type=int, default=1, help="batch size (sequences per step)")
    sweep.add_argument("--device", choices=["all", "cpu", "cuda"], default="all", help="all: cpu + cuda (bf16)")
    sweep.add_argument("--attentions", nargs="+", default=None, help="plugins to measure (default: all)")
    sweep.add_argument("--heads", type=int, default=4)
    sweep.add_argument("--head-dim", type=int, default=64)
    sweep.add_argument("--block-size", type=int, default=64)
    sweep.add_argument("--repeats", type=int, default=3)
    sweep.add_argument("--results", type=Path, default=Path("results"))
    sweep.add_argument("--plugins", action="append", default=[], metavar="DIR")
    sweep.add_argument("--check", type=Path, default=None, metavar="BASELINE", help="fail on regressions against it")
    sweep.add_argument("--save-baseline", type=Path, default=None, metavar="FILE")
    return top


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = parser().parse_args(argv)
    console = Console(stderr=True)
    handlers = {"run": _run, "list": _list, "report": _report, "bench": _bench}
    try:
        return handlers[args.verb](args, console)
    except ValueError as exc:  # GridError and every plugin/task validation error
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.print("interrupted; finished trials are stored, re-run the same grid to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
