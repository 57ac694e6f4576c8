"""Suites: YAML files that declare a benchmark, validated against a schema.

A suite names a dataset, a protocol (holdout on the data's own splits, or stratified
k-fold), the arms compared (ways of handling imbalance), the classifiers, training
settings, metrics, report formats and profiles. A profile is a partial suite deep-merged
over the base before validation, so ``--profile smoke`` can shrink epochs and image size
without editing the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SuiteError
from .registry import registry

DEFAULT_METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "pr_auc",
                   "ece", "brier", "precision", "recall", "f1", "specificity", "confusion"]
REPORT_FORMATS = ("md", "csv", "latex")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NearDuplicatesConfig(Strict):
    """Near-duplicate detection (off unless given): images whose perceptual hashes differ
    in at most ``max_distance`` of their 64 bits count as copies, and ``dataset.duplicates``
    handles them as it handles exact ones."""

    hash: Literal["phash"] = Field("phash", description="phash: DCT hash of the grey image")
    max_distance: int = Field(4, ge=0, le=32, description="largest Hamming distance (bits of "
                                                          "64) between near-duplicates")


class DatasetConfig(Strict):
    loader: str = Field(description="dataset plugin name: phantom, medmnist, folder, ...")
    path: str | None = None
    image_size: int = Field(28, ge=8, le=1024)
    channels: Literal[1, 3] = 1
    options: dict[str, Any] = Field(default_factory=dict)
    duplicates: Literal["drop", "refuse", "keep"] = "drop"
    unreadable: Literal["refuse", "skip"] = Field(
        "refuse", description="files that cannot be read as images: refuse the data, naming "
                              "them, or skip them with a warning (recorded in data_report.json)")
    min_per_class: int = Field(2, ge=1, description="refuse classes with fewer training images")
    drop_classes: list[str] = Field(default_factory=list,
                                    description="classes left out, after duplicates are handled")
    near_duplicates: NearDuplicatesConfig | None = Field(
        None, description="also find near-duplicates by perceptual hash: {hash: phash, "
                          "max_distance: 4}")
    groups: str | None = Field(
        None, min_length=1, description="metadata column naming each image's patient or "
                                        "lesion: the folds keep every group whole")
    metadata: str | None = Field(
        None, min_length=1, description="CSV with one row per image (read for groups); relative "
                                        "paths: under MEDBENCH_DATA, dataset.path, the suite's folder")
    metadata_key: str | None = Field(
        None, min_length=1, description="column of the metadata naming the image: its path "
                                        "under dataset.path, file name or name without the "
                                        "extension (default: the first column)")
    positive_class: str | None = Field(
        None, description="binary tasks: the class PR-AUC, the F1-tuned threshold and the "
                          "report's minority column are about (default: the data's minority "
                          "class)")


class ProtocolConfig(Strict):
    kind: Literal["holdout", "kfold"] = "holdout"
    folds: int = Field(5, ge=2, le=50)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.9,
                                 description="holdout on data without its own test split")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_folds: int | None = Field(None, ge=1, description="run only the first N folds")

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v


def _known(kind: str, what: str, names: list[str]) -> list[str]:
    """Names of registered plugins of a kind (injection policies, metrics), or ValueError."""
    table = registry().plugins[kind]
    bad = [n for n in names if n not in table]
    if bad:
        raise ValueError(f"unknown {what} {bad[0]!r}; allowed: {', '.join(table)}")
    return names


class InjectionConfig(Strict):
    policy: str = Field("balance", description="an injection policy plugin: balance, "
                                                 "complementary, fixed, or a package's own")
    siir: float = Field(0.2, ge=0.0, le=5.0)
    per_class: int | dict[str, int] | None = None

    @field_validator("policy")
    @classmethod
    def _policy(cls, v):
        return _known("injections", "injection policy", [v])[0]


class ArmConfig(Strict):
    name: str = Field(min_length=1)
    generator: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    injection: InjectionConfig = Field(default_factory=InjectionConfig)
    class_weights: bool = False
    train_on: Literal["real+synthetic", "synthetic"] = Field(
        "real+synthetic", description="synthetic: train on synthetic images only, as many per "
                                      "class as the real training part has (TSTR)")
    snapshot_kimg: float | None = Field(
        None, gt=0, description="draw from the generator as it was after this many thousand "
                                "images shown, a milestone its snapshots_kimg parameter keeps "
                                "(medbench ablate --component budget sets both)")

    @model_validator(mode="after")
    def _synthetic_needs_generator(self):
        if self.train_on == "synthetic" and not self.generator:
            raise ValueError(f"arm {self.name!r}: train_on: synthetic needs a generator")
        if self.snapshot_kimg is not None and not self.generator:
            raise ValueError(f"arm {self.name!r}: snapshot_kimg needs a generator")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if any(c in v for c in "/\\|:") or v.strip() != v:
            raise ValueError("arm names may not contain / \\ | : or surrounding spaces")
        return v


class AugmentConfig(Strict):
    hflip: bool = False
    vflip: bool = False
    rotate: float = Field(0.0, ge=0.0, le=180.0, description="max degrees")
    translate: float = Field(0.0, ge=0.0, le=0.5, description="max fraction of size")
    scale: float = Field(0.0, ge=0.0, le=0.5, description="max zoom fraction")
    brightness: float = Field(0.0, ge=0.0, le=1.0)
    contrast: float = Field(0.0, ge=0.0, le=1.0)


class StageConfig(Strict):
    epochs: int = Field(ge=0)
    freeze_backbone: bool = False
    lr: float | None = Field(None, gt=0)


class EarlyStopping(Strict):
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)
    # Keras' name: epochs of warm-up before the selection rule is watched. A class-
    # balanced loss often rises while a net learns the majority class first; without a
    # warm-up, a short patience then stops at an untrained checkpoint.
    start_from_epoch: int = Field(0, ge=0, description="epochs before the selection rule "
                                  "is watched (no checkpoint is chosen, no patience spent)")


class TrainingConfig(Strict):
    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1)
    epochs: int = Field(10, ge=1, description="zero epochs would report an untrained model")
    schedule: Literal["none", "cosine", "step", "plateau"] = "none"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                    description="step schedule: fractions of epochs")
    gamma: float = Field(0.1, gt=0, le=1)
    early_stopping: EarlyStopping | None = None
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    stages: list[StageConfig] | None = None
    normalize: Literal["auto", "imagenet", "half", "none"] = "auto"
    threshold: Literal["default", "f1"] = "default"
    amp: bool | Literal["bf16", "fp16"] = Field(
        True, description="mixed precision on CUDA: true (bf16 where the GPU has it, else fp16), "
                          "false, bf16 or fp16 (fp16 with a gradient scaler); off on CPU")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    compile: bool = Field(False, description="torch.compile the model (falls back to eager "
                                             "with a warning where compiling fails)")
    cudnn_benchmark: bool = Field(True, description="let cuDNN pick the fastest convolution "
                                                    "algorithms on CUDA (false: repeatable)")
    eval_batch_size: int = Field(512, ge=1)
    selection: str = Field(
        "balanced_loss", description="what picks the checkpoint and stops early, the same for "
                                     "every arm: balanced_loss (class-balanced validation "
                                     "cross-entropy), loss (plain cross-entropy) or a whole-set "
                                     "metric on the validation split (macro_f1, "
                                     "balanced_accuracy, roc_auc, ...)")

    @field_validator("selection")
    @classmethod
    def _selection(cls, v):
        metrics = registry().plugins["metrics"]
        allowed = ["balanced_loss", "loss"] + [n for n, info in metrics.items()
                                               if info.obj.per == "set"]
        if v not in allowed:
            raise ValueError(f"unknown selection rule {v!r}; allowed: {', '.join(allowed)}")
        return v

    @field_validator("amp", mode="before")
    @classmethod
    def _amp(cls, v):
        # Checked here rather than left to the union, whose error names a branch
        # (`training.amp.bool`) instead of the field.
        if isinstance(v, str) and v.strip().lower() in ("bf16", "fp16"):
            return v.strip().lower()
        if isinstance(v, bool):
            return v
        raise ValueError("must be true (bf16 where supported, else fp16), false, bf16 or fp16")

    @field_validator("stages")
    @classmethod
    def _stages_train(cls, v):
        if v is not None and sum(st.epochs for st in v) < 1:
            raise ValueError("the stages train for 0 epochs in all; give at least one stage "
                             "epochs >= 1")
        return v


class ClassifierConfig(Strict):
    name: str
    label: str | None = None
    pretrained: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    params: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict,
                                     description="overrides of the suite's training block")

    @property
    def key(self) -> str:
        return self.label or self.name


class ReportConfig(Strict):
    formats: list[Literal["md", "csv", "latex"]] = Field(default_factory=lambda: ["md", "csv", "latex"])
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "balanced_accuracy",
                                                        "macro_f1", "roc_auc"])


class SubjectConfig(Strict):
    """The configuration that `medbench tune` and `medbench ablate` vary: one arm and
    one classifier of the suite (defaults: the first arm with a generator, the first
    classifier)."""

    arm: str | None = None
    classifier: str | None = None


class BudgetConfig(Strict):
    trials: int | None = Field(20, ge=1, description="objective evaluations (None: no cap)")
    seconds: float | None = Field(None, gt=0, description="wall time of the study")


class TuningConfig(Strict):
    space: dict[str, Any] = Field(
        default_factory=lambda: {"lr": {"low": 1e-5, "high": 1e-3, "log": True},
                                 "dropout": {"low": 0.05, "high": 0.25},
                                 "siir": {"low": 0.0, "high": 0.5}},
        description="parameter -> {low, high, log?, int?} or {choices}; names: lr, dropout, "
                    "siir, weight_decay, momentum, batch_size, epochs, or a dotted path under "
                    "training., classifier. or arm. (default: seed 000's space)")
    objective: str = Field("val_loss", description="val_loss or a whole-set metric on the "
                                                   "validation split")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="default: minimize val_loss, maximize a metric")
    optimizer: str = "sma"
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    optimizers: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                  description="parameters per optimizer plugin")
    seed: int = 0
    folds: int = Field(1, ge=1, description="a shared study's objective averages the first N "
                                            "folds of the first protocol seed")
    seeds: int = Field(1, ge=1, description="... and of the first N protocol seeds: on a fixed "
                                            "split (holdout on the source's own test split) the "
                                            "same images under N training seeds, so that a "
                                            "trial is not scored by one seed's luck")
    scheme: Literal["auto", "shared", "nested"] = Field(
        "auto", description="shared: one study, allowed when no outer split tests on its "
                            "validation images; nested: one study per outer split, its "
                            "parameters for that split only; auto: shared when clean, else "
                            "nested")
    use: str | None = Field(None, description="`medbench run` applies these tuned parameters: "
                                              "an optimizer name (its tune folder) or a "
                                              "best.json path")


class AblationConfig(Strict):
    """Levels per component; a component not given uses its default levels."""

    siir: list[float] | None = None
    generator: list[str] | None = None
    injection: list[str] | None = None

    @field_validator("injection")
    @classmethod
    def _policies(cls, v):
        return v if v is None else _known("injections", "injection policy", v)
    optimizer: list[str] | None = None
    classifier: list[str] | None = None


class Suite(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    dataset: DatasetConfig
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    arms: list[ArmConfig] = Field(default_factory=lambda: [ArmConfig(name="none")], min_length=1)
    classifiers: list[ClassifierConfig] = Field(min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    report: ReportConfig = Field(default_factory=ReportConfig)
    generator_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="parameters per generator plugin, under every arm that uses it (an arm's "
                    "own params win); profiles override them without repeating the arms")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    device: str = "auto"
    tstr: bool = Field(False, description="add, for each arm with a generator, an arm "
                                          "<name>-tstr trained on its synthetic images only "
                                          "(train on synthetic, test on real; seed 003, 4.5) and a "
                                          "`none` arm (train on real, test on real) if missing")
    subject: SubjectConfig = Field(default_factory=SubjectConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    ablation: AblationConfig = Field(default_factory=AblationConfig)

    def params_for(self, arm: "ArmConfig") -> dict[str, Any]:
        """The generator parameters an arm runs with."""
        if not arm.generator:
            return {}
        return {**self.generator_params.get(arm.generator, {}), **arm.params}

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v):
        return _known("metrics", "metric", v)

    @model_validator(mode="after")
    def _add_tstr_arms(self):
        if not self.tstr:
            return self
        extra = [ArmConfig(name=f"{a.name}-tstr", generator=a.generator, params=a.params,
                           train_on="synthetic")
                 for a in self.arms if a.generator and a.train_on != "synthetic"]
        if not any(not a.generator and not a.class_weights for a in self.arms):
            extra.insert(0, ArmConfig(name="none"))
        names = {a.name for a in self.arms}
        self.arms = self.arms + [a for a in extra if a.name not in names]
        return self

    @model_validator(mode="after")
    def _groups_need_metadata(self):
        # checked on the whole suite, not on the dataset block, so that the message is
        # one line without the block's value before it
        d = self.dataset
        if d.groups and not d.metadata:
            raise ValueError(f"dataset.groups: {d.groups!r} names a metadata column; give "
                             "dataset.metadata, a CSV with one row per image and that column")
        if (d.metadata or d.metadata_key) and not d.groups:
            raise ValueError("dataset.metadata is read for dataset.groups; name the column "
                             "that holds each image's patient or lesion in dataset.groups")
        return self

    @model_validator(mode="after")
    def _classifier_training(self):
        """A classifier's ``training`` overrides must make a valid training block."""
        for c in self.classifiers:
            if not c.training:
                continue
            try:
                TrainingConfig.model_validate({**self.training.model_dump(), **c.training})
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(x) for x in first["loc"])
                msg = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"classifier {c.key!r}: training.{where}: {msg}") from None
        return self

    @model_validator(mode="after")
    def _unique_names(self):
        for what, names in (("arm", [a.name for a in self.arms]),
                            ("classifier", [c.key for c in self.classifiers])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"{what} names must be unique; {sorted(dup)[0]!r} appears twice "
                                 "(give classifiers distinct `label`s)")
        return self


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedSuite:
    suite: Suite
    path: Path
    profile: str | None
    raw: dict            # the merged mapping that was validated
    # the tuned parameters set on the subject (`run --use-tuned`), recorded in each cell
    tuned: dict[str, Any] | None = None
    # a nested study's suites, one per outer (seed, fold) split, each for that split's
    # cells only (see ``for_split``)
    per_split: dict[tuple[int, int], "LoadedSuite"] = field(default_factory=dict)

    def for_split(self, seed: int, fold: int) -> "LoadedSuite":
        """The suite the cells of one outer split are trained with."""
        return self.per_split.get((seed, fold), self)

    @property
    def hash(self) -> str:
        """Hash of everything that changes results (profiles, report, and the tune and
        ablate settings excluded: those make their own derived suites; a nested study's
        suites per split included)."""
        data = {k: v for k, v in self.raw.items() if k not in NOT_HASHED}
        if self.per_split:
            data["per_split"] = {f"s{seed}-f{fold}": v.hash
                                 for (seed, fold), v in sorted(self.per_split.items())}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


NOT_HASHED = ("profiles", "report", "description", "subject", "tuning", "ablation")


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _lookup(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def format_validation_error(path: Path, err: ValidationError, data: dict) -> str:
    e = err.errors()[0]
    # pydantic appends the tag of a union/literal branch to loc; drop non-field parts
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))
    field = _loc(loc)
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if e["type"] == "extra_forbidden":
        parent = _lookup(data, loc[:-1])
        return f"{path}: unknown field `{field}`; check its spelling (fields here: see `medbench validate --schema`)" if parent is None else \
            f"{path}: unknown field `{field}`"
    if e["type"] == "missing":
        return f"{path}: field `{field}` is required"
    extra = f" ({len(err.errors()) - 1} more problem(s) after this one)" if len(err.errors()) > 1 else ""
    if not loc:                  # a check of the whole suite: its message says where
        return f"{path}: {msg}{extra}"
    value = _lookup(data, loc)
    shown = json.dumps(value, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{path}: field `{field}` = {shown}: {msg}{extra}"


def load_suite(path: str | os.PathLike, profile: str | None = None,
               overrides: dict | None = None) -> LoadedSuite:
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SuiteError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping (name:, dataset:, ...), "
                         f"got {type(raw).__name__}")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise SuiteError(f"{path}: field `profiles` must be a mapping of profile name to overrides")
    merged = raw
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none defined"
            raise SuiteError(f"{path}: unknown profile {profile!r}; this suite has: {known}")
        if not isinstance(profiles[profile], dict):
            raise SuiteError(f"{path}: profile {profile!r} must be a mapping of overrides")
        merged = deep_merge(raw, profiles[profile])
    if overrides:
        merged = deep_merge(merged, overrides)
    try:
        suite = Suite.model_validate(merged)
    except ValidationError as err:
        raise SuiteError(format_validation_error(path, err, merged)) from None
    return LoadedSuite(suite=suite, path=path.resolve(), profile=profile, raw=merged)


def data_root() -> Path | None:
    root = os.environ.get("MEDBENCH_DATA")
    return Path(root).expanduser().resolve() if root else None


def _resolve(value: str | None, bases: list[Path | None], found) -> Path | None:
    """A configured path: absolute as given; relative, the first of ``bases`` (None
    skipped) under which ``found`` holds, else under the first base."""
    if value is None:
        return None
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    if p.is_absolute():
        return p
    candidates = [b / p for b in bases if b is not None]
    return next((c.resolve() for c in candidates if found(c)), candidates[0].resolve())


def resolve_metadata_path(loaded: LoadedSuite, data_path: Path | None) -> Path | None:
    """A relative ``dataset.metadata`` is looked up under MEDBENCH_DATA, then in the
    dataset's folder, then beside the suite (the first that exists; else the first)."""
    return _resolve(loaded.suite.dataset.metadata,
                    [data_root(), data_path, loaded.path.parent], Path.is_file)


def resolve_data_path(loaded: LoadedSuite) -> Path | None:
    """Relative dataset paths are looked up under MEDBENCH_DATA, then beside the suite."""
    return _resolve(loaded.suite.dataset.path, [data_root(), loaded.path.parent], Path.exists)
