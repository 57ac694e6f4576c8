"""``progan``: progressive growing GAN with the WGAN-GP loss, the reference GAN of the
seed paper (arXiv 2512.24214: one ProGAN per minority class, latent 112 x 1 x 1,
stages 7, 14, 28, 56, 112, 224 px).

Training runs one stage per resolution base, 2*base, ... up to the image size. Every
stage after the first fades its new layers in: the generator output, the critic input
and the real images are blended with the same alpha, which rises linearly from 0 to 1
over the first ``fade`` fraction of the stage's steps and then stays 1.

Generator: pixel-normed latent -> dense to base x base -> 3x3 conv; each later block is
nearest 2x upsample and two 3x3 convs; LeakyReLU 0.2 and pixel norm after every conv;
a 1x1 toRGB per stage. Critic: a 1x1 fromRGB per stage, blocks of two 3x3 convs and a
2x average pool, a final block with the minibatch standard deviation, a 3x3 conv and
dense layers to one score; no batch norm. Every conv and dense layer uses the
equalized learning rate (weights N(0, 1), scaled at run time by sqrt(2 / fan_in)).

Loss: the critic minimises D(fake) - D(real) + gp_lambda * GP + drift * D(real)^2
(GP over per-sample interpolates, _losses.gradient_penalty); the generator minimises
-D(fake); n_critic critic updates per generator update.

Budget: ``epochs`` per stage, or ``kimg`` per stage (thousands of real images shown to
the critic; the epochs list is then ignored). Samples come from an EMA of G (``ema``,
0.999 as Karras et al.). ``snapshots_kimg`` keeps the generator at milestones of the
total images shown, within the schedule this fit runs (a snapshot inside stage 2 samples
at that stage's resolution, upsampled); ``at(k)`` returns it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from medbench.api import Param
from medbench.errors import ParameterError, SuiteError
from medbench.hookspecs import hookimpl

from medbench.generative import ImagesShown, WeightAverage, kimg_target

from . import _diffaug as diffaug
from . import _losses
from ._adversarial import AdversarialGenerator, adam, batch_lengths, real_batches

# --------------------------------------------------------------------------- layers


class EqConv2d(nn.Module):
    """Conv with the equalized learning rate: N(0, 1) weights scaled by sqrt(2/fan_in)."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = math.sqrt(2.0 / (cin * kernel * kernel))
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqLinear(nn.Module):
    """Dense layer with the equalized learning rate."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = math.sqrt(2.0 / cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector to unit average square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one feature map: the mean over features and pixels of the standard
    deviation across a group of min(group, N) images (the whole batch when N is not a
    multiple of the group size)."""
    n, c, h, w = x.shape
    g = min(group, n)
    if n % g:
        g = n
    y = x.reshape(g, n // g, c, h, w)
    y = (y - y.mean(dim=0, keepdim=True)).pow(2).mean(dim=0).add(1e-8).sqrt()   # n/g c h w
    y = y.mean(dim=(1, 2, 3))                                                     # n/g
    y = y.repeat(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


def stage_channels(stages: int, fmaps_base: int, fmaps_max: int, fmaps_min: int = 1) -> list[int]:
    """Feature maps per stage, Karras et al.'s schedule: min(fmaps_max, fmaps_base / 2^s)
    for stage s = 1, 2, ... from the lowest resolution (their 8192 and 512 keep 512 maps
    up to 32 px, then halve), never below fmaps_min."""
    return [max(int(fmaps_min), min(int(fmaps_max), int(fmaps_base) >> (i + 1)))
            for i in range(stages)]


# --------------------------------------------------------------------------- networks


class ProGenerator(nn.Module):
    """forward(z, stage, alpha) -> images at resolution base * 2**stage in [-1, 1]
    (tanh-free, as ProGAN: the output is linear; sampling clamps)."""

    def __init__(self, latent: int, base: int, channels: list[int], out_channels: int):
        super().__init__()
        self.base, self.ch0 = base, channels[0]
        self.dense = EqLinear(latent, channels[0] * base * base)
        self.conv0 = EqConv2d(channels[0], channels[0], 3, 1)
        self.blocks = nn.ModuleList([nn.Identity()])
        for i in range(1, len(channels)):
            self.blocks.append(nn.ModuleList([EqConv2d(channels[i - 1], channels[i], 3, 1),
                                              EqConv2d(channels[i], channels[i], 3, 1)]))
        self.to_rgb = nn.ModuleList([EqConv2d(c, out_channels, 1) for c in channels])
        self.last_alpha: float | None = None     # the alpha of the latest forward call

    def _block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        for conv in self.blocks[i]:
            h = pixel_norm(_act(conv(h)))
        return h

    def forward(self, z: torch.Tensor, stage: int, alpha: float = 1.0) -> torch.Tensor:
        self.last_alpha = float(alpha)
        h = _act(self.dense(pixel_norm(z))).reshape(len(z), self.ch0, self.base, self.base)
        h = pixel_norm(h)
        h = pixel_norm(_act(self.conv0(h)))
        for i in range(1, stage):
            h = self._block(i, h)
        if stage == 0:
            return self.to_rgb[0](h)
        new = self.to_rgb[stage](self._block(stage, h))
        if alpha >= 1.0:
            return new
        old = F.interpolate(self.to_rgb[stage - 1](h), scale_factor=2, mode="nearest")
        return alpha * new + (1.0 - alpha) * old


class ProCritic(nn.Module):
    """forward(x, stage, alpha) -> one score per image; x at resolution base * 2**stage."""

    def __init__(self, base: int, channels: list[int], in_channels: int):
        super().__init__()
        c0 = channels[0]
        self.from_rgb = nn.ModuleList([EqConv2d(in_channels, c, 1) for c in channels])
        self.blocks = nn.ModuleList([nn.Identity()])
        for i in range(1, len(channels)):
            self.blocks.append(nn.ModuleList([EqConv2d(channels[i], channels[i], 3, 1),
                                              EqConv2d(channels[i], channels[i - 1], 3, 1)]))
        self.final_conv = EqConv2d(c0 + 1, c0, 3, 1)
        self.final_dense = EqLinear(c0 * base * base, c0)
        self.score = EqLinear(c0, 1)
        self.last_alpha: float | None = None

    def _block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks[i]:
            h = _act(conv(h))
        return F.avg_pool2d(h, 2)

    def forward(self, x: torch.Tensor, stage: int, alpha: float = 1.0) -> torch.Tensor:
        self.last_alpha = float(alpha)
        h = _act(self.from_rgb[stage](x))
        if stage > 0:
            h = self._block(stage, h)
            if alpha < 1.0:
                old = _act(self.from_rgb[stage - 1](F.avg_pool2d(x, 2)))
                h = alpha * h + (1.0 - alpha) * old
            for i in range(stage - 1, 0, -1):
                h = self._block(i, h)
        h = _act(self.final_conv(minibatch_std(h)))
        h = _act(self.final_dense(h.flatten(1)))
        return self.score(h).squeeze(1)


# --------------------------------------------------------------------------- plugin


def _per_stage(name: str, value, stages: int, sizes: list[int], cast=int) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != stages:
            raise ParameterError(f"generator 'progan': {name} has {len(value)} entries but there are "
                                 f"{stages} stages ({', '.join(map(str, sizes))} px); give one per "
                                 "stage or a single number")
        return [cast(v) for v in value]
    return [cast(value)] * stages


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ProGAN(AdversarialGenerator):
    name = "progan"
    description = "progressive growing GAN with WGAN-GP (the seed paper's generator), one per class"
    conditional = False
    defaults: dict[str, Any] = {
        "latent": 112,
        "base": 7,
        "epochs": 10,
        "batch_size": 16,
        "fade": 0.5,
        "lr": 1e-3,
        "betas": [0.0, 0.99],
        "n_critic": 1,
        "gp_lambda": 10.0,
        "drift": 0.001,
        "fmaps_base": 128,
        "fmaps_max": 64,
        "fmaps_min": 16,
        "kimg": None,
        "ema": 0.999,
        "diffaug": "auto",
    }
    declared = {
        "latent": Param("int", "noise dimensions", low=1),
        "base": Param("int", "side of the first stage, px (7: 7 -> 14 -> 28 ...)", low=2),
        "epochs": Param("int", "passes over the real images per stage (unless kimg is given)",
                        low=0, per_stage=True),
        "batch_size": Param("int", "real images per step", low=2, per_stage=True),
        "fade": Param("number", "share of a stage's images spent fading it in", low=0,
                      high=1, low_open=True),
        "lr": Param("number", "Adam learning rate of both nets", low=0, low_open=True),
        "betas": Param("list", "Adam betas, e.g. [0.0, 0.99]"),
        "n_critic": Param("int", "critic steps per generator step", low=1),
        "gp_lambda": Param("number", "WGAN-GP gradient penalty weight", low=0),
        "drift": Param("number", "drift penalty on the critic's real scores", low=0),
        "fmaps_base": Param("int", "channel schedule: min(fmaps_max, fmaps_base / 2^stage)", low=1),
        "fmaps_max": Param("int", "most channels of a stage", low=1),
        "fmaps_min": Param("int", "fewest channels of a stage", low=1),
        "kimg": Param("number", "budget in thousands of real images shown", low=0,
                      low_open=True, per_stage=True),
        "ema": Param("number", "decay of the generator's weight average (0: none)", low=0,
                     high=1, high_open=True),
        "diffaug": Param("any", "DiffAugment for the critic: auto, true, false or a mapping"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        c = self.cfg

        def bad(key: str, want: str):
            raise ParameterError(f"generator 'progan': {key} = {c[key]!r}; {want}")

        for key in ("latent", "base", "n_critic", "fmaps_base", "fmaps_max", "fmaps_min"):
            if not _is_int(c[key]) or c[key] < 1:
                bad(key, "use a positive integer")
        if c["base"] < 2:
            bad("base", "use an integer >= 2 (e.g. 4 or 7)")
        for key, low in (("epochs", 0), ("batch_size", 2)):
            v = c[key]
            items = v if isinstance(v, (list, tuple)) else [v]
            if not items or not all(_is_int(i) and i >= low for i in items):
                bad(key, f"use an integer >= {low} or a list of them, one per stage")
        if not isinstance(c["fade"], (int, float)) or not 0 < c["fade"] <= 1:
            bad("fade", "use a fraction in (0, 1]")
        if not isinstance(c["lr"], (int, float)) or not c["lr"] > 0:
            bad("lr", "use a positive number")
        b = c["betas"]
        if (not isinstance(b, (list, tuple)) or len(b) != 2
                or not all(isinstance(v, (int, float)) and 0 <= v < 1 for v in b)):
            bad("betas", "use two numbers in [0, 1), e.g. [0.0, 0.99]")
        for key in ("gp_lambda", "drift"):
            if not isinstance(c[key], (int, float)) or c[key] < 0:
                bad(key, "use a number >= 0")
        for v in (c["kimg"] if isinstance(c["kimg"], (list, tuple)) else [c["kimg"]]):
            kimg_target(v, self.name)
        if isinstance(c["ema"], bool) or not isinstance(c["ema"], (int, float)) \
                or not 0 <= c["ema"] < 1:
            bad("ema", "use a decay in [0, 1), e.g. 0.999 (Karras et al.), or 0 for none")
        diffaug.check(c["diffaug"], self.name)
        if c["kimg"] is not None:
            stages = c["kimg"] if isinstance(c["kimg"], (list, tuple)) else None
            if stages is not None:
                self._check_milestones(float(sum(stages)))
        self.stage = 0
        self.aug = None             # DiffAugment, chosen in _train for the data at hand
        self.alpha_trace: list[tuple[int, int, float, float, float]] = []

    # ------------------------------------------------------------------ schedule
    def stage_sizes(self, size: int) -> list[int]:
        """Stage resolutions base, 2*base, ... size; SuiteError if size is not base*2^k."""
        base = int(self.cfg["base"])
        sizes = [base]
        while sizes[-1] < size:
            sizes.append(sizes[-1] * 2)
        if sizes[-1] != size:
            fits = [base * 2 ** k for k in range(7)]
            raise SuiteError(f"generator 'progan': image size {size} is not base {base} times a "
                             f"power of 2; use image_size one of {', '.join(map(str, fits))}, "
                             "or set base so that it divides the size by a power of 2")
        return sizes

    def check_data(self, size: int, channels: int) -> None:
        """Refuse, before any work, an image size or per-stage list that does not fit."""
        sizes = self.stage_sizes(size)
        if self.cfg["kimg"] is None:         # with kimg the stages' budgets are images shown
            _per_stage("epochs", self.cfg["epochs"], len(sizes), sizes)
        _per_stage("batch_size", self.cfg["batch_size"], len(sizes), sizes)
        if self.cfg["kimg"] is not None:
            _per_stage("kimg", self.cfg["kimg"], len(sizes), sizes, cast=float)

    # ------------------------------------------------------------------ networks
    def _build(self, channels: int, size: int, num_classes: int) -> None:
        c = self.cfg
        self.sizes = self.stage_sizes(size)
        n = len(self.sizes)
        # with kimg, epochs (maybe a list for another image size) is not the budget
        self.epochs = (_per_stage("epochs", c["epochs"], n, self.sizes) if c["kimg"] is None
                       else [0] * n)
        self.batch_sizes = _per_stage("batch_size", c["batch_size"], n, self.sizes)
        chans = stage_channels(n, c["fmaps_base"], c["fmaps_max"], c["fmaps_min"])
        self.G = ProGenerator(int(c["latent"]), int(c["base"]), chans, channels).to(self.device)
        self.D = ProCritic(int(c["base"]), chans, channels).to(self.device)
        self.stage = n - 1          # an untrained or loaded generator samples at full size

    def _extra_state(self) -> dict:
        return {"stage": self.stage}

    def _load_extra_state(self, extra: dict) -> None:
        self.stage = int(extra.get("stage", len(self.sizes) - 1))

    def load_state_dict(self, state: dict, device: str = "cpu") -> "ProGAN":
        # the networks' shapes follow the saved parameters, whatever this instance got
        self.cfg = dict(state["cfg"])
        return super().load_state_dict(state, device)

    def stage_output(self, z: torch.Tensor, stage: int, alpha: float = 1.0) -> torch.Tensor:
        """G's raw output at a stage (float, base * 2**stage px), for inspection."""
        with torch.no_grad():
            return self.G(z.to(self.device), stage, alpha)

    def _generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        img = self.G(z, self.stage, 1.0).clamp(-1, 1)
        if img.shape[-1] != self.shape[-1]:     # a snapshot before the last stage
            img = F.interpolate(img, size=self.shape[1:], mode="nearest")
        return img

    # ------------------------------------------------------------------ training
    @staticmethod
    def _batches_per_epoch(n: int, batch_size: int) -> int:
        bs = max(2, min(batch_size, n))       # as real_batches
        return n // bs + (1 if n % bs >= 2 else 0)

    def _steps_per_epoch(self, n: int, stage: int) -> int:
        return math.ceil(self._batches_per_epoch(n, self.batch_sizes[stage]) / int(self.cfg["n_critic"]))

    def alpha_at(self, stage: int, step: int, steps: int) -> float:
        """Fade-in alpha at a step (0-based) of a stage of ``steps`` steps."""
        if stage == 0:
            return 1.0
        fade_steps = max(1, round(float(self.cfg["fade"]) * steps))
        return min(1.0, step / max(1, fade_steps - 1))

    @staticmethod
    def blend_real(real_r: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
        """Real images at a stage being faded in: alpha * real_r + (1 - alpha) *
        upsample(downsample(real_r, 2)). Returns the images and the alpha used."""
        if alpha >= 1.0:
            return real_r, float(alpha)
        low = F.interpolate(F.avg_pool2d(real_r, 2), scale_factor=2, mode="nearest")
        return alpha * real_r + (1.0 - alpha) * low, float(alpha)

    def stage_steps(self, n: int) -> list[int]:
        """Steps (n_critic critic updates, then one generator update) of each stage: its
        epochs over the n real images, or, with ``kimg``, as many steps as show the
        stage's thousands of real images to the critic (fade-in, then stabilise)."""
        c, stages = self.cfg, len(self.sizes)
        if c["kimg"] is None:
            return [self.epochs[i] * self._steps_per_epoch(n, i) for i in range(stages)]
        kimg = _per_stage("kimg", c["kimg"], stages, self.sizes, cast=float)
        per_step = [max(2, min(self.batch_sizes[i], n)) * int(c["n_critic"]) for i in range(stages)]
        return [max(1, math.ceil(kimg[i] * 1000 / per_step[i])) for i in range(stages)]

    def budget(self, n: int, image_size: int) -> list[int]:
        """Images each stage of ``_train`` shows on n images of this size: its steps
        (``stage_steps``), each n_critic consecutive batches of an epoch of
        ``real_batches``, epoch after epoch."""
        c = self.cfg
        sizes = self.stage_sizes(image_size)
        stages, n_critic = len(sizes), int(c["n_critic"])
        batch_sizes = _per_stage("batch_size", c["batch_size"], stages, sizes)
        if c["kimg"] is None:
            epochs = _per_stage("epochs", c["epochs"], stages, sizes)
            return [epochs[s] * sum(batch_lengths(n, batch_sizes[s])) for s in range(stages)]
        kimg = _per_stage("kimg", c["kimg"], stages, sizes, cast=float)
        shown = []
        for s in range(stages):
            lengths = batch_lengths(n, batch_sizes[s])
            groups = [sum(lengths[k:k + n_critic]) for k in range(0, len(lengths), n_critic)]
            per_step = max(2, min(batch_sizes[s], n)) * n_critic
            steps = max(1, math.ceil(kimg[s] * 1000 / per_step))
            whole, rest = divmod(steps, max(1, len(groups)))
            shown.append(whole * sum(groups) + sum(groups[:rest]))
        return shown

    def _train(self, x: torch.Tensor, y: torch.Tensor,
               progress: Callable[[str, float], None] | None) -> None:
        c = self.cfg
        n, size, n_stages = len(x), self.shape[-1], len(self.sizes)
        n_critic, latent = int(c["n_critic"]), int(c["latent"])
        lam, drift = float(c["gp_lambda"]), float(c["drift"])
        betas = (float(c["betas"][0]), float(c["betas"][1]))
        per_stage = self.stage_steps(n)
        total = max(1, sum(per_stage))
        n_critic_images = [max(2, min(self.batch_sizes[i], n)) * n_critic for i in range(n_stages)]
        self._check_milestones(sum(t * k for t, k in zip(per_stage, n_critic_images)) / 1000.0)
        # the stages' steps are counted below (from epochs, or from each stage's kimg)
        budget = ImagesShown(None, c["seconds"], "epochs" if c["kimg"] is None else "budget",
                             milestones=self.milestones)
        self.aug = diffaug.configure(c["diffaug"], n, self.name)
        if self.aug is not None:
            self.note(f"progan: the critic sees {self.aug.describe()} of real and "
                      "generated images alike")
        ema = WeightAverage(self.G, float(c["ema"])) if c["ema"] else None
        self.alpha_trace = []
        step, done = 0, 0
        for s, res in enumerate(self.sizes):
            self.stage = s
            real_s = F.avg_pool2d(x, size // res) if res != size else x
            opt_g = adam(self.G.parameters(), float(c["lr"]), betas)    # fresh per stage
            opt_d = adam(self.D.parameters(), float(c["lr"]), betas)
            t, bs, e = 0, self.batch_sizes[s], 0
            while t < per_stage[s] and not budget.done():
                batches = list(real_batches(n, bs, self.device))
                for k in range(0, len(batches), n_critic):
                    alpha = self.alpha_at(s, t, per_stage[s])
                    row = self._step(s, alpha, real_s, batches[k:k + n_critic], opt_g, opt_d,
                                     latent, lam, drift)
                    self.alpha_trace.append((s, step, self.G.last_alpha, row.pop("critic_alpha"),
                                             row.pop("real_alpha")))
                    budget.add(sum(len(i) for i in batches[k:k + n_critic]))
                    if ema is not None:
                        ema.update(self.G)
                    self._log(stage=s, resolution=res, epoch=e, step=step, alpha=alpha,
                              kimg=budget.shown / 1000.0, **row)
                    for kimg in budget.crossed():     # the generator at that point of the schedule
                        self._keep(kimg, budget, ema)
                    t, step, done = t + 1, step + 1, done + 1
                    if t >= per_stage[s] or budget.done():
                        break
                e += 1
                if progress is not None:
                    where = (f"epoch {e}/{self.epochs[s]}" if c["kimg"] is None
                             else f"{budget.shown / 1000:.1f} kimg")
                    progress(f"progan stage {s + 1}/{n_stages} ({res} px) {where}", done / total)
            self._ema_snapshot(ema, f"stage {s + 1}/{n_stages} ({res} px)")
        self.stage = n_stages - 1
        if ema is not None and step:
            ema.copy_to(self.G)          # samples come from the averaged weights (Karras et al.)
        self.record = budget.record()

    def _ema_snapshot(self, ema, label: str) -> None:
        """A sample grid from the averaged generator, training weights left as they were."""
        if ema is None:
            self._snapshot(label)
            return
        live = {k: v.detach().clone() for k, v in self.G.named_parameters()}
        ema.copy_to(self.G)
        try:
            self._snapshot(label + " (EMA)")
        finally:
            with torch.no_grad():
                for k, v in self.G.named_parameters():
                    v.copy_(live[k])

    def _step(self, s, alpha, real_s, batches, opt_g, opt_d, latent, lam, drift) -> dict:
        """n_critic critic updates (one per real batch), then one generator update. With
        DiffAugment the critic sees T(real) and T(fake), one draw of T for both, and its
        gradient penalty constrains D(T(.)); the generator step draws T anew."""
        G, D, aug = self.G, self.D, self.aug
        for idx in batches:
            real, real_alpha = self.blend_real(real_s[idx], alpha)
            with torch.no_grad():
                fake = G(torch.randn(len(idx), latent, device=self.device), s, alpha)
            seen = diffaug.one_draw(aug, len(idx), real.shape[1:], self.device)
            d_real = D(seen(real), s, alpha)
            d_alpha = D.last_alpha
            d_fake = D(seen(fake), s, alpha)
            critic = D if aug is None else (lambda v, st, a: D(seen(v), st, a))
            gp = _losses.gradient_penalty(critic, real, fake, s, alpha)
            d_loss = d_fake.mean() - d_real.mean() + lam * gp + drift * d_real.pow(2).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            if aug is not None:
                aug.adapt(d_real)
        for p in D.parameters():
            p.requires_grad_(False)
        try:
            fake = G(torch.randn(len(batches[-1]), latent, device=self.device), s, alpha)
            if aug is not None:
                fake = aug(fake)               # a draw of its own for the generator step
            g_loss = -D(fake, s, alpha).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
        finally:
            for p in D.parameters():
                p.requires_grad_(True)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "gp": gp.item(),
                "margin": float(d_real.detach().mean() - d_fake.detach().mean()),
                "real_alpha": real_alpha, "critic_alpha": d_alpha}


@hookimpl
def register_generators(register):
    register("progan", ProGAN)
