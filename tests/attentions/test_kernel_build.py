"""Kernel builds: named by the sources' content, shared by checkouts, never blocked by a dead builder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils import cpp_extension

from attentions import _fused_cpu
from attentions import _kernel_build as kb


def checkout(tmp_path: Path, name: str) -> list[Path]:
    """A copy of the kernel sources somewhere else, as a second clone or worktree would hold them."""
    folder = tmp_path / name / "attentions" / "csrc"
    shutil.copytree(_fused_cpu.CSRC, folder)
    return sorted(path for path in folder.iterdir() if path.suffix in (".cpp", ".h"))


def test_the_build_name_follows_the_sources_content_not_their_path(tmp_path):
    args = _fused_cpu.build_args()
    here = kb.build_name(**args)
    assert here.startswith(args["base"] + "_") and len(here) == len(args["base"]) + 13
    elsewhere = {**args, "files": checkout(tmp_path, "clone")}
    assert kb.build_name(**elsewhere) == here
    changed = checkout(tmp_path, "edited")
    edited = next(path for path in changed if path.name == "log_sinkhorn.cpp")
    edited.write_text(edited.read_text() + "\n// a changed kernel\n")
    assert kb.build_name(**{**args, "files": changed}) != here
    assert kb.build_name(**{**args, "cflags": [*args["cflags"], "-DEXTRA"]}) != here


def test_a_finished_build_is_imported_from_another_checkout_without_building(tmp_path, monkeypatch):
    args = _fused_cpu.build_args()
    folder = kb.build_root() / kb.build_name(**args)
    if not (folder / kb.BUILT).exists():
        pytest.skip("the CPU kernels are not built here (`make kernel` builds them)")

    def no_build(**kwargs):
        raise AssertionError("a finished build must be imported, not built again")

    monkeypatch.setattr(cpp_extension, "load", no_build)
    module = kb.load_extension(**{**args, "files": checkout(tmp_path, "worktree")})
    assert callable(module.log_sinkhorn_forward)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from attentions import _kernel_build as kb

    folder = Path(sys.argv[1])
    with kb.builder_lock(folder, wait_s=5):
        (folder / kb.TORCH_LOCK).write_text("")  # what torch's FileBaton leaves while it compiles
        print("building", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def builder(tmp_path):
    """A process that holds a build folder's locks as a compiling builder does; killed by the test or at the end."""
    folder = tmp_path / "root" / "ext_0123456789ab"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout.readline().strip() == "building"
    yield SimpleNamespace(folder=folder, process=process)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_builder_killed_mid_build_blocks_no_later_load(builder, monkeypatch):
    assert (builder.folder / kb.TORCH_LOCK).exists()
    os.killpg(builder.process.pid, signal.SIGKILL)  # killed mid-build: torch's lock file stays behind
    builder.process.wait(timeout=30)
    assert (builder.folder / kb.TORCH_LOCK).exists()
    seen = []

    def build(*, name, sources, build_directory, **kwargs):  # torch would wait forever on a lock file it finds
        seen.append(Path(build_directory, kb.TORCH_LOCK).exists())
        return SimpleNamespace(name=name, sources=sources)

    monkeypatch.setattr(kb, "build_name", lambda *a, **k: builder.folder.name)
    monkeypatch.setattr(cpp_extension, "load", build)
    source = builder.folder.parent / "a.cpp"
    source.write_text("// kernel\n")
    started = time.monotonic()
    module = kb.load_extension("ext", [source], ["a.cpp"], wait_s=5, root=builder.folder.parent)
    assert time.monotonic() - started < 3
    assert seen == [False], "the dead builder's lock is removed before torch looks for it"
    assert module.sources == [str(builder.folder / "src" / "a.cpp")]  # compiled from the staged copy
    assert (builder.folder / kb.BUILT).exists()


def test_a_live_builder_is_waited_for_only_as_long_as_allowed(builder):
    started = time.monotonic()
    with pytest.raises(kb.KernelBuildTimeout, match=r"another process has been building ext_0123456789ab"):
        with kb.builder_lock(builder.folder, wait_s=0.5):
            pass
    assert 0.5 <= time.monotonic() - started < 3
    assert (builder.folder / kb.TORCH_LOCK).exists(), "a live builder's lock is left alone"


def test_the_kernels_fall_back_to_torch_operators_when_the_build_takes_too_long(builder, tmp_path):
    """The real kernel, whose build folder another (live) process holds: the load gives up after the bounded wait."""
    name = kb.build_name(**_fused_cpu.build_args())
    folder = builder.folder.parent / name
    builder.folder.rename(folder)  # the holder keeps its lock on the open file, wherever the folder is
    probe = textwrap.dedent(
        """
        import warnings
        from attentions import _fused_cpu
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print("kernel:", _fused_cpu.kernel())
        print(*[str(w.message) for w in caught], sep="\\n")
        """
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(folder.parent), kb.WAIT_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kernel: None" in out.stdout
    assert "gave up waiting for the CPU kernels" in out.stdout and "torch operators" in out.stdout
