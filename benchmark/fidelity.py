"""Generative quality of the synthetic images of a finished run: FID, KID, IS and
precision/recall per arm, class, seed and fold, beside a real-vs-real reference.

For every arm with a generator, every class the arm's injection gave synthetic images,
and every (seed, fold), the engine of the run gives the fold, the planned synthetic
counts (``Engine.planned``) and the fitted generators (``Engine.generators``: from the
generator cache, fitted again only when the entry is missing); ``n`` images of the class
are drawn through ``Engine.draw``, as a run draws them (``n`` = the class's real
training images in that fold, capped at ``max_images``), and compared with the real training
images of that class in that fold, the images the generator was fitted on. The
reference row beside it compares those same real training images with the real test
images of the class in the fold, which tells a reader what FID and KID between two real
samples of the class look like at this scale. Synthetic images are only ever compared
with training images here; nothing is written anywhere but ``fidelity.csv`` and
``fidelity.json`` in the results folder.

The numbers are computed by torch-fidelity's own code (its feature extractor classes,
``fid_statistics_to_metric``, ``kid_features_to_metric``, ``isc_features_to_metric`` and
``prc_features_to_metric``) on features extracted once per image set.
Feature extractors and their weights: ``medbench.extractors``; the metrics:
``medbench.quality``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .engine import Engine, count_folds, load_dataset
from .errors import MedbenchError, PluginError, ResultsError
from .extractors import INCEPTION, TINY, Extractor, ImageDataset, inception_url, resolve_extractor
from .files import atomic_text
from .progress import ConsoleProgress
from .quality import (COPY_QUANTILE, ISC_MIN_PER_SPLIT, ISC_SPLITS, KID_SUBSET_MAX, KID_SUBSETS,
                      PRC_NEIGHBORHOOD, RNG_SEED, FidelityMeter, isc_splits, kid_subset_size)
from .registry import registry
from .store import ResultsStore
from .trainer import pick_device

# the extractors' and the meter's names are re-exported: callers of `medbench fidelity`
# in Python find everything here
__all__ = ["COLUMNS", "COPY_QUANTILE", "Extractor", "FidelityMeter", "ImageDataset", "INCEPTION",
           "TINY", "isc_splits", "kid_subset_size", "resolve_extractor", "run_fidelity"]

COLUMNS = ["arm", "generator", "class", "seed", "fold", "n_real", "n_synthetic", "n_test_real",
           "fid", "kid_mean", "kid_std", "kid_subset_size", "isc_mean", "isc_std", "precision",
           "recall", "fid_real_vs_real", "kid_real_vs_real", "extractor", "resize",
           "isc_splits", "kid_subset_size_real_vs_real",
           # against held-out real images at matched n, and the copy check
           "n_heldout", "fid_heldout", "kid_heldout", "kid_heldout_std", "fid_train_heldout",
           "kid_train_heldout", "copy_rate"]

# --------------------------------------------------------------------------- a suite run

class FidelityProgress(ConsoleProgress):
    """Progress of ``medbench fidelity``: one line per measured class, and the generators
    that had to be fitted because the run's cache no longer held them."""

    def __init__(self, total: int, quiet: bool):
        super().__init__(total, "fidelity", quiet)
        self.fitted_now: list[str] = []

    def fitting(self, what: str, images: int, stored: bool) -> None:
        if not stored:             # SMOTE, oversampling: rebuilt from the images in no time
            return
        self.fitted_now.append(what)
        super().fitting(what, images, stored)
        self.log("  (not in the generator cache: fitting it as the run did)")

    def fitted(self, what: str, seconds: float, stored: bool) -> None:
        if stored:
            super().fitted(what, seconds, stored)


def _subset(n: int, cap: int, *key: int) -> np.ndarray:
    """A seeded subset of range(n) of at most cap indices, sorted."""
    if n <= cap:
        return np.arange(n)
    h = int.from_bytes(hashlib.sha256(repr(("fidelity",) + key).encode()).digest()[:8], "little")
    return np.sort(np.random.default_rng(h).choice(n, cap, replace=False))


def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def run_fidelity(loaded, out: Path, *, extractor: str = INCEPTION,
                 fid_weights: str | Path | None = None, max_images: int = 2000,
                 quiet: bool = False, command: str | None = None,
                 device: str | None = None, features_cache: dict | None = None,
                 classes: list[str] | None = None) -> pd.DataFrame:
    """Write ``out/fidelity.csv`` (one row per arm, class, seed, fold) and
    ``out/fidelity.json`` (the settings); return the rows. ``features_cache``: a dict
    shared between calls with the same extractor (the levels of an ablation), so each
    image set's features are extracted once. ``classes``: measure only these."""
    if max_images < 2:
        raise MedbenchError("--max-images must be at least 2")
    out = Path(out)
    s = loaded.suite
    dev = pick_device(device or s.device)
    ex = resolve_extractor(extractor, fid_weights)   # missing or wrong weights fail first
    meter = FidelityMeter(ex, dev)
    manifest = ResultsStore(out).manifest()          # a results folder of a run, or an error
    if manifest.get("suite_hash") != loaded.hash:
        raise ResultsError(f"{out} holds results of a different configuration of suite "
                           f"{manifest.get('suite')!r} (hash {manifest.get('suite_hash')} != "
                           f"{loaded.hash}); pass the suite and profile of that run")
    arms = [a for a in s.arms if a.generator]
    if not arms:
        raise MedbenchError(f"suite {s.name!r} has no arm with a generator: nothing to measure")

    ds, _ = load_dataset(loaded)
    if classes is not None:
        unknown = [c for c in classes if c not in ds.classes]
        if unknown or not classes:
            raise MedbenchError(f"--classes: {', '.join(unknown) or 'none given'} not a class of "
                                f"the dataset; classes: {', '.join(ds.classes)}")
    engine = Engine(loaded, ds, dev, out=None)

    def measured(counts: list[int]) -> list[int]:
        return [n if classes is None or ds.classes[c] in classes else 0
                for c, n in enumerate(counts)]

    # what will be measured: (seed, fold, arm) with the arm's planned counts, as the run had
    tasks = [(seed, f, arm, measured(engine.planned(arm, engine.folds(seed)[f])))
             for seed in s.protocol.seeds for f in range(count_folds(loaded)) for arm in arms]
    total = sum(sum(1 for n in w if n > 0) for *_, w in tasks)
    engine.progress = progress = FidelityProgress(total, quiet)
    progress.log(f"feature extractor: {ex.label}")
    for note in ex.notes:
        progress.note(note)
    settings = {
        "suite": s.name, "profile": loaded.profile, "suite_hash": loaded.hash,
        "command": command, "complete": False,
        "extractor": ex.label, "extractor_registry_name": ex.name,
        "weights": None if ex.weights is None else str(ex.weights), "weights_source": ex.source,
        "torch_fidelity_url": inception_url(), "torch_fidelity_version": meter.torch_fidelity_version,
        "resize": ex.resize, "channels": "grey images repeated to 3 channels",
        "feature_layer": ex.layer, "isc_layer": ex.isc_layer, "device": str(dev),
        "max_images": max_images, "classes": classes or "every class given synthetic images",
        "synthetic": "n = real training images of the class in the fold, capped at max_images; "
                     "drawn through the engine as a run draws them (the generator's seeded "
                     "sample(class, n), kept in the synthetic cache)",
        "real": "real training images of the class in the fold (what the generator was fitted "
                "on), a seeded subset of max_images when there are more",
        "reference": "fid_real_vs_real, kid_real_vs_real: those real training images against the "
                     "fold's real test images of the class (capped likewise)",
        "kid": f"{KID_SUBSETS} subsets of size min({KID_SUBSET_MAX}, n1, n2) (torch-fidelity's "
               "1000 adapted to small classes), polynomial kernel of degree 3, seed "
               f"{RNG_SEED}",
        "isc": f"splits = min({ISC_SPLITS}, n // {ISC_MIN_PER_SPLIT}) (at least 1), shuffled with "
               f"seed {RNG_SEED}; ImageNet classes, so a weak signal for medical images",
        "prc": f"torch-fidelity's precision/recall (k = {PRC_NEIGHBORHOOD}) on the same extractor's "
               f"{ex.layer} features (torch-fidelity's own default for prc is VGG16, which "
               "needs a download); synthetic = input1, real training = input2",
        "heldout": "n_heldout = the fold's real test images of the class (capped at max_images), "
                   "never seen by the generator; fid_heldout, kid_heldout: the first n_heldout "
                   "synthetic images against them; fid_train_heldout, kid_train_heldout: as many "
                   "real training images against the same held-out images (the floor a "
                   "generator could reach at this n). Reporting only: nothing selects on them",
        "copy_rate": f"share of synthetic images whose nearest real training image (all of the "
                     f"class's training images in the fold; Euclidean, "
                     f"{ex.layer} features) is nearer than the {COPY_QUANTILE:g} quantile of the "
                     "held-out images' nearest-training distances: about "
                     f"{COPY_QUANTILE:g} for new images, 1 for copies (oversampling)",
        "caveat": "FID is biased upwards for small sets: below 2000 images per set read KID "
                  "(unbiased), and compare each number with its real-vs-real counterpart at "
                  "the same n",
        "notes": ex.notes, "generators_fitted_now": [], "skipped": [], "rows": 0,
    }
    json_path, csv_path = out / "fidelity.json", out / "fidelity.csv"
    atomic_text(json_path, json.dumps(settings, indent=2, default=str))
    atomic_text(csv_path, pd.DataFrame(columns=COLUMNS).to_csv(index=False))   # no stale rows

    rows: list[dict[str, Any]] = []
    references: dict[tuple, dict] = {}
    cached: dict[str, dict] = {} if features_cache is None else features_cache

    def features(images: torch.Tensor) -> dict:
        """Features of an image set, extracted once per content: the seeds of a holdout
        share their real images, and a TSTR arm draws what its augmenting twin drew."""
        key = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest() + str(images.shape)
        if key not in cached:
            cached[key] = meter.features(images)
        return cached[key]

    done = 0
    t_start = time.perf_counter()

    def skip(reason: str) -> None:
        """A cell the run also failed (a diverged GAN, a class too small): no row."""
        nonlocal done
        done += 1
        settings["skipped"].append(reason)
        progress.finished(done, f"skipped {reason}")

    try:
        for seed, f, arm, wanted in tasks:
            if sum(wanted) == 0:
                continue
            fold = engine.folds(seed)[f]
            references = {k: v for k, v in references.items() if k[:2] == (seed, f)}
            x, y = engine.real(fold, "train")
            gen_info = registry().get("generators", arm.generator)
            try:
                engine.generators(arm, fold, seed, wanted)
            except MedbenchError as exc:
                if isinstance(exc, PluginError):
                    raise
                for c, n in enumerate(wanted):
                    if n > 0:
                        skip(f"arm={arm.name} class={ds.classes[c]} seed={seed} fold={f}: {exc}")
                continue
            for c, n_wanted in enumerate(wanted):
                if n_wanted <= 0:
                    continue
                t0 = time.perf_counter()
                cls = ds.classes[c]
                all_real = x[y == c]
                pick = torch.from_numpy(_subset(len(all_real), max_images, seed, f, c, 0))
                real = all_real[pick]
                n_synth = min(int((y == c).sum()), max_images)
                try:
                    synth = engine.draw(arm, fold, seed, c, n_synth)
                except MedbenchError as exc:       # e.g. a class too small for the generator
                    if isinstance(exc, PluginError):
                        raise
                    skip(f"arm={arm.name} class={cls} seed={seed} fold={f}: {exc}")
                    continue
                key = (seed, f, c)
                if key not in references:
                    x_te, y_te = engine.real(fold, "test")
                    test = x_te[y_te == c]
                    test = test[torch.from_numpy(_subset(len(test), max_images, seed, f, c, 1))]
                    f_all = features(all_real)       # the copy check's neighbours: every one
                    fr = {k: v[pick] for k, v in f_all.items()}
                    ft = features(test)
                    kid, _, k = meter.kid(fr, ft)
                    references[key] = {"features": fr, "test_features": ft, "all": f_all,
                                       "n_test": len(test), "fid": meter.fid(fr, ft), "kid": kid,
                                       "k": k}
                ref = references[key]
                f_synth = features(synth)
                m = meter.compare_features(f_synth, ref["features"])
                # held out: the fold's test images of the class, as many synthetic and
                # training images as there are of them (reporting only, never selection)
                h = meter.heldout(f_synth, ref["features"], ref["test_features"], ref["all"])
                row = {"arm": arm.name, "generator": f"{gen_info.name} ({gen_info.package} "
                       f"{gen_info.version})", "class": cls, "seed": seed, "fold": f,
                       "n_real": len(real), "n_synthetic": len(synth), "n_test_real": ref["n_test"],
                       **m, "fid_real_vs_real": ref["fid"], "kid_real_vs_real": ref["kid"],
                       "extractor": ex.label, "resize": ex.resize,
                       "kid_subset_size_real_vs_real": ref["k"], **h}
                rows.append(row)
                done += 1
                atomic_text(csv_path, pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
                progress.finished(done, f"arm={arm.name} class={cls} seed={seed} fold={f}: "
                                  f"FID {_fmt(row['fid'])} (real vs real {_fmt(ref['fid'])}), KID "
                                  f"{_fmt(row['kid_mean'], 3)} (real vs real {_fmt(ref['kid'], 3)}), "
                                  f"precision {_fmt(row['precision'], 3)} recall "
                                  f"{_fmt(row['recall'], 3)}, n={len(synth)} synthetic vs "
                                  f"{len(real)} real; held out (n={h['n_heldout']}): KID "
                                  f"{_fmt(h['kid_heldout'], 3)} (real train "
                                  f"{_fmt(h['kid_train_heldout'], 3)}), copy rate "
                                  f"{_fmt(h['copy_rate'], 3)} ({time.perf_counter() - t0:.1f} s)")
    finally:
        progress.close()
    df = pd.DataFrame(rows, columns=COLUMNS)
    atomic_text(csv_path, df.to_csv(index=False))
    settings.update(complete=True, rows=len(df), generators_fitted_now=progress.fitted_now,
                    seconds=round(time.perf_counter() - t_start, 1))
    atomic_text(json_path, json.dumps(settings, indent=2, default=str))
    return df
