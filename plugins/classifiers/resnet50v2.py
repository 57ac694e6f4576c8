"""ResNet50V2: the pre-activation ResNet-50 (He et al. 2016, "Identity Mappings in Deep
Residual Networks"), laid out like Keras' ``ResNet50V2``, as seed paper 000 uses it.

Layout (Keras ``resnet_v2``):

* stem: 7x7 stride-2 conv with bias (no BN: the blocks pre-activate), zero padding 1
  and 3x3 stride-2 max-pool;
* four stacks of bottleneck blocks, [3, 4, 6, 3] blocks of widths 64/128/256/512
  (output 4x width). Each block: BN-ReLU pre-activation, then 1x1 conv - BN - ReLU -
  3x3 conv (stride) - BN - ReLU - 1x1 conv (with bias). The first block of a stack has
  a 1x1 conv shortcut (with bias) on the pre-activation; the others use the identity,
  or a stride-2 1x1 max-pool in the block that downsamples. As in Keras, the stride 2
  sits in the *last* block of stacks 1-3; stack 4 keeps the resolution;
* a final BN-ReLU, then the head: global average pool, Dropout(p=dropout),
  Linear(2048, num_classes) (seed paper 000: GlobalAvgPool -> Dropout(0.17) -> Dense(4)).

BatchNorm uses Keras' epsilon 1.001e-5. The backbone has 23,519,360 trainable
parameters at 3 input channels (Keras reports 23,564,800 without top, which also counts
the 45,440 BN moving means/variances that are buffers here).

Small inputs (image_size < 64): the stem is a 3x3 stride-1 conv without max-pool (the
MedMNIST / CIFAR adaptation used for the torchvision ResNets), so 28 px ends at 4x4.

Pretrained (``pretrained: true``): Keras' own ImageNet weights,
``resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5``, read with h5py and converted
layer by layer (kernels HWIO -> OIHW; BN gamma, beta, moving mean and variance). The
file is taken from ``params: {weights: PATH}`` (any Keras ResNet50V2 saved in the legacy
h5 layout, e.g. ``model.save("x.h5")``; checked by its tensor shapes only), else from
the Keras cache (``$KERAS_HOME/models``, default ``~/.keras/models``), else downloaded
there. The cached or downloaded file must have the MD5 that Keras publishes for it
(``keras.applications.resnet``'s ``WEIGHTS_HASHES``; Keras publishes no SHA-256 or size)
and every converted tensor must have exactly the shape of its medbench counterpart.
Without the file, and no way to fetch it, a one-line ``PluginError`` names the URL and
the path to put it at. The head is always new.

Input: Keras scales ResNet50V2's input to [-1, 1] (``x / 127.5 - 1``), which is what
``normalization()`` asks of the engine. Grey input gets the stem kernel summed over
the RGB channels (a grey image then gives what R = G = B gives, as for the torchvision
models); below 64 px the 3x3 stem is new (Keras has a 7x7 one) and the rest pretrained.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medbench.api import Classifier, Param
from medbench.errors import ParameterError, PluginError
from medbench.files import fetch
from medbench.hookspecs import hookimpl

from .torchvision_models import DOWNLOAD_TIMEOUT, SMALL_INPUT, _one_line, check_build_args

BN_EPS = 1.001e-5
STAGES = ((64, 3, 2), (128, 4, 2), (256, 6, 2), (512, 3, 1))   # width, blocks, stride

KERAS_FILE = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + KERAS_FILE
# keras.applications.resnet WEIGHTS_HASHES["resnet50v2"][1]: the no-top file's MD5
KERAS_MD5 = "fac2f116257151a9d068a22e544a4917"


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class PreActBottleneck(nn.Module):
    """Keras ``block2``: pre-activated bottleneck, output ``4 * width`` channels."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1,
                 conv_shortcut: bool = False):
        super().__init__()
        out = width * self.expansion
        self.preact = nn.Sequential(_bn(in_channels), nn.ReLU(inplace=True))
        self.conv_shortcut = conv_shortcut
        if conv_shortcut:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out, 1, stride=stride, bias=True)
        elif stride > 1:
            self.shortcut = nn.MaxPool2d(1, stride=stride)
        else:
            self.shortcut = nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), _bn(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), _bn(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out, 1, bias=True),
        )

    def forward(self, x):
        pre = self.preact(x)
        shortcut = self.shortcut(pre if self.conv_shortcut else x)
        return shortcut + self.body(pre)


def _stack(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """Keras ``stack2``: conv-shortcut block, plain blocks, downsampling block last."""
    out = width * PreActBottleneck.expansion
    layers = [PreActBottleneck(in_channels, width, conv_shortcut=True)]
    layers += [PreActBottleneck(out, width) for _ in range(blocks - 2)]
    layers.append(PreActBottleneck(out, width, stride=stride))
    return nn.Sequential(*layers)


class ResNet50V2Net(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, small_input: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if small_input:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1,
                                                bias=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=True),
                nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2))
        stages, channels = [], 64
        for width, blocks, stride in STAGES:
            stages.append(_stack(channels, width, blocks, stride))
            channels = width * PreActBottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.post = nn.Sequential(_bn(channels), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(p=dropout), nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.post(self.stages(self.stem(x))))


# ------------------------------------------------------------------ Keras weights
def keras_cache_path() -> Path:
    """Where Keras keeps (and medbench looks for, and downloads) the weights file."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / KERAS_FILE


def keras_layers() -> list[tuple[str, str, str]]:
    """(Keras layer name, conv | bn, medbench module path) of every layer with weights."""
    rows = [("conv1_conv", "conv", "stem.0")]
    for s, (_, blocks, _) in enumerate(STAGES):
        for b in range(blocks):
            k, t = f"conv{s + 2}_block{b + 1}", f"stages.{s}.{b}"
            rows.append((f"{k}_preact_bn", "bn", f"{t}.preact.0"))
            if b == 0:
                rows.append((f"{k}_0_conv", "conv", f"{t}.shortcut"))
            rows += [(f"{k}_1_conv", "conv", f"{t}.body.0"), (f"{k}_1_bn", "bn", f"{t}.body.1"),
                     (f"{k}_2_conv", "conv", f"{t}.body.3"), (f"{k}_2_bn", "bn", f"{t}.body.4"),
                     (f"{k}_3_conv", "conv", f"{t}.body.6")]
    rows.append(("post_bn", "bn", "post.0"))
    return rows


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _checked_md5(path: str, mtime_ns: int, size: int) -> str:
    return _md5(Path(path))        # once per file version and process, not per cell


def read_keras_h5(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight name (kernel, bias, gamma, ...): array}} of a Keras model
    saved in the legacy h5 layout (the published weight files, ``model.save("x.h5")``
    and Keras 2's ``save_weights``): a ``layer_names`` attribute, each layer a group with
    ``weight_names``. Raises PluginError naming the file when it is not one."""
    try:
        import h5py
    except ImportError:
        raise PluginError("classifier 'resnet50v2': reading Keras weights needs h5py; "
                          "pip install h5py") from None
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                hint = (" (a Keras 3 .weights.h5 file: save the model with model.save('x.h5') "
                        "instead)" if "layers" in root and "vars" in root else "")
                raise PluginError(f"classifier 'resnet50v2': {path} is not a Keras weights "
                                  f"file in the h5 layout{hint}")
            for raw in root.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[name]
                weights = {}
                for wraw in group.attrs.get("weight_names", []):
                    wname = wraw.decode() if isinstance(wraw, bytes) else str(wraw)
                    # Keras 2: "conv1_conv/kernel:0"; Keras 3: "conv1_conv/kernel"
                    short = wname.rsplit("/", 1)[-1].split(":", 1)[0]
                    weights[short] = np.asarray(group[wname], dtype=np.float32)
                if weights:
                    out[name] = weights
    except PluginError:
        raise
    except Exception as exc:          # truncated download, not HDF5, missing dataset...
        raise PluginError(f"classifier 'resnet50v2': cannot read Keras weights from {path} "
                          f"({type(exc).__name__}: {_one_line(exc)[:200]})") from None
    return out


@functools.lru_cache(maxsize=2)
def _converted(path: str, mtime_ns: int, size: int) -> dict[str, torch.Tensor]:
    """The backbone's state dict (3 input channels, 7x7 stem) from a Keras h5 file;
    cached per file version, as every cell of a suite loads the same file."""
    layers = read_keras_h5(Path(path))
    expected = {name for name, _, _ in keras_layers()}
    unknown = sorted(set(layers) - expected - {"predictions"})   # the top file's Dense
    missing = [name for name in sorted(expected) if name not in layers]
    if unknown or missing:
        what = (f"has no layer {missing[0]!r}" if missing else f"has a layer {unknown[0]!r}")
        raise PluginError(f"classifier 'resnet50v2': {path} {what} ({len(missing)} missing, "
                          f"{len(unknown)} unknown): it is not Keras' ResNet50V2")
    state: dict[str, torch.Tensor] = {}
    for name, kind, module in keras_layers():
        w = layers[name]
        if kind == "conv":
            names = {"kernel": "weight", "bias": "bias"}
        else:
            names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                     "moving_variance": "running_var"}
        for keras_name, torch_name in names.items():
            if keras_name not in w:
                continue            # the check against the model's shapes reports it
            value = torch.from_numpy(w[keras_name].copy())
            if keras_name == "kernel":
                if value.ndim != 4:
                    raise PluginError(f"classifier 'resnet50v2': {path}: {name}/kernel has "
                                      f"shape {tuple(value.shape)}, not a 2-D conv kernel")
                value = value.permute(3, 2, 0, 1).contiguous()    # HWIO -> OIHW
            state[f"{module}.{torch_name}"] = value
    return state


def load_keras_weights(model: "ResNet50V2Net", path: Path, *, in_channels: int,
                       small_input: bool) -> None:
    """Copy Keras' ResNet50V2 weights from ``path`` into ``model`` (built with
    ``in_channels`` and ``small_input``): every backbone tensor, shapes checked exactly;
    the stem summed over RGB for other channel counts, kept fresh for small inputs."""
    path = Path(path)
    st = path.stat()
    state = dict(_converted(str(path.resolve()), st.st_mtime_ns, st.st_size))
    stem = state.pop("stem.0.weight")
    stem_bias = state.pop("stem.0.bias", None)
    if not small_input:
        if stem.shape[1] != 3:
            raise PluginError(f"classifier 'resnet50v2': {path}: conv1_conv/kernel takes "
                              f"{stem.shape[1]} channels, not Keras' RGB")
        if in_channels != 3:       # each new channel gets the RGB sum / in_channels
            stem = (stem.sum(dim=1, keepdim=True) / in_channels).expand(-1, in_channels, -1, -1)
        state["stem.0.weight"] = stem
        if stem_bias is not None:
            state["stem.0.bias"] = stem_bias
    target = model.state_dict()
    for key, value in state.items():
        if key not in target or target[key].shape != value.shape:
            want = tuple(target[key].shape) if key in target else "no such tensor"
            raise PluginError(f"classifier 'resnet50v2': {path}: {key} has shape "
                              f"{tuple(value.shape)}, medbench's ResNet50V2 needs {want}")
    # what the file must provide: every backbone tensor but the stem of a small input
    needed = [k for k in target if not k.startswith("head.")
              and not k.endswith("num_batches_tracked")
              and not (small_input and k.startswith("stem."))]
    lacking = [k for k in needed if k not in state]
    if lacking:
        raise PluginError(f"classifier 'resnet50v2': {path} lacks {len(lacking)} tensor(s) "
                          f"of the backbone, the first {lacking[0]}")
    with torch.no_grad():
        for key, value in state.items():
            target[key].copy_(value)


def _verify_published(path: Path) -> None:
    st = path.stat()
    digest = _checked_md5(str(path.resolve()), st.st_mtime_ns, st.st_size)
    if digest != KERAS_MD5:
        raise PluginError(f"classifier 'resnet50v2': {path} is not Keras' published weights "
                          f"file (md5 {digest}, expected {KERAS_MD5}); delete it and download "
                          f"{KERAS_URL} again")


def _download(url: str, dst: Path, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    def check(digest: str) -> None:
        if digest != KERAS_MD5:
            raise OSError(f"checksum mismatch (md5 {digest}, expected {KERAS_MD5})")
    fetch(url, dst, algo="md5", timeout=timeout, check=check)


def find_keras_weights(weights: str | os.PathLike | None = None, *,
                       download: bool = True) -> Path | None:
    """The weights file to load: ``weights`` if given (it must exist), else the Keras
    cache's verified copy, else (``download``) a fresh download into the cache; None
    when not cached and ``download`` is False. PluginError (one line: the URL and the
    path to put it at) when it cannot be had."""
    if weights is not None:
        path = Path(os.path.expanduser(str(weights)))
        if not path.is_file():
            raise ParameterError(f"classifier 'resnet50v2': weights file {path} does not "
                                 f"exist (Keras' file: {KERAS_URL})")
        return path
    path = keras_cache_path()
    if path.is_file():
        _verify_published(path)
        return path
    if not download:
        return None
    try:
        _download(KERAS_URL, path)
    except Exception as exc:  # offline, proxy, disk full, bad checksum: say what to do
        reason = _one_line(exc) or type(exc).__name__
        raise PluginError(f"classifier 'resnet50v2': Keras' ImageNet weights are not cached "
                          f"and the download failed ({type(exc).__name__}: {reason}); download "
                          f"{KERAS_URL} and save it as {path} (or give params: {{weights: "
                          f"PATH}})") from None
    return path


class ResNet50V2(Classifier):
    name = "resnet50v2"
    description = ("pre-activation ResNet-50 (Keras ResNet50V2 layout and ImageNet weights; head "
                   "GAP-Dropout-Dense; 3x3 stride-1 stem below 64 px)")
    default_training = {"optimizer": "adam", "lr": 1e-3}
    supports_pretrained = True
    defaults = {"weights": None}
    declared = {"weights": Param("str", "a Keras ResNet50V2 h5 file to load (pretrained: true) "
                                        "instead of the Keras cache's")}

    def _params(self, pretrained, params):
        cfg = check_build_args(self.name, 1, 1, 1, 0.0, params, self.defaults)
        if cfg["weights"] is not None and not pretrained:
            raise ParameterError(f"classifier {self.name!r}: weights is given but pretrained is "
                                 "false; set pretrained: true to load them")
        return cfg

    def prepare(self, *, pretrained=False, download=True, **params):
        cfg = self._params(pretrained, params)
        if pretrained:
            find_keras_weights(cfg["weights"], download=download)

    def normalization(self, in_channels, *, pretrained=False, **params):
        # Keras' resnet_v2.preprocess_input: x / 127.5 - 1, i.e. mean 0.5, std 0.5
        return (0.5,) * in_channels, (0.5,) * in_channels

    def build(self, num_classes, in_channels, image_size, *, pretrained=False, dropout=0.0,
              **params):
        check_build_args(self.name, num_classes, in_channels, image_size, dropout, params,
                         self.defaults)
        cfg = self._params(pretrained, params)
        num_classes, in_channels, image_size = int(num_classes), int(in_channels), int(image_size)
        small = image_size < SMALL_INPUT
        model = ResNet50V2Net(num_classes, in_channels, small_input=small, dropout=float(dropout))
        if pretrained:
            path = find_keras_weights(cfg["weights"])
            load_keras_weights(model, path, in_channels=in_channels, small_input=small)
        return model


@hookimpl
def register_classifiers(register):
    register(ResNet50V2.name, ResNet50V2)
