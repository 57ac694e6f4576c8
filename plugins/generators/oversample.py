"""Random oversampling: synthetic images are copies of real training images of the class,
drawn with replacement (imbalanced-learn's RandomOverSampler, on image tensors)."""

from __future__ import annotations

import torch

from medbench.api import Generator
from medbench.errors import DataError
from medbench.hookspecs import hookimpl


class Oversample(Generator):
    description = "random duplication of real training images of the class"
    conditional = True

    def __init__(self, **params):
        if params:
            raise DataError(f"oversample takes no parameters, got {sorted(params)}")
        super().__init__()
        self._by_class: dict[int, torch.Tensor] = {}
        self._gen = torch.Generator()

    def fit(self, images, labels, *, classes, budget=None, device="cpu", seed=0, progress=None):
        self._by_class = {c: images[labels == c] for c in range(len(classes))}
        self._gen.manual_seed(seed)
        return self

    def sample(self, class_index: int, n: int) -> torch.Tensor:
        pool = self._by_class.get(class_index)
        if pool is None or len(pool) == 0:
            raise DataError(f"oversample: class {class_index} has no training images to copy")
        pick = torch.randint(len(pool), (n,), generator=self._gen)
        return pool[pick].clone()


@hookimpl
def register_generators(register):
    register("oversample", Oversample)
