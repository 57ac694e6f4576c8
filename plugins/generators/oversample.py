"""Random oversampling: synthetic images are copies of real training images of the class,
drawn with replacement (as imbalanced-learn's RandomOverSampler does, on image tensors)."""

from __future__ import annotations

import torch

from medbench.hookspecs import hookimpl

from .classical import RealPool


class Oversample(RealPool):
    name = "oversample"
    description = "random duplication of real training images of the class"

    def sample(self, class_index: int, n: int) -> torch.Tensor:
        pool = self.pool(class_index)
        pick = torch.randint(len(pool), (n,), generator=self.rng(class_index, n))
        return pool[pick].clone()


@hookimpl
def register_generators(register):
    register("oversample", Oversample)
