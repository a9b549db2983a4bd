"""Build and load a C++ extension so that no checkout, killed builder or waiting process gets in another's way.

``torch.utils.cpp_extension.load`` alone keys its build folder by the extension's name: a second checkout (a clone, a
``rerun --at-commit`` worktree) writes a build file with other source paths and rebuilds, and the first checkout then
rebuilds again. It also guards each build with a ``lock`` file that holds no owner: a builder killed mid-build leaves
it behind and every later load waits on it forever. Here instead:

* the build folder is named after a hash of the sources' contents, the compiler flags, Python and torch, so identical
  sources share one build from any path, and changed sources never overwrite another build;
* the sources are copied into that folder and compiled from there, so the build file is the same from every checkout;
* a finished build is marked, and later processes import the library directly, without compiler, ninja or lock;
* builders take an ``fcntl`` lock that the kernel releases when its holder dies: whoever holds it knows that a torch
  ``lock`` file left in the folder belongs to a dead builder, and removes it;
* a process waits for another's build at most ``ATTNBENCH_KERNEL_WAIT`` seconds (default 300), then gives up with
  ``KernelBuildTimeout`` so that its caller can fall back to a slower path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch

WAIT_ENV, DEFAULT_WAIT_S = "ATTNBENCH_KERNEL_WAIT", 300.0
BUILT = "attnbench-built"  # written once the library loaded: later processes import it directly
BUILDER_LOCK = ".attnbench-builder.lock"  # fcntl lock, released by the kernel when its holder dies
TORCH_LOCK = "lock"  # torch's own FileBaton file inside a build folder
POLL_S = 0.2


class KernelBuildTimeout(TimeoutError):
    """Another process held the build for longer than the caller was willing to wait."""


def wait_seconds() -> float:
    return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))


def build_root() -> Path:
    """Where extensions are built: ``TORCH_EXTENSIONS_DIR``, else torch's default root with a Python-version folder
    (the same place ``cpp_extension.load`` uses)."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured)
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root()) / f"py{sys.version_info.major}{sys.version_info.minor}_cpu"


def source_digest(files: Sequence[Path], flags: Sequence[str]) -> str:
    """Hash of what decides the library's bits: each file's name and content, the flags, Python and torch versions.
    The folder the files live in is left out on purpose."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\0".join(flags).encode())
    digest.update(f"{sys.version_info[:2]} {torch.__version__}".encode())
    return digest.hexdigest()


def build_name(
    base: str, files: Sequence[Path], compiled: Sequence[str], cflags: Sequence[str] = (), ldflags: Sequence[str] = ()
) -> str:
    """The extension's module name and build folder: ``base`` and 12 hex digits of ``source_digest``."""
    return f"{base}_{source_digest(files, [*cflags, '|', *ldflags, '|', *compiled])[:12]}"


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the extension library {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def builder_lock(folder: Path, wait_s: float) -> Iterator[None]:
    """Hold the folder's builder lock, waiting at most ``wait_s`` seconds for another holder (then
    ``KernelBuildTimeout``). Held, it also clears a torch ``lock`` file: only a dead builder can have left one."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / BUILDER_LOCK, "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KernelBuildTimeout(
                        f"another process has been building {folder.name} in {folder.parent} for more than "
                        f"{wait_s:g}s ({WAIT_ENV})"
                    ) from None
                time.sleep(POLL_S)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} {os.uname().nodename}\n")
            handle.flush()
            remove_stale_torch_lock(folder)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_torch_lock(folder: Path) -> bool:
    """Remove torch's ``lock`` in ``folder``; call only while holding the builder lock. True if one was there."""
    stale = folder / TORCH_LOCK
    if not stale.exists():
        return False
    stale.unlink(missing_ok=True)
    return True


def _stage_sources(files: Sequence[Path], folder: Path) -> list[Path]:
    """Copies of ``files`` in ``folder/src`` (written once: same content, same mtime, so ninja finds nothing to do)."""
    staged = folder / "src"
    staged.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        target = staged / path.name
        if not target.exists():
            handle, temporary = tempfile.mkstemp(dir=staged, prefix=f".{path.name}.")
            os.close(handle)
            shutil.copyfile(path, temporary)
            os.replace(temporary, target)
        out.append(target)
    return out


def load_extension(
    base: str,
    files: Sequence[Path],
    compiled: Sequence[str],
    *,
    cflags: Sequence[str] = (),
    ldflags: Sequence[str] = (),
    wait_s: float | None = None,
    root: Path | None = None,
) -> ModuleType:
    """Build (once per content) and import the extension made of ``files`` (every source and header it needs), of
    which the names in ``compiled`` are the translation units. Raises ``KernelBuildTimeout`` when another process's
    build outlasts ``wait_s``, and whatever torch raises when the build fails."""
    from torch.utils import cpp_extension

    name = build_name(base, files, compiled, cflags, ldflags)
    folder = (root or build_root()) / name
    library = folder / f"{name}.so"
    if (folder / BUILT).exists() and library.exists():
        return _import(name, library)
    with builder_lock(folder, wait_seconds() if wait_s is None else wait_s):
        if (folder / BUILT).exists() and library.exists():  # built while this process waited
            return _import(name, library)
        staged = {path.name: path for path in _stage_sources(files, folder)}
        module = cpp_extension.load(
            name=name,
            sources=[str(staged[unit]) for unit in compiled],
            extra_cflags=list(cflags),
            extra_ldflags=list(ldflags),
            build_directory=str(folder),
            verbose=False,
        )
        (folder / BUILT).write_text(f"{name}\n")
        return module
