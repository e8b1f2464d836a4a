"""Output folders (rope_interp.view.output): staged inside --out, all-or-nothing commits, foreign files
refused, stale staging folders of dead runs removed."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rope_interp.errors import OutputError
from rope_interp.view import output
from rope_interp.view.output import MANIFEST, MARKER, StagedOutput, is_complete


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(dest: Path, files: dict[str, str], **kw) -> None:
    with StagedOutput(dest, **kw) as stage:
        for name, text in files.items():
            (stage.folder() / name).write_text(text)


OLD = {"a.csv": "old a", "b.csv": "old b", "fig.png": "old png", "summary.json": "old summary"}
NEW = {"a.csv": "new a", "b.csv": "new b", "c.csv": "new c", "summary.json": "new summary"}


def test_staging_is_inside_dest_so_a_mount_point_commits(tmp_path, monkeypatch):
    """--out on another file system: any rename from outside dest into it fails with EXDEV (as across a
    mount point); the commit only renames inside dest, so it succeeds."""
    dest = tmp_path / "mnt"
    real = os.replace

    def replace(src, dst):
        inside = [Path(p).absolute().is_relative_to(dest) for p in (src, dst)]
        if inside[0] != inside[1]:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)
    _run(dest, OLD)
    _run(dest, NEW)
    assert _snapshot(dest) == {
        **{k: v.encode() for k, v in NEW.items()},
        MANIFEST: (dest / MANIFEST).read_bytes(),
        MARKER: (dest / MARKER).read_bytes(),
    }
    assert json.loads((dest / MANIFEST).read_text()) == sorted(NEW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt"]  # nothing staged beside it


def test_commit_failing_on_its_third_file_leaves_the_old_folder(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    _run(dest, OLD)
    before = _snapshot(dest)
    assert is_complete(dest)
    real, moved_in = os.replace, []

    def replace(src, dst):
        if Path(src).parent.name.startswith(output.STAGING_PREFIX) and Path(dst).parent == dest:
            moved_in.append(Path(dst).name)
            if len(moved_in) == 3:
                raise OSError(errno.EIO, "disk trouble")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk trouble"):
        _run(dest, NEW)
    assert len(moved_in) == 3  # two new files were in place when the third failed
    assert _snapshot(dest) == before  # fully old: old files back, fig.png kept, c.csv gone, marker back
    assert is_complete(dest)
    monkeypatch.setattr(os, "replace", real)
    _run(dest, NEW)  # and the next run replaces it fully
    assert {k: v.decode() for k, v in _snapshot(dest).items() if not k.startswith(".")} == NEW


def test_a_killed_commit_is_not_complete_and_its_files_stay_ours(tmp_path, monkeypatch):
    """A process killed between two moves (simulated: the move of the marker never comes) leaves no marker;
    the manifest lists both runs' files, so the next run is not refused and replaces them."""
    dest = tmp_path / "out"
    _run(dest, OLD)
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "summary.json":  # moved last but one: everything else of NEW is in place
            raise SystemExit("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(output, "_write", lambda path, data: None)  # the back-out writes nothing either
    monkeypatch.setattr(StagedOutput, "commit", _commit_without_back_out)
    with pytest.raises(SystemExit):
        _run(dest, NEW)
    assert not is_complete(dest)
    assert set(json.loads((dest / MANIFEST).read_text())) >= set(OLD) | set(NEW)
    monkeypatch.undo()
    _run(dest, NEW)
    assert is_complete(dest) and (dest / "c.csv").read_text() == "new c" and not (dest / "fig.png").exists()


def _commit_without_back_out(self):
    """StagedOutput.commit up to the first failure, without its back-out (what a SIGKILL leaves)."""
    files = self._staged()
    old = output.manifest(self.dest)
    path = self.dest / MANIFEST
    path.write_text(json.dumps(sorted(set(old) | set(files))))
    (self.dest / MARKER).unlink(missing_ok=True)
    for name in sorted(files, key=lambda n: n == "summary.json"):
        os.replace(self._folder / name, self.dest / name)


def test_a_file_that_is_not_ours_is_never_overwritten(tmp_path):
    dest = tmp_path / "out"
    _run(dest, {"summary.json": "ours"})
    (dest / "usage.csv").write_text("the user's own table")
    before = _snapshot(dest)
    with pytest.raises(OutputError, match=r"usage\.csv exists and rope_interp did not write it"):
        _run(dest, {"usage.csv": "new", "summary.json": "new"})
    assert _snapshot(dest) == before  # byte-identical, the old run untouched
    # known in advance (expect=): refused on entry, before any work
    with pytest.raises(OutputError, match=r"usage\.csv"):
        with StagedOutput(dest, expect=("usage.csv",)):
            raise AssertionError("the work must not start")
    # a file of ours that this run does not write again is removed; a user's file that it does not write stays
    _run(dest, {"other.csv": "x"})
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["other.csv", "usage.csv"]


def test_a_user_summary_json_is_not_deleted_by_a_run_that_does_not_write_one(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "summary.json").write_text("mine")
    _run(dest, {"a.csv": "x"})
    assert (dest / "summary.json").read_text() == "mine"


def test_a_stale_staging_folder_of_a_dead_run_is_removed(tmp_path):
    dest = tmp_path / "out"
    _run(dest, {"a.csv": "x"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer running
    import socket
    import time

    def plant(name: str, pid: int, created: float, host: str | None = None) -> Path:
        folder = dest / f"{output.STAGING_PREFIX}{name}"
        folder.mkdir()
        (folder / "half.csv").write_text("half")
        record = {"pid": pid, "host": host or socket.gethostname(), "created": created}
        (folder / output.OWNER).write_text(json.dumps(record))
        return folder

    stale = plant("dead", dead.pid, time.time())
    old = plant("old", os.getpid(), time.time() - output.STALE_AFTER_S - 1, host="elsewhere")
    live = plant("live", os.getpid(), time.time())  # a run still going: kept
    other_host = plant("remote", dead.pid, time.time(), host="elsewhere")  # cannot tell: kept
    _run(dest, {"a.csv": "y"})
    assert not stale.exists() and not old.exists()
    assert live.exists() and other_host.exists()
    assert (dest / "a.csv").read_text() == "y" and "half.csv" not in json.loads((dest / MANIFEST).read_text())


def test_a_failed_first_run_leaves_no_folder(tmp_path):
    dest = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with StagedOutput(dest) as stage:
            (stage.folder() / "a.csv").write_text("x")
            raise RuntimeError("boom")
    assert not dest.exists()
