"""Where a result came from: package versions and the git commit of the code that produced it."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_PATHS = ("attentions", "tasks", "harness", "pyproject.toml")  # what decides a trial's numbers (not results/)


def versions() -> dict[str, str]:
    names = ("torch", "ray", "deepspeed", "attnbench")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def run_git(*args: str, root: Path = PROJECT_ROOT, timeout: float = 60) -> subprocess.CompletedProcess | None:
    """``git ARGS`` in ``root``; None when git cannot be run at all (not installed, timed out)."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None


def _git(root: Path, *args: str) -> str | None:
    out = run_git(*args, root=root, timeout=10)
    return out.stdout.strip() if out is not None and out.returncode == 0 else None


def git_sha(root: Path = PROJECT_ROOT) -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout."""
    return _git(root, "rev-parse", "HEAD") or None


def code_version(root: Path = PROJECT_ROOT) -> str | None:
    """HEAD's commit, with ``-dirty`` appended when tracked code (``CODE_PATHS``) differs from it: the version of the
    code as it is on disk now. None outside a git checkout."""
    sha = git_sha(root)
    if sha is None:
        return None
    changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return sha + "-dirty" if changed else sha


@functools.cache
def loaded_code_version() -> str | None:
    """``code_version()`` taken once per process, at the first call. A worker calls it as it imports the plugins: a
    long-lived process keeps the modules it imported even after the files change, so the commit at the driver's start
    (or at the time of storing) can name other code than the trial ran."""
    return code_version()


def code_changed_since(commit: str | None, root: Path = PROJECT_ROOT) -> bool | None:
    """Whether the code on disk (``CODE_PATHS``) differs from ``commit``; None if that cannot be told."""
    if not commit or commit.endswith("-dirty"):
        return None
    diff = run_git("diff", "--quiet", commit, "--", *CODE_PATHS, root=root)
    return None if diff is None else {0: False, 1: True}.get(diff.returncode)
