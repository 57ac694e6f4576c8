"""The DCGAN family: ``dcgan``, ``cgan``, ``lsgan`` and ``vanilla``.

One implementation, four registered names whose defaults follow the seed papers:

dcgan    seed 003's best unconditional configuration: convolutional generator
         (transposed conv blocks, batch norm, ReLU, tanh), PatchGAN discriminator with
         spectral normalisation, hinge loss, latent 256, 3 up-sampling blocks,
         dropout 0.3 in the discriminator, batch 32, generator lr 2e-4, discriminator
         lr 1e-4, n_critic 2. ``loss`` may be bce, mse, hinge or wgan-gp; without
         spectral norm the discriminator uses batch norm (seed 003's "variant 2"),
         except under wgan-gp, where batch norm would break the per-sample penalty and
         no normalisation is used.
cgan     seed 003's cDCGAN: one model for all classes, the class embedding concatenated
         with the noise in the generator, a projection discriminator (score = w.h +
         <embed(y), h>, per patch for PatchGAN); latent 100, 4 blocks. ``arch: fc`` is
         seed 001's fully connected CGAN instead (embeddings concatenated with the noise
         and with the flattened image, dense layers, BCE, lr 2e-4). ``balanced: true``
         draws its real batches class-balanced (with replacement), so the minority
         class is shown as often as the majority.
lsgan    seed 001's least-squares GAN: fully connected (dense + batch norm + ReLU in the
         generator, dense + LeakyReLU 0.2 in the discriminator, no sigmoid), MSE loss.
         ``arch: conv`` gives the convolutional variant.
vanilla  seed 001's vanilla GAN: the convolutional generator and a convolutional
         discriminator with batch norm and LeakyReLU 0.2, BCE, Adam lr 2e-4 betas
         (0.5, 0.999), batch 32. ``arch: fc`` gives the fully connected variant.

Samples come from an exponential moving average of the generator's weights (``ema``,
0.999, warmed up as min(ema, (1 + t) / (10 + t)) over generator steps t; 0 turns it off),
which smooths the step-to-step swings of adversarial training.

``kimg`` sets the budget in thousands of real images shown to the discriminator (epochs
when it is not given); ``snapshots_kimg: [k1, k2, ...]`` keeps, within one fit, the
generator a fit of k kimg would have ended with (EMA weights included), reachable with
``at(k)`` and saved with the fitted model in the cache. ``snapshots`` is the number of
sample grids drawn along the way for the figures. A fit that ends on its kimg budget
keeps its training state (``resume``: nets, optimisers, EMA, counters, the epoch's
remaining batches, the random state), so ``fit(..., resume=state)`` of a larger kimg goes
on from there and ends exactly where a fit of that budget from scratch ends.

Unconditional members are fitted once per class by the engine, on that class's training
images only. ``n_layers`` is the number of 2x up-sampling blocks; at small image sizes
it is capped at what the size allows (28 px: 7 -> 14 -> 28, two blocks) and the cap is
recorded in the generator's notes. One epoch is one pass over the real images; the
discriminator steps on every batch and the generator after every ``n_critic``-th.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medbench.api import Param
from medbench.errors import ParameterError, SuiteError
from medbench.generative import ImagesShown, WeightAverage, kimg_target
from medbench.hookspecs import hookimpl

from . import _diffaug as diffaug
from ._adversarial import AdversarialGenerator, adam, batch_lengths, real_batches
from ._losses import LOSSES, d_loss, g_loss, gradient_penalty

FC_HIDDEN_G = (256, 512, 1024)
FC_HIDDEN_D = (512, 256)
MAX_WIDTH = 512


def max_blocks(size: int) -> int:
    """Most 2x up-sampling blocks from a base grid of at least 3 px to ``size``."""
    k = 0
    while size % (2 ** (k + 1)) == 0 and size // (2 ** (k + 1)) >= 3:
        k += 1
    return k


class ConvG(nn.Module):
    """noise (+ class embedding) -> base x base by a transposed conv, then k blocks of
    2x transposed conv + batch norm + ReLU, then a 3x3 conv to the image (tanh)."""

    def __init__(self, in_dim: int, channels: int, size: int, blocks: int, width: int):
        super().__init__()
        base = size // (2 ** blocks)
        widths = [min(width * 2 ** (blocks - i), MAX_WIDTH) for i in range(blocks)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, widths[0], base, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        widths.append(max(widths[-1] // 2, 8))
        for i in range(blocks):
            layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1, bias=False),
                       nn.BatchNorm2d(widths[i + 1]), nn.ReLU(True)]
        # a 3x3 conv makes the image: straight out of a stride-2 transposed conv, pixels
        # alternate between kernel taps and show a checkerboard the critic must chase
        layers += [nn.Conv2d(widths[-1], channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, h):
        return self.net(h[:, :, None, None])


class FCG(nn.Module):
    def __init__(self, in_dim: int, channels: int, size: int):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in FC_HIDDEN_G:
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(True)]
            d = h
        layers += [nn.Linear(d, channels * size * size), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.shape = (channels, size, size)

    def forward(self, h):
        return self.net(h).view(len(h), *self.shape)


class Generator(nn.Module):
    """Wraps ConvG / FCG with the optional class embedding."""

    def __init__(self, arch, latent, channels, size, blocks, width, num_classes, embed_dim):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim) if embed_dim else None
        in_dim = latent + (embed_dim or 0)
        self.body = (ConvG(in_dim, channels, size, blocks, width) if arch == "conv"
                     else FCG(in_dim, channels, size))

    def forward(self, z, y):
        h = z if self.embed is None else torch.cat([z, self.embed(y)], 1)
        return self.body(h)


def _maybe_sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module) if on else module


class ConvD(nn.Module):
    """k blocks down to the base grid, each a 3x3 conv and a 4x4 stride-2 conv with
    LeakyReLU 0.2 (and batch norm, per the variant) and dropout. Then a 3x3 conv to one
    score per patch (PatchGAN: 7 x 7 patches at 28 and 224 px), or a dense layer on the
    whole feature grid to one score per image. Conditional: projection of the class
    embedding on the features (per patch, or on the flattened grid)."""

    def __init__(self, channels, size, blocks, width, norm, dropout, patch, num_classes):
        super().__init__()
        sn = norm == "spectral"
        base = size // (2 ** blocks)
        widths = [min(width * 2 ** i, MAX_WIDTH) for i in range(blocks)]
        layers: list[nn.Module] = []
        c_in = channels
        for i, w in enumerate(widths):
            layers += [_maybe_sn(nn.Conv2d(c_in, w, 3, 1, 1), sn), nn.LeakyReLU(0.2, True),
                       _maybe_sn(nn.Conv2d(w, w, 4, 2, 1, bias=norm != "batch"), sn)]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.2, True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c_in = w
        self.features = nn.Sequential(*layers)
        self.patch = patch
        feat = c_in if patch else c_in * base * base
        self.out = _maybe_sn(nn.Conv2d(c_in, 1, 3, 1, 1) if patch else nn.Linear(feat, 1), sn)
        self.embed = _maybe_sn(nn.Embedding(num_classes, feat), sn) if num_classes else None

    def forward(self, x, y=None):
        h = self.features(x)
        if self.patch:
            score = self.out(h)                                   # N x 1 x b x b
            if self.embed is not None:
                score = score + (self.embed(y)[:, :, None, None] * h).sum(1, keepdim=True)
            return score
        h = h.flatten(1)
        score = self.out(h)
        if self.embed is not None:
            score = score + (self.embed(y) * h).sum(1, keepdim=True)
        return score


class FCD(nn.Module):
    """Flattened image (+ class embedding, concatenated) -> dense + LeakyReLU 0.2 -> score."""

    def __init__(self, channels, size, norm, dropout, num_classes, embed_dim):
        super().__init__()
        sn = norm == "spectral"
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        d = channels * size * size + (embed_dim if num_classes else 0)
        layers: list[nn.Module] = []
        for h in FC_HIDDEN_D:
            layers += [_maybe_sn(nn.Linear(d, h), sn), nn.LeakyReLU(0.2, True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(_maybe_sn(nn.Linear(d, 1), sn))
        self.net = nn.Sequential(*layers)

    def forward(self, x, y=None):
        h = x.flatten(1)
        if self.embed is not None:
            h = torch.cat([h, self.embed(y)], 1)
        return self.net(h)


class DCGANFamily(AdversarialGenerator):
    defaults = {
        "arch": "conv", "loss": "hinge", "spectral_norm": True, "patch": True,
        "latent": 256, "n_layers": "auto", "width": 64, "embed_dim": 50, "dropout": 0.3,
        "batch_size": 32, "epochs": 50, "g_lr": 2e-4, "d_lr": 1e-4, "betas": [0.5, 0.999],
        "n_critic": 2, "gp_lambda": 10.0, "snapshots": 4, "ema": 0.999, "kimg": None,
        "diffaug": "auto", "balanced": False,
    }
    choices = {"arch": ("conv", "fc"), "loss": LOSSES, "spectral_norm": (True, False),
               "patch": (True, False), "balanced": (True, False)}
    declared = {
        "arch": Param(help="conv: transposed-conv generator; fc: dense layers"),
        "loss": Param(help="adversarial loss"),
        "spectral_norm": Param(help="spectral norm in the discriminator (else batch norm)"),
        "patch": Param(help="PatchGAN discriminator: one score per patch"),
        "latent": Param("int", "noise dimensions", low=1),
        "n_layers": Param("int", "2x up-sampling blocks (auto: from the image size)", low=1,
                          also=("auto",)),
        "width": Param("int", "channel width of the nets (doubled per block, at most 512)",
                       low=1),
        "embed_dim": Param("int", "class embedding size (conditional members)", low=1),
        "dropout": Param("number", "dropout in the discriminator", low=0, high=1, high_open=True),
        "batch_size": Param("int", "real images per step", low=1),
        "epochs": Param("int", "passes over the real images (the budget unless kimg is given)",
                        low=1),
        "g_lr": Param("number", "generator learning rate (Adam)", low=0, low_open=True),
        "d_lr": Param("number", "discriminator learning rate (Adam)", low=0, low_open=True),
        "betas": Param("list", "Adam betas of both nets, e.g. [0.5, 0.999]"),
        "n_critic": Param("int", "discriminator steps per generator step", low=1),
        "gp_lambda": Param("number", "gradient penalty weight (loss wgan-gp)", low=0),
        "snapshots": Param("int", "sample grids kept along the fit", low=1),
        "ema": Param("number", "decay of the generator's weight average (0: none)", low=0,
                     high=1, high_open=True),
        "kimg": Param("number", "budget in thousands of real images shown (replaces epochs)",
                      low=0, low_open=True),
        "diffaug": Param("any", "DiffAugment for the discriminator: auto, true, false or a "
                                "mapping (policy, p, adaptive, target)"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        layers = self.cfg["n_layers"]
        if layers != "auto" and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
            raise ParameterError(f"generator {self.name!r}: n_layers = {layers!r}; use auto (the "
                                 "depth follows the image size) or a positive integer")
        kimg_target(self.cfg["kimg"], self.name)
        self._check_milestones(self.cfg["kimg"])
        diffaug.check(self.cfg["diffaug"], self.name)
        ema = self.cfg["ema"]
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
            raise ParameterError(f"generator {self.name!r}: ema = {ema!r}; use a decay in [0, 1), "
                                 "e.g. 0.999, or 0 for none")

    def check_data(self, size: int, channels: int) -> None:
        """Refuse, before any work, an image size the convolutional nets cannot take."""
        if self.cfg["arch"] == "conv" and max_blocks(size) < 1:
            raise SuiteError(f"generator {self.name!r}: image size {size} cannot be halved down "
                             "to a grid of at least 3 px; use arch: fc or another size")

    def _build(self, channels, size, num_classes):
        cfg = self.cfg
        self.check_data(size, channels)
        # the depth follows the image size: up-sampling blocks from the smallest grid of at
        # least 3 px (28 px: 7 -> 14 -> 28; 224 px: 7 -> ... -> 224), so a large image never
        # starts from a large grid through one huge first layer
        depth = max_blocks(size) if cfg["n_layers"] == "auto" else int(cfg["n_layers"])
        blocks = min(depth, max_blocks(size))
        if cfg["arch"] == "conv" and blocks < depth:
            note = (f"{self.name}: n_layers {cfg['n_layers']} capped at {blocks} for "
                    f"{size} px images")
            self.note(note)
        self.blocks = blocks
        cond = num_classes if self.conditional else 0
        norm = ("spectral" if cfg["spectral_norm"] else
                "none" if cfg["loss"] == "wgan-gp" else "batch")
        self.G = Generator(cfg["arch"], int(cfg["latent"]), channels, size, blocks,
                           int(cfg["width"]), num_classes, int(cfg["embed_dim"]) if cond else 0
                           ).to(self.device)
        if cfg["arch"] == "conv":
            self.D = ConvD(channels, size, blocks, int(cfg["width"]), norm, float(cfg["dropout"]),
                           bool(cfg["patch"]), cond).to(self.device)
        else:
            self.D = FCD(channels, size, norm, float(cfg["dropout"]), cond,
                         int(cfg["embed_dim"])).to(self.device)

    def _generate(self, z, y):
        return self.G(z, y)

    def budget(self, n: int, image_size: int) -> list[int]:
        """Images ``_train`` shows on n images: whole epochs of ``real_batches``, or,
        with ``kimg``, batches until the target is reached (the last one overshoots)."""
        lengths = batch_lengths(n, int(self.cfg["batch_size"]))
        per_epoch = sum(lengths)
        if per_epoch == 0:
            return [0]
        if self.cfg["kimg"] is None:
            return [int(self.cfg["epochs"]) * per_epoch]
        target = kimg_target(self.cfg["kimg"], self.name)
        shown = (target - 1) // per_epoch * per_epoch      # the whole epochs below it
        for length in lengths:
            shown += length
            if shown >= target:
                break
        return [shown]

    def with_budget(self, images: list[int]) -> "DCGANFamily":
        # one grid at the end: the grids along the way cost per fit, not per image shown
        return type(self)(**{**super().with_budget(images).cfg, "snapshots": 1})

    resumable = True

    def _train(self, x, y, progress):
        cfg = self.cfg
        kind = cfg["loss"]
        betas = tuple(cfg["betas"])
        opt_g = adam(self.G.parameters(), float(cfg["g_lr"]), betas)
        opt_d = adam(self.D.parameters(), float(cfg["d_lr"]), betas)
        latent, n_critic = int(cfg["latent"]), max(1, int(cfg["n_critic"]))
        target = kimg_target(cfg["kimg"], self.name)
        epochs = int(cfg["epochs"])
        budget = ImagesShown(target, cfg["seconds"], milestones=self.milestones)
        aug = diffaug.configure(cfg["diffaug"], len(x), self.name)
        if aug is not None:
            self.note(f"{self.name}: the discriminator sees {aug.describe()} of real and "
                       "generated images alike")
        planned = target if target is not None else epochs * len(x)
        self._check_milestones(planned / 1000.0)
        n_snaps = max(1, int(cfg["snapshots"]))
        next_snap = 1
        self.G.train()
        self.D.train()
        ema = WeightAverage(self.G, float(cfg["ema"])) if cfg["ema"] else None
        g_value = float("nan")
        epoch = 0
        pending, pos = None, 0          # this epoch's batches and the next one's index
        labels_for = y if self.conditional and cfg["balanced"] else None
        if self._resume_from is not None:     # go on where a shorter fit stopped
            r = self._resume_from
            self.G.load_state_dict(r["G"])
            self.D.load_state_dict(r["D"])
            opt_g.load_state_dict(r["opt_g"])
            opt_d.load_state_dict(r["opt_d"])
            if ema is not None:
                ema.load_state(r["ema"], self.device)
            if aug is not None and r["augment_p"] is not None:
                aug.p = r["augment_p"]
            budget.restore(r["budget"])
            epoch, g_value = r["epoch"], r["g_value"]
            pending = None if r["pending"] is None else [i.to(self.device) for i in r["pending"]]
            pos = r["pos"]
            next_snap = min(n_snaps, int(budget.shown * n_snaps // planned) + 1)
            torch.set_rng_state(r["rng"])
            if self.device.type == "cuda" and r.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(r["rng_cuda"], self.device)
        # epochs, or images shown when kimg is given; the seconds cap ends either
        while not budget.done() and (target is not None or epoch < epochs):
            if pending is None:
                epoch += 1
                pending = list(real_batches(len(x), int(cfg["batch_size"]), self.device,
                                            labels_for))
                pos = 0
            while pos < len(pending):
                idx = pending[pos]
                pos += 1
                real, labels = x[idx], y[idx]
                z = torch.randn(len(idx), latent, device=self.device)
                fake = self.G(z, labels)
                seen = diffaug.one_draw(aug, len(idx), real.shape[1:], self.device)
                d_real = self.D(seen(real), labels)
                d_fake = self.D(seen(fake.detach()), labels)
                loss_d = d_loss(kind, d_real, d_fake)
                if kind == "wgan-gp":     # the critic the penalty constrains is D(T(.))
                    loss_d = loss_d + float(cfg["gp_lambda"]) * gradient_penalty(
                        lambda v, lab: self.D(seen(v), lab), real, fake, labels)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                if aug is not None:
                    aug.adapt(d_real)
                budget.add(len(idx))
                if budget.steps % n_critic == 0:
                    z = torch.randn(len(idx), latent, device=self.device)
                    gen = self.G(z, labels)
                    if aug is not None:
                        gen = aug(gen)         # a draw of its own for the generator step
                    loss_g = g_loss(kind, self.D(gen, labels))
                    opt_g.zero_grad(set_to_none=True)
                    loss_g.backward()
                    opt_g.step()
                    g_value = float(loss_g.detach())
                    if ema is not None:
                        ema.update(self.G)
                row = {"epoch": epoch, "step": budget.steps, "kimg": budget.shown / 1000.0,
                       "d_loss": float(loss_d.detach()),
                       "g_loss": g_value if budget.steps >= n_critic else 0.0,
                       "margin": float(d_real.detach().mean() - d_fake.detach().mean())}
                if aug is not None and aug.adaptive:
                    row["augment_p"] = aug.p
                self._log(**row)
                for k in budget.crossed():      # the generator a fit of k kimg would end with
                    self._keep(k, budget, ema, y)
                if budget.shown >= next_snap * planned / n_snaps and next_snap < n_snaps:
                    self._snapshot(f"{budget.shown / 1000:.1f} kimg")
                    next_snap += 1
                if budget.done():
                    break
            if pos >= len(pending):
                pending = None
            if progress is not None:
                frac = budget.fraction() if target is not None else epoch / max(epochs, 1)
                progress(f"{self.name} {budget.shown / 1000:.1f} kimg", frac)
        if budget.steps and budget.stopped_by == "budget" and target is not None:
            # everything a fit of a larger kimg needs to go on from here
            self.resume = {
                "G": {k: v.detach().cpu().clone() for k, v in self.G.state_dict().items()},
                "D": {k: v.detach().cpu().clone() for k, v in self.D.state_dict().items()},
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "ema": None if ema is None else ema.state(),
                "augment_p": None if aug is None else aug.p,
                "budget": budget.state(), "epoch": epoch, "g_value": g_value,
                "pending": None if pending is None else [i.cpu() for i in pending], "pos": pos,
                "rng": torch.get_rng_state(),
                "rng_cuda": (torch.cuda.get_rng_state(self.device)
                             if self.device.type == "cuda" else None)}
        if ema is not None and budget.steps:
            ema.copy_to(self.G)          # samples come from the averaged weights ...
        if budget.steps:
            self._standing_stats(y)      # ... normalised by their own statistics
        self.record = budget.record()
        self._snapshot(f"{budget.shown / 1000:.1f} kimg" + (" (EMA)" if ema is not None else "")
                       if budget.steps else "untrained")


class DCGAN(DCGANFamily):
    name = "dcgan"
    description = "DCGAN (seed 003: hinge loss, spectral norm, PatchGAN discriminator), one per class"
    conditional = False


class CGAN(DCGANFamily):
    name = "cgan"
    description = "conditional DCGAN with a projection discriminator (seed 003), one for all classes"
    conditional = True
    defaults = {**DCGANFamily.defaults, "latent": 100}
    # `arch: fc` is seed 001's CGAN: dense layers, the class embedding concatenated to the
    # noise and to the flattened image, BCE, Adam lr 2e-4 for both nets, no spectral norm;
    # these replace the defaults that the suite does not set itself
    FC = {"loss": "bce", "spectral_norm": False, "patch": False, "g_lr": 2e-4, "d_lr": 2e-4,
          "n_critic": 1, "dropout": 0.0, "betas": [0.5, 0.999]}

    def __init__(self, **params):
        if params.get("arch") == "fc":
            params = {**self.FC, **params}
        super().__init__(**params)


class LSGAN(DCGANFamily):
    name = "lsgan"
    description = "least-squares GAN, fully connected (seed 001), one per class"
    conditional = False
    defaults = {**DCGANFamily.defaults, "arch": "fc", "loss": "mse", "spectral_norm": False,
                "patch": False, "latent": 100, "dropout": 0.0, "d_lr": 2e-4, "n_critic": 1,
                "epochs": 10}


class Vanilla(DCGANFamily):
    name = "vanilla"
    description = "vanilla GAN, convolutional with BCE (seed 001), one per class"
    conditional = False
    defaults = {**DCGANFamily.defaults, "loss": "bce", "spectral_norm": False, "patch": False,
                "latent": 100, "dropout": 0.0, "d_lr": 2e-4, "n_critic": 1, "epochs": 10}


@hookimpl
def register_generators(register):
    for cls in (DCGAN, CGAN, LSGAN, Vanilla):
        register(cls.name, cls)
