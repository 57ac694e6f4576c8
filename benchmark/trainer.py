"""The one trainer every classifier goes through.

Data stays a uint8 tensor on the device; each batch is converted to float, normalised
and augmented there, in batched tensor ops (no per-image Python). One selection rule
(``training.selection``, see ``Selection``) picks the checkpoint restored at the end,
drives early stopping and the plateau schedule, the same for every arm of a suite;
LR schedules, freeze-then-fine-tune stages and class-weighted training loss are
settings.

The GPU path (CUDA only; on a CPU or MPS device these settings change nothing, so CPU
results do not depend on them): mixed precision (``amp``: bf16, or fp16 with a gradient
scaler), channels_last memory format, cuDNN autotuning and TF32 matmuls. ``compile``
(torch.compile) applies on any device and falls back to eager mode with a warning.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import TrainingError
from .suite import AugmentConfig, StageConfig, TrainingConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FALLBACKS = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9,
             "batch_size": 64}


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Settings:
    """Training settings after the classifier's defaults and the suite are merged."""

    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    batch_size: int
    cfg: TrainingConfig

    @classmethod
    def resolve(cls, cfg: TrainingConfig, classifier_defaults: dict[str, Any]) -> "Settings":
        def get(key):
            value = getattr(cfg, key)
            if value is None:
                value = classifier_defaults.get(key, FALLBACKS[key])
            return value
        return cls(get("optimizer"), float(get("lr")), float(get("weight_decay")),
                   float(get("momentum")), int(get("batch_size")), cfg)


LOSS_SELECTIONS = ("balanced_loss", "loss")


def balanced_mean(losses: torch.Tensor, y: torch.Tensor) -> float:
    """The mean over the classes present in ``y`` of each class's mean of ``losses``:
    class-balanced cross-entropy when ``losses`` are per-image cross-entropies. Every
    class weighs the same whatever its size, so a model that gives up a small class
    scores as badly as the class is bad, not as the class is rare."""
    if len(y) == 0:
        return float("nan")
    counts = torch.bincount(y)
    sums = torch.bincount(y, weights=losses.double(), minlength=len(counts))
    present = counts > 0
    return float((sums[present] / counts[present]).mean())


@dataclass(frozen=True)
class Selection:
    """The one rule that picks the checkpoint and stops early, the same for every arm.

    ``balanced_loss`` (the default): class-balanced validation cross-entropy (see
    ``balanced_mean``). ``loss``: plain validation cross-entropy, which on an imbalanced
    validation split rewards the majority class, and so works against every arm that
    re-balances. A metric name (``macro_f1``, ``balanced_accuracy``, ``roc_auc``, ...):
    ``score(y_val, probs_val)`` computes it (predictions are the argmax, before any
    threshold tuning: the threshold is tuned on the checkpoint this rule chose), and
    ``maximize`` says which way is better. The validation loss is never weighted by the
    training class weights of an arm: every arm is selected by the same measure."""

    name: str = "balanced_loss"
    score: Callable[[np.ndarray, np.ndarray], float] | None = None
    maximize: bool = False

    def __post_init__(self):
        if self.name not in LOSS_SELECTIONS and self.score is None:
            raise TrainingError(f"training.selection {self.name!r} is a metric; the trainer "
                                "needs its score function (Selection(name, score, maximize))")

    def value(self, y: torch.Tensor, probs: np.ndarray, losses: torch.Tensor) -> float:
        """The rule's value on the validation split (``losses``: per-image cross-entropy)."""
        if self.name == "loss":
            return float(losses.double().mean()) if len(losses) else float("nan")
        if self.name == "balanced_loss":
            return balanced_mean(losses, y)
        return float(self.score(y.numpy(), probs))

    def better(self, value: float, best: float, min_delta: float = 0.0) -> bool:
        """Whether ``value`` improves on ``best`` by more than ``min_delta``."""
        if not math.isfinite(best):
            return math.isfinite(value)
        return value > best + min_delta if self.maximize else value < best - min_delta


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    # plain (unweighted) validation cross-entropy of the chosen checkpoint, for every arm
    best_val_loss: float = math.inf
    selection: str = "balanced_loss"      # the rule that chose it (``Selection.name``)
    best_score: float = math.nan          # the rule's value at the chosen checkpoint
    epochs_run: int = 0
    seconds: float = 0.0
    images_seen: int = 0
    # what the run used, for provenance and throughput reports
    amp: str = "off"                      # "bf16", "fp16" or "off"
    channels_last: bool = False
    compiled: bool = False
    peak_memory_bytes: int | None = None  # torch.cuda.max_memory_allocated over fit (CUDA only)
    images_per_second: float = 0.0        # images_seen / seconds (the whole fit, validation included)


class Normalizer:
    """uint8 batch -> float batch, normalised per channel. ``mode`` is imagenet, half,
    none, or a classifier's own ``(mean, std)`` pair of per-channel sequences."""

    def __init__(self, mode, channels: int, device: torch.device):
        if isinstance(mode, (tuple, list)):
            mean, std = (tuple(float(v) for v in seq) for seq in mode)
            if len(mean) != channels or len(std) != channels:
                raise TrainingError(f"the classifier's normalization has {len(mean)} mean(s) "
                                    f"and {len(std)} std(s) for {channels} channel(s)")
        elif mode == "imagenet":
            mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
            std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
        elif mode == "half":
            mean, std = (0.5,) * channels, (0.5,) * channels
        else:
            mean, std = (0.0,) * channels, (1.0,) * channels
        self.scale = (1.0 / (255.0 * torch.tensor(std))).view(1, -1, 1, 1).to(device)
        self.shift = (torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.scale).sub_(self.shift)


def augment_batch(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random flips, affine (rotation, translation, zoom) and intensity jitter, batched.

    ``x`` is a normalised float batch on its device; random numbers come from ``gen``
    (on the CPU, so a seed gives the same augmentation on any device).
    """
    n = x.shape[0]
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=gen).to(dev)

    if aug.hflip:
        x = torch.where((rand(n) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
    if aug.vflip:
        x = torch.where((rand(n) < 0.5).view(-1, 1, 1, 1), x.flip(-2), x)
    if aug.rotate or aug.translate or aug.scale:
        angle = (rand(n) * 2 - 1) * math.radians(aug.rotate)
        zoom = 1 + (rand(n) * 2 - 1) * aug.scale
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        tx, ty = (rand(n) * 2 - 1) * 2 * aug.translate, (rand(n) * 2 - 1) * 2 * aug.translate
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug.brightness or aug.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        c = 1 + (rand(n, 1, 1, 1) * 2 - 1) * aug.contrast
        b = (rand(n, 1, 1, 1) * 2 - 1) * aug.brightness * 2  # normalised units (std ~0.5)
        x = (x - mean) * c + mean + b
    return x


def _make_optimizer(params, s: Settings, lr: float) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay,
                           nesterov=s.momentum > 0)


def _make_schedule(opt, cfg: TrainingConfig, epochs: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if cfg.schedule == "step":
        marks = sorted({max(1, int(round(m * epochs))) for m in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=cfg.gamma)
    if cfg.schedule == "plateau":
        patience = max(1, (cfg.early_stopping.patience // 2) if cfg.early_stopping else 3)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.gamma, patience=patience)
    return None


def amp_dtype(setting: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``training.amp`` on ``device``; None means full fp32.

    Mixed precision is CUDA only: on CPU (and MPS) every setting means fp32, so a
    suite gives the same numbers there whatever it says about AMP."""
    if device.type != "cuda" or setting is False:
        return None
    if setting == "fp16":
        return torch.float16
    # natively only (Ampere and later): emulated bf16 is slower than fp16
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if setting == "bf16" and not native_bf16:
        warnings.warn("training.amp: bf16 is not supported natively on this GPU; using fp16",
                      stacklevel=3)
    return torch.bfloat16 if native_bf16 else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is not None:
        return torch.autocast(device.type, dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _is_compile_error(exc: BaseException) -> bool:
    """Whether an exception comes from torch.compile's machinery (dynamo tracing or the
    inductor backend, e.g. no C++ compiler or Triton) rather than from the model."""
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def batches(n: int, batch_size: int, gen: torch.Generator | None):
    """Index batches over n items; shuffled with gen; never a last batch of one
    (BatchNorm cannot train on it), which is folded into the previous batch."""
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds.pop(-2)
    for a, b in zip(bounds[:-1], bounds[1:]):
        yield order[a:b]


class Trainer:
    def __init__(self, settings: Settings, device: torch.device, normalize: str, channels: int):
        self.s = settings
        self.device = device
        self.norm = Normalizer(normalize, channels, device)
        self.amp_dtype = amp_dtype(settings.cfg.amp, device)
        self.channels_last = settings.cfg.channels_last and device.type == "cuda"
        # (original module, its torch.compile wrapper) of the last fit; evaluate() runs a
        # model passed to it through the wrapper, which shares its parameters
        self._compiled: tuple[nn.Module, nn.Module] | None = None
        if device.type == "cuda":
            # global switches, set per trainer so every cell runs under its own settings
            torch.backends.cudnn.benchmark = settings.cfg.cudnn_benchmark
            torch.set_float32_matmul_precision("high")   # TF32 matmuls for fp32 work

    def _prep(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = self.norm(x_uint8.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _compile(self, model: nn.Module) -> None:
        self._compiled = None
        if not self.s.cfg.compile:
            return
        try:
            self._compiled = (model, torch.compile(model))
        except Exception as exc:  # any failure here means: train uncompiled
            self._compile_failed(exc)

    def _compile_failed(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"training.compile: torch.compile failed ({type(exc).__name__}: {first}); "
                      "training without it", stacklevel=3)
        self._compiled = None

    def _forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """model(x), through its compiled wrapper when fit compiled it. torch.compile
        compiles lazily (on the first call and on recompiles after a mode or shape change),
        so a compiler failure surfaces here: warn once and continue in eager mode."""
        if self._compiled is not None and self._compiled[0] is model:
            try:
                return self._compiled[1](x)
            except Exception as exc:
                if not _is_compile_error(exc):
                    raise
                self._compile_failed(exc)
        return model(x)

    @torch.no_grad()
    def _predict(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
                 ) -> tuple[np.ndarray, torch.Tensor | None]:
        """Softmax probabilities (N x K) and, with labels, each image's cross-entropy
        (computed from the logits, so a confident mistake is not lost to rounding)."""
        model.eval()
        probs, losses = [], []
        for idx in batches(len(x), self.s.cfg.eval_batch_size, None):
            with _autocast(self.device, self.amp_dtype):
                logits = self._forward(model, self._prep(x[idx])).float()
            if y is not None:
                losses.append(F.cross_entropy(logits, y[idx].to(self.device),
                                              reduction="none").cpu())
            probs.append(torch.softmax(logits, 1).cpu())
        p = torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32)
        if y is None:
            return p, None
        return p, torch.cat(losses) if losses else torch.zeros(0)

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                 weight: torch.Tensor | None = None) -> tuple[np.ndarray, float]:
        """Softmax probabilities (N x K) and mean cross-entropy (nan without labels),
        weighted by ``weight[class]`` as ``F.cross_entropy`` weighs when given."""
        p, losses = self._predict(model, x, y)
        if losses is None:
            return p, float("nan")
        if weight is None:
            return p, float(losses.double().mean()) if len(losses) else float("nan")
        w = weight.cpu().double()[y.cpu()]
        return p, float((losses.double() * w).sum() / w.sum())

    def fit(self, model: nn.Module, head: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
            x_val: torch.Tensor, y_val: torch.Tensor, *, seed: int,
            class_weights: torch.Tensor | None = None, selection: Selection | None = None,
            progress: Callable[[dict], None] | None = None) -> TrainResult:
        """Train ``model`` and restore the checkpoint ``selection`` (default: the suite's
        ``training.selection``, which must then be a loss) finds best on the validation
        split. ``class_weights`` weigh the training loss only."""
        cfg = self.s.cfg
        rule = selection if selection is not None else Selection(cfg.selection)
        dev = self.device
        y_val_cpu = y_val.cpu()
        model.to(dev)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self._compile(model)
        # fp16 needs loss scaling against gradient underflow; bf16 has fp32's range
        scaler = torch.amp.GradScaler(dev.type) if self.amp_dtype == torch.float16 else None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        gen = torch.Generator().manual_seed(seed)
        x_train = x_train.to(dev)
        y_train = y_train.to(dev)
        weight = class_weights.to(dev) if class_weights is not None else None
        augmenting = any(bool(v) for v in cfg.augment.model_dump().values())
        stages = cfg.stages or [StageConfig(epochs=cfg.epochs)]
        head_params = {id(p) for p in head.parameters()}
        res = TrainResult(selection=rule.name)
        best_state = None
        watched_best = math.nan           # the best score since the warm-up
        es = cfg.early_stopping
        warm_up = es.start_from_epoch if es is not None else 0
        start = time.perf_counter()
        total_epochs = sum(st.epochs for st in stages)
        epoch_no = 0
        for si, stage in enumerate(stages):
            for p in model.parameters():
                p.requires_grad_(not stage.freeze_backbone or id(p) in head_params)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = _make_optimizer(params, self.s, stage.lr or self.s.lr)
            sched = _make_schedule(opt, cfg, stage.epochs)
            since_best = 0
            stage_best = math.nan
            # a frozen backbone's batch norms keep their (pretrained) running statistics,
            # as Keras' `trainable = False` does: they run in eval mode in this stage
            frozen_norms = [m for m in model.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm)
                            and not any(id(p) in head_params for p in m.parameters())
                            ] if stage.freeze_backbone else []
            for _ in range(stage.epochs):
                model.train()
                for m in frozen_norms:
                    m.eval()
                running, seen = 0.0, 0
                for idx in batches(len(x_train), self.s.batch_size, gen):
                    idx = idx.to(dev)
                    xb = self._prep(x_train[idx])
                    if augmenting:
                        xb = augment_batch(xb, cfg.augment, gen)
                    with _autocast(dev, self.amp_dtype):
                        logits = self._forward(model, xb)
                    loss = F.cross_entropy(logits.float(), y_train[idx], weight=weight)
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        # scaled backward; step() unscales and skips the update when the
                        # gradients overflowed, and update() adapts the scale
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                    # the one host sync per step; ``loss`` is the unscaled loss, so a step
                    # the scaler skipped for inf gradients is not mistaken for divergence
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise TrainingError(
                            f"training loss became {loss_value} at epoch {epoch_no + 1} "
                            f"(lr {opt.param_groups[0]['lr']:.2g}); lower training.lr")
                    running += loss_value * len(idx)
                    seen += len(idx)
                res.images_seen += seen
                p_val, val_losses = self._predict(model, x_val, y_val)
                val_loss = float(val_losses.double().mean()) if len(val_losses) else math.nan
                if not math.isfinite(val_loss):
                    raise TrainingError(f"validation loss became {val_loss} at epoch {epoch_no + 1}")
                score = rule.value(y_val_cpu, p_val, val_losses)
                if sched is not None:
                    # the plateau schedule watches the selection rule too (it minimises)
                    watched = -score if rule.maximize else score
                    sched.step(watched) if cfg.schedule == "plateau" else sched.step()
                epoch_no += 1
                row = {"epoch": epoch_no, "stage": si, "train_loss": running / max(seen, 1),
                       "val_loss": val_loss, "val_score": score, "lr": opt.param_groups[0]["lr"]}
                res.history.append(row)
                # a NaN score (AUC on a validation split missing a class) never wins, but
                # the first epoch is kept so that some checkpoint is always restored. In
                # the warm-up epochs (early_stopping.start_from_epoch) the latest epoch is
                # kept and no patience is spent; the rule watches from the epoch after.
                warming = epoch_no <= warm_up
                if warming or best_state is None or rule.better(score, watched_best):
                    res.best_score, res.best_epoch = score, epoch_no
                    res.best_val_loss = val_loss
                    best_state = copy.deepcopy(model.state_dict())
                    if not warming:
                        watched_best = score
                if not warming:
                    if rule.better(score, stage_best, es.min_delta if es else 0.0):
                        stage_best, since_best = score, 0
                    else:
                        since_best += 1
                if progress is not None:
                    progress({**row, "total_epochs": total_epochs})
                if es is not None and since_best >= es.patience:
                    break
        for p in model.parameters():
            p.requires_grad_(True)
        if best_state is not None:
            model.load_state_dict(best_state)
        res.epochs_run = epoch_no
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)   # the checkpoint copy is asynchronous: time it too
        res.seconds = time.perf_counter() - start
        res.images_per_second = res.images_seen / res.seconds if res.seconds > 0 else 0.0
        res.amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "off")
        res.channels_last = self.channels_last
        res.compiled = self._compiled is not None
        if dev.type == "cuda":
            res.peak_memory_bytes = int(torch.cuda.max_memory_allocated(dev))
        return res


def class_weight_vector(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (k * n_c), as scikit-learn's 'balanced'."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_(min=1)
    return counts.sum() / (num_classes * counts)
