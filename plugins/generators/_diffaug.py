"""Differentiable augmentation of what a GAN's discriminator sees (DiffAugment, Zhao et
al. 2020; the adaptive probability of ADA, Karras et al. 2020).

With a few dozen to a few thousand training images the discriminator memorises the
real set and its feedback to the generator stops meaning anything. DiffAugment applies
the same random, differentiable transformations T to real and generated images
wherever the discriminator sees them, so D learns on T(real) vs T(fake) and gradients
flow through T into G (D step, G step, and the gradient penalty, whose critic is then
D(T(.))). Transformations, on images in [-1, 1]:

- ``color``: brightness (add U(-0.5, 0.5)), saturation for RGB (scale the distance to
  the pixel's grey value by U(0, 2)), contrast (scale the distance to the image mean by
  U(0.5, 1.5));
- ``translation``: shift by up to ``translation`` of the size (1/8), zero-padded;
- ``cutout``: zero a square of ``cutout`` of the size (1/2) at a random position.

Each sample gets its own random parameters; a step draws them once (``draw``) and
applies them alike to the real and the generated batch (``apply``). ADA's idea as an
option: each transformation is applied to a sample with probability ``p`` (1 unless
given); with ``adaptive`` the probability starts from 0 unless given and follows the
overfitting heuristic r_t = E[sign D(real)] towards ``target`` (0.6), moving by at most
one unit per ``speed_kimg`` thousand real images.

This is written here rather than taken from a library: DiffAugment's reference code is
a few functions in a research repository, not a maintained package, and kornia's
augmentations draw their own parameters per call, which cannot apply one draw to real
and fake images alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medbench.errors import ParameterError

POLICIES = ("color", "translation", "cutout")
AUTO_BELOW = 5000        # `diffaug: auto` turns augmentation on for fits on fewer images


class DiffAugment:
    def __init__(self, policy=POLICIES, p: float | None = None, translation: float = 0.125,
                 cutout: float = 0.5, adaptive: bool = False, target: float = 0.6,
                 speed_kimg: float = 100.0):
        self.policy = tuple(policy)
        # unless given, p is 1 (DiffAugment) or, adaptive, starts from 0 as ADA's does
        self.p = float(p) if p is not None else (0.0 if adaptive else 1.0)
        self.translation, self.cutout = float(translation), float(cutout)
        self.adaptive, self.target, self.speed_kimg = bool(adaptive), float(target), float(speed_kimg)

    def describe(self) -> str:
        p = f"adaptive p (now {self.p:.2f}, target r_t {self.target})" if self.adaptive else f"p {self.p:g}"
        return f"DiffAugment {'+'.join(self.policy)}, {p}"

    # ------------------------------------------------------------------ parameters
    def draw(self, n: int, shape: tuple[int, ...], device) -> dict[str, torch.Tensor]:
        """Random parameters for n images of shape (C, H, W), from torch's global RNG."""
        c, h, w = shape[-3], shape[-2], shape[-1]
        out: dict[str, torch.Tensor] = {}

        def on() -> torch.Tensor:        # which samples this transformation touches
            return (torch.rand(n, 1, 1, 1, device=device) < self.p).float()

        if "color" in self.policy:
            out["brightness"] = (torch.rand(n, 1, 1, 1, device=device) - 0.5) * on()
            if c == 3:
                out["saturation"] = 1 + (torch.rand(n, 1, 1, 1, device=device) * 2 - 1) * on()
            out["contrast"] = 1 + (torch.rand(n, 1, 1, 1, device=device) - 0.5) * on()
        if "translation" in self.policy:
            sh, sw = int(h * self.translation + 0.5), int(w * self.translation + 0.5)
            m = on().reshape(n).long()
            out["shift_y"] = torch.randint(-sh, sh + 1, (n,), device=device) * m
            out["shift_x"] = torch.randint(-sw, sw + 1, (n,), device=device) * m
            out["pad"] = torch.tensor([sh, sw])
        if "cutout" in self.policy:
            ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
            oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=device) - ch // 2
            ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=device) - cw // 2
            yy = torch.arange(h, device=device).view(1, h, 1)
            xx = torch.arange(w, device=device).view(1, 1, w)
            hole = (yy >= oy) & (yy < oy + ch) & (xx >= ox) & (xx < ox + cw)
            hole = hole & (on().reshape(n, 1, 1) > 0)
            out["keep"] = (~hole).unsqueeze(1).float()
        return out

    # ------------------------------------------------------------------ transform
    def apply(self, x: torch.Tensor, prm: dict[str, torch.Tensor]) -> torch.Tensor:
        """T(x) for parameters from ``draw``; differentiable in x."""
        if "brightness" in prm:
            x = x + prm["brightness"].to(x.dtype)
        if "saturation" in prm:
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * prm["saturation"].to(x.dtype) + grey
        if "contrast" in prm:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * prm["contrast"].to(x.dtype) + mean
        if "shift_y" in prm:
            x = _translate(x, prm["shift_y"], prm["shift_x"], int(prm["pad"][0]), int(prm["pad"][1]))
        if "keep" in prm:
            x = x * prm["keep"].to(x.dtype)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), tuple(x.shape[1:]), x.device))

    # ------------------------------------------------------------------ ADA
    def adapt(self, d_real: torch.Tensor) -> None:
        """Move p after a discriminator step on ``d_real`` (its scores of real images):
        up when D is too sure of the real images (r_t above target), down otherwise."""
        if not self.adaptive:
            return
        r_t = float(torch.sign(d_real.detach()).mean())
        step = len(d_real) / (self.speed_kimg * 1000.0)
        self.p = min(1.0, max(0.0, self.p + (step if r_t > self.target else -step)))


def _translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Shift each image by (dy, dx) pixels, zero-padded (gather, so gradients flow)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pw, pw, ph, ph))
    rows = (torch.arange(h, device=x.device).view(1, h) + ph - dy.view(n, 1))      # n x h
    cols = (torch.arange(w, device=x.device).view(1, w) + pw - dx.view(n, 1))      # n x w
    idx = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)]   # n h w c
    return out.permute(0, 3, 1, 2)


def one_draw(aug: DiffAugment | None, n: int, shape: tuple[int, ...], device):
    """What the discriminator sees in one step: T with one draw of its parameters for
    every batch of the step (real, fake, gradient-penalty interpolates), or the images
    unchanged without augmentation."""
    if aug is None:
        return lambda x: x
    prm = aug.draw(n, shape, device)
    return lambda x: aug.apply(x, prm)


def configure(value: Any, n_images: int, who: str) -> DiffAugment | None:
    """A generator's ``diffaug`` parameter as a DiffAugment, or None for off.

    ``auto`` (the default): on, with DiffAugment's three policies, when the fit has fewer
    than AUTO_BELOW images; true: on; false: off; a mapping: on with those settings
    (``policy``: a list of color, translation, cutout; ``p``; ``adaptive``; ``target``)."""
    cfg = check(value, who)
    if cfg is None:
        return None
    if cfg == "auto":
        return DiffAugment() if n_images < AUTO_BELOW else None
    return DiffAugment(**cfg)


def check(value: Any, who: str) -> dict | str | None:
    """Validate a ``diffaug`` value before any work: None (off), "auto", or settings."""
    if value == "auto":
        return "auto"
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise ParameterError(f"generator {who!r}: diffaug = {value!r}; use auto, true, false or "
                             "a mapping (policy, p, adaptive, target)")
    allowed = {"policy", "p", "adaptive", "target", "translation", "cutout", "speed_kimg"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ParameterError(f"generator {who!r}: diffaug has no setting {unknown[0]!r}; it takes "
                             f"{', '.join(sorted(allowed))}")
    policy = value.get("policy", list(POLICIES))
    if isinstance(policy, str):
        policy = [p.strip() for p in policy.split(",")]
    bad = [p for p in policy if p not in POLICIES]
    if bad or not policy:
        raise ParameterError(f"generator {who!r}: diffaug policy {bad[0] if bad else '[]'!r}; use "
                             f"some of {', '.join(POLICIES)}")
    for key, low, high in (("p", 0.0, 1.0), ("target", 0.0, 1.0), ("translation", 0.0, 0.5),
                           ("cutout", 0.0, 1.0)):
        v = value.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not low <= v <= high):
            raise ParameterError(f"generator {who!r}: diffaug {key} = {v!r}; use a number in "
                                 f"[{low}, {high}]")
    return {**value, "policy": policy}
