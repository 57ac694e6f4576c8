"""torchvision classifiers: resnet18, resnet50, vgg16, alexnet, densenet121, mobilenet_v2.

Each is torchvision's model (``weights=None`` unless ``pretrained``), adapted so that it
takes 1 or 3 input channels and images from 28 to 224 px:

* Input channels. With 3 channels the first conv is torchvision's. With 1 channel it is
  replaced by a 1-channel conv; when pretrained, its kernel is the sum of the pretrained
  RGB kernels over the channel axis (a grey image fed as R = G = B gives the same
  response), see :func:`adapt_first_conv`.
* Small inputs (``image_size < 64``, ``SMALL_INPUT``):

  - resnet18 / resnet50: the MedMNIST v2 / CIFAR stem, a 3x3 stride-1 padding-1 first
    conv and no max-pool (total stride 8 instead of 32: 28 px ends at 4x4). The new
    stem conv is freshly initialised even when pretrained (its shape differs).
  - densenet121: likewise, a 3x3 stride-1 first conv and no ``pool0`` (28 px ends at
    3x3; torchvision's stem would shrink 28 px to 0 px in the last transition).
  - alexnet: the 11x11 first conv keeps its kernel (and its pretrained weights) but
    runs at stride 1 with padding 5, so 28 px gives 28 -> 13 -> 6 -> 2 through the
    three max-pools (at stride 4 the second pool would get 2x2 and fail).
  - mobilenet_v2: the first 3x3 conv runs at stride 1 (weights kept), total stride 16,
    so 28 px ends at 2x2 rather than 1x1.
  - vgg16: at any size, a max-pool whose input is already below 2 px is left out
    (28 px: 14, 7, 3, 1, and the fifth pool is dropped); torchvision's adaptive 7x7
    average pool then feeds the usual 25088-wide classifier, so pretrained weights
    still fit everywhere.

* Head: ``Dropout(p=dropout)`` then ``Linear(features, num_classes)``, reachable as
  ``model.head``. It replaces the final Linear of torchvision's classifier together
  with the Dropout right before it, if any (vgg16's last Dropout(0.5), mobilenet_v2's
  Dropout(0.2)); the rest of torchvision's classifier (vgg16/alexnet fc6-fc7) stays and
  counts as backbone. ``model.head`` is an unregistered alias of the module inside the
  model (``model.fc``, ``model.classifier``...), so the state dict has no duplicate keys.
* Pretrained: torchvision's ``DEFAULT`` weights. The file is looked up in the torch hub
  cache (``torch.hub.get_dir()/checkpoints``); if absent it is downloaded once (with a
  timeout); if that fails, a one-line ``PluginError`` names the URL and where to put it.

This module also holds the argument checks shared by the built-in classifiers.
"""

from __future__ import annotations

import numbers
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medbench.api import Classifier
from medbench.errors import ParameterError, PluginError
from medbench.files import fetch
from medbench.hookspecs import hookimpl

SMALL_INPUT = 64          # image_size below this uses the small-input adaptations
DOWNLOAD_TIMEOUT = 30.0   # seconds without data before a download gives up


# ------------------------------------------------------------------ shared helpers
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def check_build_args(name: str, num_classes: Any, in_channels: Any, image_size: Any,
                     dropout: Any, params: dict[str, Any],
                     accepted: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate the common ``build`` arguments; return ``accepted`` defaults updated
    with ``params``. Raises PluginError (one line) on anything unusable."""
    accepted = accepted or {}
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        ok = ", ".join(sorted(accepted)) if accepted else "none"
        raise ParameterError(f"classifier {name!r}: unknown parameter(s) "
                             f"{', '.join(map(repr, unknown))}; accepted parameters: {ok}")
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels),
                         ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ParameterError(f"classifier {name!r}: {label} must be a positive integer, "
                                 f"got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
            or not 0.0 <= float(dropout) < 1.0:
        raise ParameterError(f"classifier {name!r}: dropout must be in [0, 1), got {dropout!r}")
    return {**accepted, **params}


def _fresh_conv_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def adapt_first_conv(conv: nn.Conv2d, in_channels: int, *, keep_weights: bool,
                     stride: int | None = None, padding: int | None = None) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs (and the given stride/padding).

    Same channel count: the weights are copied. Otherwise, with ``keep_weights`` (a
    pretrained conv), every new input channel gets the sum of the old kernels over the
    channel axis divided by ``in_channels`` (so 1 channel gets exactly the RGB sum);
    without it the new conv is freshly initialised.
    """
    if in_channels == conv.in_channels and stride is None and padding is None:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size,
                    stride=conv.stride if stride is None else stride,
                    padding=conv.padding if padding is None else padding,
                    dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        if in_channels == conv.in_channels:
            new.weight.copy_(conv.weight)
        elif keep_weights:
            summed = conv.weight.sum(dim=1, keepdim=True) / in_channels
            new.weight.copy_(summed.expand(-1, in_channels, -1, -1))
        else:
            _fresh_conv_init(new)
            return new
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _stem_conv(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=bias)
    _fresh_conv_init(conv)
    return conv


def make_head(features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(p=float(dropout)), nn.Linear(features, num_classes))


def alias_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Make ``model.head`` return ``head`` (already registered under another name)
    without registering it twice (no duplicate state-dict keys)."""
    object.__setattr__(model, "head", head)
    return model


# ------------------------------------------------------------------ pretrained weights
def weights_location(weights) -> tuple[str, str]:
    """(url, local path in the torch hub cache) of a torchvision weights entry."""
    url = weights.url
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return url, os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _download(url: str, dst: str, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """Fetch ``url`` to ``dst`` atomically; check the sha256 prefix that torchvision
    puts in its file names (``name-<hash>.pth``)."""
    m = re.search(r"-([a-f0-9]+)\.", os.path.basename(dst))

    def check(digest: str) -> None:
        if m and not digest.startswith(m.group(1)):
            raise OSError(f"checksum mismatch (expected sha256 prefix {m.group(1)})")
    fetch(url, Path(dst), algo="sha256", timeout=timeout, check=check)


def ensure_weights(name: str, weights) -> str:
    """Path of the cached weight file, downloading it if needed; PluginError (one line,
    naming the URL and the expected local path) when it cannot be had."""
    url, path = weights_location(weights)
    if os.path.isfile(path):
        return path
    try:
        _download(url, path)
    except Exception as exc:  # no network, proxy, disk...: tell the user what to do
        reason = _one_line(exc) or type(exc).__name__
        raise PluginError(f"classifier {name!r}: pretrained weights are not cached and the "
                          f"download failed ({type(exc).__name__}: {reason}); download {url} "
                          f"and save it as {path}") from None
    return path


# ------------------------------------------------------------------ classifiers
class TorchvisionClassifier(Classifier):
    """Base for the torchvision models; subclasses set ``name``, ``arch``,
    ``weights_enum`` and implement ``adapt``."""

    name = ""
    arch = ""
    weights_enum = ""
    supports_pretrained = True
    default_training = {"optimizer": "adam", "lr": 1e-3}
    min_image_size = 1

    def build(self, num_classes, in_channels, image_size, *, pretrained=False, dropout=0.0,
              **params):
        check_build_args(self.name, num_classes, in_channels, image_size, dropout, params)
        num_classes, in_channels, image_size = int(num_classes), int(in_channels), int(image_size)
        if image_size < self.min_image_size:
            raise PluginError(f"classifier {self.name!r} needs images of at least "
                              f"{self.min_image_size} px, got {image_size}")
        from torchvision import models

        weights = None
        if pretrained:
            weights = getattr(models, self.weights_enum).DEFAULT
            path = ensure_weights(self.name, weights)
            try:
                model = getattr(models, self.arch)(weights=weights, progress=False)
            except Exception as exc:
                raise PluginError(f"classifier {self.name!r}: could not load pretrained weights "
                                  f"from {path} ({type(exc).__name__}: {_one_line(exc)[:200]}); "
                                  f"delete the file and download {weights.url} again") from None
        else:
            model = getattr(models, self.arch)(weights=None)
        head = self.adapt(model, num_classes, in_channels, image_size, bool(pretrained),
                          float(dropout))
        return alias_head(model, head)

    def prepare(self, *, pretrained=False, download=True, **params):
        # the weights are fetched before a run starts, not when its first cell trains
        check_build_args(self.name, 1, 1, 1, 0.0, params)
        if pretrained and download:
            from torchvision import models
            ensure_weights(self.name, getattr(models, self.weights_enum).DEFAULT)

    def adapt(self, model, num_classes, in_channels, image_size, pretrained, dropout):
        raise NotImplementedError  # pragma: no cover


class _ResNet(TorchvisionClassifier):
    def adapt(self, model, num_classes, in_channels, image_size, pretrained, dropout):
        if image_size < SMALL_INPUT:
            model.conv1 = _stem_conv(in_channels, model.conv1.out_channels)
            model.maxpool = nn.Identity()
        else:
            model.conv1 = adapt_first_conv(model.conv1, in_channels, keep_weights=pretrained)
        model.fc = make_head(model.fc.in_features, num_classes, dropout)
        return model.fc


class ResNet18(_ResNet):
    """torchvision ResNet-18 (MedMNIST v2 stem below 64 px)."""

    name = "resnet18"
    arch = "resnet18"
    weights_enum = "ResNet18_Weights"
    description = ("ResNet-18 (torchvision; 3x3 stride-1 stem without max-pool below 64 px, "
                   "as in MedMNIST v2)")
    # MedMNIST v2's recipe for its ResNet-18 baselines: Adam, lr 1e-3.
    default_training = {"optimizer": "adam", "lr": 1e-3}


class ResNet50(_ResNet):
    """torchvision ResNet-50 (MedMNIST v2 stem below 64 px)."""

    name = "resnet50"
    arch = "resnet50"
    weights_enum = "ResNet50_Weights"
    description = ("ResNet-50 (torchvision; 3x3 stride-1 stem without max-pool below 64 px, "
                   "as in MedMNIST v2)")


class VGG16(TorchvisionClassifier):
    name = "vgg16"
    arch = "vgg16"
    weights_enum = "VGG16_Weights"
    description = "VGG-16 (torchvision; max-pools that would get under 2 px are skipped)"

    def adapt(self, model, num_classes, in_channels, image_size, pretrained, dropout):
        feats = model.features
        size = image_size
        for i, layer in enumerate(feats):
            if isinstance(layer, nn.MaxPool2d):
                if size < 2:
                    feats[i] = nn.Identity()
                else:
                    size //= 2
        feats[0] = adapt_first_conv(feats[0], in_channels, keep_weights=pretrained)
        # classifier: fc6 ReLU Dropout fc7 ReLU [Dropout fc8] -> head
        last = model.classifier[-1]
        head = make_head(last.in_features, num_classes, dropout)
        model.classifier = nn.Sequential(*list(model.classifier)[:-2], head)
        return head


class AlexNet(TorchvisionClassifier):
    name = "alexnet"
    arch = "alexnet"
    weights_enum = "AlexNet_Weights"
    description = "AlexNet (torchvision; first conv at stride 1 below 64 px)"
    min_image_size = 15   # three 3x3 stride-2 max-pools: 15 -> 7 -> 3 -> 1

    def adapt(self, model, num_classes, in_channels, image_size, pretrained, dropout):
        small = image_size < SMALL_INPUT
        model.features[0] = adapt_first_conv(
            model.features[0], in_channels, keep_weights=pretrained,
            stride=1 if small else None, padding=5 if small else None)
        # classifier: Dropout fc6 ReLU Dropout fc7 ReLU [fc8] -> head
        last = model.classifier[-1]
        head = make_head(last.in_features, num_classes, dropout)
        model.classifier[-1] = head
        return head


class DenseNet121(TorchvisionClassifier):
    name = "densenet121"
    arch = "densenet121"
    weights_enum = "DenseNet121_Weights"
    description = "DenseNet-121 (torchvision; 3x3 stride-1 stem without max-pool below 64 px)"

    def adapt(self, model, num_classes, in_channels, image_size, pretrained, dropout):
        feats = model.features
        if image_size < SMALL_INPUT:
            feats.conv0 = _stem_conv(in_channels, feats.conv0.out_channels)
            feats.pool0 = nn.Identity()
        else:
            feats.conv0 = adapt_first_conv(feats.conv0, in_channels, keep_weights=pretrained)
        model.classifier = make_head(model.classifier.in_features, num_classes, dropout)
        return model.classifier


class MobileNetV2(TorchvisionClassifier):
    name = "mobilenet_v2"
    arch = "mobilenet_v2"
    weights_enum = "MobileNet_V2_Weights"
    description = "MobileNetV2 (torchvision; first conv at stride 1 below 64 px)"

    def adapt(self, model, num_classes, in_channels, image_size, pretrained, dropout):
        stem = model.features[0]
        stem[0] = adapt_first_conv(stem[0], in_channels, keep_weights=pretrained,
                                   stride=1 if image_size < SMALL_INPUT else None)
        # classifier: [Dropout(0.2) Linear] -> head
        last = model.classifier[-1]
        model.classifier = make_head(last.in_features, num_classes, dropout)
        return model.classifier


CLASSIFIERS = (ResNet18, ResNet50, VGG16, AlexNet, DenseNet121, MobileNetV2)


@hookimpl
def register_classifiers(register):
    for cls in CLASSIFIERS:
        register(cls.name, cls)
