"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing page or a bad anchor fails),
and the README's links into it point at pages that exist.

The build runs on a copy of ``mkdocs.yml`` and ``docs/`` so it writes nothing into the checkout. The replication page
is generated from the study's claims and store; where it has not been generated, a placeholder stands in so the rest
of the site is still checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).with_name("mkdocs")


@pytest.mark.skipif(not MKDOCS.exists(), reason="mkdocs is not installed (make install installs the docs extra)")
def test_the_site_builds_strictly(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    generated = tmp_path / "docs" / "replication.md"
    if not generated.exists():
        generated.write_text("# Replication study\n\nGenerated from the study's claims and store.\n")
    built = subprocess.run(
        # never --quiet: it silences the warnings that --strict counts, and a broken link would pass
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's notice about its successor, not about our pages
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert not re.search(r"^(WARNING|ERROR)\b", built.stderr, re.MULTILINE), built.stderr
    pages = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {"index.html", "getting-started/index.html", "replication/index.html"} <= pages


def test_the_readme_links_only_to_files_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the documentation"
    missing = [t for t in local if not (ROOT / t).exists() and t != "docs/replication.md"]
    assert not missing, f"README links to missing files: {missing}"
