"""What each kind of plugin provides: the contracts between the engine and its plugins.

A plugin subclasses the class of its kind (``Generator``, ``Classifier``, ...) and
overrides what it needs; the engine relies only on the attributes and methods declared
here, each with a default where one makes sense, and never probes a plugin for others.
``InjectionPolicy`` and ``Metric`` are plugins too (registered through
``register_injections`` and ``register_metrics``), so an outside package can add one.
"""

from __future__ import annotations

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


class DatasetLoader:
    """``load(spec) -> ImageSet``; include ``splits`` when the source defines them."""

    description = ""

    def load(self, spec: DatasetSpec) -> ImageSet:  # pragma: no cover - interface
        raise NotImplementedError


class Classifier:
    """Builds an ``nn.Module`` mapping float N x C x H x W to N x num_classes logits.

    ``default_training`` holds the optimiser settings that travel with the model (the
    suite can override each). ``head(model)`` returns the classification head, the part
    that stays trainable when a suite freezes the backbone.
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


def check_params(kind: str, name: str, given: dict[str, Any], defaults: dict[str, Any],
                 choices: dict[str, Sequence] | None = None) -> dict[str, Any]:
    """A plugin's parameters, ``defaults`` filled in, or ``ParameterError``.

    ``defaults`` names every parameter the plugin takes, with its default; ``choices``
    restricts some of them to a set of values. Every kind of plugin checks its
    parameters this way (or raises ``ParameterError`` itself), so ``medbench validate``
    refuses an unknown or impossible parameter before any work."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        takes = ", ".join(sorted(defaults)) or "no parameters"
        raise ParameterError(f"{kind} {name!r}: unknown parameter {unknown[0]!r}; it takes {takes}")
    cfg = {**defaults, **given}
    for key, allowed in (choices or {}).items():
        if cfg[key] not in allowed:
            raise ParameterError(f"{kind} {name!r}: {key} = {cfg[key]!r}; use one of "
                                 f"{', '.join(map(str, allowed))}")
    return cfg


class Generator:
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
    ``defaults``, ``choices``
        every parameter the generator takes, with its default, and the parameters
        restricted to a set of values; ``__init__`` checks them (``check_params``) and
        keeps the result in ``self.cfg``.
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
    defaults: dict[str, Any] = {}
    choices: dict[str, Sequence] = {}

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Every parameter the generator takes, with its default (``defaults``; a base
        class may add its own)."""
        return dict(cls.defaults)

    def __init__(self, **params):
        self.cfg = check_params("generator", self.name, params, self.parameters(), self.choices)
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

    def state_dict(self) -> dict[str, Any]:
        """What ``load_state_dict`` needs to rebuild the fitted generator (tensors and
        plain data, saved with ``torch.save``). Only called when ``cacheable``."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: str = "cpu") -> "Generator":
        """Restore a state from ``state_dict`` onto ``device`` and return the generator
        (unlike torch's method of the same name, which returns the missing keys). The
        instance was made with the same parameters as the one that was saved."""
        return self


class Optimizer:
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


class Executor:
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
    (true, predicted) pair of classes (the confusion matrix)."""

    compute: Callable[[Any], Any]
    per: str = "set"
    description: str = ""
