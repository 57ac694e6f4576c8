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

``--arm`` picks another arm than the suite's subject (e.g. ``--arm dcgan``).

The tables and figure of the levels are ``ablation_report``'s.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ablation_report import COMPONENTS, NUMERIC, write_ablation_report
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


def levels(loaded: LoadedSuite, component: str, given: list[str] | None,
           results_root: Path, arm: str | None = None) -> list[Level]:
    if component not in COMPONENTS:
        raise SuiteError(f"unknown component {component!r}; use one of {', '.join(COMPONENTS)}")
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
    """Where the levels of an ablation keep their runs, one folder per level."""
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
    return write_ablation_report(root, component, [x.label for x in lv],
                                 [x.value for x in lv], report_dir, command)
