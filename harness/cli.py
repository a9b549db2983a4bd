"""The ``attnbench`` command: run grids, list what exists, render reports.

Listings, dry runs and each command's result go to stdout; progress and diagnostics go to stderr. Bad input (a grid
with a YAML error, an unknown key, plugin, task or parameter, a wrong type) exits with status 2 and one line naming
the file and the field, before Ray starts or the store is touched.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

EXIT_BAD_INPUT, EXIT_TRIALS_FAILED = 2, 1
WATCH = ("stall_minutes", "timeout_minutes")  # resources shown by a dry run only when set
EXAMPLES = """examples:
  attnbench list | grep sink                  what exists: attentions, tasks, shipped grids
  attnbench run smoke --dry-run               the demo grid's trials, without running them
  attnbench run smoke && attnbench report     run the demo grid, then render reports/report.html
  attnbench show --task sort --format csv     the stored results of one task, as CSV
  attnbench run my_grid.yaml --address auto   run on the Ray cluster this machine belongs to
"""


@dataclass
class Consoles:
    """``out`` (stdout) for what a command answers, ``err`` (stderr) for progress and diagnostics."""

    out: Console
    err: Console


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("attnbench")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _dry_run(grid, trials: list, args: argparse.Namespace, consoles: Consoles, changes: list) -> int:
    """Each expanded trial on one line with its estimated cost, the count, how many are stored and what the rest
    will cost; starts no Ray, writes nothing."""
    from harness.running.estimate import cell_text, estimate, total_text
    from harness.running.overrides import describe
    from harness.store import ResultStore

    results, out = args.results, consoles.out
    for line in describe(changes):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    finished = ResultStore(results).finished_ids() if results.exists() else set()
    unique = list({trial.trial_id: trial for trial in trials}.values())
    costs = estimate(
        unique,
        results,
        quick=args.estimate,
        memory_gib=args.device_memory,
        on_measure=lambda trial: consoles.err.print(f"measuring a few steps of {trial.label}", highlight=False),
    )
    lines = [
        (
            trial.trial_id,
            trial.task + "".join(f" {k}={v}" for k, v in sorted(trial.task_params.items())),
            trial.attention,
            ",".join(f"{k}={v}" for k, v in sorted(trial.params.items())) or "-",
            f"seed={trial.seed}",
            f"steps={trial.train['steps']}",
            " ".join(f"{k}={v:g}" for k, v in trial.resources.items() if k != "max_retries" and (v or k not in WATCH)),
            cell_text(cost),
            "stored" if trial.trial_id in finished else "to run",
        )
        for trial, cost in zip(unique, costs, strict=True)
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))] if lines else []
    for line in lines:
        out.print(
            "  ".join(f"{cell:<{w}}" for cell, w in zip(line, widths, strict=True)).rstrip(),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    stored = sum(line[-1] == "stored" for line in lines)
    to_run = [cost for line, cost in zip(lines, costs, strict=True) if line[-1] != "stored"]
    out.print(
        f"grid {grid.name}: {len(unique)} trials, {stored} already stored in {results}, {len(unique) - stored} to run"
        f" ({total_text(to_run)}; dry run: nothing started, nothing written)",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _warn_over_memory(trials: list, args: argparse.Namespace, console: Console) -> None:
    """Before Ray starts: name each trial whose estimate from the store (no measuring) exceeds its device."""
    from harness.running.estimate import estimate, size

    try:
        costs = estimate(trials, args.results, memory_gib=args.device_memory)
    except Exception as exc:  # an estimate is advice: a store it cannot read never stops a grid
        console.print(f"[yellow]no memory estimate ({type(exc).__name__}: {exc})[/yellow]", highlight=False)
        return
    for trial, cost in zip(trials, costs, strict=True):
        if cost.over_memory:
            console.print(
                f"[yellow]warning:[/yellow] {trial.label} ({trial.trial_id}) is estimated at "
                f"{size(cost.memory_bytes.value)} peak, over its {cost.device}'s {size(cost.device_memory)} "
                f"[{cost.memory_bytes.source}]; it will likely run out of memory",
                highlight=False,
                soft_wrap=True,
            )


def _run(args: argparse.Namespace, consoles: Consoles) -> int:
    import attentions
    from harness.running.grid import override_changes
    from harness.running.overrides import parse as parse_overrides
    from harness.tracking import Mirror
    from harness.tracking import parse as parse_track

    overrides = parse_overrides(args.overrides)
    targets = parse_track(args.track)
    if args.estimate and not args.dry_run:
        raise ValueError("--estimate: measures trials for --dry-run; add --dry-run")
    for folder in args.plugins:
        attentions.load_plugin_dir(folder)
    grid, trials = _load_and_warn(args.grid, overrides, consoles.err)
    if args.dry_run:
        return _dry_run(grid, trials, args, consoles, override_changes(args.grid, overrides))

    from harness.running.scheduler import run_grid
    from harness.store import ResultStore

    console = consoles.err
    _warn_over_memory(trials, args, console)
    console.print(f"grid [bold]{grid.name}[/bold]: {len(trials)} trials -> {args.results}", soft_wrap=True)
    mirror = Mirror(targets, warn=lambda message: console.print(f"[yellow]{message}", highlight=False))
    try:
        summary = run_grid(
            trials,
            ResultStore(args.results),
            address=args.address,
            max_concurrent=args.max_concurrent,
            plugin_dirs=args.plugins,
            console=console,
            checkpoints=args.checkpoints,
            progress_every=args.progress_every,
            stall_after=args.stall_warning,
            on_stored=mirror,
        )
    finally:
        mirror.close()
    consoles.out.print(
        f"done in {summary.seconds:.1f}s: {len(summary.ok)} ok, {len(summary.failed)} failed, "
        f"{summary.skipped} already stored; results in {args.results}",
        highlight=False,
    )
    _print_results(ResultStore(args.results).read(), grid.name, {t.trial_id for t in trials}, consoles.out)
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} trials failed; their errors are stored (status = failed)[/red]")
        return EXIT_TRIALS_FAILED
    return 0


def _load_and_warn(grid_path: str, overrides, console: Console):
    """Load and expand a grid, printing its warnings (a cell that runs but probably not as meant) on stderr."""
    import warnings

    from harness.running.grid import GridWarning, load_trials

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GridWarning)
        loaded = load_trials(grid_path, overrides)
    for warning in caught:
        if issubclass(warning.category, GridWarning):
            console.print(f"[yellow]warning:[/yellow] {warning.message}", highlight=False, soft_wrap=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def _print_table(console: Console, table) -> None:
    """A terminal keeps its own width; piped or captured output gets room enough that no cell is wrapped or cut."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(file=console.file, width=max(console.width, 200)).print(table)


def _print_results(frame, grid: str, trial_ids: set[str], out: Console) -> None:
    """The grid's results as one table: mean ± 95% interval over seeds and n, per attention setting and metric."""
    from harness.reporting.summary import rich_table, summarize

    table = summarize(frame, trial_ids=trial_ids)
    if len(table):
        _print_table(out, rich_table(table, title=f"grid {grid}: mean ± 95% interval over seeds"))


def _show(args: argparse.Namespace, consoles: Consoles) -> int:
    from harness.reporting.summary import export, rich_table, summarize
    from harness.store import ResultStore

    frame = ResultStore(args.results).read()
    if frame.empty:
        raise ValueError(f"{args.results}: the results store is empty or missing (run a grid first)")
    table = summarize(frame, grid=args.grid, task=args.task, attention=args.attention)
    if args.format:
        sys.stdout.write(export(table, args.format))  # plain text, never wrapped: meant for files and pipes
    else:
        _print_table(consoles.out, rich_table(table))
    consoles.err.print(f"{len(table)} rows from {args.results}", highlight=False, soft_wrap=True)
    return 0


def _list(args: argparse.Namespace, consoles: Consoles) -> int:
    import attentions
    import tasks
    from harness.running.grid import shipped_grids

    for folder in args.plugins:
        attentions.load_plugin_dir(folder)
    console = consoles.out
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


def _report(args: argparse.Namespace, consoles: Consoles) -> int:
    from harness.reporting.report import write_report

    path = write_report(args.results, args.out, args.claims)
    consoles.out.print(f"report written to {path}", highlight=False, soft_wrap=True)  # a path to copy, never broken
    return 0


def _configs(args: argparse.Namespace) -> list:
    from harness.benchmarking import bench

    configs = [(d, t) for d, t in bench.default_configs() if args.device in ("all", d.type)]
    if not configs:
        raise ValueError(f"--device {args.device}: no such device here")
    return configs


def _measure_plugins(names: list[str], lengths: list[int], args: argparse.Namespace, consoles: Consoles) -> list[dict]:
    """Forward + backward of each plugin alone; prints the machine's 64-tile bmm throughput beside sinkhorn's. On
    CUDA each line also says the forward's time, the GPU's idle share and the share of the bf16 roofline."""
    from harness.benchmarking import bench

    console, out = consoles.err, consoles.out
    rows = []
    for batch in args.batch:
        for name in names:  # one plugin at a time, so progress shows
            with console.status(f"measuring {name} (batch {batch})"):
                measured = bench.sweep(
                    [name],
                    lengths,
                    batch=batch,
                    heads=args.heads,
                    head_dim=args.head_dim,
                    block_size=args.block_size,
                    repeats=args.repeats,
                    configs=_configs(args),
                    case_limit=args.case_limit,
                    peak_tflops=args.peak_tflops,
                )
            rows += measured
            for row in measured:
                out.print(bench.row_line(row), highlight=False, soft_wrap=True)
    for line in bench.roofline_lines(rows, heads=args.heads, head_dim=args.head_dim, block_size=args.block_size):
        out.print(line, highlight=False, soft_wrap=True)
    return rows


def _measure_models(names: list[str], lengths: list[int], args: argparse.Namespace, consoles: Consoles) -> list[dict]:
    """One training step of the whole model with each plugin, interleaved; prints the table relative to vanilla."""
    from harness.benchmarking import model_bench

    console = consoles.err
    rows = []
    for (device, dtype), batch in itertools.product(_configs(args), args.batch):
        with console.status(f"training steps on {device.type}, batch {batch} ({', '.join(map(str, lengths))})"):
            rows += model_bench.model_sweep(
                names,
                lengths,
                batch=batch,
                block_size=args.block_size,
                dim=args.heads * args.head_dim,
                heads=args.heads,
                repeats=args.repeats,
                device=device,
                dtype=dtype,
                compile=args.compile,
            )
    for line in model_bench.table_lines(rows):
        consoles.out.print(line, highlight=False, soft_wrap=True)
    return rows


def _confirmed_time_regressions(baseline: dict, cpu: list[dict], args: argparse.Namespace, consoles: Consoles) -> list:
    """Time regressions that show twice: a case slower than the baseline allows is measured again (with vanilla, in
    the same way), and only what is still slow counts. Other work on a shared machine can slow one plugin's steps
    more than vanilla's for a while; a real regression is slow every time."""
    from harness.benchmarking import regression

    slow = regression.time_regressions(baseline, cpu)
    if not slow:
        return []
    names = sorted({name for name, _ in slow})
    lengths = sorted({length for _, length in slow})
    consoles.err.print(f"confirming {len(slow)} slow case(s) by measuring {', '.join(names)} again", highlight=False)
    measure = _measure_models if args.model else _measure_plugins
    again = measure([regression.REFERENCE, *names], lengths, args, consoles)
    confirmed = regression.time_regressions(baseline, [row for row in again if row["device"] == "cpu"])
    return [message for case, message in confirmed.items() if case in slow]


def _bench(args: argparse.Namespace, consoles: Consoles) -> int:
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
        "batch": args.batch[0] if len(args.batch) == 1 else args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "block_size": args.block_size,
        "repeats": args.repeats,
        "block_plugins": sorted(n for n in names if "block_size" in attentions.parameters(n)),
    }
    if args.compile and not args.model:
        raise ValueError("--compile applies to --model (whole training steps), not to the attention-only sweep")
    if args.model:
        config["model"] = {"kind": "lm", "layers": 2, "dim": args.heads * args.head_dim, "optimizer": "AdamW"}
        if args.compile:
            config["model"]["compile"] = args.compile  # a separate run from the eager one in the store and the report
    if len(args.batch) > 1 and (args.check or args.save_baseline):
        raise ValueError("--check and --save-baseline compare one batch size; give --batch a single value")
    console, out = consoles.err, consoles.out
    console.print(f"bench{' --model' if args.model else ''}: {', '.join(names)} at L = {', '.join(map(str, lengths))}")
    measure = _measure_models if args.model else _measure_plugins
    rows = measure(names, lengths, args, consoles)
    stored = bench.store_sweep(args.results, rows, config, model=args.model)
    out.print(f"{stored} measurements stored in {args.results}", highlight=False, soft_wrap=True)
    section = "model" if args.model else "attention"
    by_batch = {batch: [row for row in rows if row.get("batch", 1) == batch] for batch in args.batch}
    if not args.model:
        for batch, same in by_batch.items():  # growth with length at a fixed batch
            for name, exponent in sorted(regression.memory_exponents(same).items()):
                shown = f" (batch {batch})" if len(by_batch) > 1 else ""
                out.print(f"  memory of {name:<18} ~ L^{exponent:.2f}{shown}", highlight=False)
    cpu = [row for row in rows if row["device"] == "cpu"]  # the committed baseline is a CPU one
    if args.save_baseline:
        console.print("measuring every case again: the baseline keeps the slower of two runs", highlight=False)
        again = [row for row in measure(names, lengths, args, consoles) if row["device"] == "cpu"]
        baseline = regression.make_baseline(cpu, config, again=again)
        regression.save_baseline(args.save_baseline, baseline, section=section)
        out.print(f"baseline ({section} section) written to {args.save_baseline}", highlight=False, soft_wrap=True)
    problems = [] if args.model else [p for same in by_batch.values() for p in regression.complexity(same)]
    if args.check:
        baseline = regression.load_baseline(args.check, section=section)
        problems += regression.memory_regressions(baseline, cpu)  # bytes: the same in every run
        problems += _confirmed_time_regressions(baseline, cpu, args, consoles)
    for problem in problems:
        console.print(f"[red]regression:[/red] {problem}", highlight=False)
    if args.check or problems:
        out.print("bench check: " + (f"[red]{len(problems)} regressions[/red]" if problems else "[green]ok[/green]"))
    return EXIT_TRIALS_FAILED if problems else 0


def _rerun(args: argparse.Namespace, consoles: Consoles) -> int:
    import attentions
    from harness.provenance import code_changed_since
    from harness.running.rerun import rerun

    if args.at_commit:
        consoles.err.print(f"re-running trial {args.trial} at the commit it recorded (a temporary git worktree)")
    else:
        for folder in args.plugins:
            attentions.load_plugin_dir(folder)
        consoles.err.print(f"re-running trial {args.trial} from its stored config (in this process, no Ray)")
    outcome = rerun(args.results, args.trial, at_commit=args.at_commit, plugin_dirs=args.plugins)
    where = f"stored by {outcome.stored_commit or 'unknown code'}, re-run at {outcome.ran_at or 'unknown code'}"
    if outcome.identical:
        consoles.out.print(
            f"{outcome.trial_id} {outcome.label}: all {outcome.compared} stored values reproduced exactly ({where})",
            soft_wrap=True,
        )
        return 0
    consoles.out.print(
        f"{outcome.trial_id} {outcome.label}: {len(outcome.differences)} of {outcome.compared} differ ({where})",
        soft_wrap=True,
    )
    for key, stored, fresh in outcome.differences:
        consoles.out.print(f"  {key}: stored {stored!r}, now {fresh!r}", highlight=False)
    if not args.at_commit and code_changed_since(outcome.stored_commit):
        consoles.err.print(
            f"the code (attentions, tasks, harness) changed since {outcome.stored_commit}, which can move the last "
            "bits; `--at-commit` re-runs the trial with the code that stored it"
        )
    return EXIT_TRIALS_FAILED


def _plugins_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="DIR",
        help="also load every *.py in DIR as attention plugins (repeatable)",
    )


def _claims(args: argparse.Namespace, consoles: Consoles) -> int:
    from harness.study import command
    from harness.study.claims import CLAIMS_FILE, STUDY_RESULTS

    return command.run(
        args.results or STUDY_RESULTS, claims_file=args.claims or CLAIMS_FILE, form=args.format, check=args.check
    )


def _results_option(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--results", type=Path, default=Path("results"), metavar="DIR", help=f"{what} (default: %(default)s)"
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="attnbench",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    run = verbs.add_parser(
        "run",
        help="run a grid's trials on Ray and store their results",
        description="Run every trial of a grid not already stored as ok; each is stored the moment it finishes, so "
        "re-running an interrupted grid resumes it. Trials that can never fit the cluster fail at once.",
    )
    run.add_argument("grid", metavar="GRID", help="a grid YAML file, or the name of a shipped grid (attnbench list)")
    run.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 (default: $RAY_ADDRESS, else an embedded Ray)",
    )
    _results_option(run, "Parquet store the results go to")
    _plugins_option(run)
    run.add_argument(
        "--max-concurrent", type=int, default=None, metavar="N", help="run at most N trials at once (default: no cap)"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expanded trials, their count, how many are already stored and each one's estimated "
        "device-hours and peak memory with its source; start nothing, write nothing",
    )

    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a grid key, the value read as YAML (repeatable): --set train.steps=2000 --set seeds=[0,1] "
        "--set attentions.sinkhorn.temperature=0.5; checked like the grid, part of each trial's config and id",
    )
    run.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run: time a few training steps of each trial the store has no figures for, on this "
        "machine (no Ray, random tokens of the trial's shape)",
    )
    run.add_argument(
        "--device-memory",
        type=float,
        default=None,
        metavar="GIB",
        help="memory of the trials' device, to flag trials estimated above it (default: this machine's GPU for "
        "GPU trials, its RAM for CPU trials)",
    )
    run.add_argument(
        "--track",
        action="append",
        default=[],
        metavar="KIND=TARGET",
        help="also mirror each stored trial (config, curve, final metrics) to tensorboard=DIR, mlflow=URI or "
        "wandb=PROJECT (offline unless WANDB_MODE says otherwise); repeatable; the store stays the source of truth",
    )
    run.add_argument(
        "--checkpoints",
        default=None,
        metavar="DIR|URI",
        help="where trials checkpoint and resume: a folder or a pyarrow URI such as s3://bucket/ckpt "
        "(default: RESULTS/checkpoints; on a multi-node cluster, storage that every node reaches)",
    )
    run.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="period of the plain progress lines when stderr is not a terminal (default: %(default)s)",
    )
    run.add_argument(
        "--stall-warning",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="warn about a running trial that reports no progress for this long (default: %(default)s)",
    )

    listing = verbs.add_parser(
        "list", help="list attentions, tasks and shipped grids", description="List attentions, tasks and grids."
    )
    _plugins_option(listing)

    report = verbs.add_parser(
        "report",
        help="render the results store as one HTML page",
        description="Render the store as one self-contained HTML page: tables beside the paper's, figures, configs.",
    )
    _results_option(report, "Parquet store to read")
    report.add_argument(
        "--out",
        type=Path,
        default=Path("reports/report.html"),
        metavar="FILE",
        help="page to write (default: %(default)s)",
    )
    report.add_argument(
        "--claims",
        type=Path,
        default=None,
        metavar="FILE",
        help="claims file the page's Claims section judges (default: the replication study's)",
    )

    show = verbs.add_parser(
        "show",
        help="list or export stored results: mean ± 95%% interval over seeds per attention setting and metric",
        description="List the store's results, one row per grid, task, attention setting, split and metric: the "
        "mean over seeds, the half-width of its 95% t-interval and n (accuracy and exact match in %). Without "
        "--format, a table for the terminal.",
    )
    _results_option(show, "Parquet store to read")
    for name in ("grid", "task", "attention"):
        show.add_argument(
            f"--{name}", action="append", default=None, metavar=name.upper(), help=f"only this {name} (repeatable)"
        )
    show.add_argument(
        "--format", choices=["markdown", "csv", "json"], default=None, help="write the table as text to stdout"
    )

    claims = verbs.add_parser(
        "claims",
        help="the replication study's claims with verdicts computed from a store",
        description="Judge every claim of the study (harness/study/claims.yaml) on a store: the paper, ours with its "
        "95% interval and n, and the verdict. --check FILE exits with status 1 when a verdict differs from FILE.",
    )
    claims.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="DIR",
        help="Parquet store to read (default: the study's store, harness/study/results/replication)",
    )
    claims.add_argument(
        "--format",
        choices=["markdown", "csv"],
        default="markdown",
        help="markdown: one row per claim; csv: one row per claim and arm (default: %(default)s)",
    )
    claims.add_argument(
        "--check", type=Path, default=None, metavar="FILE", help="expected verdicts (YAML: claim id -> verdict)"
    )
    claims.add_argument("--claims", type=Path, default=None, metavar="FILE", help="claims file (default: the study's)")

    again = verbs.add_parser(
        "rerun",
        help="re-run a stored trial from its stored config and check that every stored value comes out the same",
        description="Re-run one stored trial (no Ray) and compare every stored value, learning curve included, for "
        "exact equality. Exit status 1 if any differs.",
    )
    again.add_argument("trial", metavar="TRIAL_ID", help="a stored trial's id, or a unique prefix of it")
    again.add_argument(
        "--at-commit",
        action="store_true",
        help="re-run with the code of the commit the trial recorded (a temporary git worktree, a child process) "
        "instead of the code checked out now",
    )
    _results_option(again, "Parquet store holding the trial")
    _plugins_option(again)

    sweep = verbs.add_parser(
        "bench",
        help="speed & memory sweep of plugins (forward + backward) -> the store",
        description="Time and measure the memory of plugins' forward + backward at several lengths; store the sweep.",
    )
    sweep.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        metavar="L",
        help="sequence lengths (default: 256 512 1024 2048; with --model: 1024 2048 3072 4096)",
    )
    sweep.add_argument(
        "--model", action="store_true", help="whole-model training steps/s and peak memory per plugin, vs vanilla"
    )
    sweep.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        type=_compile_value,
        metavar="MODE",
        help="with --model: torch.compile every model first (the compile is not timed) and store the run apart; "
        "MODE reduce-overhead replays each compiled graph as a CUDA graph",
    )
    sweep.add_argument(
        "--batch", type=int, nargs="+", default=[1], metavar="B", help="sequences per step (default: %(default)s)"
    )
    sweep.add_argument(
        "--case-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a plugin whose case takes longer than this is not measured at longer lengths (default: no limit)",
    )
    sweep.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        metavar="T",
        help="the device's peak in TFLOP/s for the roofline share (default: the card's dense bf16 peak, when known)",
    )
    sweep.add_argument(
        "--device",
        choices=["all", "cpu", "cuda"],
        default="all",
        help="all: the CPU in float32, plus CUDA in bfloat16 when present (default: %(default)s)",
    )
    sweep.add_argument(
        "--attentions", nargs="+", default=None, metavar="NAME", help="plugins to measure (default: all)"
    )
    sweep.add_argument("--heads", type=int, default=4, help="attention heads (default: %(default)s)")
    sweep.add_argument("--head-dim", type=int, default=64, help="width of each head (default: %(default)s)")
    sweep.add_argument(
        "--block-size", type=int, default=64, help="block size of the block plugins (default: %(default)s)"
    )
    sweep.add_argument("--repeats", type=int, default=3, help="timed runs per point; the minimum counts")
    _results_option(sweep, "Parquet store the measurements go to")
    _plugins_option(sweep)
    sweep.add_argument("--check", type=Path, default=None, metavar="BASELINE", help="fail on regressions against it")
    sweep.add_argument(
        "--save-baseline", type=Path, default=None, metavar="FILE", help="write this sweep as the new baseline"
    )
    return top


def _compile_value(text: str) -> bool | str:
    """``--compile MODE``: ``default`` (torch.compile's default mode) or ``reduce-overhead`` (CUDA graphs)."""
    if text == "default":
        return True
    if text == "reduce-overhead":
        return text
    raise argparse.ArgumentTypeError(f"unknown compile mode {text!r} (choose default or reduce-overhead)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = parser().parse_args(argv)
    consoles = Consoles(out=Console(), err=Console(stderr=True))
    console = consoles.err
    handlers = {
        "run": _run,
        "list": _list,
        "report": _report,
        "show": _show,
        "bench": _bench,
        "rerun": _rerun,
        "claims": _claims,
    }
    try:
        return handlers[args.verb](args, consoles)
    except ValueError as exc:  # GridError and every plugin/task validation error
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.print("interrupted; finished trials are stored, re-run the same grid to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
