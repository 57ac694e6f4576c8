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
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ResultsError
from .files import atomic_text, atomic_write

MANIFEST = "manifest.json"


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
            old = self.manifest()
            if old.get("suite_hash") != suite_hash:
                raise ResultsError(
                    f"{self.root} holds results of a different configuration of suite "
                    f"{old.get('suite')!r} (hash {old.get('suite_hash')} != {suite_hash}); "
                    "resume with the same suite and profile, or pass another --out")
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
