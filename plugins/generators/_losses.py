"""Adversarial losses shared by the GAN plugins. Logits may be one score per image or a
map of patch scores (PatchGAN); each loss averages over everything.

bce      the original GAN: D minimises BCE(real, 1) + BCE(fake, 0); G the non-saturating
         BCE(fake, 1).
mse      least squares (LSGAN, a-b-c = 0-1-1): D minimises ((real - 1)^2 + fake^2) / 2,
         G (fake - 1)^2 / 2.
hinge    D minimises relu(1 - real) + relu(1 + fake); G minimises -fake (seed 003, eq. 1-2).
wgan-gp  D (the critic) minimises fake - real + lambda * GP; G minimises -fake. The
         gradient penalty is taken at per-sample random points between real and fake
         images: (||grad_x D(x_hat)||_2 - 1)^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "mse", "hinge", "wgan-gp")


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "mse":
        return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    raise ValueError(kind)


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind == "mse":
        return 0.5 * (fake - 1).pow(2).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    raise ValueError(kind)


def interpolate(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Random points on the segments between paired real and fake images, one mixing
    weight per sample: x_hat_i = eps_i * real_i + (1 - eps_i) * fake_i."""
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device,
                     dtype=real.dtype)
    return eps * real + (1 - eps) * fake, eps


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, *args) -> torch.Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] over per-sample interpolates; extra args (a
    class label, a fade-in alpha) are passed to the critic unchanged.

    A PatchGAN critic scores each image with a map of patch scores, and the loss
    averages them; the penalty is taken on that same per-image average (the gradient of
    a sum of P patch scores would be P times larger and multiply lambda by P)."""
    x_hat, _ = interpolate(real.detach(), fake.detach())
    x_hat.requires_grad_(True)
    score = critic(x_hat, *args)
    per_image = score.reshape(score.shape[0], -1).mean(1)
    (grad,) = torch.autograd.grad(per_image.sum(), x_hat, create_graph=True)
    norm = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    return (norm - 1).pow(2).mean()
