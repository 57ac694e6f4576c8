"""The engine loop: suite -> dataset -> folds -> cells -> results on disk."""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from . import __version__, injection, metrics
from .api import DatasetSpec
from .cache import Cache, SyntheticCache, cache_root, code_version, content_key, fixed_rng
from .data import ImageSet, conform, handle_duplicates
from .errors import DataError, MedbenchError, PluginError, Terminated
from .execution import CellWork, Prefit, default_threads
from .generators import GeneratorCache, GeneratorDiverged, write_generator_artifacts
from .registry import registry
from .splits import Fold, make_folds
from .store import ResultsStore, safe_name
from .suite import ArmConfig, ClassifierConfig, LoadedSuite, resolve_data_path
from .trainer import Settings, Trainer, class_weight_vector, pick_device


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


def check_plugins(loaded: LoadedSuite) -> None:
    """Fail before any work when a suite names a plugin that is not installed."""
    reg = registry()
    s = loaded.suite
    reg.get("datasets", s.dataset.loader)
    for clf in s.classifiers:
        info = reg.get("classifiers", clf.name)
        if clf.pretrained and not getattr(info.obj, "supports_pretrained", False):
            raise PluginError(f"classifier {clf.name!r} has no pretrained weights; "
                              "set pretrained: false")
    for arm in s.arms:
        if arm.generator:
            info = reg.get("generators", arm.generator)
            # parameters are checked now, not after hours of other arms
            gen = info.obj(**s.params_for(arm))
            check = getattr(gen, "check_data", None)
            if callable(check):
                check(s.dataset.image_size, s.dataset.channels)


def load_dataset(loaded: LoadedSuite) -> tuple[ImageSet, dict]:
    s = loaded.suite
    d = s.dataset
    loader = registry().get("datasets", d.loader).obj()
    spec = DatasetSpec(loader=d.loader, path=resolve_data_path(loaded), image_size=d.image_size,
                       channels=d.channels, options=dict(d.options), cache_dir=cache_root())
    ds = loader.load(spec)
    ds = conform(ds, d.image_size, d.channels)
    if len(ds) == 0:
        raise DataError(f"dataset {d.loader!r} at {spec.path} has no images")
    ds, dup = handle_duplicates(ds, d.duplicates)
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
        "duplicates": dup.as_dict(), "duplicates_summary": dup.summary(),
        "fingerprint": ds.fingerprint(), "notes": ds.notes,
    }
    if dropped:
        report["dropped_classes"] = dropped
    return ds, report


def git_commit(here: Path | None = None) -> str:
    """The checkout's commit, with ``-dirty`` when a tracked file differs from it; the
    tables and figures medbench itself writes under reports/ do not count."""
    here = here or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)reports"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Reporter:
    """Progress for a run: rich bars on a terminal, one line per cell otherwise."""

    def __init__(self, total: int, quiet: bool):
        from rich.console import Console
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.rich = not quiet and self.console.is_terminal
        self.total = total
        self.progress = None
        if self.rich:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=self.console, transient=False)
            self.progress.start()
            self.cells_task = self.progress.add_task("cells", total=total)
            self.epoch_task = self.progress.add_task("epochs", total=1, visible=False)

    def log(self, msg: str) -> None:
        if not self.quiet:
            if self.rich:
                self.progress.console.print(msg, highlight=False, markup=False)
            else:
                print(msg, file=sys.stderr, flush=True)

    def cell_started(self, cell: Cell) -> None:
        if self.rich:
            self.progress.update(self.epoch_task, description=f"  {cell.arm} / {cell.classifier} "
                                 f"s{cell.seed} f{cell.fold}", completed=0, total=1, visible=True)

    def epoch(self, row: dict) -> None:
        if self.rich:
            self.progress.update(self.epoch_task, completed=row["epoch"], total=row["total_epochs"])

    def generator(self, text: str, fraction: float) -> None:
        """Progress of a generator being fitted (the epoch bar shows it)."""
        if self.rich:
            self.progress.update(self.epoch_task, description=f"  {text}",
                                 completed=fraction, total=1.0, visible=True)

    def cell_done(self, n_done: int, cell: Cell, summary: str) -> None:
        if self.rich:
            self.progress.update(self.cells_task, completed=n_done)
        self.log(f"[{n_done}/{self.total}] done {cell.label()} {summary}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class Engine:
    """Holds what is shared between cells of one run: data, folds, fitted generators."""

    def __init__(self, loaded: LoadedSuite, ds: ImageSet, device: torch.device,
                 out: Path | None = None, reporter: "Reporter | None" = None):
        self.loaded = loaded
        self.s = loaded.suite
        self.ds = ds
        self.device = device
        self.out = out
        self.reporter = reporter
        self.fingerprint = ds.fingerprint()
        self.cache = Cache(cache_root(), warn=(lambda m: reporter.log(f"warning: {m}"))
                           if reporter else None)
        self.gen_cache = GeneratorCache(self.cache)
        self.synth_cache = SyntheticCache(self.cache)
        self._folds: dict[int, list[Fold]] = {}
        self._gen_fold: tuple | None = None
        self._gen_mem: dict[str, Any] = {}
        self._notes_seen: set[str] = set()

    def folds(self, seed: int) -> list[Fold]:
        if seed not in self._folds:
            p = self.s.protocol
            self._folds[seed] = make_folds(self.ds, p.kind, seed=seed, folds=p.folds,
                                           val_fraction=p.val_fraction,
                                           test_fraction=p.test_fraction,
                                           min_per_class=self.s.dataset.min_per_class)
        return self._folds[seed]

    def arm(self, name: str) -> ArmConfig:
        return next(a for a in self.s.arms if a.name == name)

    def classifier(self, key: str) -> ClassifierConfig:
        return next(c for c in self.s.classifiers if c.key == key)

    # ------------------------------------------------------------ training set
    def training_set(self, arm: ArmConfig, fold: Fold, seed: int):
        """Real training images of the fold plus the arm's synthetic images.

        Returns (images, labels, is_synthetic). Validation and test data are never
        touched here: they come straight from the real dataset in run_cell.
        """
        x = self.ds.images[torch.from_numpy(fold.train)]
        y = self.ds.labels[torch.from_numpy(fold.train)]
        synthetic = torch.zeros(len(y), dtype=torch.bool)
        if not arm.generator:
            return x, y, synthetic, [0] * self.ds.num_classes
        counts = torch.bincount(y, minlength=self.ds.num_classes).tolist()
        inj = arm.injection
        synthetic_only = arm.train_on == "synthetic"
        if synthetic_only:            # TSTR: the real part's size and balance, all synthetic
            wanted = list(counts)
        else:
            wanted = injection.plan(inj.policy, counts, self.ds.classes, siir=inj.siir,
                                    per_class=inj.per_class)
        if sum(wanted) == 0:          # e.g. SIIR 0: no generator is fitted for nothing
            return x, y, synthetic, wanted
        info = registry().get("generators", arm.generator)
        params = self.s.params_for(arm)
        conditional = getattr(info.obj, "conditional", True)
        # what a drawing depends on besides the generator's own key: for SMOTE, oversampling
        # and augmentation (not cached as models) the engine code they draw through
        code = "" if self.gen_cache.cacheable(info.obj) else code_version(info.obj)
        xs, ys = ([], []) if synthetic_only else ([x], [y])
        for c, n in enumerate(wanted):
            if n <= 0:
                continue
            gkey = self.gen_cache.key(info, params, seed, self.fingerprint, fold.train,
                                      None if conditional else c, self.ds.classes,
                                      tuple(x.shape[1:]))
            xs.append(self._draw(arm, fold, seed, x, y, c, n, gkey, code))
            ys.append(torch.full((n,), c, dtype=torch.int64))
        if self.out is not None:      # a model drawn from before: its artifacts, if cached
            try:
                self._generators(arm, fold, seed, x, y, wanted, fit=False)
            except MedbenchError:
                pass
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        n_real = 0 if synthetic_only else len(y)
        synthetic = torch.cat([synthetic[:n_real], torch.ones(len(y_all) - n_real, dtype=torch.bool)])
        return x_all, y_all, synthetic, wanted

    def _draw(self, arm: ArmConfig, fold: Fold, seed: int, x, y, c: int, n: int,
              gkey: str, code: str) -> torch.Tensor:
        """n synthetic images of class c: from the synthetic cache, else drawn from the
        generator (fitted, or loaded from the generator cache, only now) with every
        global RNG fixed by the key, so a cached and a fresh draw are the same images,
        and stored."""
        desc = SyntheticCache.describe_key(gkey, c, n, code, arm.generator)
        key = content_key(desc)
        hit = self.synth_cache.load(key, tuple(x.shape[1:]))
        if hit is not None and len(hit[0]) == n:
            self._log_notes(hit[1])
            return hit[0]
        one = [n if i == c else 0 for i in range(self.ds.num_classes)]
        gens = self._generators(arm, fold, seed, x, y, one)
        g = gens[c] if isinstance(gens, dict) else gens
        try:
            with fixed_rng(key, self.device):
                imgs = g.sample(c, n)
        except (RuntimeError, ValueError) as exc:   # a plugin bug, not a user error
            raise PluginError(f"generator {arm.generator!r} failed to sample class "
                              f"{self.ds.classes[c]!r}: {exc}") from None
        if imgs.dtype != torch.uint8 or tuple(imgs.shape[1:]) != tuple(x.shape[1:]) or len(imgs) != n:
            raise PluginError(f"generator {arm.generator!r} returned {tuple(imgs.shape)} "
                              f"{imgs.dtype}; expected ({n}, {', '.join(map(str, x.shape[1:]))}) uint8")
        notes = [str(t) for t in getattr(g, "notes", []) or []]
        self._log_notes(notes)
        self.synth_cache.store(key, imgs, notes, f"{arm.generator}: {n} images of class "
                               f"{self.ds.classes[c]!r}, seed {seed}, fold {fold.index}", desc)
        return imgs

    def _generators(self, arm: ArmConfig, fold: Fold, seed: int, x, y, wanted, fit: bool = True):
        """The fitted generator(s) an arm needs for this fold: one conditional model, or
        a dict class -> model. Fitted on the fold's real training images only, kept in
        memory while the fold lasts and on disk (see ``GeneratorCache``), so other
        classifiers, SIIR values and reruns reuse them. With ``fit=False`` only models in
        memory or in the generator cache are returned (and their artifacts written)."""
        info = registry().get("generators", arm.generator)
        params = self.s.params_for(arm)
        if (seed, fold.index) != self._gen_fold:
            self._gen_fold, self._gen_mem = (seed, fold.index), {}
        conditional = getattr(info.obj, "conditional", True)
        units = [None] if conditional else [c for c, n in enumerate(wanted) if n > 0]
        fitted = {}
        for c in units:
            key = self.gen_cache.key(info, params, seed, self.fingerprint, fold.train, c,
                                     self.ds.classes, tuple(x.shape[1:]))
            if key not in self._gen_mem:
                g = self._fit_generator(info, params, key, arm, fold, seed, x, y, c, fit=fit)
                if g is None:           # fit=False and not in the generator cache
                    continue
                self._gen_mem[key] = g
            g = self._gen_mem[key]
            if isinstance(g, MedbenchError):
                raise type(g)(str(g))
            fitted[c] = g
        return fitted.get(None) if conditional else fitted

    def _log_notes(self, g) -> None:
        """Say once what a generator (or a list of its notes) noted (a capped depth, a
        reduced k, a PCA space)."""
        for note in (g if isinstance(g, list) else getattr(g, "notes", []) or []):
            if self.reporter and note not in self._notes_seen:
                self._notes_seen.add(note)
                self.reporter.log(f"note: {note}")

    def _fit_generator(self, info, params, key, arm, fold, seed, x, y, c, fit: bool = True):
        what = (f"{arm.generator} for "
                + ("all classes" if c is None else f"class {self.ds.classes[c]!r}")
                + f" (seed {seed}, fold {fold.index})")
        xs, ys = (x, y) if c is None else (x[y == c], y[y == c])
        try:
            g = self.gen_cache.load(key, info, params, str(self.device))
            if g is not None:
                source = "cache"
            elif not fit:
                return None
            else:
                source = "fitted"
                t0 = time.perf_counter()
                if self.reporter:
                    self.reporter.log(f"fitting {what} on {len(ys)} real training images")
                with fixed_rng(key, self.device):   # nothing depends on what ran before
                    g = info.obj(**params).fit(
                        xs, ys, classes=self.ds.classes, budget=None, device=str(self.device),
                        seed=seed, progress=self.reporter.generator if self.reporter else None)
                self.gen_cache.save(key, g)
                if self.reporter:
                    self.reporter.log(f"fitted {what} in {time.perf_counter() - t0:.1f} s")
        except GeneratorDiverged as exc:
            self.gen_cache.save_failure(key, str(exc))
            return exc
        except MedbenchError as exc:
            if isinstance(exc, PluginError):
                raise
            return exc
        self._log_notes(g)
        if self.out is not None:
            write_generator_artifacts(self.out, arm.generator, params, key, seed, fold.index,
                                      None if c is None else self.ds.classes[c], g, source,
                                      real=(xs, ys))
        return g

    # ------------------------------------------------------------ one cell
    def derive(self, loaded: LoadedSuite) -> "Engine":
        """An engine for a variant of this suite (tuning trials, ablation levels) that
        shares the dataset, folds and fitted generators with this one. Only settings
        that leave the data and generator parameters alone may differ."""
        other = copy.copy(self)
        other.loaded, other.s = loaded, loaded.suite
        return other

    def train_cell(self, arm_name: str, clf_key: str, seed: int, fold_index: int,
                   reporter: Reporter | None = None) -> "Trained":
        """Train one classifier on the arm's training set of a fold (real images plus the
        arm's synthetic ones), selecting the checkpoint on the fold's real validation
        split. Nothing here reads the test images."""
        s = self.s
        arm = self.arm(arm_name)
        ccfg = self.classifier(clf_key)
        info = registry().get("classifiers", ccfg.name)
        clf = info.obj()
        fold = self.folds(seed)[fold_index]
        x_tr, y_tr, synth, wanted = self.training_set(arm, fold, seed)
        x_val = self.ds.images[torch.from_numpy(fold.val)]
        y_val = self.ds.labels[torch.from_numpy(fold.val)]
        tcfg = s.training
        if ccfg.training:
            from .suite import TrainingConfig
            tcfg = TrainingConfig.model_validate({**s.training.model_dump(), **ccfg.training})
        settings = Settings.resolve(tcfg, getattr(clf, "default_training", {}) or {})
        normalize = tcfg.normalize
        if normalize == "auto":
            normalize = "imagenet" if ccfg.pretrained else "half"
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            model = clf.build(self.ds.num_classes, self.ds.images.shape[1], self.ds.images.shape[2],
                              pretrained=ccfg.pretrained, dropout=ccfg.dropout, **ccfg.params)
        except TypeError as exc:
            raise PluginError(f"classifier {ccfg.name!r}: {exc}") from None
        weights = class_weight_vector(y_tr, self.ds.num_classes) if arm.class_weights else None
        trainer = Trainer(settings, self.device, normalize, self.ds.images.shape[1])
        result = trainer.fit(model, clf.head(model), x_tr, y_tr, x_val, y_val, seed=seed,
                             class_weights=weights,
                             progress=reporter.epoch if reporter else None)
        p_val, _ = trainer.evaluate(model, x_val)
        threshold = None
        if tcfg.threshold == "f1" and self.ds.num_classes == 2:
            threshold = metrics.tune_threshold(y_val.numpy(), p_val)
        return Trained(arm, ccfg, info, fold, model, trainer, result, y_val.numpy(), p_val,
                       threshold, synth, wanted)

    def validation_scores(self, arm_name: str, clf_key: str, seed: int, fold_index: int,
                          reporter: Reporter | None = None) -> dict[str, float]:
        """What a tuning trial sees: the classifier's best validation loss and its metrics
        on the fold's real validation split (carved from training data, never the test
        fold)."""
        t = self.train_cell(arm_name, clf_key, seed, fold_index, reporter)
        rows = metrics.compute(t.y_val, t.p_val, self.ds.classes, list(metrics.SCALAR),
                               t.threshold)
        out = {m: v for m, c, v in rows if c == ""}
        out["val_loss"] = t.result.best_val_loss
        return out

    def run_cell(self, cell: Cell, reporter: Reporter | None = None) -> tuple[pd.DataFrame, dict]:
        s = self.s
        t = self.train_cell(cell.arm, cell.classifier, cell.seed, cell.fold, reporter)
        fold, result, synth, info = t.fold, t.result, t.synth, t.info
        x_te = self.ds.images[torch.from_numpy(fold.test)]
        y_te = self.ds.labels[torch.from_numpy(fold.test)]
        p_te, test_loss = t.trainer.evaluate(t.model, x_te, y_te)
        rows = metrics.compute(y_te.numpy(), p_te, self.ds.classes, s.metrics, t.threshold)
        rows.append(("test_loss", "", test_loss))
        rows.append(("val_loss", "", result.best_val_loss))
        df = pd.DataFrame(rows, columns=["metric", "class", "value"])
        df.insert(0, "metric_order", np.arange(len(df)))
        gen_info = registry().get("generators", t.arm.generator) if t.arm.generator else None
        meta = {
            "suite": s.name, "suite_hash": self.loaded.hash, "profile": self.loaded.profile or "",
            "arm": cell.arm, "classifier": cell.classifier, "seed": cell.seed, "fold": cell.fold,
            "cell_order": cell.order, "n_train_real": int((~synth).sum()),
            "n_synthetic": int(synth.sum()), "n_val": len(t.y_val), "n_test": len(y_te),
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
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


def run_suite(loaded: LoadedSuite, out: Path, *, quiet: bool = False, executor: str = "local",
              device: str | None = None, command: str | None = None,
              echo: Callable[[str], None] | None = None, jobs: int = 1,
              address: str | None = None, gpus: float | None = None,
              threads: int | None = None) -> pd.DataFrame:
    """Run every cell of a suite not yet in ``out`` and return the consolidated results.

    Cells go through the executor plugin (``local`` one by one here; ``processes`` and
    ``ray`` in parallel workers); every finished cell is written to the store as soon as
    it comes back, so a kill loses only cells in flight, and Ctrl-C stops after saving
    what has finished. A cell that fails (NaN loss, plugin exception, generator
    divergence) is recorded with its reason and the others go on."""
    check_plugins(loaded)
    s = loaded.suite
    if jobs > 1 and executor == "local":
        executor = "processes"
    exec_cls = registry().get("executors", executor).obj
    dev = pick_device(device or s.device)
    if gpus is None:
        gpus = 1.0 if dev.type == "cuda" else 0.0
    threads = threads or default_threads(jobs if getattr(exec_cls, "parallel", False) else 1)
    store = ResultsStore(out)
    meta = {
        "suite": s.name, "suite_path": str(loaded.path), "profile": loaded.profile,
        "command": command, "medbench": __version__, "torch": torch.__version__,
        "python": platform.python_version(), "device": str(dev), "git_commit": git_commit(),
        "report": s.report.model_dump(),
    }
    store.open(loaded.hash, meta)
    ds, data_report = load_dataset(loaded)
    store.write_text("data_report.json", json.dumps(data_report, indent=2, default=str))
    cells = expand_cells(loaded, count_folds(loaded))
    done = store.done()
    todo = [c for c in cells if c.key not in done]
    reporter = Reporter(len(cells), quiet)
    if data_report["duplicates"]["groups"]:
        reporter.log(f"warning: {ds.name or s.dataset.loader}: {data_report['duplicates_summary']}")
    if done:
        reporter.log(f"resuming {out}: {len(cells) - len(todo)} of {len(cells)} cells already done")
    provenance = {"git_commit": meta["git_commit"], "medbench_version": __version__,
                  "torch_version": torch.__version__, "device": str(dev), "threads": threads}
    n_done = len(cells) - len(todo)
    failures = 0

    work = CellWork(loaded, str(dev), out, threads, quiet, ds.fingerprint())
    runner = exec_cls(jobs=jobs, address=address, gpus=gpus)
    if getattr(runner, "parallel", False):
        work.dataset = ds
        reporter.log(f"{executor}: {min(jobs, max(len(todo), 1))} worker(s), "
                     f"{threads} torch thread(s) each")
    else:
        work.attach(Engine(loaded, ds, dev, out=out, reporter=reporter))

    def on_result(cell: Cell, result) -> None:
        with signals_deferred():      # Ctrl-C or SIGTERM never cuts a cell's files in half
            _save_result(cell, result)

    def _save_result(cell: Cell, result) -> None:
        nonlocal n_done, failures
        status, payload, preds, secs = result
        n_done += 1
        if status in ("ok", "cached"):
            for k, v in provenance.items():
                payload[k] = v
            store.save_cell(cell.key, payload, preds)
            store.clear_failure(cell.key)
            acc = payload.loc[payload.metric == "accuracy", "value"]
            summary = f"accuracy={acc.iloc[0]:.4f} " if len(acc) else ""
            how = "from the cell cache" if status == "cached" else f"{secs:.1f} s"
            reporter.cell_done(n_done, cell, f"{summary}({how})")
        else:
            failures += 1
            info = {"cell": cell.label(), "reason": payload}
            if preds:                  # the traceback of an unexpected exception
                info["traceback"] = preds
            store.save_failure(cell.key, info)
            reporter.cell_done(n_done, cell, f"FAILED: {payload}")

    def on_prefit(task: Prefit, result) -> None:
        if result[0] != "ok":          # the cells that need it will record the reason
            reporter.log(f"{task.label()}: {result[1]}")

    old_threads = torch.get_num_threads()
    try:
        if not getattr(runner, "parallel", False):
            torch.set_num_threads(threads)
        prefits = prefit_tasks(loaded, todo)
        if prefits and getattr(runner, "parallel", False):
            reporter.log(f"fitting {len(prefits)} generator set(s) shared by several "
                         "classifiers before their cells")
            runner.run(prefits, work, on_prefit)
        runner.run(todo, work, on_result)
    except KeyboardInterrupt:
        store.consolidate()            # the tables hold every cell that finished
        raise
    finally:
        torch.set_num_threads(old_threads)
        reporter.close()
    df = store.consolidate()
    if failures:
        reporter.log(f"warning: {failures} cell(s) failed; see {out / 'cells'}/*.failed.json")
    return df


@contextlib.contextmanager
def signals_deferred():
    """Hold a Ctrl-C or SIGTERM that arrives inside the block until the block is done,
    then raise it (main thread only; elsewhere signals cannot be handled and this does
    nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}   # e.g. a `cmd &` job
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise Terminated() if signal.SIGTERM in caught else KeyboardInterrupt


def prefit_tasks(loaded: LoadedSuite, todo: list[Cell]) -> list[Prefit]:
    """One generator fit per (seed, fold, arm) whose generator several pending cells
    (one per classifier) share."""
    gen_arms = {a.name for a in loaded.suite.arms if a.generator}
    groups: dict[tuple, int] = {}
    for c in todo:
        if c.arm in gen_arms:
            groups[(c.seed, c.fold, c.arm)] = groups.get((c.seed, c.fold, c.arm), 0) + 1
    return [Prefit(seed, fold, arm) for (seed, fold, arm), n in groups.items() if n > 1]
