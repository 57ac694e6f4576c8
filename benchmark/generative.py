"""The parts every fitted generator shares, public so that an outside generator (a GAN,
a diffusion model, anything trained on the images) can build on them:

- ``seed_for``: a stable 63-bit seed from any parts (sampling, building, grids);
- ``to_unit`` / ``from_unit``: uint8 pixels to floats in [-1, 1] and back;
- ``WeightAverage``: an exponential moving average of a network's weights, the copy a
  GAN or diffusion model samples from;
- ``NeuralGenerator``: a ``medbench.api.Generator`` around networks trained on the
  images: parameter checks (``defaults`` plus ``collapse_check``), seeding, the loss log
  with divergence detection, sample grids from fixed noise, a collapse check,
  deterministic sampling from noise, and a state the engine's generator cache saves and
  restores.

A subclass sets ``defaults`` (every parameter it accepts, with its default) and
implements ``_build(channels, size, num_classes)`` (creates ``self.G``, the network
``_generate`` runs, and whatever else it trains), ``_train(x, y, progress)`` (x float in
[-1, 1] on the device, y int64) and ``_generate(z, y)`` (noise and labels to images in
[-1, 1]). During training it calls ``self._log(...)`` once per step with its named
losses, and ``self._snapshot(label)`` when a sample grid is due. GAN-only parts (the
adversarial losses, optimisers, batching) live with the GAN plugins.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from typing import Any, Callable

import torch
from torch import nn

from .api import Generator, Param
from .errors import GeneratorDiverged, ParameterError, TrainingError

__all__ = ["COLLAPSE_RATIO", "GRID_SIDE", "ImagesShown", "NeuralGenerator", "WeightAverage",
           "check_milestones", "from_unit", "kimg_images", "kimg_target", "mean_pairwise_distance", "seed_for", "to_unit"]


# parameters every neural generator takes: collapse_check false keeps a generator whose samples are
# nearly identical (by default that is a failure, like a NaN loss)
# snapshots_kimg: budget milestones (thousands of images shown) at which one fit keeps the
# generator it would have been had it stopped there (see NeuralGenerator.at)
COMMON = {"collapse_check": True, "seconds": None, "snapshots_kimg": None}
COMMON_DECLARED = {
    "collapse_check": Param(help="fail the fit when the samples are nearly identical"),
    "seconds": Param("number", "wall-clock cap on the fit, in seconds", low=0, low_open=True),
    "snapshots_kimg": Param("list", "kimg milestones at which to keep the generator, e.g. "
                                    "[5, 10, 20]"),
}
GRID_SIDE = 8          # sample grids are GRID_SIDE x GRID_SIDE images
COLLAPSE_RATIO = 0.05  # sample diversity below this fraction of the real images' = collapse


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float -1..1."""
    return x.float().div(127.5).sub(1.0)


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """float -1..1 -> uint8 0..255 (clamped, rounded)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance between distinct images of a batch (flattened)."""
    flat = x.reshape(len(x), -1).float()
    if len(flat) < 2:
        return 0.0
    d = torch.cdist(flat, flat)
    n = len(flat)
    return float(d.sum() / (n * (n - 1)))


def seed_for(*parts: Any) -> int:
    """A 63-bit seed derived from the parts (stable across runs and platforms)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


class ImagesShown:
    """The budget of a fit in images shown: real images the discriminator (or the
    model) has seen, the unit of the GAN literature (``kimg``: thousands of them), so
    generators of every family compare at equal cost. ``target`` images (None: the
    caller's loop decides, e.g. whole epochs), an optional wall-clock cap in seconds."""

    def __init__(self, target: int | None = None, seconds: float | None = None,
                 planned_in: str | None = None, milestones: list[float] | None = None):
        """``planned_in``: what bounds the fit when ``target`` is None and the caller
        counts the steps itself ("epochs", or "budget" for steps worked out from kimg).
        ``milestones``: kimg values that ``crossed`` reports once each, at the first
        step that reaches them."""
        self.target, self.cap = target, seconds
        self.shown, self.steps = 0, 0
        self._milestones = sorted(float(k) for k in (milestones or []))
        self.stopped_by = "budget" if target is not None else (planned_in or "epochs")
        self._t0 = time.perf_counter()

    def add(self, images: int) -> None:
        """One step that showed ``images`` real images."""
        self.shown += int(images)
        self.steps += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def crossed(self) -> list[float]:
        """The milestones (kimg) reached since the last call."""
        hit = [k for k in self._milestones if self.shown >= kimg_images(k)]
        self._milestones = self._milestones[len(hit):]
        return hit

    def done(self) -> bool:
        if self.target is not None and self.shown >= self.target:
            return True
        if self.cap is not None and self.elapsed() >= self.cap:
            self.stopped_by = "seconds"
            return True
        return False

    def fraction(self) -> float:
        return 0.0 if not self.target else min(1.0, self.shown / self.target)

    def record(self) -> dict:
        return {"kimg": round(self.shown / 1000.0, 3), "steps": self.steps,
                "seconds": round(self.elapsed(), 2), "stopped_by": self.stopped_by}

    def state(self) -> dict:
        """What a continuation needs: the count so far and the seconds it took."""
        return {"shown": self.shown, "steps": self.steps, "seconds": self.elapsed()}

    def restore(self, state: dict) -> None:
        """Go on counting from ``state`` (milestones already passed stay passed)."""
        self.shown, self.steps = int(state["shown"]), int(state["steps"])
        self._t0 = time.perf_counter() - float(state["seconds"])
        self._milestones = [k for k in self._milestones if kimg_images(k) > self.shown]


def kimg_images(kimg: float) -> int:
    """Thousands of images as a whole number of images (at least 1)."""
    return max(1, int(round(float(kimg) * 1000)))


def check_milestones(value: Any, who: str) -> list[float]:
    """A ``snapshots_kimg`` parameter as a sorted list of distinct kimg values."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(not isinstance(k, bool) and isinstance(k, (int, float)) and k > 0
                            for k in items):
        raise ParameterError(f"generator {who!r}: snapshots_kimg = {value!r}; use a list of "
                             "positive numbers of thousands of images shown, e.g. [5, 10, 20]")
    return sorted(set(float(k) for k in items))


def kimg_target(kimg: Any, who: str) -> int | None:
    """A ``kimg`` parameter as a number of images (None when not given)."""
    if kimg is None:
        return None
    if isinstance(kimg, bool) or not isinstance(kimg, (int, float)) or kimg <= 0:
        raise ParameterError(f"generator {who!r}: kimg = {kimg!r}; use a positive number of "
                             "thousands of real images shown")
    return kimg_images(kimg)


class NeuralGenerator(Generator):
    """A generator of networks trained on the images (see the module's docstring)."""

    name = "neural"
    cacheable = True
    # a fit of a larger kimg can continue a finished fit of a smaller one (the same
    # parameters otherwise) and end where a separate fit would: the plugin's _train
    # saves and restores its whole training state (see DCGANFamily)
    resumable = False
    # parameters a continuation may change
    BUDGET_KEYS = ("kimg", "snapshots_kimg")
    min_class_images = 2          # what ``prepare`` needs to train on

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        return {**COMMON, **cls.defaults}

    @classmethod
    def declarations(cls) -> dict[str, Param]:
        return {**COMMON_DECLARED, **cls.declared}

    def __init__(self, **params):
        super().__init__(**params)
        if self.cfg["collapse_check"] not in (True, False):
            raise ParameterError(f"generator {self.name!r}: collapse_check must be true or false")
        cap = self.cfg["seconds"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
            raise ParameterError(f"generator {self.name!r}: seconds = {cap!r}; use a positive number "
                                 "(a wall-clock cap on the fit) or leave it out")
        self.milestones = check_milestones(self.cfg["snapshots_kimg"], self.name)
        # kimg -> {"G": the sampling weights then, "extra": _extra_state(), "record": ...}
        self.snapshots: dict[float, dict] = {}
        self.G: nn.Module | None = None
        self.device = torch.device("cpu")
        # time.perf_counter() after each step this process logged (not saved with the
        # fit): `medbench plan` reads the seconds of a step of each phase from it
        self.step_clock: list[float] = []
        self.seed = 0
        self.shape: tuple[int, int, int] = (1, 28, 28)
        self.num_classes = 1
        self.class_ids: list[int] = []      # classes seen in fit (all for a conditional GAN)
        # a resumable plugin's training state where its fit stopped (nets, optimisers,
        # EMA, counters, the epoch's remaining batches, the RNG), saved with the model
        self.resume: dict | None = None
        self._resume_from: dict | None = None

    # ------------------------------------------------------------------ subclass API
    def _build(self, channels: int, size: int, num_classes: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def _train(self, x: torch.Tensor, y: torch.Tensor,
               progress: Callable[[str, float], None] | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def _generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def latent_size(self) -> int:
        return int(self.cfg["latent"])

    def with_budget(self, images: list[int]) -> "NeuralGenerator":
        """These parameters with ``kimg`` set to ``images`` (one number, or one per
        phase), and neither a wall-clock cap, snapshots nor the collapse check (the
        few steps a calibration times would fail it)."""
        kimg = [i / 1000.0 for i in images] if len(images) > 1 else images[0] / 1000.0
        return type(self)(**{**self.cfg, "kimg": kimg, "seconds": None, "snapshots_kimg": None,
                             "collapse_check": False})

    # ------------------------------------------------------------------ fitting
    def prepare(self, images: torch.Tensor, labels: torch.Tensor, *, classes, device="cpu",
                seed: int = 0) -> "NeuralGenerator":
        """Build the networks for this data without training them (an untrained
        generator, the control in tests)."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TrainingError(f"{self.name}: expected N x C x H x W uint8 images, got "
                                f"{tuple(images.shape)} {images.dtype}")
        if len(images) < 2:
            raise TrainingError(f"{self.name}: needs at least 2 training images, got {len(images)}")
        self.seed = int(seed)
        self.device = torch.device(device)
        self.shape = tuple(int(s) for s in images.shape[1:])
        self.num_classes = len(classes)
        self.class_ids = sorted(set(int(c) for c in labels.tolist()))
        torch.manual_seed(seed_for("build", self.name, self.seed))
        self._build(self.shape[0], self.shape[1], self.num_classes)
        self._fixed_z = torch.randn(GRID_SIDE * GRID_SIDE, self.latent_size(),
                                    generator=torch.Generator().manual_seed(seed_for("grid", self.seed)))
        return self

    def continues(self, state: dict) -> str | None:
        """Why this configuration cannot continue the fit saved in ``state`` (a
        ``state_dict``), or None when it can: a resumable plugin, the same parameters
        but a larger kimg (and snapshot milestones), a fit that ended on its budget,
        and every milestone this fit wants below that budget kept by it."""
        if not self.resumable or not state.get("resume"):
            return f"{self.name} fits cannot be continued"
        old = dict(state["cfg"])
        same = {k: v for k, v in old.items() if k not in self.BUDGET_KEYS}
        if same != {k: v for k, v in self.cfg.items() if k not in self.BUDGET_KEYS}:
            return "other parameters than the budget differ"
        rec = state.get("record", {})
        if rec.get("stopped_by") != "budget" or self.cfg["kimg"] is None or old["kimg"] is None:
            return "only a fit that ended on its kimg budget can be continued"
        if kimg_images(self.cfg["kimg"]) <= kimg_images(old["kimg"]):
            return "the budget is not larger"
        kept = set(state.get("snapshots", {}))
        missing = [k for k in self.milestones
                   if kimg_images(k) <= kimg_images(old["kimg"]) and float(k) not in kept]
        if missing:
            return f"the shorter fit kept no snapshot at {missing} kimg"
        return None

    def fit(self, images, labels, *, classes, device="cpu", seed=0, progress=None,
            resume: dict | None = None):
        """Train on the images. ``resume``: the ``state_dict`` of a finished fit of
        this plugin on the same images and seed with a smaller kimg (``continues``
        says whether it qualifies): training goes on from where it stopped, and ends
        with the generator a separate fit of this budget ends with."""
        self.prepare(images, labels, classes=classes, device=device, seed=seed)
        if resume is not None:
            why = self.continues(resume)
            if why is not None:
                raise TrainingError(f"{self.name}: cannot continue that fit: {why}")
            self.history = list(resume["history"])
            self.grids = list(resume["grids"])
            self.notes = list(resume["notes"])
            self.snapshots = {k: v for k, v in resume.get("snapshots", {}).items()
                              if float(k) in self.milestones}
            self._resume_from = resume["resume"]
        else:
            torch.manual_seed(seed_for("train", self.name, self.seed))
        x = to_unit(images).to(self.device)
        y = labels.to(torch.int64).to(self.device)
        try:
            self._train(x, y, progress)
        finally:
            self._resume_from = None
        if self.cfg["collapse_check"]:
            self._check_collapse(images, labels)
        return self

    def _log(self, **row) -> None:
        """Record one training step; NaN or Inf in any loss stops training."""
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                where = ", ".join(f"{k} {row[k]}" for k in ("stage", "epoch") if k in row)
                raise GeneratorDiverged(f"{self.name} diverged ({where}): {key} is {value}")
        self.history.append(row)
        self.step_clock.append(time.perf_counter())

    def _snapshot(self, label: str) -> None:
        """Keep a grid of samples from fixed noise (each class of a conditional GAN
        gets its own rows)."""
        ids = self.class_ids or [0]
        y = torch.tensor([ids[(i // GRID_SIDE) % len(ids)] for i in range(len(self._fixed_z))])
        self.grids.append((label, self._run_generator(self._fixed_z, y)))

    def _check_milestones(self, total_kimg: float | None) -> None:
        """Refuse, before training, a snapshot milestone beyond the fit's budget (when
        the plugin knows its budget in kimg)."""
        if total_kimg is None:
            return
        late = [k for k in self.milestones if kimg_images(k) > kimg_images(total_kimg)]
        if late:
            raise ParameterError(f"generator {self.name!r}: snapshots_kimg {late} beyond the "
                                 f"budget of {total_kimg:g} kimg; keep milestones within it")

    def _keep(self, kimg: float, budget: "ImagesShown", ema: "WeightAverage | None",
              y: torch.Tensor | None = None) -> None:
        """Keep the generator as a fit that stopped here would leave it: G's weights with
        the averaged parameters in place of the live ones (as ``copy_to`` leaves a
        finished fit), its batch-norm statistics those of these weights
        (``_standing_stats``, when ``y``, the training labels, is given), and the state
        sampling needs."""
        net = self.G
        if (ema is not None and ema.t) or y is not None:
            net = copy.deepcopy(self.G)
            if ema is not None and ema.t:
                ema.copy_to(net)
            if y is not None:
                self._standing_stats(y, net)
        weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        self.snapshots[float(kimg)] = {"G": weights, "extra": self._extra_state(),
                                       "record": budget.record()}

    STANDING_BATCHES = 64           # batches of noise that re-estimate batch-norm statistics

    @torch.no_grad()
    def _standing_stats(self, y: torch.Tensor, net: nn.Module | None = None) -> None:
        """Give G's batch norms the statistics of the weights it samples with.

        Sampling runs G in eval mode, on the running means and variances its batch norms
        gathered in training. Those were measured on the live weights of the last steps;
        a fit that samples from a weight average (``ema``) then normalises the averaged
        net's activations by another net's statistics, which shifts and scales every
        feature map (for a fast-moving G with ema 0.999 the two are hundreds of steps
        apart). Here the averaged net runs in training mode on fresh noise, batches of the
        fit's size and class mix (class-balanced for a ``balanced`` conditional GAN, the
        training labels' mix otherwise), and its batch norms keep the cumulative average
        of what they see. Its own random generator leaves the global one, which a
        continued fit restores, untouched. Nets without batch norm are left as they are."""
        net = self.G if net is None else net
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.track_running_stats]
        if not norms:
            return
        gen = torch.Generator().manual_seed(seed_for("standing", self.name, self.seed))
        labels = y.detach().cpu().to(torch.int64)
        if self.conditional and self.cfg.get("balanced"):
            counts = torch.bincount(labels)
            weights = (1.0 / counts.clamp(min=1).double())[labels]
        else:
            weights = torch.ones(len(labels), dtype=torch.float64)
        bs = max(2, min(int(self.cfg.get("batch_size", 32)), len(labels)))
        momenta = [m.momentum for m in norms]
        was_training = net.training
        for m in norms:
            m.reset_running_stats()
            m.momentum = None              # a cumulative average over the batches below
        net.train()
        try:
            for _ in range(self.STANDING_BATCHES):
                idx = torch.multinomial(weights, bs, replacement=True, generator=gen)
                z = torch.randn(bs, self.latent_size(), generator=gen)
                net_y = labels[idx].to(self.device)
                self._generate_with(net, z.to(self.device), net_y)
        finally:
            for m, mom in zip(norms, momenta):
                m.momentum = mom
            net.train(was_training)

    def _generate_with(self, net: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``_generate`` through ``net`` in place of ``self.G`` (a copy of G's kind)."""
        if net is self.G:
            return self._generate(z, y)
        live, self.G = self.G, net
        try:
            return self._generate(z, y)
        finally:
            self.G = live

    def at(self, kimg: float) -> "NeuralGenerator":
        """The generator as it was at the ``kimg`` milestone of this fit: a new instance
        that samples (deterministically, like any fitted generator) from those weights."""
        key = float(kimg)
        if key not in self.snapshots:
            have = ", ".join(f"{k:g}" for k in sorted(self.snapshots)) or "none"
            raise TrainingError(f"{self.name}: no snapshot at {kimg:g} kimg (kept: {have}); "
                                "set snapshots_kimg to keep it")
        snap = self.snapshots[key]
        state = {**self.state_dict(), "G": snap["G"], "extra": snap["extra"],
                 "record": snap["record"], "snapshots": {}, "resume": None}
        return type(self)(**self.cfg).load_state_dict(state, str(self.device))

    def _check_collapse(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        for c in self.class_ids:
            real = images[labels == c][:64]
            if len(real) < 2:
                continue
            fake = self.sample(c, 64)
            ratio = mean_pairwise_distance(fake) / max(mean_pairwise_distance(real), 1e-8)
            if ratio < COLLAPSE_RATIO:
                raise GeneratorDiverged(f"{self.name} collapsed for class {c}: its samples are "
                                        f"nearly identical (diversity {ratio:.3f} of the real "
                                        "images')")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def _run_generator(self, z: torch.Tensor, y: torch.Tensor, batch: int = 256) -> torch.Tensor:
        was_training = self.G.training
        self.G.eval()
        out = []
        try:
            for i in range(0, len(z), batch):
                img = self._generate(z[i:i + batch].to(self.device), y[i:i + batch].to(self.device))
                out.append(from_unit(img.float()).cpu())
        finally:
            self.G.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, *self.shape), dtype=torch.uint8)

    def sample(self, class_index: int, n: int) -> torch.Tensor:
        """n uint8 images of the class. The same (seed, class, n) gives the same images,
        whatever was sampled before, so a resumed run sees the synthetic set an
        uninterrupted one saw."""
        if self.G is None:
            raise TrainingError(f"{self.name}: sample() before fit()")
        if self.conditional and class_index not in self.class_ids:
            raise TrainingError(f"{self.name}: class {class_index} had no training images")
        gen = torch.Generator().manual_seed(seed_for("sample", self.seed, class_index, n))
        z = torch.randn(n, self.latent_size(), generator=gen)
        y = torch.full((n,), class_index, dtype=torch.int64)
        return self._run_generator(z, y)

    # ------------------------------------------------------------------ cache state
    def state_dict(self) -> dict:
        return {"cfg": self.cfg, "shape": self.shape, "num_classes": self.num_classes,
                "class_ids": self.class_ids, "seed": self.seed, "history": self.history,
                "grids": self.grids, "notes": self.notes, "record": self.record,
                "extra": self._extra_state(), "snapshots": self.snapshots,
                "resume": self.resume,
                "G": {k: v.detach().cpu() for k, v in self.G.state_dict().items()}}

    def load_state_dict(self, state: dict, device: str = "cpu") -> "NeuralGenerator":
        self.seed = state["seed"]
        self.shape = tuple(state["shape"])
        self.num_classes = state["num_classes"]
        self.class_ids = list(state["class_ids"])
        self.history = list(state["history"])
        self.grids = list(state["grids"])
        self.notes = list(state["notes"])
        self.record = dict(state.get("record", {}))
        self.snapshots = dict(state.get("snapshots", {}))
        self.resume = state.get("resume")
        self.device = torch.device(device)
        self._build(self.shape[0], self.shape[1], self.num_classes)
        self._load_extra_state(state["extra"])
        self.G.load_state_dict(state["G"])
        self.G.to(self.device)
        return self

    def _extra_state(self) -> dict:
        """Anything besides G's weights that sampling needs (ProGAN: the stage)."""
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass


class WeightAverage:
    """Exponential moving average of a network's parameters (buffers such as batch-norm
    statistics are copied as they are). The decay warms up as min(decay, (1 + t) /
    (10 + t)), so a short training is not dominated by its random start."""

    def __init__(self, net: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ParameterError(f"ema = {decay}: use a decay in [0, 1), e.g. 0.999, or 0 for none")
        self.decay = decay
        self.t = 0
        self.params = {k: v.detach().clone() for k, v in net.named_parameters()}

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        self.t += 1
        for k, v in net.named_parameters():
            self.params[k].mul_(d).add_(v.detach(), alpha=1 - d)

    def state(self) -> dict:
        return {"t": self.t, "params": {k: v.detach().cpu().clone() for k, v in self.params.items()}}

    def load_state(self, state: dict, device) -> None:
        self.t = int(state["t"])
        self.params = {k: v.to(device).clone() for k, v in state["params"].items()}

    @torch.no_grad()
    def copy_to(self, net: nn.Module) -> None:
        for k, v in net.named_parameters():
            v.copy_(self.params[k])
