"""Random oversampling: synthetic images are copies of real training images of the class,
drawn with replacement (as imbalanced-learn's RandomOverSampler does, on image tensors)."""

from __future__ import annotations

import torch

from medbench.api import Generator
from medbench.errors import DataError, SuiteError
from medbench.hookspecs import hookimpl

from ._adversarial import seed_for


class Oversample(Generator):
    description = "random duplication of real training images of the class"
    conditional = True

    def __init__(self, **params):
        if params:
            raise SuiteError(f"generator 'oversample' takes no parameters, got {sorted(params)}")
        super().__init__()
        self._by_class: dict[int, torch.Tensor] = {}
        self.seed = 0

    def fit(self, images, labels, *, classes, budget=None, device="cpu", seed=0, progress=None):
        self._by_class = {c: images[labels == c] for c in range(len(classes))}
        self.seed = int(seed)
        return self

    def sample(self, class_index: int, n: int) -> torch.Tensor:
        """The same (seed, class, n) draws the same copies, whatever was drawn before."""
        pool = self._by_class.get(class_index)
        if pool is None or len(pool) == 0:
            raise DataError(f"oversample: class {class_index} has no training images to copy")
        gen = torch.Generator().manual_seed(seed_for("oversample", self.seed, class_index, n))
        pick = torch.randint(len(pool), (n,), generator=gen)
        return pool[pick].clone()


@hookimpl
def register_generators(register):
    register("oversample", Oversample)
