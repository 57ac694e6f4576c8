"""What the GAN plugins share beyond ``medbench.generative.NeuralGenerator`` (parameter
checks, seeding, the loss log, grids, the collapse check, sampling and state live
there): the Adam optimiser they build and the shuffled real batches they train on."""

from __future__ import annotations

import torch

from medbench.generative import NeuralGenerator

__all__ = ["AdversarialGenerator", "adam", "batch_lengths", "real_batches"]


class AdversarialGenerator(NeuralGenerator):
    """A GAN: a ``NeuralGenerator`` trained against a discriminator."""

    name = "gan"


def adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=betas)


def real_batches(n: int, batch_size: int, device: torch.device,
                 labels: torch.Tensor | None = None):
    """Shuffled index batches covering n items once (the last one may be short, but
    never a single item: batch norm and minibatch statistics need two). With ``labels``
    the n indices are drawn with replacement, each class equally often (a conditional
    GAN on imbalanced data then shows its discriminator the minority class as often as
    the majority, instead of in proportion to its count)."""
    if labels is None:
        perm = torch.randperm(n, device=device)
    else:
        counts = torch.bincount(labels.cpu())
        weights = (1.0 / counts.clamp(min=1).double())[labels.cpu()]
        perm = torch.multinomial(weights, n, replacement=True).to(device)
    bs = max(2, min(batch_size, n))
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        if len(idx) < 2:
            break
        yield idx


def batch_lengths(n: int, batch_size: int) -> list[int]:
    """The lengths of the batches ``real_batches(n, batch_size, ...)`` yields in one
    pass, without drawing them: what a fit's images shown are counted from."""
    if n < 2:
        return []
    bs = max(2, min(batch_size, n))
    return [bs] * (n // bs) + ([n % bs] if n % bs >= 2 else [])
