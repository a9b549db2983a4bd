"""Checkpoints of one trial: DeepSpeed's own ``save_checkpoint``/``load_checkpoint``, in a folder per trial.

A trial's checkpoints live in ``<root>/<trial_id>/`` where ``root`` is a local folder (default ``<results>/
checkpoints``) or a pyarrow-filesystem URI (``s3://bucket/ckpt``, ``gs://...``, ``file:///...``) for clusters with
shared storage. DeepSpeed writes to a local folder, so for a URI it writes to a staging folder on the worker, which is
copied up after every save (tag folder first, DeepSpeed's ``latest`` pointer last, so a reader never sees a pointer
to a half-copied tag) and copied down before a resume.

Inside the trial folder everything sits under ``_deepspeed/``: pyarrow's dataset discovery skips names starting with
``_``, so ``pandas.read_parquet(results)`` keeps working while checkpoints exist beside the Parquet parts.

Tags: ``step<N>`` for the periodic checkpoints (only the newest is kept; DeepSpeed's ``latest`` names it) and
``best-step<N>`` for the weights ``train.select: best`` will test (saved without moving ``latest``). A crash in the
middle of a save leaves ``latest`` on the previous complete tag, because DeepSpeed writes the pointer last.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STAGING = "attnbench-checkpoints"
INNER = "_deepspeed"
LATEST = "latest"


def is_uri(root: str) -> bool:
    return "://" in root


def trial_folder(root: str, trial_id: str) -> str:
    """The folder (path or URI) that holds every checkpoint of one trial."""
    return f"{root.rstrip('/')}/{trial_id}"


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def _copy_tree(source_fs, source: str, destination_fs, destination: str) -> None:
    """Copy a file or a folder's files between two pyarrow filesystems, creating the folders on the way."""
    import pyarrow.fs as pafs

    info = source_fs.get_file_info(source)
    if info.type == pafs.FileType.File:
        files = [(source, destination)]
    else:
        found = source_fs.get_file_info(pafs.FileSelector(source, recursive=True))
        files = [
            (entry.path, f"{destination}/{entry.path[len(source) :].lstrip('/')}")
            for entry in found
            if entry.type == pafs.FileType.File
        ]
    for src, dst in files:
        destination_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(src, dst, source_fs, destination_fs)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class TrialCheckpoints:
    """Save, find, restore and remove the checkpoints of one trial (every rank calls save and restore)."""

    def __init__(self, root: str | Path, trial_id: str):
        self.root, self.trial_id = str(root), trial_id
        self.folder = trial_folder(self.root, trial_id)
        if is_uri(self.root):
            self.local = Path(tempfile.gettempdir()) / STAGING / trial_id / INNER
        else:
            self.local = Path(self.folder) / INNER

    # -- reading ---------------------------------------------------------------------------------------------
    def _download(self) -> None:
        import pyarrow.fs as pafs

        fs, path = _filesystem(self.folder)
        remote = f"{path}/{INNER}"
        shutil.rmtree(self.local, ignore_errors=True)
        if fs.get_file_info(f"{remote}/{LATEST}").type == pafs.FileType.NotFound:
            return
        _copy_tree(fs, remote, pafs.LocalFileSystem(), str(self.local))

    def latest_tag(self) -> str | None:
        pointer = self.local / LATEST
        return pointer.read_text().strip() if pointer.is_file() else None

    def restore_latest(self, engine) -> dict[str, Any] | None:
        """Load the newest periodic checkpoint into ``engine``; its client state, or None when there is none."""
        if is_uri(self.root):
            if _rank() == 0:
                self._download()
            _barrier()
        tag = self.latest_tag()
        if tag is None:
            return None
        path, client_state = engine.load_checkpoint(str(self.local), tag=tag)
        if path is None:
            raise RuntimeError(f"checkpoint {self.local / tag} of trial {self.trial_id} could not be loaded")
        return client_state

    def load_weights(self, engine, tag: str) -> None:
        """Load only the model weights of ``tag`` (the ``best`` checkpoint that ``select: best`` tests)."""
        path, _ = engine.load_checkpoint(
            str(self.local), tag=tag, load_optimizer_states=False, load_lr_scheduler_states=False, load_module_only=True
        )
        if path is None:
            raise RuntimeError(f"checkpoint {self.local / tag} of trial {self.trial_id} could not be loaded")

    # -- writing ---------------------------------------------------------------------------------------------
    def save(self, engine, step: int, client_state: dict[str, Any]) -> str:
        """Save the whole training state as ``step<N>``, make it ``latest``, drop older periodic tags."""
        tag = f"step{step}"
        engine.save_checkpoint(str(self.local), tag=tag, client_state=client_state, save_latest=True)
        _barrier()
        if _rank() == 0:
            keep = {tag, client_state.get("best_tag")}
            self._prune(lambda name: name.startswith("step") and name not in keep)
            self._upload(tag)
        _barrier()
        return tag

    def save_best(self, engine, step: int) -> str:
        """Save the weights of a new best validation step as ``best-step<N>``; drop the previous best."""
        tag = f"best-step{step}"
        engine.save_checkpoint(str(self.local), tag=tag, client_state={}, save_latest=False)
        _barrier()
        if _rank() == 0:
            self._prune(lambda name: name.startswith("best-step") and name != tag)
            self._upload(tag)
        _barrier()
        return tag

    def drop_best_except(self, keep: str | None) -> None:
        """After a resume: a ``best`` saved after the restored step belongs to the lost future; remove it."""
        if _rank() == 0:
            self._prune(lambda name: name.startswith("best-step") and name != keep)
        _barrier()

    def _prune(self, doomed) -> None:
        if not self.local.is_dir():
            return
        for entry in self.local.iterdir():
            if entry.is_dir() and doomed(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                if is_uri(self.root):
                    fs, path = _filesystem(self.folder)
                    fs.delete_dir(f"{path}/{INNER}/{entry.name}")

    def _upload(self, tag: str) -> None:
        if not is_uri(self.root):
            return
        import pyarrow.fs as pafs

        fs, path = _filesystem(self.folder)
        local_fs = pafs.LocalFileSystem()
        _copy_tree(local_fs, str(self.local / tag), fs, f"{path}/{INNER}/{tag}")
        if (self.local / LATEST).is_file():
            _copy_tree(local_fs, str(self.local / LATEST), fs, f"{path}/{INNER}/{LATEST}")

    def remove(self) -> None:
        """Delete every checkpoint of the trial (local staging included); a missing folder is fine."""
        import pyarrow.fs as pafs

        if is_uri(self.root):
            shutil.rmtree(self.local.parent, ignore_errors=True)
            fs, path = _filesystem(self.folder)
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                fs.delete_dir(path)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Every random stream a trial draws from (dropout, Gumbel noise, sampling): torch's CPU and CUDA generators.
    Data order needs none: a task's training batch is a pure function of (seed, step)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
