"""Results on disk: one Parquet file per finished cell (written atomically, so a killed
run loses at most the cell in progress), consolidated into results.parquet/results.csv.
The cell files are the record; the consolidated tables follow them at most
``consolidate_every`` seconds behind during a run, exactly at its end (or on Ctrl-C), and
``load`` brings them up to date first when a killed run left them behind. Consolidation
reads each cell file once per store (a file is read again only if it changes), so a suite
of thousands of cells does not reread them all after each one. A results folder belongs
to one suite configuration; resuming it under another is refused rather than mixing
numbers."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ResultsError
from .files import atomic_text, atomic_write

MANIFEST = "manifest.json"
LOCK = ".medbench.lock"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


class ResultsStore:
    def __init__(self, root: Path, consolidate_every: float = 5.0):
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.consolidate_every = consolidate_every
        self._frames: dict[str, tuple[int, pd.DataFrame]] = {}   # key -> (mtime_ns, rows)
        self._last_write = float("-inf")

    # ---------------------------------------------------------------- set-up
    def check(self, suite_hash: str) -> None:
        """Refuse, writing nothing, a folder that holds results of another configuration."""
        if (self.root / MANIFEST).exists():
            old = self.manifest()
            if old.get("suite_hash") != suite_hash:
                raise ResultsError(
                    f"{self.root} holds results of a different configuration of suite "
                    f"{old.get('suite')!r} (hash {old.get('suite_hash')} != {suite_hash}); "
                    "resume with the same suite and profile, or pass another --out")

    def open(self, suite_hash: str, meta: dict[str, Any]) -> None:
        try:
            self.cells.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ResultsError(f"cannot write results to {self.root}: {exc.strerror or exc}; "
                               "choose another folder with --out") from None
        mpath = self.root / MANIFEST
        if mpath.exists():
            self.check(suite_hash)
            return
        atomic_text(mpath, json.dumps({**meta, "suite_hash": suite_hash}, indent=2, default=str))

    @contextlib.contextmanager
    def writing(self):
        """Around every write into the folder once it is open: a full disk, or a folder
        that became unwritable, is a clear error that says what is kept."""
        try:
            yield
        except OSError as exc:
            why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise ResultsError(f"cannot write results to {self.root}: {why}; the "
                               f"{len(self.done())} finished cell(s) are kept; free space (or "
                               "fix permissions) and rerun the same command to resume") from None

    def write_text(self, name: str, text: str) -> None:
        """A file of the run beside the cells (e.g. data_report.json), atomically."""
        with self.writing():
            atomic_text(self.root / name, text)

    def manifest(self) -> dict:
        mpath = self.root / MANIFEST
        if not mpath.exists():
            raise ResultsError(f"{self.root} is not a medbench results folder (no {MANIFEST}); "
                               "make one with `medbench run SUITE --out DIR`")
        try:
            return json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{mpath} is corrupt ({exc.msg}); remove it to start over") from None

    # ---------------------------------------------------------------- cells
    def done(self) -> set[str]:
        return {p.name[:-len(".parquet")] for p in self.cells.glob("*.parquet")}

    def save_cell(self, key: str, rows: pd.DataFrame, preds: dict[str, np.ndarray] | None) -> None:
        with self.writing():
            if preds is not None:
                atomic_write(self.cells / f"{key}.preds.npz",
                             lambda p: np.savez_compressed(open(p, "wb"), **preds))
            # the parquet file is the marker that the cell is finished: written last
            atomic_write(self.cells / f"{key}.parquet", lambda p: rows.to_parquet(p, index=False))
        if time.monotonic() - self._last_write >= self.consolidate_every:
            self.consolidate()

    def save_failure(self, key: str, info: dict) -> None:
        with self.writing():
            atomic_text(self.cells / f"{key}.failed.json", json.dumps(info, indent=2, default=str))

    def clear_failure(self, key: str) -> None:
        try:
            (self.cells / f"{key}.failed.json").unlink()
        except FileNotFoundError:
            pass

    def failures(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.cells.glob("*.failed.json"))]

    def load_preds(self, key: str) -> dict[str, np.ndarray]:
        with np.load(self.cells / f"{key}.preds.npz") as z:
            return {k: z[k] for k in z.files}

    def load(self) -> pd.DataFrame:
        """The consolidated results, first brought up to date with the cell files."""
        path = self.root / "results.parquet"
        if self._stale(path):
            return self.consolidate()
        if path.exists():
            return pd.read_parquet(path)
        self.manifest()
        raise ResultsError(f"{self.root} has no finished cells yet (no results.parquet)")

    def _stale(self, path: Path) -> bool:
        """Cells finished (or removed) after the tables were last written."""
        if not self.cells.is_dir():
            return False
        files = list(self.cells.glob("*.parquet"))
        if not files:
            return False
        if not path.exists():
            return True
        newest = max([self.cells.stat().st_mtime_ns, *(f.stat().st_mtime_ns for f in files)])
        return newest > path.stat().st_mtime_ns

    def consolidate(self) -> pd.DataFrame:
        """Write results.parquet and results.csv from every finished cell's file; a file
        already read by this store is taken from memory unless it changed since."""
        files = sorted(self.cells.glob("*.parquet"))
        frames = []
        for f in files:
            key, mtime = f.name[:-len(".parquet")], f.stat().st_mtime_ns
            held = self._frames.get(key)
            if held is None or held[0] != mtime:
                held = self._frames[key] = (mtime, pd.read_parquet(f))
            frames.append(held[1])
        for key in set(self._frames) - {f.name[:-len(".parquet")] for f in files}:
            del self._frames[key]                   # a cell removed to be rerun
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if len(df):
            df = df.sort_values(["cell_order", "metric_order"], kind="stable").reset_index(drop=True)
        with self.writing():
            atomic_write(self.root / "results.parquet", lambda p: df.to_parquet(p, index=False))
            atomic_write(self.root / "results.csv", lambda p: df.to_csv(p, index=False))
        self._last_write = time.monotonic()
        return df


# --------------------------------------------------------------------------- one driver


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # someone else's process: alive
        return True
    except OSError:
        return False
    return True


_HELD: set[Path] = set()               # the locks this process holds


class FolderLock:
    """One driver per folder: ``run``, ``tune`` and ``ablate`` hold it while they write.

    The lock is a file naming the process that holds it (pid, host, command). A second
    driver is refused while that process lives; a lock left by a killed process (its
    pid gone) is taken over, so a kill never leaves a folder stuck. ``check`` refuses
    without writing anything (before the suite and data are accepted); entering the
    context creates the folder and the lock atomically, leaving it removes the lock."""

    def __init__(self, root: Path, command: str | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK
        self.command = command or "medbench"
        self._held = False

    def holder(self) -> dict | None:
        """Who holds the lock now: the lock file's contents, or None when nobody (no
        file, or the process that wrote it has gone)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            pid = int(info["pid"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None                # damaged: not a lock medbench wrote
        if info.get("host") not in (None, socket.gethostname()):
            return info                # another machine's process: cannot tell, so live
        if pid == os.getpid():         # this process: held only if a driver here holds it
            return info if self.path.resolve() in _HELD else None
        return info if _alive(pid) else None

    def check(self) -> None:
        info = self.holder()
        if info is not None:
            raise ResultsError(
                f"{self.root} is being written by process {info.get('pid')} on "
                f"{info.get('host', '?')} ({info.get('command', 'medbench')}, since "
                f"{info.get('since', '?')}); wait for it to end, stop it, or pass another "
                f"--out (if that process is gone, remove {self.path})")

    def __enter__(self) -> "FolderLock":
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot write results to {self.root}: {exc.strerror or exc}; "
                               "choose another folder with --out") from None
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "command": self.command,
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        # written in full beside it, then linked into place: the lock appears whole or
        # not at all, and linking fails if another driver's is already there
        tmp = self.root / f".{LOCK}.{os.getpid()}.tmp"
        try:
            tmp.write_text(body, encoding="utf-8")
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    self.check()           # a live holder: refused
                    self.path.unlink(missing_ok=True)     # a dead one's: taken over
                    continue
                self._held = True
                _HELD.add(self.path.resolve())
                return self
        except OSError as exc:
            raise ResultsError(f"cannot write results to {self.root}: {exc.strerror or exc}; "
                               "choose another folder with --out") from None
        finally:
            tmp.unlink(missing_ok=True)
        self.check()
        raise ResultsError(f"cannot take the lock {self.path}; remove it if no medbench "
                           "process writes this folder")

    def __exit__(self, *exc) -> None:
        if self._held:
            self._held = False
            _HELD.discard(self.path.resolve())
            try:
                if json.loads(self.path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                    self.path.unlink()
            except (OSError, ValueError):
                pass
