"""The committed lock (requirements.lock) covers every dependency pyproject.toml names, at versions its ranges allow.

`make install` installs with the lock as pip constraints, so a dependency added to pyproject.toml without `make lock`
would install unpinned; this test names it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name.split("[")[0])] = Version(version.split(";")[0].strip())
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [line for extra in project["optional-dependencies"].values() for line in extra]
    return [Requirement(line) for line in lines]


def test_every_declared_dependency_is_locked_within_its_range():
    pins = _locked()
    problems = []
    for requirement in _declared():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: not in requirements.lock (run `make lock`)")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}: locked at {version}, outside {requirement.specifier}")
    assert not problems, "\n".join(problems)


def test_torch_is_locked_at_the_pinned_cpu_build():
    assert _locked()["torch"].base_version == "2.13.0"
