"""Atomic output folders: a run writes into a hidden staging folder, moved into place only when it succeeds.

An interrupted or failed run leaves the destination as it was. A successful one
first removes the files the previous run recorded in the folder's manifest
(``.rope-interp-files.json``) that this run does not write again, then moves its
files in, ``summary.json`` and ``report.html`` last: at no moment does the folder
hold an old ``report.html`` or ``summary.json`` beside new tables. Files that
rope_interp did not write are never touched.

Under ``torchrun`` only rank 0 commits, and only after every rank said it succeeded
(:func:`rope_interp.distributed.agree`); the other ranks write into private folders that
are deleted.

>>> import tempfile, pathlib
>>> dest = pathlib.Path(tempfile.mkdtemp()) / "out"
>>> with StagedOutput(dest) as stage:
...     _ = (stage.folder() / "a.csv").write_text("x")
>>> sorted(p.name for p in dest.iterdir())
['.rope-interp-files.json', 'a.csv']
>>> try:
...     with StagedOutput(dest) as stage:
...         _ = (stage.folder() / "b.csv").write_text("y")
...         raise KeyboardInterrupt
... except KeyboardInterrupt:
...     pass
>>> sorted(p.name for p in dest.iterdir())  # the failed run left nothing behind
['.rope-interp-files.json', 'a.csv']
"""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import distributed

MANIFEST = ".rope-interp-files.json"
LAST = ("summary.json", "report.html")  # moved last: their presence means the run finished

_STAGE: contextvars.ContextVar[StagedOutput | None] = contextvars.ContextVar(
    "rope_interp_stage", default=None
)


def current_stage() -> StagedOutput | None:
    """The staging folder of the running command, if any."""
    return _STAGE.get()


class StagedOutput:
    """Context manager: a staging folder next to ``dest``, committed to ``dest`` on success."""

    def __init__(self, dest: str | Path):
        self.dest = Path(dest)
        self._folder: Path | None = None
        self._token: Any = None

    def folder(self) -> Path:
        """The staging folder (created on first use, beside ``dest`` so the final moves are renames)."""
        if self._folder is None and not distributed.is_root():
            # another rank of a torchrun job: a private folder, never moved into dest (rank 0 writes)
            self._folder = Path(tempfile.mkdtemp(prefix="rope-interp-rank-"))
        if self._folder is None:
            parent = self.dest.absolute().parent
            parent.mkdir(parents=True, exist_ok=True)
            self._folder = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.partial-", dir=parent))
        return self._folder

    def is_staging(self, path: str | Path) -> bool:
        """Whether ``path`` is this stage's staging folder (False until :meth:`folder` created it)."""
        return self._folder is not None and Path(path) == self._folder

    def __enter__(self) -> StagedOutput:
        self._token = _STAGE.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _STAGE.reset(self._token)
        try:
            if (
                distributed.world() is not None
                and (exc is None or isinstance(exc, Exception))  # Ctrl-C / SIGTERM: just clean up
                and not (exc is not None and distributed.reported(exc))
            ):
                # every rank says whether it succeeded before rank 0 commits (raises on all if one failed)
                distributed.agree(exc, "writing the outputs")
            if exc_type is None and self._folder is not None and distributed.is_root():
                self.commit()
        finally:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def commit(self) -> list[Path]:
        """Move the staged files into ``dest`` (see the module docstring); returns their final paths."""
        assert self._folder is not None
        files = sorted(str(p.relative_to(self._folder)) for p in self._folder.rglob("*") if p.is_file())
        self.dest.mkdir(parents=True, exist_ok=True)
        manifest = self.dest / MANIFEST
        old: list[str] = []
        if manifest.is_file():
            try:
                old = list(json.loads(manifest.read_text()))
            except (ValueError, TypeError):
                old = []
        for name in [*LAST, *old]:  # the old report markers first, then stale files of the last run
            if name in LAST or name not in files:
                target = self.dest / name
                if target.is_file() and target.resolve().is_relative_to(self.dest.resolve()):
                    target.unlink()
        moved = []
        for name in sorted(files, key=lambda n: (n in LAST, LAST.index(n) if n in LAST else 0, n)):
            target = self.dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._folder / name, target)
            moved.append(target)
        tmp = self.dest / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(files, indent=1))
        os.replace(tmp, manifest)
        return moved
