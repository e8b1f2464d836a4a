"""Atomic output folders: a run writes into a hidden staging folder inside ``--out``, moved into place only
when it succeeds.

The folder's format: ``.rope-interp-files.json`` (the manifest: the files rope_interp wrote there) and
``.rope-interp-complete`` (the marker, written last by a commit that finished; :func:`is_complete`).
A commit (:meth:`StagedOutput.commit`)

* stages in ``DEST/.rope-interp-staging-*`` — inside the destination, so every move is a rename on one
  file system (``--out`` may be a mount point);
* refuses, before touching anything, to overwrite a file that is not in the manifest
  (:class:`~rope_interp.errors.OutputError` naming it): files rope_interp did not write are never touched;
* is all-or-nothing: it removes the marker first, moves the previous run's files aside, moves the new
  ones in (``summary.json`` and ``report.html`` last), then writes the manifest and the marker. A
  failure part-way moves everything back: the folder is fully old or fully new. Only a process killed
  mid-commit can leave a mixed folder, and that one has no marker (and its manifest lists both runs'
  files, so the next run replaces them).

An interrupted or failed run leaves the destination as it was. A staging folder records its owner
(pid, host, time); one left by a killed run is removed by the next run on that destination when its pid
is dead on this host, or when it is older than :data:`STALE_AFTER_S`.

Under ``torchrun`` only rank 0 commits, and only after every rank said it succeeded
(:func:`rope_interp.distributed.agree`); the other ranks stage too, and their folders are deleted.

>>> import tempfile, pathlib
>>> dest = pathlib.Path(tempfile.mkdtemp()) / "out"
>>> with StagedOutput(dest) as stage:
...     _ = (stage.folder() / "a.csv").write_text("x")
>>> sorted(p.name for p in dest.iterdir()), is_complete(dest)
(['.rope-interp-complete', '.rope-interp-files.json', 'a.csv'], True)
>>> try:
...     with StagedOutput(dest) as stage:
...         _ = (stage.folder() / "b.csv").write_text("y")
...         raise KeyboardInterrupt
... except KeyboardInterrupt:
...     pass
>>> sorted(p.name for p in dest.iterdir())  # the failed run left nothing behind
['.rope-interp-complete', '.rope-interp-files.json', 'a.csv']
"""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import OutputError

MANIFEST = ".rope-interp-files.json"
MARKER = ".rope-interp-complete"
STAGING_PREFIX = ".rope-interp-staging-"
OWNER = ".rope-interp-owner.json"  # inside a staging folder: who stages there (never committed)
STALE_AFTER_S = 7 * 24 * 3600.0  # a staging folder older than this is removed whoever owned it
LAST = ("summary.json", "report.html")  # moved last: their presence means the run finished

_STAGE: contextvars.ContextVar[StagedOutput | None] = contextvars.ContextVar(
    "rope_interp_stage", default=None
)


def current_stage() -> StagedOutput | None:
    """The staging folder of the running command, if any."""
    return _STAGE.get()


def is_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds the outputs of a commit that finished (its marker is there)."""
    return (Path(folder) / MARKER).is_file()


def manifest(folder: str | Path) -> list[str]:
    """The files rope_interp wrote into ``folder`` (its manifest; ``[]`` when there is none)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [str(n) for n in data] if isinstance(data, list) else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale(dest: str | Path, now: float | None = None) -> list[Path]:
    """Remove the staging folders in ``dest`` left by dead runs; returns them.

    A folder is stale when its owner record names this host and a pid that is not running, or when it
    (or its record) is older than :data:`STALE_AFTER_S`; a folder without a readable record is judged
    by its modification time.
    """
    dest, now = Path(dest), time.time() if now is None else now
    removed = []
    for folder in dest.glob(f"{STAGING_PREFIX}*") if dest.is_dir() else []:
        try:
            owner = json.loads((folder / OWNER).read_text())
            pid, host, created = int(owner["pid"]), str(owner["host"]), float(owner["created"])
        except (OSError, ValueError, KeyError, TypeError):
            pid, host, created = -1, "", folder.stat().st_mtime
        dead = host == socket.gethostname() and pid > 0 and not _alive(pid)
        if dead or now - created > STALE_AFTER_S:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class StagedOutput:
    """Context manager: a staging folder inside ``dest``, committed to ``dest`` on success.

    ``expect``: file names the run will write, checked against the manifest on entry (a file of that
    name that rope_interp did not write is refused before any work); every staged file is checked
    again at commit.
    """

    def __init__(self, dest: str | Path, expect: tuple[str, ...] = ()):
        self.dest = Path(dest)
        self.expect = tuple(expect)
        self._folder: Path | None = None
        self._created_dest = False
        self._token: Any = None

    def folder(self) -> Path:
        """The staging folder (created on first use, inside ``dest`` so the final moves are renames)."""
        if self._folder is None:
            if self.dest.exists() and not self.dest.is_dir():
                raise OutputError(f"--out {self.dest} is a file, not a folder: choose another --out")
            self._created_dest = not self.dest.exists()
            self.dest.mkdir(parents=True, exist_ok=True)
            remove_stale(self.dest)
            w = distributed.world()
            tag = "" if w is None else f"rank{w.rank}-"
            self._folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{tag}", dir=self.dest))
            record = {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}
            (self._folder / OWNER).write_text(json.dumps(record))
        return self._folder

    def is_staging(self, path: str | Path) -> bool:
        """Whether ``path`` is this stage's staging folder (False until :meth:`folder` created it)."""
        return self._folder is not None and Path(path) == self._folder

    def check_not_foreign(self, names: list[str] | tuple[str, ...]) -> None:
        """Raise :class:`OutputError` naming the first of ``names`` that exists in ``dest`` but is not ours."""
        ours = set(manifest(self.dest))
        for name in names:
            target = self.dest / name
            if name not in ours and (target.exists() or target.is_symlink()):
                raise OutputError(
                    f"{target} exists and rope_interp did not write it (it is not in {self.dest / MANIFEST}): "
                    "refusing to overwrite it; move it away or choose another --out"
                )

    def __enter__(self) -> StagedOutput:
        if self.expect and distributed.is_root():
            self.check_not_foreign(self.expect)
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
                if self._created_dest and self.dest.is_dir() and not any(self.dest.iterdir()):
                    self.dest.rmdir()  # a failed first run leaves no empty folder

    def _staged(self) -> list[str]:
        assert self._folder is not None
        skip = {OWNER, "_old"}
        return sorted(
            str(p.relative_to(self._folder))
            for p in self._folder.rglob("*")
            if p.is_file() and p.relative_to(self._folder).parts[0] not in skip
        )

    def commit(self) -> list[Path]:
        """Move the staged files into ``dest`` (see the module docstring); returns their final paths."""
        assert self._folder is not None
        files = self._staged()
        self.check_not_foreign(files)
        old = [n for n in manifest(self.dest) if (self.dest / n).is_file() and n not in (MANIFEST, MARKER)]
        kept = {n: (self.dest / n).read_bytes() for n in (MANIFEST, MARKER) if (self.dest / n).is_file()}
        aside = self._folder / "_old"
        _write(self.dest / MANIFEST, sorted(set(old) | set(files)))  # a killed commit's files stay ours
        (self.dest / MARKER).unlink(missing_ok=True)
        moved_aside: list[str] = []
        moved_in: list[str] = []
        order = sorted(files, key=lambda n: (n in LAST, LAST.index(n) if n in LAST else 0, n))
        try:
            for name in sorted(old, key=lambda n: (n not in LAST, n)):  # the old report markers first
                (aside / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.dest / name, aside / name)
                moved_aside.append(name)
            for name in order:
                target = self.dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._folder / name, target)
                moved_in.append(name)
            _write(self.dest / MANIFEST, files)
            _write(self.dest / MARKER, {"files": len(files), "pid": os.getpid(), "time": time.time()})
        except BaseException:
            for name in reversed(moved_in):  # back out: the folder as it was
                os.replace(self.dest / name, self._folder / name)
            for name in reversed(moved_aside):
                os.replace(aside / name, self.dest / name)
            for name in (MANIFEST, MARKER):  # byte for byte
                if name in kept:
                    _write(self.dest / name, kept[name])
                else:
                    (self.dest / name).unlink(missing_ok=True)
            raise
        return [self.dest / n for n in order]


def _write(path: Path, data: Any) -> None:
    """Write JSON (or ``bytes`` as they are) atomically: a temporary file renamed over ``path``."""
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else json.dumps(data, indent=1).encode())
    os.replace(tmp, path)
