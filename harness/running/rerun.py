"""Re-run a stored trial from its stored config and compare every stored value: is a result reproducible?

The trial runs through ``harness.trainer.run_trial`` (no Ray), with the threads its ``resources.cpus`` gave it when it
was stored, so on the same kind of machine and software a CPU trial reproduces bit for bit *with the code that stored
it*. By default it runs in this process, with the code checked out now; ``at_commit`` runs it instead in a temporary
git worktree of the commit the trial recorded (``git_sha``), in a child process, so a trial stored before a change to a
plugin's arithmetic (which moves the last bits, and a long training run amplifies them) can still be checked exactly.
Compared: every ``ok`` row's value by (split, metric, step), learning curve included, for exact equality.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.provenance import loaded_code_version, run_git
from harness.store import ResultStore

# The child process of ``at_commit``: the trial's metrics as JSON into the file named by argv[2].
_CHILD = """
import json, sys
import attentions
for folder in json.loads(sys.argv[3]):
    attentions.load_plugin_dir(folder)
from harness.trainer import run_trial
metrics = run_trial(json.loads(sys.argv[1])).metrics
with open(sys.argv[2], "w") as out:
    json.dump([list(m) for m in metrics], out)
"""


@dataclass
class Rerun:
    trial_id: str
    label: str
    compared: int
    differences: list[tuple[tuple, float, float | None]]  # (split, metric, step), stored, fresh
    stored_commit: str | None  # the code version the trial recorded
    ran_at: str | None  # the code version this re-run used

    @property
    def identical(self) -> bool:
        return not self.differences


def _key(split: str, metric: str, step) -> tuple:
    return split, metric, None if step is None or (isinstance(step, float) and math.isnan(step)) else int(step)


def _run_at_commit(config: dict, commit: str | None, plugin_dirs: list[str]) -> list:
    """The trial's metrics from a child process in a temporary worktree of ``commit`` (removed afterwards)."""
    if not commit:
        raise ValueError("the trial recorded no commit (stored outside a git checkout): cannot re-run it at its commit")
    if commit.endswith("-dirty"):
        raise ValueError(
            f"the trial was stored by uncommitted code ({commit}): that code cannot be checked out again; re-run it "
            "at the current code instead (without --at-commit)"
        )
    with tempfile.TemporaryDirectory(prefix="attnbench-rerun-") as scratch:
        tree = Path(scratch) / "tree"
        added = run_git("worktree", "add", "--detach", str(tree), commit)
        if added is None or added.returncode != 0:
            why = "git cannot be run" if added is None else added.stderr.strip()
            raise ValueError(f"cannot check out commit {commit}: {why}")
        try:
            out = Path(scratch) / "metrics.json"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
            child = subprocess.run(
                [sys.executable, "-c", _CHILD, json.dumps(config), str(out), json.dumps(plugin_dirs)],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
            if child.returncode != 0:
                raise RuntimeError(f"the re-run at {commit} failed:\n{child.stderr[-3000:]}")
            return json.loads(out.read_text())
        finally:
            run_git("worktree", "remove", "--force", str(tree))


def rerun(
    results: str | Path, trial_id: str, *, at_commit: bool = False, plugin_dirs: list[str] | None = None
) -> Rerun:
    """Re-run the stored ``ok`` trial whose id is, or uniquely starts with, ``trial_id``; raise ValueError if none.
    ``at_commit``: at the commit the trial recorded, in a temporary worktree, rather than with the code here."""
    from harness.trainer import run_trial

    frame = ResultStore(results).read()
    ok = frame[frame["status"] == "ok"]
    ids = sorted({i for i in ok["trial_id"] if i.startswith(trial_id)})
    if len(ids) != 1:
        found = "no" if not ids else f"{len(ids)}"
        raise ValueError(f"{results}: {found} ok trials with an id starting with {trial_id!r}")
    rows = ok[ok["trial_id"] == ids[0]]
    config = json.loads(rows["config"].iloc[0])
    stored_commit = rows["git_sha"].iloc[0] if isinstance(rows["git_sha"].iloc[0], str) else None
    stored = {_key(r.split, r.metric, r.step): r.value for r in rows.itertuples()}
    if at_commit:
        metrics, ran_at = (
            _run_at_commit(config, stored_commit, [str(Path(d).resolve()) for d in plugin_dirs or []]),
            stored_commit,
        )
    else:
        metrics, ran_at = run_trial(config).metrics, loaded_code_version()  # the code this process imported
    fresh = {_key(split, metric, step): value for split, metric, value, step in metrics}
    differences = [
        (key, value, fresh.get(key)) for key, value in sorted(stored.items(), key=str) if fresh.get(key) != value
    ]
    label = (
        f"{config['task']}:{config['attention']}({json.dumps(config['params'], sort_keys=True)}):seed={config['seed']}"
    )
    return Rerun(ids[0], label, len(stored), differences, stored_commit, ran_at)
