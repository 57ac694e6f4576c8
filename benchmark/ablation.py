"""`medbench ablate`: one run per level of one component, everything else fixed.

The suite's subject (one arm, one classifier; see ``tuning.subject_of``) is varied
along one component, and each level is an ordinary run of a one-arm, one-classifier
suite with the protocol, seeds, folds and training budget of the original, in its own
results folder (so each level resumes on its own). Fitted generators come from the
shared cache: sweeping SIIR or the classifier never retrains a GAN.

Components and their default levels:
    siir        0, 0.1, ..., 0.5 under the complementary policy (seed 000, Table 9)
    generator   none and every generator the suite's arms use
    injection   balance, complementary
    optimizer   the untuned suite and the best parameters of every finished study (a
                nested study's own for each outer split)
    classifier  the suite's classifiers
    pretrained  false, true
    synthetic   off (real images only), on
    diffaug     off, on: DiffAugment of the discriminator's inputs, at the same budget
                (p = 1); also ``ada``: ADA's adaptive probability, from p = 0 (named in
                --levels)

    budget      the quality-utility curve: each generator arm (``--arm a,b,...``; default
                every arm whose generator keeps snapshots) fitted once with snapshots at
                fractions of its kimg budget (levels: 0.25, 0.5, 0.75, 1), the classifier
                trained on each snapshot's images, and ``none`` and ``oversample`` (when
                the suite has them) as reference levels; image quality is measured
                (``--fidelity-images``, 300 unless given)

``--arm`` picks another arm than the suite's subject (e.g. ``--arm dcgan``).

The tables and figure of the levels are ``ablation_report``'s.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ablation_report import COMPONENTS, NUMERIC, write_ablation_report, write_budget_report
from .errors import PluginError, SuiteError
from .registry import registry
from .engine import check_feasible, check_plugins, load_dataset
from .runner import run_suite
from .store import FolderLock, safe_name
from .suite import LoadedSuite
from .tuning import _entry, apply_study, derived, load_study, subject_of

# The generator's `diffaug` parameter at each level of the diffaug component. `ada`
# starts from p = 0, as ADA does (Karras et al. 2020), and moves p by at most one unit
# per 20 kimg, so that at the cpu profiles' budgets of 20 to 80 kimg it can reach any
# probability the heuristic asks for (ADA's own 500 kimg suits fits of millions of images).
DIFFAUG_LEVELS: dict[str, Any] = {
    "off": False,
    "on": True,
    "ada": {"adaptive": True, "p": 0.0, "speed_kimg": 20.0},
}


@dataclass
class Level:
    label: str          # e.g. "siir=0.2": the arm name in the level's results
    value: object
    loaded: LoadedSuite


def _parse(component: str, text: list[str]) -> list:
    if component in NUMERIC:
        try:
            return [float(t) for t in text]
        except ValueError:
            raise SuiteError(f"--levels for {component} must be numbers, got {','.join(text)}") from None
    if component == "pretrained":
        out = []
        for t in text:
            if t.lower() not in ("true", "false"):
                raise SuiteError(f"--levels for pretrained are true and false, got {t!r}")
            out.append(t.lower() == "true")
        return out
    return list(text)


BUDGET_FRACTIONS = [0.25, 0.5, 0.75, 1.0]
BUDGET_FIDELITY_IMAGES = 300
REFERENCE_ARMS = ("none", "oversample")     # drawn as lines in the budget figure


def budget_label(arm: str, kimg: float) -> str:
    """The level (and folder) name of an arm's snapshot: ``dcgan-15kimg``."""
    return f"{arm}-{kimg:g}kimg"


def _total_kimg(kimg: Any) -> float | None:
    """A generator's whole budget in kimg: ``kimg``, or the sum of ProGAN's per-stage list."""
    if isinstance(kimg, bool) or kimg is None:
        return None
    if isinstance(kimg, (list, tuple)):
        return float(sum(kimg)) if kimg and all(isinstance(k, (int, float)) for k in kimg) else None
    return float(kimg) if isinstance(kimg, (int, float)) else None


def _budget_levels(loaded: LoadedSuite, given: list[str] | None, arm: str | None) -> list[Level]:
    """One level per (generator arm, fraction of its kimg budget), every level of an arm
    drawing from the same fit (same parameters, ``snapshots_kimg`` at all its
    milestones), then the reference arms."""
    s = loaded.suite
    fractions = _parse("siir", given) if given else BUDGET_FRACTIONS
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise SuiteError(f"--levels of budget are fractions of each generator's kimg budget "
                         f"in (0, 1], got {','.join(f'{f:g}' for f in fractions)}")
    fractions = sorted(set(fractions))
    if len(fractions) < 2:
        raise SuiteError("an ablation of budget needs at least two fractions")
    by_name = {a.name: a for a in s.arms}

    def keeps_snapshots(a) -> bool:
        info = registry().get("generators", a.generator) if a.generator else None
        return info is not None and "snapshots_kimg" in info.obj.parameters()

    if arm:
        names = [x.strip() for x in arm.split(",") if x.strip()]
        for n in names:
            if n not in by_name:
                raise SuiteError(f"--arm {n!r} is not an arm of the suite; arms: "
                                 f"{', '.join(by_name)}")
            if not keeps_snapshots(by_name[n]):
                raise SuiteError(f"arm {n!r}: its generator {by_name[n].generator!r} keeps no "
                                 "snapshots, so it has no budget curve")
    else:
        names = [a.name for a in s.arms if a.train_on != "synthetic" and keeps_snapshots(a)]
        if not names:
            raise SuiteError("no arm of the suite has a generator that keeps snapshots; "
                             "the budget curve needs one (a GAN or ddpm)")
    out = []
    for n in names:
        a = by_name[n]
        params = s.params_for(a)
        total = _total_kimg(params.get("kimg"))
        if total is None:
            raise SuiteError(f"arm {n!r}: the budget curve needs the generator's budget in kimg "
                             f"(its kimg is {params.get('kimg')!r} in this profile)")
        milestones = sorted({round(f * total, 3) for f in fractions})
        base = copy.deepcopy(_entry(loaded.raw, "arm", n))
        # the whole budget is the finished fit itself, not a snapshot of it
        base["params"] = {**base.get("params", {}),
                          "snapshots_kimg": [m for m in milestones if m < total] or None}
        for m in milestones:
            raw_arm = {**copy.deepcopy(base), "name": budget_label(n, m)}
            if m < total:
                raw_arm["snapshot_kimg"] = m
            out.append((raw_arm, {"arm": n, "generator": a.generator, "kimg": m,
                                  "fraction": m / total}))
    for n in REFERENCE_ARMS:
        ref = next((a for a in s.arms if (a.name == n if n == "none" else a.generator == n)
                    and a.train_on != "synthetic"), None)
        if ref is not None:
            raw_arm = {**copy.deepcopy(_entry(loaded.raw, "arm", ref.name)), "name": f"reference={n}"}
            out.append((raw_arm, {"arm": ref.name, "generator": ref.generator, "kimg": None,
                                  "fraction": None}))
    _, clf_key = subject_of(s)
    clf = copy.deepcopy(_entry(loaded.raw, "classifier", clf_key))
    levels_ = []
    for raw_arm, value in out:
        raw = copy.deepcopy(loaded.raw)
        raw["arms"], raw["classifiers"] = [raw_arm], [clf]
        raw["subject"] = {"arm": raw_arm["name"], "classifier": clf.get("label") or clf["name"]}
        label = raw_arm["name"]
        levels_.append(Level(label, value, derived(loaded, raw, what=f"ablation level {label}")))
    return levels_


def levels(loaded: LoadedSuite, component: str, given: list[str] | None,
           results_root: Path, arm: str | None = None) -> list[Level]:
    if component not in COMPONENTS:
        raise SuiteError(f"unknown component {component!r}; use one of {', '.join(COMPONENTS)}")
    if component == "budget":
        return _budget_levels(loaded, given, arm)
    s = loaded.suite
    arm_name, clf_key = subject_of(s)
    if arm is not None:
        names = [a.name for a in s.arms]
        if arm not in names:
            raise SuiteError(f"--arm {arm!r} is not an arm of the suite; arms: {', '.join(names)}")
        arm_name = arm
    arm0 = copy.deepcopy(_entry(loaded.raw, "arm", arm_name))
    clf0 = copy.deepcopy(_entry(loaded.raw, "classifier", clf_key))
    suite_levels = (getattr(s.ablation, component, None)
                    if component not in ("pretrained", "synthetic", "diffaug") else None)
    values = _parse(component, given) if given else suite_levels
    needs_generator = component in ("siir", "injection", "synthetic", "diffaug")
    if needs_generator and not arm0.get("generator"):
        raise SuiteError(f"ablating {component} needs a subject arm with a generator; arm "
                         f"{arm_name!r} has none (set subject.arm)")
    if values is None:
        values = {
            "siir": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
            "generator": ["none"] + list(dict.fromkeys(a.generator for a in s.arms if a.generator)),
            "injection": ["balance", "complementary"],
            "optimizer": ["default"] + sorted(p.parent.name for p in
                                              (results_root / "tune").glob("*/best.json")),
            "classifier": [c.key for c in s.classifiers],
            "pretrained": [False, True],
            "synthetic": ["off", "on"],
            "diffaug": ["off", "on"],
        }[component]
    if component == "optimizer" and values == ["default"]:
        raise SuiteError(f"no finished study under {results_root / 'tune'}; run `medbench tune "
                         f"{loaded.path.name}` first (or name optimizers with --levels)")
    if len(values) < 2:
        raise SuiteError(f"an ablation of {component} needs at least two levels, got {values}")
    out = []
    for v in values:
        arm, clf, study = copy.deepcopy(arm0), copy.deepcopy(clf0), None
        if component == "siir":
            if not 0.0 <= v <= 5.0:
                raise SuiteError(f"SIIR levels must be in [0, 5], got {v}")
            arm["injection"] = {**arm.get("injection", {}), "policy": "complementary", "siir": v}
            label = f"siir={v:g}"
        elif component == "generator":
            if v == "none":
                for k in ("generator", "params", "injection"):
                    arm.pop(k, None)
            else:
                if v != arm.get("generator"):
                    arm.pop("params", None)
                arm["generator"] = v
            label = f"generator={v}"
        elif component == "injection":
            inj = {**arm.get("injection", {}), "policy": v}
            if v == "fixed" and inj.get("per_class") is None:
                raise SuiteError(f"injection level `fixed` needs injection.per_class on arm {arm_name!r}")
            arm["injection"] = inj
            label = f"injection={v}"
        elif component == "optimizer":
            if v != "default":      # applied to the level's subject below
                study = load_study(loaded, v, results_root)
            label = f"optimizer={v}"
        elif component == "classifier":
            known = {c.get("label") or c["name"]: c for c in loaded.raw["classifiers"]}
            clf = copy.deepcopy(known.get(v, {"name": v}))
            label = f"classifier={v}"
        elif component == "pretrained":
            clf["pretrained"] = bool(v)
            label = f"pretrained={str(v).lower()}"
        elif component == "diffaug":
            if v not in DIFFAUG_LEVELS:
                raise SuiteError(f"levels of diffaug are {', '.join(DIFFAUG_LEVELS)}, got {v!r}")
            arm["params"] = {**arm.get("params", {}), "diffaug": DIFFAUG_LEVELS[v]}
            label = f"diffaug={v}"
        else:  # synthetic
            if v not in ("off", "on"):
                raise SuiteError(f"levels of synthetic are off and on, got {v!r}")
            if v == "off":
                for k in ("generator", "params", "injection"):
                    arm.pop(k, None)
            label = f"synthetic={v}"
        arm["name"] = label
        raw = copy.deepcopy(loaded.raw)
        raw["arms"], raw["classifiers"] = [arm], [clf]
        raw["subject"] = {"arm": label, "classifier": clf.get("label") or clf["name"]}
        level = derived(loaded, raw, what=f"ablation level {label}")
        out.append(Level(label, v, level if study is None else apply_study(level, study)))
    labels = [lv.label for lv in out]
    if len(set(labels)) != len(labels):
        raise SuiteError(f"ablation levels must be distinct, got {', '.join(labels)}")
    return out


def ablation_root(results_root: Path, component: str, arm: str | None = None) -> Path:
    """Where the levels of an ablation keep their runs, one folder per level (the budget
    curve's levels, one per arm and snapshot, all in ``ablate-budget/``)."""
    if component == "budget":
        return results_root / "ablate-budget"
    return results_root / f"ablate-{component}" / (safe_name(arm) if arm else "")


def ablate(loaded: LoadedSuite, component: str, given: list[str] | None, results_root: Path,
           report_dir: Path, *, quiet: bool = False, device: str | None = None,
           executor: str = "local", command: str | None = None,
           echo=print, jobs: int = 1, threads: int | None = None,
           arm: str | None = None, fidelity_images: int = 0,
           extractor: str | None = None) -> list[Path]:
    """Run every level, then (``fidelity_images`` > 0) measure each level's synthetic
    images with ``medbench fidelity`` at that cap, and write the tables and figure."""
    lv = levels(loaded, component, given, results_root, arm)
    if component == "budget" and not fidelity_images:
        fidelity_images = BUDGET_FIDELITY_IMAGES    # the curve's x axis
    for level in lv:                       # every level's plugins before any work
        check_plugins(level.loaded)
        clf = level.loaded.suite.classifiers[0]
        if component == "pretrained" and level.value:
            if not registry().get("classifiers", clf.name).obj.supports_pretrained:
                raise PluginError(f"classifier {clf.name!r} has no pretrained weights to ablate")
    root = ablation_root(results_root, component, arm)
    lock = FolderLock(root, command)
    lock.check()                           # a live ablation of the same component
    data: dict[str, Any] = {}              # every level against the data before any work
    for level in lv:
        key = json.dumps(level.loaded.raw["dataset"], sort_keys=True, default=str)
        if key not in data:
            data[key] = load_dataset(level.loaded)[0]
        check_feasible(level.loaded, data[key])
    data.clear()
    with lock:
        for i, level in enumerate(lv, 1):
            echo(f"[level {i}/{len(lv)}] {level.label}")
            run_suite(level.loaded, root / safe_name(level.label), quiet=quiet,
                      executor=executor, device=device, command=command, jobs=jobs,
                      threads=threads)
        if fidelity_images:
            from .fidelity import run_fidelity
            shared: dict = {}              # the real images' features, once for all levels
            for level in lv:
                if any(a.generator for a in level.loaded.suite.arms):
                    echo(f"[fidelity] {level.label}")
                    run_fidelity(level.loaded, root / safe_name(level.label),
                                 max_images=fidelity_images, quiet=quiet, command=command,
                                 device=device, features_cache=shared,
                                 **({"extractor": extractor} if extractor else {}))
    if component == "budget":          # every arm's levels in the folder, this run's or not
        return write_budget_report(root, report_dir, command)
    return write_ablation_report(root, component, [x.label for x in lv],
                                 [x.value for x in lv], report_dir, command)
