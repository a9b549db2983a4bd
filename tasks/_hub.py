"""Data sets by Hugging Face id (``data: "hf:ID"``), content hashes of local data, and the one failure message.

``ID`` goes to ``datasets.load_dataset`` unchanged, in the user's usual cache (``HF_HOME``, ``HF_DATASETS_CACHE``) and
honouring ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``; so a local folder in the Hub's Parquet layout
(``data/train-00000-of-00001.parquet`` ...) loads the same way, which is how the tests run without a network.

Map-style loads are memory-mapped Arrow (the Parquet files are converted once into the cache, then read without
copying into RAM); ``streaming=True`` reads the Parquet shards in order and stops after what a task asks for, which
LM1B at small scale uses (see ``tasks.lm``).

A load that fails raises ``HubError``, whose message is a pure function of (task, id, kind, offline): every trial on
one unreachable id fails with the same one line, no traceback of the Hub client, so a driver can group them with
``failure_key``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PREFIX = "hf:"
_KEY = re.compile(r"data 'hf:([^']+)': (not found|unreachable|unreadable|missing the datasets package)")


class HubError(RuntimeError):
    """A Hugging Face data set that could not be loaded; the message names the id, the kind and what to do."""


def hub_id(data: str | None) -> str | None:
    """``"hf:ID"`` -> ``ID``; anything else (a local path, None) -> None."""
    if isinstance(data, str) and data.startswith(PREFIX):
        hid = data[len(PREFIX) :].strip()
        if not hid:
            raise ValueError(f"data {data!r}: expected hf:ID with a Hugging Face data set id or folder after 'hf:'")
        return hid
    return None


def offline() -> bool:
    """Whether the Hub client is in offline mode (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set truthy)."""
    try:
        import datasets

        return bool(datasets.config.HF_HUB_OFFLINE)
    except ImportError:
        return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in _OFFLINE_VARS)


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_error(task: str, hid: str, exc: BaseException | None) -> HubError:
    """The one message for a failed load; deterministic (no paths, no retries, no exception text)."""
    if exc is None:
        kind, advice = "missing the datasets package", "install it (pip install datasets, or make install)"
    elif isinstance(exc, ConnectionError) or _named(exc, "OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        kind = "unreachable"
        advice = (
            "it is not in the local cache and offline mode is on: load it once with HF_HUB_OFFLINE unset, "
            "or name a local folder"
            if offline()
            else "check the network and the id, or download it elsewhere and name the folder"
        )
    elif isinstance(exc, FileNotFoundError) or _named(exc, "DatasetNotFoundError", "RepositoryNotFoundError"):
        kind = "not found"
        advice = "check the id on huggingface.co/datasets (owner/name), or the local folder's path"
    else:
        kind = "unreadable"
        advice = f"the loader raised {type(exc).__name__}; check that it is a data set in the Hub's layout"
    state = "offline" if offline() else "online"
    return HubError(f"task {task!r}: data 'hf:{hid}': {kind} ({state}); {advice}")


def _named(exc: BaseException, *names: str) -> bool:
    return any(type(e).__name__ in names for e in _chain(exc))


def _chain(exc: BaseException | None) -> Iterable[BaseException]:
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


def failure_key(error: str | None) -> str | None:
    """For a driver's end-of-run summary: ``"hf:ID: KIND"`` if a stored error is a Hub load failure, else None.

    Trials with the same key failed for one reason; print the message once with the count, not N tracebacks.
    """
    match = _KEY.search(str(error or ""))
    return f"hf:{match.group(1)}: {match.group(2)}" if match else None


def load(task: str, hid: str, *, streaming: bool = False) -> tuple[Any, dict[str, Any]]:
    """(DatasetDict or IterableDatasetDict, provenance) of ``hf:hid``; raises ``HubError`` on any failure."""
    try:
        import datasets
    except ImportError:
        raise hub_error(task, hid, None) from None
    try:
        builder = datasets.load_dataset_builder(hid)
        loaded = datasets.load_dataset(hid, streaming=streaming)
    except Exception as exc:  # the Hub client raises many types; all become the one message
        raise hub_error(task, hid, exc) from None
    # For a Hub repository the builder's hash is the resolved commit; for a local folder, a hash of its files.
    provenance: dict[str, Any] = {"source": "hf", "id": hid, "revision": builder.hash, "splits": sorted(loaded)}
    if Path(hid).expanduser().is_dir():
        provenance["path"] = str(Path(hid).expanduser().resolve())
        provenance["sha256"] = content_hash(Path(hid).expanduser())
    return loaded, provenance


def split(task: str, hid: str, loaded: Any, name: str) -> Any:
    """One split, or a ``HubError``-style message naming the splits there are."""
    if name not in loaded:
        raise HubError(
            f"task {task!r}: data 'hf:{hid}': unreadable; no split {name!r} (it has {', '.join(sorted(loaded))})"
        )
    return loaded[name]


def columns(task: str, hid: str, dataset: Any, wanted: Iterable[str]) -> None:
    """Check that a split has the columns a task maps; the message names the missing and the present ones."""
    present = dataset.column_names  # None for a stream whose features are not known before reading
    missing = [] if present is None else [c for c in wanted if c not in present]
    if missing:
        raise HubError(
            f"task {task!r}: data 'hf:{hid}': unreadable; missing column(s) {', '.join(missing)} "
            f"(it has {', '.join(present)})"
        )


def content_hash(paths: Path | Iterable[Path], chunk: int = 1 << 20) -> str:
    """SHA-256 over the relative names and the full content of the files (streamed), in sorted order."""
    if isinstance(paths, Path):
        root = paths
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        root = root if root.is_dir() else root.parent
    else:
        files = sorted(Path(p) for p in paths)
        root = Path(os.path.commonpath([str(p) for p in files])) if files else Path(".")
        root = root if root.is_dir() else root.parent
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def path_provenance(path: str | Path, files: Iterable[Path]) -> dict[str, Any]:
    """Provenance of a local release folder: its path and the content hash of the files that were read."""
    return {"source": "path", "path": str(Path(path).expanduser().resolve()), "sha256": content_hash(list(files))}
