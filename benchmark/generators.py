"""Fitted generators on disk: the cache the engine consults before fitting, and the
artifacts (loss log, loss curve, sample grids) a reader of the results looks at.

A cache entry (kind ``generators`` of ``medbench.cache.Cache``) is keyed by everything
that determines the fitted model: the dataset's content fingerprint, the fold's training
indices, the class (or all classes for a conditional model), the image shape, the
generator's name, package version and parameters, the seed, the medbench version, and
the source code of the generator (its class's modules and the helper modules of the
same package they use, ``code_fingerprint``), so an edited plugin never reuses models
fitted by its older self. An entry made under any other value of these is never used;
a damaged or unreadable entry is refitted and overwritten. Only generators that declare
``cacheable`` (their ``state_dict`` / ``load_state_dict`` capture the fitted model) are
cached; SMOTE and oversampling are cheaper to redo than to store (their drawn images may
be, see ``SyntheticCache``). A divergence is cached too, and raised again instead of
fitting the same model anew.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .cache import Cache, code_fingerprint, content_key
from .errors import GeneratorDiverged
from .files import atomic_text, atomic_write
from .plotting import loss_series, pyplot, save_figure
from .store import safe_name

__all__ = ["GeneratorCache", "GeneratorDiverged", "code_fingerprint", "write_generator_artifacts"]


class GeneratorCache:
    """Fitted generator states (and divergences) in a ``Cache`` (or a cache root)."""

    kind = "generators"

    def __init__(self, cache: Cache | Path):
        self.cache = cache if isinstance(cache, Cache) else Cache(cache)
        self._described: dict[str, tuple[dict, str]] = {}

    def key(self, info, params: dict, seed: int, fingerprint: str, train_index: np.ndarray,
            class_index: int | None, classes: list[str], shape: tuple) -> str:
        desc = {
            "generator": info.name, "package": info.package, "version": info.version,
            "medbench": __version__, "code": code_fingerprint(info.obj), "params": params, "seed": int(seed),
            "data": fingerprint,
            "train": hashlib.sha256(np.ascontiguousarray(train_index, dtype=np.int64)
                                    .tobytes()).hexdigest(),
            "class": class_index, "classes": list(classes), "shape": list(shape),
        }
        key = content_key(desc)
        what = "all classes" if class_index is None else f"class {classes[class_index]!r}"
        self._described[key] = (desc, f"{info.name} for {what}, seed {seed}, fitted on a "
                                      f"fold of {len(train_index)} training images")
        return key

    def path(self, key: str) -> Path | None:
        """The payload file of the entry, if there is one."""
        return self.cache.path(self.kind, key)

    # ------------------------------------------------------------------ budget lines
    # Fits that differ only in their budget (kimg, snapshot milestones) form a line: an
    # index entry under the line's key lists each fit's kimg and key, so a fit of a
    # larger budget continues the largest shorter one instead of starting again.

    def line_key(self, key: str, budget_keys: tuple[str, ...]) -> str | None:
        """The key of the line of fit ``key`` (described by ``key()`` in this process)."""
        if key not in self._described:
            return None
        desc = dict(self._described[key][0])
        desc["params"] = {k: v for k, v in desc["params"].items() if k not in budget_keys}
        desc["line"] = "fits differing only in " + ", ".join(budget_keys)
        return content_key(desc)

    def line(self, line_key: str) -> dict[float, str]:
        """kimg -> fit key of the line's fits that the cache holds."""
        entry = self.cache.load(self.kind, line_key, lambda p: torch.load(p, weights_only=True))
        if not isinstance(entry, dict) or entry.get("key") != line_key:
            return {}
        return {float(k): v for k, v in entry["fits"].items()
                if self.cache.path(self.kind, v) is not None}

    def add_to_line(self, line_key: str, kimg: float, key: str) -> None:
        fits = {**self.line(line_key), float(kimg): key}
        entry = {"key": line_key, "fits": {str(k): v for k, v in fits.items()}}
        self.cache.store(self.kind, line_key, lambda t: torch.save(entry, t), ".pt",
                         f"index of {len(fits)} fit(s) differing only in budget", {})

    def _entry(self, key: str) -> dict | None:
        """The entry stored under ``key`` (a fitted state or a failure), or None; an
        entry that is not one of ours is removed, to be refitted and overwritten."""
        entry = self.cache.load(self.kind, key, lambda p: torch.load(p, map_location="cpu",
                                                                    weights_only=False))
        if entry is not None and (not isinstance(entry, dict) or entry.get("key") != key):
            self.cache.remove(self.kind, key)
            return None
        return entry

    def state(self, key: str) -> dict | None:
        """The saved state of a fitted (not failed) entry, or None."""
        entry = self._entry(key)
        return None if entry is None else entry.get("state")

    @staticmethod
    def cacheable(obj: Any) -> bool:
        """Whether a generator class (or instance) keeps its fits in the cache."""
        return bool(obj.cacheable)

    def load(self, key: str, info, params: dict, device: str):
        """The cached generator, or None. A cached divergence is raised again."""
        if not self.cacheable(info.obj):
            return None
        entry = self._entry(key)
        if entry is None:
            return None
        if "failed" in entry:
            raise GeneratorDiverged(entry["failed"] + " (cached; delete "
                                    f"{self.cache.sidecar(self.kind, key)} to refit)")
        try:
            return info.obj(**params).load_state_dict(entry["state"], device=device)
        except Exception:  # noqa: BLE001 - a stale entry (e.g. another shape) is refitted
            self.cache.remove(self.kind, key)
            return None

    def save(self, key: str, generator) -> None:
        if self.cacheable(generator):
            self._write(key, {"key": key, "state": generator.state_dict()}, "")

    def save_failure(self, key: str, reason: str) -> None:
        self._write(key, {"key": key, "failed": reason}, " (diverged)")

    def _write(self, key: str, entry: dict, note: str) -> None:
        desc, describe = self._described.get(key, ({}, "generator"))
        # a cache that cannot be written costs time, never results (Cache.store warns)
        self.cache.store(self.kind, key, lambda t: torch.save(entry, t), ".pt",
                         describe + note, desc)


def write_generator_artifacts(out: Path, generator_name: str, params: dict, key: str,
                              seed: int, fold: int, class_name: str | None, g,
                              source: str, real: tuple[torch.Tensor, torch.Tensor] | None = None
                              ) -> Path:
    """``out/generators/<generator>/s<seed>-f<fold>-<class>/``: info.json, losses.csv,
    losses.png, one samples_*.png per kept grid and, when the generator keeps sample grids
    and ``real`` (the real training images and labels it was fitted on) is given,
    real.png: a grid of up to 64 of those images, laid out like the sample grids (one
    class per row, cycling, for a model of all classes), for the report to show beside
    the samples. Written once per fitted model."""
    where = "all" if class_name is None else safe_name(class_name)
    folder = Path(out) / "generators" / safe_name(generator_name) / f"s{seed}-f{fold}-{where}"
    info_path = folder / "info.json"
    if info_path.is_file():
        try:
            if json.loads(info_path.read_text()).get("key") == key:
                return folder
        except (OSError, ValueError):
            pass
    history = list(g.history)
    grids = list(g.grids)
    if history:
        buf = io.StringIO()
        cols = list(dict.fromkeys(k for row in history for k in row))
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(history)
        atomic_text(folder / "losses.csv", buf.getvalue())
        _loss_plot(folder / "losses.png", history, generator_name, class_name)
    for i, (label, images) in enumerate(grids):
        _grid_png(folder / f"samples_{i:02d}_{safe_name(label)}.png", images)
    if grids and real is not None and len(real[0]):
        _grid_png(folder / "real.png", _real_grid(real[0], real[1], class_name is None))
    info = {"key": key, "generator": generator_name, "params": params, "seed": seed,
            "fold": fold, "class": class_name, "source": source,
            "notes": list(g.notes), "steps": len(history), "record": dict(g.record),
            "grids": [label for label, _ in grids]}
    atomic_text(info_path, json.dumps(info, indent=2, default=str))
    return folder


def _real_grid(images: torch.Tensor, labels: torch.Tensor, by_class: bool,
               side: int = 8) -> torch.Tensor:
    """Up to side x side real images in their given order; with ``by_class``, row r holds
    images of the r-th class (cycling), as the sample grids of a conditional GAN do."""
    if not by_class:
        return images[:side * side]
    ids = sorted(set(int(c) for c in labels.tolist()))
    pools = {c: images[labels == c] for c in ids}
    used = {c: 0 for c in ids}
    rows = []
    for r in range(side):
        c = ids[r % len(ids)]
        chunk = pools[c][used[c]:used[c] + side]
        used[c] += len(chunk)
        if len(chunk) < side:          # a small class: pad the row with blanks
            chunk = torch.cat([chunk, images.new_zeros((side - len(chunk), *images.shape[1:]))])
        rows.append(chunk)
    return torch.cat(rows)


def _grid_png(path: Path, images: torch.Tensor) -> None:
    from PIL import Image
    n, c, h, w = images.shape
    side = int(np.ceil(np.sqrt(n)))
    canvas = np.zeros((side * (h + 1) + 1, side * (w + 1) + 1, c), dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, q = divmod(i, side)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = arr[i]
    img = Image.fromarray(canvas[:, :, 0] if c == 1 else canvas)
    atomic_write(path, lambda t: img.save(t, format="PNG"))


def _loss_plot(path: Path, history: list[dict], name: str, class_name: str | None) -> None:
    """Every named series of the loss log against the step (smoothed over about a
    hundredth of the run), stage boundaries dashed."""
    plt = pyplot()
    steps = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    columns = list(dict.fromkeys(k for row in history for k in row))
    for key, label in loss_series(columns):
        vals = np.array([_number(row.get(key)) for row in history], dtype=float)
        if np.isfinite(vals).any():
            k = max(1, len(vals) // 100)
            # a moving mean over whole windows only: padding the ends with zeros would
            # draw every series falling towards 0 on its last steps
            smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, label=label, lw=1)
    if "stage" in history[0]:
        stages = np.array([row["stage"] for row in history])
        for s in np.flatnonzero(np.diff(stages)) + 1:
            ax.axvline(s, color="0.7", lw=0.6, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{name}" + (f", class {class_name}" if class_name else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path.with_suffix(""), formats=("png",))


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
