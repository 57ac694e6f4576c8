"""The engine: what one cell of a suite is, and how it is computed.

A cell is (arm, classifier, seed, fold). ``Engine`` holds what the cells of one run
share (the dataset, its folds, fitted generators) and computes a cell: the fold's real
training images plus the arm's synthetic ones, a classifier trained on them and selected
on the fold's real validation split, metrics on the fold's real test images. It also
answers what ``medbench fidelity`` measures (the fold's real images, the planned
synthetic counts, the fitted generators and their draws) through the same code, so
nothing is re-planned or re-fitted elsewhere.

Orchestration (which cells run, in which executor, progress bars, signals) is
``medbench.runner``; running one task in a worker is ``medbench.execution``; both call
down into this module, never the other way.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import injection, metrics
from .api import DatasetSpec, Generator
from .cache import Cache, SyntheticCache, cache_root, code_version, content_key, fixed_rng
from .data import (ImageSet, attach_groups, conform, group_report, group_summary,
                   handle_duplicates, handle_near_duplicates, handle_unreadable, read_metadata)
from .errors import DataError, MedbenchError, PluginError, SuiteError
from .generative import kimg_images
from .generators import GeneratorCache, GeneratorDiverged, write_generator_artifacts
from .progress import Progress
from .registry import registry
from .splits import Fold, make_folds
from .store import safe_name
from .suite import (ArmConfig, ClassifierConfig, LoadedSuite, TrainingConfig, resolve_data_path,
                    resolve_metadata_path)
from .trainer import LOSS_SELECTIONS, Selection, Settings, Trainer, class_weight_vector

__all__ = ["Cell", "Engine", "Prefit", "Trained", "check_feasible", "check_plugins",
           "count_folds", "expand_cells", "load_dataset", "planned_counts", "positive_index",
           "prefit_tasks", "selection_rule", "suite_folds"]


# --------------------------------------------------------------------------- cells

@dataclass(frozen=True)
class Cell:
    order: int
    arm: str
    classifier: str
    seed: int
    fold: int

    @property
    def key(self) -> str:
        return safe_name(f"{self.arm}__{self.classifier}__s{self.seed}__f{self.fold}")

    def label(self) -> str:
        return f"arm={self.arm} classifier={self.classifier} seed={self.seed} fold={self.fold}"

    def short(self) -> str:
        return f"{self.arm} / {self.classifier} s{self.seed} f{self.fold}"


@dataclass(frozen=True)
class Prefit:
    """Fit (or load from the cache) every generator an arm needs in one fold, so the
    cells of that fold's classifiers, running in parallel, do not each fit it."""

    seed: int
    fold: int
    arm: str

    def label(self) -> str:
        return f"generator of arm={self.arm} seed={self.seed} fold={self.fold}"


def expand_cells(loaded: LoadedSuite, n_folds: int) -> list[Cell]:
    """arm x classifier x seed x fold, ordered seed, fold, arm, classifier so a fitted
    generator serves every classifier of its fold before the next fold starts."""
    s = loaded.suite
    cells = []
    for seed in s.protocol.seeds:
        for fold in range(n_folds):
            for arm in s.arms:
                for clf in s.classifiers:
                    cells.append(Cell(len(cells), arm.name, clf.key, seed, fold))
    return cells


def count_folds(loaded: LoadedSuite) -> int:
    p = loaded.suite.protocol
    n = 1 if p.kind == "holdout" else p.folds
    return min(n, p.max_folds) if p.max_folds else n


def prefit_tasks(loaded: LoadedSuite, todo: list[Cell]) -> list[Prefit]:
    """One generator fit per (seed, fold, arm) whose generator several pending cells
    (one per classifier) share."""
    gen_arms = {a.name for a in loaded.suite.arms if a.generator}
    groups: dict[tuple, int] = {}
    for c in todo:
        if c.arm in gen_arms:
            groups[(c.seed, c.fold, c.arm)] = groups.get((c.seed, c.fold, c.arm), 0) + 1
    return [Prefit(seed, fold, arm) for (seed, fold, arm), n in groups.items() if n > 1]


# --------------------------------------------------------------------------- before any work

def check_plugins(loaded: LoadedSuite, *, download: bool = True) -> None:
    """Fail before any work when a suite names a plugin that is not installed, gives a
    plugin (dataset loader, classifier, generator) a parameter it does not declare or a
    value it does not allow, a generator an image size it cannot take, or asks for
    pretrained weights that cannot be had (``download``: fetch missing ones now; False
    for ``validate``)."""
    reg = registry()
    s = loaded.suite
    reg.get("datasets", s.dataset.loader).obj.check("dataset", s.dataset.loader,
                                                    s.dataset.options)
    for clf in s.classifiers:
        info = reg.get("classifiers", clf.name)
        info.obj.check("classifier", clf.name, clf.params)
        if clf.pretrained and not info.obj.supports_pretrained:
            raise PluginError(f"classifier {clf.name!r} has no pretrained weights; "
                              "set pretrained: false")
        info.obj().prepare(pretrained=clf.pretrained, download=download, **clf.params)
    for arm in s.arms:
        if arm.generator:
            info = reg.get("generators", arm.generator)
            # parameters are checked now, not after hours of other arms
            gen = info.obj(**s.params_for(arm))
            gen.check_data(s.dataset.image_size, s.dataset.channels)
            kept = [float(k) for k in (s.params_for(arm).get("snapshots_kimg") or [])]
            if arm.snapshot_kimg is not None and float(arm.snapshot_kimg) not in kept:
                raise SuiteError(f"arm {arm.name!r}: snapshot_kimg {arm.snapshot_kimg:g} is not "
                                 f"a milestone its generator keeps (snapshots_kimg: "
                                 f"{kept or 'none'}); add it there")


def suite_folds(loaded: LoadedSuite, ds: ImageSet, seed: int) -> list[Fold]:
    """The protocol's folds of one seed (every fold, also those ``max_folds`` skips)."""
    p = loaded.suite.protocol
    return make_folds(ds, p.kind, seed=seed, folds=p.folds, val_fraction=p.val_fraction,
                      test_fraction=p.test_fraction, min_per_class=loaded.suite.dataset.min_per_class)


def planned_counts(arm: ArmConfig, counts: list[int], classes: list[str]) -> list[int]:
    """Synthetic images per class an arm adds to a training part with these real
    counts: its injection policy, or, for an arm trained on synthetic images only
    (TSTR), as many per class as the real part has."""
    if not arm.generator:
        return [0] * len(counts)
    if arm.train_on == "synthetic":
        return list(counts)
    inj = arm.injection
    return injection.plan(inj.policy, counts, classes, siir=inj.siir, per_class=inj.per_class)


def check_feasible(loaded: LoadedSuite, ds: ImageSet) -> None:
    """Refuse, once and before the first cell, what the loaded data cannot satisfy: the
    folds and validation split of every seed (too few images of a class for the
    protocol), and each arm's generator against the training images of every class it
    must make images for (``Generator.min_class_images``). Otherwise every cell would
    fail alike, one by one."""
    s = loaded.suite
    reg = registry()
    n_folds = count_folds(loaded)
    for seed in s.protocol.seeds:
        try:
            folds = suite_folds(loaded, ds, seed)[:n_folds]
        except DataError as exc:
            raise DataError(f"{loaded.path.name}: the data cannot satisfy the protocol: {exc}") from None
        for arm in s.arms:
            if not arm.generator:
                continue
            need = reg.get("generators", arm.generator).obj.min_class_images
            for fold in folds:
                counts = np.bincount(ds.labels.numpy()[fold.train],
                                     minlength=ds.num_classes).tolist()
                for c, n in enumerate(planned_counts(arm, counts, ds.classes)):
                    if n > 0 and counts[c] < need:
                        raise DataError(
                            f"{loaded.path.name}: arm {arm.name!r}: generator {arm.generator!r} "
                            f"needs at least {need} training images of each class it makes "
                            f"images for; class {ds.classes[c]!r} has {counts[c]} in fold "
                            f"{fold.index} (seed {seed}); add images, drop the class "
                            "(dataset.drop_classes), lower protocol.folds or use another generator")


def load_dataset(loaded: LoadedSuite) -> tuple[ImageSet, dict]:
    """The suite's dataset, conformed to its size and channels, with its groups read
    from the metadata, duplicates (exact, then near ones when asked for) handled and
    classes dropped as it says, and the data report that describes it."""
    s = loaded.suite
    d = s.dataset
    loader = registry().get("datasets", d.loader).obj()
    spec = DatasetSpec(loader=d.loader, path=resolve_data_path(loaded), image_size=d.image_size,
                       channels=d.channels, options=dict(d.options), cache_dir=cache_root())
    ds = loader.load(spec)
    ds = conform(ds, d.image_size, d.channels)
    if len(ds) == 0:
        raise DataError(f"dataset {d.loader!r} at {spec.path} has no images")
    warnings = handle_unreadable(ds, d.unreadable)
    if d.groups:
        table = read_metadata(resolve_metadata_path(loaded, spec.path), d.metadata_key, d.groups)
        ds = attach_groups(ds, table, d.groups)
    ds, dup = handle_duplicates(ds, d.duplicates)
    near = None
    if d.near_duplicates is not None:
        ds, near = handle_near_duplicates(ds, d.duplicates,
                                          max_distance=d.near_duplicates.max_distance,
                                          method=d.near_duplicates.hash)
    dropped = {}
    if d.drop_classes:
        before = dict(zip(ds.classes, ds.counts()))
        ds = ds.without_classes(d.drop_classes)
        dropped = {n: before[n] for n in d.drop_classes}
        ds.notes.append("classes dropped (dataset.drop_classes): " + ", ".join(
            f"{n} ({k} image(s) left after duplicates)" for n, k in dropped.items()))
    report = {
        "loader": d.loader, "path": str(spec.path) if spec.path else None,
        "images": len(ds), "classes": ds.classes, "counts": ds.counts(),
        "image_size": d.image_size, "channels": d.channels,
        "splits": None if ds.splits is None else {k: int(sum(1 for x in ds.splits if x == k))
                                                   for k in ("train", "val", "test")},
        # per class within each predefined split: what `medbench plan` counts from
        # when the data itself is not at hand
        "split_counts": None if ds.splits is None else {
            k: ds.counts(ds.split_index(k)) for k in ("train", "val", "test")},
        "duplicates": dup.as_dict(), "duplicates_summary": dup.summary(),
        "fingerprint": ds.fingerprint(), "notes": ds.notes,
        "unreadable": list(ds.unreadable), "warnings": warnings,
    }
    if dropped:
        report["dropped_classes"] = dropped
    if near is not None:
        report["near_duplicates"] = near.as_dict()
        report["near_duplicates_summary"] = near.summary()
    if ds.groups is not None:
        report["groups"] = group_report(ds, d.groups)
        report["groups_summary"] = group_summary(report["groups"])
    positive = positive_index(ds, d.positive_class)
    if positive is not None:
        report["positive_class"] = ds.classes[positive]
    return ds, report


def positive_index(ds: ImageSet, name: str | None) -> int | None:
    """The positive class of a binary task: ``dataset.positive_class`` or, by default,
    the data's minority class (the first of equal ones), so that PR-AUC, the tuned
    threshold and the report's minority column are about the class an imbalance remedy
    is for. None for a multi-class task; a DataError for a name the data lacks or a
    positive class given to a multi-class task."""
    if ds.num_classes != 2:
        if name is not None:
            raise DataError(f"dataset.positive_class {name!r} applies to binary tasks; this "
                            f"data has {ds.num_classes} classes ({', '.join(ds.classes)}); "
                            "remove it")
        return None
    if name is None:
        return int(np.argmin(ds.counts()))
    if name not in ds.classes:
        raise DataError(f"dataset.positive_class {name!r} is not a class of the data; its "
                        f"classes are {', '.join(map(repr, ds.classes))}")
    return ds.classes.index(name)


def selection_rule(name: str, classes: list[str], positive: int | None) -> Selection:
    """The trainer's ``Selection`` for ``training.selection``: a loss, or a whole-set
    metric plugin computed on the validation split (with the task's positive class)."""
    if name in LOSS_SELECTIONS:
        return Selection(name)
    metric = metrics.registered()[name]

    def score(y: np.ndarray, probs: np.ndarray) -> float:
        return float(metric.compute(metrics.Scores(y, probs, classes, None, positive)))
    return Selection(name, score, maximize=not metric.lower_is_better)


# --------------------------------------------------------------------------- the engine

@dataclass
class Trained:
    """A classifier trained for one cell, before it has seen any test image."""

    arm: ArmConfig
    ccfg: ClassifierConfig
    info: Any
    fold: Fold
    model: Any
    trainer: Trainer
    result: Any
    y_val: np.ndarray
    p_val: np.ndarray
    threshold: float | None
    synth: torch.Tensor
    wanted: list[int]


class Engine:
    """Holds what is shared between cells of one run: data, folds, fitted generators.

    ``progress`` (a ``medbench.progress.Progress``) hears about generator fits, notes
    and the epochs of each classifier; ``out`` (a results folder) receives the fitted
    generators' artifacts."""

    def __init__(self, loaded: LoadedSuite, ds: ImageSet, device: torch.device | str,
                 out=None, progress: Progress | None = None):
        self.loaded = loaded
        self.s = loaded.suite
        self.ds = ds
        self.device = torch.device(device)
        self.out = out
        self.progress = progress or Progress()
        self.fingerprint = ds.fingerprint()
        self.suite_hash = loaded.hash        # the run's, also in the cells of derived engines
        self.positive = positive_index(ds, loaded.suite.dataset.positive_class)
        self.cache = Cache(cache_root(), warn=None if progress is None else progress.warn)
        self.gen_cache = GeneratorCache(self.cache)
        self.synth_cache = SyntheticCache(self.cache)
        self._folds: dict[int, list[Fold]] = {}
        self._gen_fold: tuple | None = None
        self._gen_mem: dict[str, Any] = {}
        self._notes_seen: set[str] = set()
        self._split_engines: dict[tuple[int, int], Engine] = {}

    def derive(self, loaded: LoadedSuite) -> "Engine":
        """An engine for a variant of this suite (tuning trials, ablation levels) that
        shares the dataset, folds and fitted generators with this one. Only settings
        that leave the data and generator parameters alone may differ."""
        other = copy.copy(self)
        other.loaded, other.s = loaded, loaded.suite
        return other

    def for_split(self, seed: int, fold: int) -> "Engine":
        """The engine of one outer split's cells: this one, or, where a nested study tuned
        the split (``LoadedSuite.per_split``), one derived under the split's own suite."""
        variant = self.loaded.for_split(seed, fold)
        if variant is self.loaded:
            return self
        if (seed, fold) not in self._split_engines:
            self._split_engines[(seed, fold)] = self.derive(variant)
        return self._split_engines[(seed, fold)]

    # ------------------------------------------------------------ folds and arms
    def folds(self, seed: int) -> list[Fold]:
        if seed not in self._folds:
            self._folds[seed] = suite_folds(self.loaded, self.ds, seed)
        return self._folds[seed]

    def arm(self, name: str) -> ArmConfig:
        return next(a for a in self.s.arms if a.name == name)

    def classifier(self, key: str) -> ClassifierConfig:
        return next(c for c in self.s.classifiers if c.key == key)

    def real(self, fold: Fold, part: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The fold's real images and labels of one part: train, val or test."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be train, val or test, not {part!r}")
        index = torch.from_numpy(fold.test if part == "test" else
                                 fold.val if part == "val" else fold.train)
        return self.ds.images[index], self.ds.labels[index]

    def planned(self, arm: ArmConfig, fold: Fold) -> list[int]:
        """Synthetic images per class the arm adds to the fold's training part: its
        injection policy on the real counts, or, for an arm trained on synthetic images
        only (TSTR), as many per class as the real training part has."""
        counts = np.bincount(self.ds.labels.numpy()[fold.train],
                             minlength=self.ds.num_classes).tolist()
        return planned_counts(arm, counts, self.ds.classes)

    # ------------------------------------------------------------ synthetic images
    def training_set(self, arm: ArmConfig, fold: Fold, seed: int):
        """Real training images of the fold plus the arm's synthetic images.

        Returns (images, labels, is_synthetic, synthetic count per class). Validation
        and test data are never touched here: they come straight from the real dataset
        in ``train_cell`` and ``run_cell``.
        """
        x, y = self.real(fold)
        synthetic = torch.zeros(len(y), dtype=torch.bool)
        wanted = self.planned(arm, fold)
        if sum(wanted) == 0:          # no generator, or SIIR 0: nothing is fitted
            return x, y, synthetic, wanted
        synthetic_only = arm.train_on == "synthetic"
        xs, ys = ([], []) if synthetic_only else ([x], [y])
        for c, n in enumerate(wanted):
            if n > 0:
                xs.append(self.draw(arm, fold, seed, c, n))
                ys.append(torch.full((n,), c, dtype=torch.int64))
        if self.out is not None:      # a model drawn from before: its artifacts, if cached
            try:
                self.generators(arm, fold, seed, wanted, fit=False)
            except MedbenchError:
                pass
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        n_real = 0 if synthetic_only else len(y)
        synthetic = torch.cat([synthetic[:n_real], torch.ones(len(y_all) - n_real, dtype=torch.bool)])
        return x_all, y_all, synthetic, wanted

    def draw(self, arm: ArmConfig, fold: Fold, seed: int, c: int, n: int) -> torch.Tensor:
        """n synthetic images of class c: from the synthetic cache, else drawn from the
        generator (fitted, or loaded from the generator cache, only now) with every
        global RNG fixed by the key, so a cached and a fresh draw are the same images,
        and stored."""
        key, desc = self.draw_key(arm, fold, seed, c, n)
        shape = tuple(self.ds.images.shape[1:])
        hit = self.synth_cache.load(key, shape)
        if hit is not None and len(hit[0]) == n:
            self._say_notes(hit[1])
            return hit[0]
        one = [n if i == c else 0 for i in range(self.ds.num_classes)]
        g = self.generators(arm, fold, seed, one)[c]
        try:
            with fixed_rng(key, self.device):
                imgs = g.sample(c, n)
        except (RuntimeError, ValueError) as exc:   # a plugin bug, not a user error
            raise PluginError(f"generator {arm.generator!r} failed to sample class "
                              f"{self.ds.classes[c]!r}: {exc}") from None
        if not torch.is_tensor(imgs) or imgs.dtype != torch.uint8 or \
                tuple(imgs.shape[1:]) != shape or len(imgs) != n:
            got = f"{tuple(imgs.shape)} {imgs.dtype}" if torch.is_tensor(imgs) else type(imgs).__name__
            raise PluginError(f"generator {arm.generator!r} returned {got}; expected "
                              f"({n}, {', '.join(map(str, shape))}) uint8")
        notes = [str(t) for t in g.notes]
        self._say_notes(notes)
        self.synth_cache.store(key, imgs, notes, f"{arm.generator}: {n} images of class "
                               f"{self.ds.classes[c]!r}, seed {seed}, fold {fold.index}", desc)
        return imgs

    def draw_key(self, arm: ArmConfig, fold: Fold, seed: int, c: int, n: int) -> tuple[str, dict]:
        """The synthetic cache key (and its description) of n images of class c drawn
        for the arm in a fold: what ``draw`` looks up first, and ``medbench plan``."""
        info = registry().get("generators", arm.generator)
        gkey = self._generator_key(arm, fold, seed, c)
        # what a drawing depends on besides the generator's own key: for SMOTE, oversampling
        # and augmentation (not cached as models) the engine code they draw through
        code = "" if self.gen_cache.cacheable(info.obj) else code_version(info.obj)
        desc = SyntheticCache.describe_key(gkey, c, n, code, arm.generator)
        if arm.snapshot_kimg is not None:      # another model than the fit's last
            desc["snapshot_kimg"] = float(arm.snapshot_kimg)
        return content_key(desc), desc

    def fit_units(self, arm: ArmConfig, wanted: list[int]) -> list[int | None]:
        """The models the arm fits for these synthetic counts per class: one per class
        with ``wanted[c] > 0`` for a per-class generator, the one conditional model
        (None) for a conditional one, none when nothing is wanted."""
        need = [c for c, n in enumerate(wanted) if n > 0]
        if not need:
            return []
        return [None] if registry().get("generators", arm.generator).obj.conditional else need

    def fit_images(self, fold: Fold, unit: int | None) -> int:
        """Real training images the model of ``unit`` (a class, or None: all) is fitted on."""
        y = self.ds.labels.numpy()[fold.train]
        return int(len(y) if unit is None else (y == unit).sum())

    def generator_key(self, arm: ArmConfig, fold: Fold, seed: int, c: int | None) -> str:
        """The generator cache key of the model that draws class c (see ``_generator_key``)."""
        return self._generator_key(arm, fold, seed, c)

    def _generator_key(self, arm: ArmConfig, fold: Fold, seed: int, c: int | None) -> str:
        """The generator cache key of the model that draws class c (the one conditional
        model, or class c's own)."""
        info = registry().get("generators", arm.generator)
        unit = None if info.obj.conditional else c
        return self.gen_cache.key(info, self.s.params_for(arm), seed, self.fingerprint,
                                  fold.train, unit, self.ds.classes,
                                  tuple(self.ds.images.shape[1:]))

    def generators(self, arm: ArmConfig, fold: Fold, seed: int, wanted: list[int],
                   fit: bool = True) -> dict[int, Generator]:
        """The fitted generator of every class with ``wanted[c] > 0`` (one conditional
        model serves them all). Fitted on the fold's real training images only, kept in
        memory while the fold lasts and on disk (see ``GeneratorCache``), so other
        classifiers, SIIR values and reruns reuse them. With ``fit=False`` only models in
        memory or in the generator cache are returned (and their artifacts written)."""
        info = registry().get("generators", arm.generator)
        if (seed, fold.index) != self._gen_fold:
            self._gen_fold, self._gen_mem = (seed, fold.index), {}
        conditional = info.obj.conditional
        need = [c for c, n in enumerate(wanted) if n > 0]
        units = self.fit_units(arm, wanted)
        fitted: dict[int | None, Generator] = {}
        for c in units:
            key = self._generator_key(arm, fold, seed, c)
            if key not in self._gen_mem:
                g = self._fit_generator(info, key, arm, fold, seed, c, fit=fit)
                if g is None:           # fit=False and not in the generator cache
                    continue
                self._gen_mem[key] = g
            g = self._gen_mem[key]
            if isinstance(g, MedbenchError):
                raise type(g)(str(g))
            if arm.snapshot_kimg is not None:
                g = self._snapshot_of(g, key, arm)
            fitted[c] = g
        if conditional:
            return {c: fitted[None] for c in need} if None in fitted else {}
        return fitted

    def _snapshot_of(self, g: Generator, key: str, arm: ArmConfig) -> Generator:
        """The fitted generator ``g`` as it was at the arm's ``snapshot_kimg`` milestone
        (kept by the same fit, so nothing is refitted), once per fold in memory."""
        k = float(arm.snapshot_kimg)
        mem = (key, k)
        if mem not in self._gen_mem:
            if not hasattr(g, "at"):
                raise PluginError(f"generator {arm.generator!r} keeps no snapshots; arm "
                                  f"{arm.name!r} cannot draw at {k:g} kimg")
            self._gen_mem[mem] = g.at(k)
        return self._gen_mem[mem]

    def _say_notes(self, notes: list[str]) -> None:
        """Say once what a generator noted (a capped depth, a reduced k, a PCA space)."""
        for note in notes:
            if note not in self._notes_seen:
                self._notes_seen.add(note)
                self.progress.note(note)

    def _shorter_fit(self, fresh, line: str | None) -> dict | None:
        """The state of the cached fit of the largest budget below ``fresh``'s on the
        same line (same generator, data, seed and parameters but the budget) that
        ``fresh`` can continue, or None."""
        if line is None or fresh.cfg["kimg"] is None:
            return None
        # only a shorter fit can be continued: the others' states are not read
        below = [(k, key) for k, key in self.gen_cache.line(line).items()
                 if kimg_images(k) < kimg_images(fresh.cfg["kimg"])]
        for _, key in sorted(below, reverse=True):
            state = self.gen_cache.state(key)
            if state is not None and fresh.continues(state) is None:
                return state
        return None

    def _fit_generator(self, info, key: str, arm: ArmConfig, fold: Fold, seed: int,
                       c: int | None, fit: bool = True):
        params = self.s.params_for(arm)
        what = (f"{arm.generator} for "
                + ("all classes" if c is None else f"class {self.ds.classes[c]!r}")
                + f" (seed {seed}, fold {fold.index})")
        x, y = self.real(fold)
        xs, ys = (x, y) if c is None else (x[y == c], y[y == c])
        stored = self.gen_cache.cacheable(info.obj)
        try:
            g = self.gen_cache.load(key, info, params, str(self.device))
            if g is not None:
                source = "cache"
            elif not fit:
                return None
            else:
                source = "fitted"
                t0 = time.perf_counter()
                fresh = info.obj(**params)
                line = (self.gen_cache.line_key(key, fresh.BUDGET_KEYS)
                        if stored and getattr(fresh, "resumable", False) else None)
                earlier = self._shorter_fit(fresh, line)
                if earlier is not None:
                    what += f", continuing the fit of {earlier['cfg']['kimg']:g} kimg"
                self.progress.fitting(what, len(ys), stored)
                with fixed_rng(key, self.device):   # nothing depends on what ran before
                    more = {} if earlier is None else {"resume": earlier}
                    g = fresh.fit(xs, ys, classes=self.ds.classes, device=str(self.device),
                                  seed=seed, progress=self.progress.advance, **more)
                self.gen_cache.save(key, g)
                if line is not None and g.resume is not None:
                    self.gen_cache.add_to_line(line, float(params["kimg"]), key)
                self.progress.fitted(what, time.perf_counter() - t0, stored)
        except GeneratorDiverged as exc:
            self.gen_cache.save_failure(key, str(exc))
            return exc
        except MedbenchError as exc:
            if isinstance(exc, PluginError):
                raise
            return exc
        self._say_notes([str(t) for t in g.notes])
        if self.out is not None:
            write_generator_artifacts(self.out, arm.generator, params, key, seed, fold.index,
                                      None if c is None else self.ds.classes[c], g, source,
                                      real=(xs, ys))
        return g

    # ------------------------------------------------------------ one cell
    def training_config(self, ccfg: ClassifierConfig) -> TrainingConfig:
        """The suite's training block with the classifier's own overrides."""
        if not ccfg.training:
            return self.s.training
        return TrainingConfig.model_validate({**self.s.training.model_dump(), **ccfg.training})

    def train_cell(self, arm_name: str, clf_key: str, seed: int, fold_index: int,
                   progress: Progress | None = None) -> Trained:
        """Train one classifier on the arm's training set of a fold (real images plus the
        arm's synthetic ones), selecting the checkpoint on the fold's real validation
        split. Nothing here reads the test images."""
        progress = progress or self.progress
        arm = self.arm(arm_name)
        ccfg = self.classifier(clf_key)
        info = registry().get("classifiers", ccfg.name)
        clf = info.obj()
        fold = self.folds(seed)[fold_index]
        x_tr, y_tr, synth, wanted = self.training_set(arm, fold, seed)
        x_val, y_val = self.real(fold, "val")
        tcfg = self.training_config(ccfg)
        settings = Settings.resolve(tcfg, clf.default_training or {})
        normalize = tcfg.normalize
        if normalize == "auto":
            normalize = (clf.normalization(self.ds.images.shape[1], pretrained=ccfg.pretrained,
                                           **ccfg.params)
                         or ("imagenet" if ccfg.pretrained else "half"))
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            model = clf.build(self.ds.num_classes, self.ds.images.shape[1], self.ds.images.shape[2],
                              pretrained=ccfg.pretrained, dropout=ccfg.dropout, **ccfg.params)
        except TypeError as exc:
            raise PluginError(f"classifier {ccfg.name!r}: {exc}") from None
        weights = class_weight_vector(y_tr, self.ds.num_classes) if arm.class_weights else None
        trainer = Trainer(settings, self.device, normalize, self.ds.images.shape[1])
        label = f"{arm_name} / {clf_key} s{seed} f{fold_index}"

        def epochs(row: dict) -> None:
            progress.advance(f"{label} epoch {row['epoch']}/{row['total_epochs']}",
                             row["epoch"] / max(row["total_epochs"], 1))

        # one rule for every arm: the class-weights arm weighs its training loss, never
        # the validation measure that chooses its checkpoint
        rule = selection_rule(tcfg.selection, self.ds.classes, self.positive)
        result = trainer.fit(model, clf.head(model), x_tr, y_tr, x_val, y_val, seed=seed,
                             class_weights=weights, selection=rule, progress=epochs)
        p_val, _ = trainer.evaluate(model, x_val)
        threshold = None
        if tcfg.threshold == "f1" and self.ds.num_classes == 2:
            threshold = metrics.tune_threshold(y_val.numpy(), p_val, self.positive)
        return Trained(arm, ccfg, info, fold, model, trainer, result, y_val.numpy(), p_val,
                       threshold, synth, wanted)

    def validation_scores(self, arm_name: str, clf_key: str, seed: int, fold_index: int,
                          progress: Progress | None = None) -> dict[str, float]:
        """What a tuning trial sees: the classifier's best validation loss and its metrics
        on the fold's real validation split (carved from training data, never the test
        fold)."""
        t = self.train_cell(arm_name, clf_key, seed, fold_index, progress)
        rows = metrics.compute(t.y_val, t.p_val, self.ds.classes, metrics.scalar_metrics(),
                               t.threshold, self.positive)
        out = {m: v for m, c, v in rows if c == ""}
        out["val_loss"] = t.result.best_val_loss
        return out

    def run_cell(self, cell: Cell, progress: Progress | None = None) -> tuple[pd.DataFrame, dict]:
        """One cell's result rows and test predictions."""
        s = self.s
        t = self.train_cell(cell.arm, cell.classifier, cell.seed, cell.fold, progress)
        fold, result, synth, info = t.fold, t.result, t.synth, t.info
        x_te, y_te = self.real(fold, "test")
        p_te, test_loss = t.trainer.evaluate(t.model, x_te, y_te)
        rows = metrics.compute(y_te.numpy(), p_te, self.ds.classes, s.metrics, t.threshold,
                               self.positive)
        rows.append(("test_loss", "", test_loss))
        # the plain validation loss of the chosen checkpoint, and the selection rule's
        # value there when it is another measure (val_balanced_loss, val_macro_f1, ...)
        rows.append(("val_loss", "", result.best_val_loss))
        if result.selection != "loss":
            rows.append((f"val_{result.selection}", "", result.best_score))
        df = pd.DataFrame(rows, columns=["metric", "class", "value"])
        df.insert(0, "metric_order", np.arange(len(df)))
        gen_info = registry().get("generators", t.arm.generator) if t.arm.generator else None
        meta = {
            "suite": s.name, "suite_hash": self.suite_hash, "profile": self.loaded.profile or "",
            "arm": cell.arm, "classifier": cell.classifier, "seed": cell.seed, "fold": cell.fold,
            "cell_order": cell.order, "n_train_real": int((~synth).sum()),
            "n_synthetic": int(synth.sum()), "n_val": len(t.y_val), "n_test": len(y_te),
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "selection": result.selection,
            "positive_class": "" if self.positive is None else self.ds.classes[self.positive],
            "threshold": np.nan if t.threshold is None else t.threshold,
            "train_seconds": round(result.seconds, 3),
            "train_images_per_second": round(result.images_per_second, 1),
            "amp": result.amp, "compiled": result.compiled,
            "peak_gpu_memory_mb": np.nan if result.peak_memory_bytes is None
            else round(result.peak_memory_bytes / 2**20, 1),
            "classifier_plugin": f"{info.name} ({info.package} {info.version})",
            "generator_plugin": "" if gen_info is None else
            f"{gen_info.name} ({gen_info.package} {gen_info.version})",
        }
        for k, v in reversed(list(meta.items())):
            df.insert(0, k, v)
        preds = {"y_true": y_te.numpy(), "probs": p_te.astype(np.float32),
                 "test_index": fold.test, "synthetic_per_class": np.asarray(t.wanted),
                 "history_val_loss": np.array([h["val_loss"] for h in result.history])}
        return df, preds
