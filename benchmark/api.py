"""What each kind of plugin provides: the contracts between the engine and its plugins.

A plugin subclasses the class of its kind (``Generator``, ``Classifier``, ...) and
overrides what it needs; the engine relies only on the attributes and methods declared
here, each with a default where one makes sense, and never probes a plugin for others.
Every plugin class declares its parameters once (``Parameterised``: ``defaults``,
``choices``, ``declared``), and ``check_params`` checks them all alike. ``InjectionPolicy`` and ``Metric`` are plugins too (registered through
``register_injections`` and ``register_metrics``), so an outside package can add one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .data import ImageSet
from .errors import ParameterError


@dataclass
class DatasetSpec:
    """What a suite asks of a dataset loader.

    path is absolute (relative suite paths are resolved against MEDBENCH_DATA, then the
    suite's folder); image_size and channels are what the engine needs in the end, and
    a loader that decodes files should resize to them while decoding (the engine
    conforms whatever comes back). options are the loader's own settings.
    """

    loader: str
    path: Path | None
    image_size: int
    channels: int
    options: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None


@dataclass(frozen=True)
class Param:
    """What a plugin says of one of its parameters beyond its default (which stays in
    the plugin's ``defaults``) and its choices (``choices``): the type, the range, a
    line of help. ``check_params`` checks every value against it and ``medbench plugins
    --params NAME`` prints it. A parameter with no ``Param`` gets its type from its
    default (an int default: an integer; a float: a number; true/false: a boolean).

    type: ``int``, ``number``, ``bool``, ``str``, ``list``, ``mapping`` or ``any``
    (``""``: from the default). ``low``/``high`` bound numbers (``low_open``/
    ``high_open`` exclude the bound). ``also``: values accepted as they are besides the
    type (``"auto"``). ``per_stage``: a list of such values, one per stage, is accepted
    too. A default of None always stays allowed (the parameter is then not set)."""

    type: str = ""
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    per_stage: bool = False


_TYPE_WORDS = {"int": "an integer", "number": "a number", "bool": "true or false",
               "str": "a string", "list": "a list", "mapping": "a mapping", "any": "any value"}


def _type_of(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)):
        return "list"
    if isinstance(default, dict):
        return "mapping"
    return "any"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter as declared, resolved: name, type, default, choices and help."""

    name: str
    default: Any
    decl: Param
    choices: tuple | None = None

    @property
    def type(self) -> str:
        return self.decl.type or _type_of(self.default)

    def _range(self) -> str:
        d = self.decl
        lo = None if d.low is None else ("> " if d.low_open else ">= ") + f"{d.low:g}"
        hi = None if d.high is None else ("< " if d.high_open else "<= ") + f"{d.high:g}"
        if lo and hi:
            return (f" in {'(' if d.low_open else '['}{d.low:g}, {d.high:g}"
                    f"{')' if d.high_open else ']'}")
        return f" {lo or hi}" if (lo or hi) else ""

    def allowed(self) -> str:
        """What the parameter accepts, in words: "an integer >= 1 or auto"."""
        if self.choices is not None:
            text = "one of " + ", ".join(_shown(c) for c in self.choices)
        else:
            text = _TYPE_WORDS.get(self.type, self.type) + self._range()
            if self.decl.per_stage:
                text += ", or a list of them (one per stage)"
        extra = list(self.decl.also) + ([None] if self.default is None else [])
        if extra:
            text += " or " + " or ".join(_shown(v) for v in extra)
        return text

    def coerce(self, value: Any) -> Any:
        """A number written as YAML 1.1 reads ``1e-4`` (a string: YAML wants ``1.0e-4``)
        becomes the number, as the suite's own fields take it; anything else is kept."""
        if self.type == "number" and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value
            return number if math.isfinite(number) else value
        return value

    def accepts(self, value: Any) -> bool:
        if value in self.decl.also or (value is None and self.default is None):
            return True
        if self.choices is not None:
            return value in self.choices
        if self.decl.per_stage and isinstance(value, (list, tuple)):
            return bool(value) and all(self._one(v) for v in value)
        return self._one(value)

    def _one(self, value: Any) -> bool:
        t, d = self.type, self.decl
        numeric = not isinstance(value, bool) and isinstance(value, (int, float))
        ok = {"int": not isinstance(value, bool) and isinstance(value, int),
              "number": numeric, "bool": isinstance(value, bool), "str": isinstance(value, str),
              "list": isinstance(value, (list, tuple)), "mapping": isinstance(value, dict),
              }.get(t, True)
        if not ok or not numeric or t not in ("int", "number"):
            return ok
        if not math.isfinite(value):          # .nan or .inf in YAML
            return False
        if d.low is not None and (value < d.low or d.low_open and value == d.low):
            return False
        return not (d.high is not None and (value > d.high or d.high_open and value == d.high))


def _shown(value: Any) -> str:
    return {None: "null", True: "true", False: "false"}.get(value, str(value)) \
        if isinstance(value, (bool, type(None))) else str(value)


def param_specs(defaults: dict[str, Any], choices: dict[str, Sequence] | None = None,
                declared: dict[str, Param] | None = None) -> list[ParamSpec]:
    """Every parameter of a plugin, resolved from its defaults, choices and declarations."""
    choices, declared = choices or {}, declared or {}
    return [ParamSpec(name, default, declared.get(name, Param()),
                      tuple(choices[name]) if name in choices else None)
            for name, default in defaults.items()]


def check_params(kind: str, name: str, given: dict[str, Any], defaults: dict[str, Any],
                 choices: dict[str, Sequence] | None = None,
                 declared: dict[str, Param] | None = None) -> dict[str, Any]:
    """A plugin's parameters, ``defaults`` filled in, or ``ParameterError``.

    ``defaults`` names every parameter the plugin takes, with its default; ``choices``
    restricts some of them to a set of values; ``declared`` gives the others their
    type and range (``Param``). Every kind of plugin checks its parameters this way (or
    raises ``ParameterError`` itself), so ``medbench validate`` refuses an unknown,
    mistyped or impossible parameter before any work, in one line that names the
    plugin, the parameter, the value and what is allowed."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        takes = ", ".join(sorted(defaults)) or "no parameters"
        raise ParameterError(f"{kind} {name!r}: unknown parameter {unknown[0]!r}; it takes {takes}")
    cfg = {**defaults, **given}
    for spec in param_specs(defaults, choices, declared):
        value = cfg[spec.name] = spec.coerce(cfg[spec.name])
        if not spec.accepts(value):
            verb = "use" if spec.choices is not None else "allowed:"
            raise ParameterError(f"{kind} {name!r}: {spec.name} = {value!r}; {verb} "
                                 f"{spec.allowed()}")
    return cfg


class Parameterised:
    """What every plugin class says of its parameters (see ``Param``): ``defaults``
    (every parameter, with its default), ``choices`` (those restricted to a set of
    values) and ``declared`` (type, range and help of the others). ``medbench plugins
    --params NAME`` prints them; ``check`` is what the plugin and ``medbench validate``
    call."""

    defaults: dict[str, Any] = {}
    choices: dict[str, Sequence] = {}
    declared: dict[str, Param] = {}

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Every parameter the plugin takes, with its default (``defaults``; a base class
        may add its own)."""
        return dict(cls.defaults)

    @classmethod
    def declarations(cls) -> dict[str, Param]:
        """``declared``, with what a base class declares for the parameters it adds."""
        return dict(cls.declared)

    @classmethod
    def param_specs(cls) -> list[ParamSpec]:
        return param_specs(cls.parameters(), cls.choices, cls.declarations())

    @classmethod
    def check(cls, kind: str, name: str, given: dict[str, Any]) -> dict[str, Any]:
        return check_params(kind, name, given, cls.parameters(), cls.choices,
                            cls.declarations())


class DatasetLoader(Parameterised):
    """``load(spec) -> ImageSet``; include ``splits`` when the source defines them.
    ``defaults`` (and ``declared``, see ``Parameterised``) are the options it takes
    (``spec.options``, the suite's ``dataset.options``), checked before any work; files
    it finds but cannot read go in ``ImageSet.unreadable``."""

    description = ""

    def load(self, spec: DatasetSpec) -> ImageSet:  # pragma: no cover - interface
        raise NotImplementedError


class Classifier(Parameterised):
    """Builds an ``nn.Module`` mapping float N x C x H x W to N x num_classes logits.

    ``default_training`` holds the optimiser settings that travel with the model (the
    suite can override each). ``head(model)`` returns the classification head, the part
    that stays trainable when a suite freezes the backbone. ``defaults`` (and
    ``declared``, see ``Parameterised``) are the ``params`` that ``build`` takes from
    the suite; the engine checks them before any work.
    """

    description = ""
    default_training: dict[str, Any] = {}
    supports_pretrained = False

    def build(self, num_classes: int, in_channels: int, image_size: int, *,
              pretrained: bool = False, dropout: float = 0.0, **params) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def head(self, model: nn.Module) -> nn.Module:
        return model.head

    def prepare(self, *, pretrained: bool = False, download: bool = True, **params) -> None:
        """Called once before any work (``run``, ``tune``, ``ablate``; ``validate`` with
        ``download=False``) with the suite's ``pretrained`` flag and ``params``: raise a
        one-line ``PluginError`` for parameters the plugin cannot take and, when
        ``pretrained``, for weights that cannot be had (found locally or, with
        ``download``, fetched now rather than in the middle of a run). Default: nothing."""

    def normalization(self, in_channels: int, *, pretrained: bool = False,
                      **params) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The per-channel ``(mean, std)``, in units of pixel / 255, that the model
        expects under ``training.normalize: auto``; None (the default) leaves it to the
        engine's rule: ImageNet statistics when pretrained, else [-1, 1]."""
        return None


class Generator(Parameterised):
    """Makes synthetic training images. This class is the whole contract between the
    engine and a generator: the engine calls nothing that is not declared here, and
    everything but ``fit`` and ``sample`` has a default.

    Class attributes:

    ``name``, ``description``
        what ``medbench plugins`` shows.
    ``conditional``
        True: one model for all classes (fitted once on the whole training part of a
        fold). False: the engine fits one instance per class that needs images, passing
        only that class's images (as the ProGAN paper does).
    ``defaults``, ``choices``, ``declared``
        every parameter the generator takes, with its default, the parameters
        restricted to a set of values, and the type, range and help of the others
        (``Parameterised``); ``__init__`` checks them and keeps the result in
        ``self.cfg``.
    ``min_class_images``
        the fewest real training images of a class the generator can make images of
        from; the engine refuses a suite whose folds leave a class below it before the
        first cell.
    ``cacheable``
        True when ``state_dict`` / ``load_state_dict`` capture the fitted model: the
        engine then keeps fits in its generator cache, so other classifiers, injection
        settings and reruns reuse them. False (SMOTE, oversampling: cheaper to redo than
        to store) refits from the real images each time.

    What a fitted generator exposes to the engine (all start empty in ``__init__``):

    ``notes``
        sentences for the reader (a reduced k, a capped depth); the engine says each
        once and the report lists them.
    ``history``
        the loss log: one dict per logged step of named numeric series (any names, e.g.
        ``d_loss``, ``g_loss``, ``margin``) and optional bookkeeping keys (``stage``,
        ``epoch``, ``kimg``); the loss figure plots every series it finds.
    ``grids``
        sample grids kept during training: (label, uint8 N x C x H x W images) pairs,
        written as ``samples_*.png`` beside the loss log.
    ``record``
        what the fit ran: ``kimg`` (thousands of real images shown), ``steps``,
        ``seconds`` and what stopped it; written into the artifacts' info.json.

    The determinism promise: ``sample(c, n)`` depends only on the seed given to ``fit``,
    the class, ``n`` and the fitted state, never on what was sampled before or on the
    global random state (the engine also fixes that around every fit and draw, so a
    cached and a fresh run see the same images).
    """

    name = "generator"
    description = ""
    conditional = True
    cacheable = False
    min_class_images = 1

    def __init__(self, **params):
        self.cfg = self.check("generator", self.name, params)
        self.notes: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.grids: list[tuple[str, torch.Tensor]] = []
        self.record: dict[str, Any] = {}

    def note(self, text: str) -> None:
        """Add a sentence to ``notes`` once (a second identical note is dropped)."""
        if text not in self.notes:
            self.notes.append(text)

    def check_data(self, image_size: int, channels: int) -> None:
        """Refuse, before any work, data this generator cannot fit (raise a
        ``MedbenchError`` saying what to change). Default: any size is fine."""

    def fit(self, images: torch.Tensor, labels: torch.Tensor, *, classes: Sequence[str],
            device: str = "cpu", seed: int = 0,
            progress: Callable[[str, float], None] | None = None) -> "Generator":  # pragma: no cover
        """Fit on uint8 N x C x H x W images with int64 labels (one class's images for a
        per-class generator); ``progress(text, fraction)`` may be called as it goes.
        Returns self."""
        raise NotImplementedError

    def sample(self, class_index: int, n: int) -> torch.Tensor:  # pragma: no cover
        """n uint8 images of the class, N x C x H x W like the training images."""
        raise NotImplementedError

    def budget(self, n: int, image_size: int) -> list[int]:
        """Real images a fit on ``n`` images of this size shows, phase by phase (ProGAN:
        one phase per stage; one for most GANs), exactly as ``fit`` counts them in its
        ``record``; ``medbench plan`` multiplies them by each phase's measured seconds
        per image. [] (the default): the fit is no training loop (SMOTE, oversampling),
        and the plan times a fit whole."""
        return []

    def with_budget(self, images: list[int]) -> "Generator":
        """A new instance with these parameters but a budget of ``images`` real images
        shown per phase (as many entries as ``budget`` returns), nothing else that
        costs time beyond the training steps (no wall-clock cap, no collapse check):
        the plan's calibration times a few steps of each phase this way. Default: a
        new instance with the same parameters."""
        return type(self)(**self.cfg)

    def state_dict(self) -> dict[str, Any]:
        """What ``load_state_dict`` needs to rebuild the fitted generator (tensors and
        plain data, saved with ``torch.save``). Only called when ``cacheable``."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: str = "cpu") -> "Generator":
        """Restore a state from ``state_dict`` onto ``device`` and return the generator
        (unlike torch's method of the same name, which returns the missing keys). The
        instance was made with the same parameters as the one that was saved."""
        return self


class Optimizer(Parameterised):
    """Minimizes ``objective(params) -> float`` over a ``medbench.space.SearchSpace``.

    ``minimize(objective, space, budget, seed)`` calls ``objective`` with parameter dicts
    inside ``space`` and returns the trials it ran, in order, as dicts ``{"params": ...,
    "value": ...}``. The engine hands in a ``BudgetedObjective``: once the budget
    (``medbench.space.Budget``: trials and/or seconds) is spent, the next call raises
    ``BudgetExhausted``, which the optimizer catches, returning what it has. The same seed
    with the same objective values must give the same sequence of parameters: a resumed
    study replays its journal that way instead of re-running finished trials.
    """

    description = ""
    # what the study reports after ``minimize``: sentences for the reader (a capped
    # population, a time-only plan) and the plan it followed (epochs, evaluations)
    notes: Sequence[str] = ()
    plan: dict | None = None

    def minimize(self, objective: Callable[[dict], float], space: Any, budget: Any,
                 seed: int = 0) -> list[dict]:  # pragma: no cover
        raise NotImplementedError


class Executor(Parameterised):
    """Runs independent tasks (cells, or the generator fits that precede them): calls
    ``fn(task)`` for each and hands every result to ``on_result(task, result)`` in the
    calling process, in completion order, so all results flow into the one store.

    ``fn`` never raises for a failing task (it returns the failure as its result); a
    parallel executor must be able to pickle it and run it in another process or on
    another machine. ``jobs`` is how many tasks may run at once, ``address`` a cluster to
    join (executor-specific), ``gpus`` how many GPUs each task reserves. On
    KeyboardInterrupt an executor stops its workers and lets the exception through.
    """

    description = ""
    parallel = False     # True: fn runs outside this process

    def __init__(self, jobs: int = 1, address: str | None = None, gpus: float = 0.0):
        self.jobs = jobs
        self.address = address
        self.gpus = gpus

    def run(self, tasks: Sequence[Any], fn: Callable[[Any], Any],
            on_result: Callable[[Any, Any], None]) -> None:  # pragma: no cover
        raise NotImplementedError


class InjectionPolicy:
    """How many synthetic images each class of a fold's training part receives.

    ``plan(counts, classes, *, siir, per_class)`` gets the real training images per class
    and the class names, with the arm's ``injection.siir`` and ``injection.per_class``,
    and returns one count >= 0 per class. Registered as an instance."""

    description = ""

    def plan(self, counts: list[int], classes: list[str], *, siir: float = 0.2,
             per_class: int | dict[str, int] | None = None) -> list[int]:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Metric:
    """A classification metric on a real test fold, registered as an instance.

    ``compute(scores)`` gets a ``medbench.metrics.Scores`` (labels, probabilities,
    predictions, the confusion matrix and the per-class rates worked out once) and
    returns, by ``per``: ``"set"`` one float for the whole fold (what a tuning objective
    can be); ``"class"`` one float per class; ``"pair"`` a k x k array, one value per
    (true, predicted) pair of classes (the confusion matrix). ``lower_is_better``: a
    calibration error or a loss, where smaller numbers are better (the direction of a
    difference in the report, of a tuning objective and of ``training.selection``)."""

    compute: Callable[[Any], Any]
    per: str = "set"
    description: str = ""
    lower_is_better: bool = False
