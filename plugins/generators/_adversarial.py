"""What the GAN plugins share beyond ``medbench.generative.NeuralGenerator`` (parameter
checks, seeding, the loss log, grids, the collapse check, sampling and state live
there): the Adam optimiser they build and the shuffled real batches they train on."""

from __future__ import annotations

import torch

from medbench.generative import NeuralGenerator

__all__ = ["AdversarialGenerator", "adam", "real_batches"]


class AdversarialGenerator(NeuralGenerator):
    """A GAN: a ``NeuralGenerator`` trained against a discriminator."""

    name = "gan"


def adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=betas)


def real_batches(n: int, batch_size: int, device: torch.device):
    """Shuffled index batches covering n items once (the last one may be short, but
    never a single item: batch norm and minibatch statistics need two)."""
    perm = torch.randperm(n, device=device)
    bs = max(2, min(batch_size, n))
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        if len(idx) < 2:
            break
        yield idx
