"""What each kind of plugin provides. Subclassing is optional; the engine relies only on
the attributes and methods named here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .data import ImageSet


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


class Generator:
    """Makes synthetic training images.

    ``conditional`` True: one model for all classes (fit once on the whole training
    part). False: the engine fits one instance per class that needs images, passing
    only that class's images.
    """

    description = ""
    conditional = True

    def __init__(self, **params):
        self.params = params

    def fit(self, images: torch.Tensor, labels: torch.Tensor, *, classes: Sequence[str],
            budget: dict | None = None, device: str = "cpu", seed: int = 0,
            progress: Callable[[str, float], None] | None = None) -> "Generator":  # pragma: no cover
        raise NotImplementedError

    def sample(self, class_index: int, n: int) -> torch.Tensor:  # pragma: no cover
        """n uint8 images of the class, N x C x H x W like the training images."""
        raise NotImplementedError


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
