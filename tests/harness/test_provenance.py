"""``code_version``: the commit of the code, flagged ``-dirty`` only when tracked code (not results) differs from it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.provenance import code_changed_since, code_version, git_sha

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_code_version_names_the_commit_and_flags_changed_code_only(tmp_path):
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "attentions").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "attentions" / "plugin.py").write_text("X = 1\n")
    (tmp_path / "results" / "part.parquet").write_text("rows\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    sha = git(tmp_path, "rev-parse", "HEAD")
    assert git_sha(tmp_path) == sha and code_version(tmp_path) == sha
    (tmp_path / "results" / "part.parquet").write_text("more rows\n")  # a store that grows is not a code change
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert code_version(tmp_path) == sha and code_changed_since(sha, tmp_path) is False
    (tmp_path / "attentions" / "plugin.py").write_text("X = 2\n")
    assert code_version(tmp_path) == sha + "-dirty" and code_changed_since(sha, tmp_path) is True
    assert code_changed_since(sha + "-dirty", tmp_path) is None  # uncommitted code: nothing to compare against


def test_outside_a_checkout_there_is_no_version(tmp_path):
    assert git_sha(tmp_path) is None and code_version(tmp_path) is None
