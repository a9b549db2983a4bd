"""Fixtures shared by the harness tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import attentions


@pytest.fixture
def register_plugins(monkeypatch) -> Callable[[Path], Path]:
    """Register a folder of test plugins in this process too, on a copy of the registry that the test's end restores
    (the shipped plugins are discovered first, so nothing leaks into later tests)."""

    def register(folder: Path) -> Path:
        registry = attentions.base.REGISTRY
        attentions.names()
        monkeypatch.setattr(registry, "_classes", dict(registry._classes))
        attentions.load_plugin_dir(folder)
        return folder

    return register


@pytest.fixture
def dying_plugins(register_plugins) -> Path:
    """The folder of ``dies_once`` (a worker that dies once mid-trial, tests/harness/plugins/dying), registered."""
    return register_plugins(Path(__file__).parent / "plugins" / "dying")
