"""One content-addressed cache for everything medbench can rebuild but would rather not.

Entries live under the cache root (``$MEDBENCH_CACHE``, default ``~/.cache/medbench``),
one folder per kind::

    <root>/<kind>/<key[:2]>/<key><suffix>    the payload
    <root>/<kind>/<key[:2]>/<key>.json       its sidecar, written last: the marker

kinds: ``datasets`` (decoded image folders), ``generators`` (fitted GAN states and
recorded divergences), ``synthetic`` (the images a generator drew for one class of one
fold), ``cells`` (a finished cell's results and predictions) and ``timings`` (the
seconds per image that ``medbench plan`` measured for a plugin configuration on a device).

A key is the SHA-256 of a description of everything that determines the payload
(``content_key``), so an entry made under any other configuration is never found. The
sidecar records the payload's size and SHA-256; ``load`` checks both and deletes an
entry that fails, or whose reader fails, so the caller rebuilds it. ``store`` never
raises for a cache that cannot be written (a full disk, a read-only folder): it warns
once and the run goes on, slower. ``entries`` lists what is there, ``prune`` removes
entries by age or to fit a size, and always clears leftovers (payloads without a
sidecar, broken sidecars, unfinished ``*.tmp`` writes). An entry's age for ``prune``
counts from its last use: a hit touches the sidecar.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .files import atomic_text, atomic_write, file_sha256

__all__ = ["KINDS", "Cache", "SyntheticCache", "cache_root", "cell_key", "code_fingerprint",
           "code_version", "content_key", "fixed_rng", "load_cell", "store_cell"]

KINDS = ("datasets", "generators", "synthetic", "cells", "timings")
STRAY_AFTER_S = 60          # a payload without sidecar, or a *.tmp, younger than this may
                            # be another process's write in progress: prune leaves it
_KEY = re.compile(r"[0-9a-z]{8,128}")
T = TypeVar("T")


def cache_root() -> Path:
    """``$MEDBENCH_CACHE``, default ``~/.cache/medbench``."""
    return Path(os.environ.get("MEDBENCH_CACHE", Path.home() / ".cache" / "medbench"))


# --------------------------------------------------------------------------- keys


def _jsonable(value: Any) -> Any:
    """What canonical JSON writes for values json does not know."""
    import numpy as np
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        return {"ndarray": hashlib.sha256(a.tobytes()).hexdigest(), "dtype": str(a.dtype),
                "shape": list(a.shape)}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)


def canonical_json(desc: Any) -> str:
    return json.dumps(desc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=_jsonable)


def content_key(desc: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of ``desc``: keys sorted, no whitespace, numpy
    values as plain numbers, arrays by their digest."""
    return hashlib.sha256(canonical_json(desc).encode()).hexdigest()


def code_fingerprint(cls: type) -> str:
    """Hash of the source of the modules that define ``cls`` and its bases, and of the
    modules of the same package they take functions or classes from."""
    names: set[str] = set()
    for klass in cls.__mro__:
        mod = sys.modules.get(klass.__module__)
        if mod is None or klass.__module__ == "builtins":
            continue
        names.add(mod.__name__)
        package = (mod.__package__ or "").split(".")[0]
        for value in vars(mod).values():
            other = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(other, str) and package and other.split(".")[0] == package:
                names.add(other)
    h = hashlib.sha256()
    for name in sorted(names):
        mod = sys.modules.get(name)
        try:
            h.update(inspect.getsource(mod).encode())
        except (OSError, TypeError):
            h.update(name.encode())
    return h.hexdigest()[:16]


# Modules that only read finished results (tables, figures, statistics, image quality,
# the cache's own command) or parse the command line (what it passes on, such as the
# threads or tuned parameters, enters the keys as values). No cell, fit or synthetic set
# imports them (tests/test_cache.py walks the import graph to check), so editing them
# keeps the cache: a change to a report or to an option does not refit every GAN.
READ_ONLY_MODULES = frozenset({"report.py", "tables.py", "figures.py", "html.py",
                               "ablation_report.py", "stats.py", "fidelity.py", "quality.py",
                               "extractors.py", "cache_cli.py", "cli.py", "__main__.py",
                               "compare.py", "tune_report.py", "plan.py"})


def code_version(*objs: Any) -> str:
    """Hash of medbench's own engine sources (every ``medbench/*.py`` but the read-only
    ones above) and of the code of the given plugin classes (or instances; see
    ``code_fingerprint``): what a result computed by the engine with these plugins
    depends on."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        if f.name in READ_ONLY_MODULES:
            continue
        h.update(f.name.encode())
        h.update(f.read_bytes())
    for obj in objs:
        h.update(code_fingerprint(obj if isinstance(obj, type) else type(obj)).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the cache


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timestamp(iso: str) -> float | None:
    try:
        return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Cache:
    """Content-addressed entries of the kinds in ``KINDS`` under ``root``.

    ``warn`` receives the one message a cache that cannot be written gives (default: a
    ``warning:`` line on stderr)."""

    def __init__(self, root: Path | str, warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self._warn = warn or _warn_stderr
        self._warned = False

    # ------------------------------------------------------------------ paths
    @staticmethod
    def _check(kind: str, key: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind {kind!r}; kinds: {', '.join(KINDS)}")
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"bad cache key {key!r}: 8 to 128 lower-case letters or digits")

    def _folder(self, kind: str, key: str) -> Path:
        self._check(kind, key)
        return self.root / kind / key[:2]

    def sidecar(self, kind: str, key: str) -> Path:
        return self._folder(kind, key) / f"{key}.json"

    def path(self, kind: str, key: str) -> Path | None:
        """The payload file of a stored entry (not verified), or None."""
        meta = self._read_sidecar(self.sidecar(kind, key), kind, key)
        return None if meta is None else self.sidecar(kind, key).parent / meta["file"]

    @staticmethod
    def _read_sidecar(side: Path, kind: str | None = None, key: str | None = None) -> dict | None:
        """The sidecar's fields, or None when it is missing, unreadable or malformed."""
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = (isinstance(meta, dict) and isinstance(meta.get("key"), str)
              and meta.get("kind") in KINDS and isinstance(meta.get("file"), str)
              and isinstance(meta.get("sha256"), str) and isinstance(meta.get("bytes"), int)
              and side.name == f"{meta['key']}.json" and side.parent.parent.name == meta["kind"]
              and meta["file"].startswith(meta["key"] + ".") and "/" not in meta["file"]
              and meta["file"] != side.name)
        if not ok or (kind is not None and meta["kind"] != kind) or \
                (key is not None and meta["key"] != key):
            return None
        return meta

    # ------------------------------------------------------------------ read / write
    def load(self, kind: str, key: str, reader: Callable[[Path], T]) -> T | None:
        """``reader(payload path)`` of a verified entry, or None on a miss. An entry whose
        sidecar is broken, whose payload is missing, truncated or altered, or that
        ``reader`` cannot read (it raises) is deleted, and None returned, so the caller
        rebuilds and stores it again."""
        side = self.sidecar(kind, key)
        if not side.is_file():
            return None
        meta = self._read_sidecar(side, kind, key)
        payload = side.parent / meta["file"] if meta else None
        try:
            ok = (meta is not None and payload.stat().st_size == meta["bytes"]
                  and file_sha256(payload) == meta["sha256"])
        except OSError:
            ok = False
        if ok:
            try:
                value = reader(payload)
            except Exception:  # noqa: BLE001 - an unreadable entry is rebuilt, never fatal
                ok = False
        if not ok:
            self.remove(kind, key)
            return None
        try:
            os.utime(side)              # last use, for prune
        except OSError:
            pass
        return value

    def store(self, kind: str, key: str, writer: Callable[[Path], None], suffix: str,
              describe: str, config: dict) -> bool:
        """Write an entry: ``writer(path)`` writes the payload (atomically renamed into
        place), then the sidecar, the marker, with its size and SHA-256 (a reader that
        comes in between sees a mismatch: a miss, never wrong data). Returns False,
        after one warning per cache, when the cache cannot be written; an error of
        ``writer`` other than OSError propagates (a bug, not a full disk)."""
        if not re.fullmatch(r"(\.[A-Za-z0-9_-]+)+", suffix or "") or suffix == ".json" \
                or suffix.endswith(".tmp"):
            raise ValueError(f"bad cache payload suffix {suffix!r}")
        side = self.sidecar(kind, key)
        payload = side.parent / f"{key}{suffix}"
        digest: dict[str, Any] = {}

        def write(tmp: Path) -> None:
            writer(tmp)
            digest["sha256"], digest["bytes"] = file_sha256(tmp), tmp.stat().st_size

        try:
            atomic_write(payload, write)
            meta = {"kind": kind, "key": key, "file": payload.name, "created": _iso(time.time()),
                    "bytes": digest["bytes"], "sha256": digest["sha256"],
                    "describe": describe, "config": config}
            atomic_text(side, json.dumps(meta, indent=1, default=_jsonable))
        except OSError as exc:
            try:
                payload.unlink(missing_ok=True)
            except OSError:
                pass
            if not self._warned:
                self._warned = True
                self._warn(f"cannot write to the cache {self.root} ({exc.strerror or exc}); "
                           "going on without caching (set MEDBENCH_CACHE to a writable folder)")
            return False
        return True

    def remove(self, kind: str, key: str) -> None:
        """Delete an entry: the sidecar (the marker) first, then the payload."""
        folder = self._folder(kind, key)
        side = folder / f"{key}.json"
        if not folder.is_dir():
            return
        for p in [side] + sorted(p for p in folder.glob(f"{key}.*") if p != side):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass

    # ------------------------------------------------------------------ listing
    def _kinds(self, kind: str | None) -> tuple[str, ...]:
        if kind is None:
            return KINDS
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind {kind!r}; kinds: {', '.join(KINDS)}")
        return (kind,)

    def _scan(self, kind: str | None) -> tuple[list[dict], list[dict]]:
        """(entries, leftovers): entries from valid sidecars whose payload exists; every
        other file under the kinds' folders is a leftover."""
        entries, leftovers = [], []
        for k in self._kinds(kind):
            base = self.root / k
            files = sorted(p for p in base.glob("*/*") if p.is_file()) if base.is_dir() else []
            claimed: set[Path] = set()
            for side in (p for p in files if p.suffix == ".json" and not p.name.startswith(".")):
                meta = self._read_sidecar(side, k)
                payload = side.parent / meta["file"] if meta else None
                if meta is None or not payload.is_file():
                    continue
                claimed |= {side, payload}
                try:
                    used = side.stat().st_mtime
                    size = payload.stat().st_size + side.stat().st_size
                except OSError:
                    continue
                created = _timestamp(meta.get("created")) or used
                entries.append({**meta, "path": payload, "sidecar": side, "size": size,
                                "created_ts": created, "used_ts": used})
            for p in files:
                if p not in claimed:
                    leftovers.append(self._leftover(k, p))
            if k == "datasets":             # decode caches of medbench before this cache
                for p in sorted(self.root.glob("folder-*.pt")) + sorted(self.root.glob(".folder-*.tmp")):
                    leftovers.append(self._leftover(k, p))
        entries.sort(key=lambda e: (e["used_ts"], e["key"]))
        return entries, leftovers

    @staticmethod
    def _leftover(kind: str, p: Path) -> dict:
        try:
            st = p.stat()
            size, mtime = st.st_size, st.st_mtime
        except OSError:
            size, mtime = 0, time.time()
        what = ("unfinished write" if p.name.endswith(".tmp") else
                "broken or orphaned sidecar" if p.suffix == ".json" else "file without sidecar")
        return {"kind": kind, "key": None, "path": p, "size": size, "describe": what,
                "created_ts": mtime, "used_ts": mtime, "leftover": True}

    def entries(self, kind: str | None = None) -> list[dict]:
        """One dict per entry (the sidecar's fields plus ``path``, ``sidecar``, ``size``
        on disk, ``created_ts`` and ``used_ts``), least recently used first. Files without
        a valid sidecar are not entries: see ``leftovers``."""
        return self._scan(kind)[0]

    def leftovers(self, kind: str | None = None) -> list[dict]:
        """Files under the cache that belong to no entry (payloads without sidecar,
        broken sidecars, unfinished writes); ``prune`` removes them."""
        return self._scan(kind)[1]

    def prune(self, kind: str | None = None, older_than_s: float | None = None,
              max_bytes: int | None = None, everything: bool = False,
              dry_run: bool = False) -> list[dict]:
        """Remove entries (of ``kind``, or all kinds): every one with ``everything``;
        those not used for ``older_than_s`` seconds; then the least recently used until
        the rest takes at most ``max_bytes``. Leftovers go too (those younger than a
        minute only with ``everything``: they may be a write in progress). Returns what
        was (with ``dry_run``: would be) removed, entries and leftovers alike."""
        entries, leftovers = self._scan(kind)
        now = time.time()
        if everything:
            gone, keep = list(entries), []
        else:
            cutoff = None if older_than_s is None else now - older_than_s
            gone = [e for e in entries if cutoff is not None and e["used_ts"] < cutoff]
            keep = [e for e in entries if not (cutoff is not None and e["used_ts"] < cutoff)]
            if max_bytes is not None:
                total = sum(e["size"] for e in keep)
                while keep and total > max_bytes:       # least recently used first
                    e = keep.pop(0)
                    gone.append(e)
                    total -= e["size"]
            leftovers = [j for j in leftovers if now - j["used_ts"] >= STRAY_AFTER_S]
        removed = gone + leftovers
        if not dry_run:
            for e in gone:
                self.remove(e["kind"], e["key"])
            for j in leftovers:
                try:
                    j["path"].unlink(missing_ok=True)
                except OSError:
                    pass
            for k in self._kinds(kind):
                base = self.root / k
                for folder in (base.glob("*") if base.is_dir() else []):
                    try:
                        folder.rmdir()          # only empty ones
                    except OSError:
                        pass
        return removed


# --------------------------------------------------------------------------- seeding


def seed_from_key(key: str) -> int:
    """A 63-bit seed from a cache key (or any text)."""
    return int.from_bytes(hashlib.sha256(("seed:" + key).encode()).digest()[:8], "little") \
        & ((1 << 63) - 1)


@contextmanager
def fixed_rng(key: str, device: Any = None) -> Iterator[None]:
    """Run the block with torch's, numpy's and Python's global RNGs seeded from ``key``,
    and restore them after. What the block draws then depends on the key alone, not on
    what ran before it, or on what was skipped because it came from the cache."""
    import numpy as np
    import torch
    seed = seed_from_key(key)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    devices = []
    if dev.type == "cuda" and torch.cuda.is_available():
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % (2 ** 32))
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


# --------------------------------------------------------------------------- synthetic sets

SYNTHETIC_VERSION = 1


class SyntheticCache:
    """The images a generator drew for one class: (generator entry, class, n) -> uint8
    N x C x H x W tensor, with the notes the generator made while drawing them.

    ``generator_key`` is the generator cache key of the model that draws (it covers the
    generator's name, version, code, parameters, seed, the data's fingerprint and the
    fold's training indices, whether or not the model itself is cacheable); ``code``
    adds what else the drawing depends on (for SMOTE, oversampling and augmentation,
    which draw straight from the real images: ``code_version`` of the plugin, which
    covers the engine's augmentation)."""

    kind = "synthetic"

    def __init__(self, cache: Cache):
        self.cache = cache

    @staticmethod
    def describe_key(generator_key: str, class_index: int, n: int, code: str = "",
                     generator: str = "") -> dict:
        return {"v": SYNTHETIC_VERSION, "generator_key": generator_key, "generator": generator,
                "class": int(class_index), "n": int(n), "code": code}

    def load(self, key: str, shape: tuple | None = None):
        """(images, notes), or None. With ``shape`` (C, H, W) an entry of another shape
        counts as damaged."""
        import torch

        def read(p: Path):
            blob = torch.load(p, map_location="cpu", weights_only=True)
            images, notes = blob["images"], [str(n) for n in blob.get("notes", [])]
            if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or \
                    images.dim() != 4 or (shape is not None and tuple(images.shape[1:]) != tuple(shape)):
                raise ValueError("not a uint8 image tensor of the expected shape")
            return images, notes

        return self.cache.load(self.kind, key, read)

    def store(self, key: str, images, notes: list[str], describe: str, config: dict) -> bool:
        import torch
        blob = {"images": images.contiguous().cpu(), "notes": [str(n) for n in notes]}
        return self.cache.store(self.kind, key, lambda p: torch.save(blob, p), ".pt",
                                describe, config)


# --------------------------------------------------------------------------- cell results

CELL_VERSION = 1
_FRAME = "__frame__"


def cell_key(desc: dict) -> str:
    """The key of one cell's results: ``desc`` should hold everything they depend on
    (suite hash, the cell, data fingerprint, ``code_version`` of the plugins, ...)."""
    return content_key({"kind": "cells", "v": CELL_VERSION, "desc": desc})


def store_cell(cache: Cache, key: str, df, preds: dict, describe: str,
               config: dict | None = None) -> bool:
    """One ``.npz`` (no pickles): the results DataFrame as Parquet bytes plus one array
    per prediction."""
    import io

    import numpy as np

    arrays = {}
    for name, value in (preds or {}).items():
        a = np.asarray(value)
        if name == _FRAME or a.dtype == object:
            raise ValueError(f"cannot cache prediction {name!r} ({a.dtype})")
        arrays[name] = a

    def write(p: Path) -> None:
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        with open(p, "wb") as f:
            np.savez_compressed(f, **{_FRAME: np.frombuffer(buf.getvalue(), dtype=np.uint8)},
                                **arrays)

    return cache.store("cells", key, write, ".npz", describe, config or {})


def load_cell(cache: Cache, key: str):
    """(DataFrame, predictions) of a cached cell, or None."""
    import io

    import numpy as np
    import pandas as pd

    def read(p: Path):
        with np.load(p, allow_pickle=False) as z:
            frame = z[_FRAME]
            preds = {k: z[k] for k in z.files if k != _FRAME}
        return pd.read_parquet(io.BytesIO(frame.tobytes())), preds

    return cache.load("cells", key, read)
