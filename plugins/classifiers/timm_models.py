"""timm: any model of the timm library (``pip install timm``), by name.

    classifiers:
      - name: timm
        label: convnext-tiny          # needed when a suite has two timm models
        pretrained: true
        dropout: 0.2
        params: {model: convnext_tiny.fb_in1k}

``params``:

* ``model`` (required): a timm model name, with or without its pretrained tag
  (``resnet50``, ``resnet50.a1_in1k``, ``vit_small_patch16_224``...); ``timm.list_models()``
  lists them.
* ``weights``: a checkpoint file (a state dict of the model as timm builds it, ``.pth``,
  ``.bin`` or ``.safetensors``) to load instead of looking the weights up.
* ``resize`` (default true): resize each batch, on the device, to the model's own input
  size (timm's data config, e.g. 224 or 176 px) with its interpolation. False feeds the
  suite's image size as it is (convolutional models take any size; ViTs need theirs).

What timm does: ``timm.create_model(model, num_classes=..., in_chans=..., drop_rate=dropout)``.
Grey input goes through timm's ``in_chans`` (timm sums the pretrained RGB kernels of the
first conv). The head is timm's classifier (``get_classifier()``), preceded by timm's
dropout at ``dropout``; freezing the backbone leaves it trainable.

Pretrained weights: ``weights`` if given; else the model's file on the Hugging Face hub
(``hf_hub_id`` of its pretrained config), taken from the local Hugging Face cache
(``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) when there, else downloaded
into it; models that timm serves from a URL instead use the torch hub cache. Without
them and no network: one line naming the URL and what to do.

Normalisation: under ``training.normalize: auto`` the model's own mean and std (its
pretrained config; their average for grey input), whether pretrained or not.

Nothing of timm is imported until a model is built or checked.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import nn

from medbench.api import Classifier, Param
from medbench.errors import ParameterError, PluginError
from medbench.hookspecs import hookimpl

from .torchvision_models import _download, _one_line, check_build_args

HF_FILES = ("model.safetensors", "pytorch_model.bin")   # what timm looks for, in order
ACCEPTED = {"model": None, "weights": None, "resize": True}


def _timm():
    try:
        import timm
    except ImportError:
        raise PluginError("classifier 'timm' needs the timm library; pip install timm") from None
    return timm


class TimmNet(nn.Module):
    """A timm model, the batch resized to ``size`` first (None: as it comes)."""

    def __init__(self, net: nn.Module, size: tuple[int, int] | None, interpolation: str):
        super().__init__()
        self.net = net
        self.size = size
        self.mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"

    @property
    def head(self) -> nn.Module:
        return self.net.get_classifier()

    def forward(self, x):
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            # antialias when shrinking, like a PIL resize of the image would
            x = F.interpolate(x, size=self.size, mode=self.mode, align_corners=False,
                              antialias=x.shape[-1] > self.size[-1] or x.shape[-2] > self.size[0])
        return self.net(x)


def _config(params: dict[str, Any]) -> dict[str, Any]:
    """The plugin's parameters, checked; ``model`` known to timm."""
    cfg = check_build_args("timm", 1, 1, 1, 0.0, params, ACCEPTED)
    name = cfg["model"]
    if not isinstance(name, str) or not name.strip():
        raise ParameterError("classifier 'timm' needs params: {model: NAME}, a timm model name "
                             "such as resnet50, convnext_tiny or vit_small_patch16_224")
    if not isinstance(cfg["resize"], bool):
        raise ParameterError(f"classifier 'timm': resize must be true or false, got "
                             f"{cfg['resize']!r}")
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models() lists them"
        raise ParameterError(f"classifier 'timm': timm has no model {name!r}{hint}")
    return cfg


def _pretrained_cfg(name: str):
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise PluginError(f"classifier 'timm': timm has no pretrained config for {name!r}; "
                          "name one of its tags (timm.list_pretrained())")
    return cfg


def _hf_cached(repo: str, revision: str | None, files: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache
    for filename in files:
        found = try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def find_weights(name: str, weights: str | os.PathLike | None = None, *,
                 download: bool = True) -> Path | None:
    """The checkpoint file of timm model ``name``: ``weights`` if given, else the local
    Hugging Face (or torch hub) cache, else a download into it (``download``); None when
    not cached and not downloading. PluginError (one line) when it cannot be had."""
    if weights is not None:
        path = Path(os.path.expanduser(str(weights)))
        if not path.is_file():
            raise ParameterError(f"classifier 'timm': weights file {path} does not exist")
        return path
    pcfg = _pretrained_cfg(name)
    if pcfg.hf_hub_id:
        repo, _, revision = pcfg.hf_hub_id.partition("@")
        revision = revision or None
        files = (pcfg.hf_hub_filename,) if pcfg.hf_hub_filename else HF_FILES
        found = _hf_cached(repo, revision, files)
        if found is not None or not download:
            return found
        from huggingface_hub import constants, hf_hub_download
        errors = []
        for filename in files:
            try:
                return Path(hf_hub_download(repo, filename, revision=revision))
            except Exception as exc:     # missing file (try the next), offline, ...
                errors.append(f"{type(exc).__name__}: {_one_line(exc)[:160]}")
        url = f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{files[0]}"
        raise PluginError(f"classifier 'timm': the weights of {name!r} are not in the Hugging "
                          f"Face cache ({constants.HF_HUB_CACHE}) and the download failed "
                          f"({errors[-1]}); run `hf download {repo}` where there is a network "
                          f"and copy that cache here, or download {url} and give params: "
                          f"{{weights: PATH}}")
    if pcfg.url:
        import torch.hub
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(pcfg.url)
        if path.is_file() or not download:
            return path if path.is_file() else None
        try:
            _download(pcfg.url, str(path))
        except Exception as exc:
            raise PluginError(f"classifier 'timm': the weights of {name!r} are not cached and "
                              f"the download failed ({type(exc).__name__}: "
                              f"{_one_line(exc)[:160]}); download {pcfg.url} and save it as "
                              f"{path}, or give params: {{weights: PATH}}") from None
        return path
    raise PluginError(f"classifier 'timm': timm has no pretrained weights for {name!r}; set "
                      "pretrained: false or give params: {weights: PATH}")


class Timm(Classifier):
    name = "timm"
    description = ("any timm model (params: {model: NAME}); timm's in_chans, normalisation and "
                   "input size; weights from the Hugging Face cache")
    default_training = {"optimizer": "adam", "lr": 1e-3}
    supports_pretrained = True
    defaults = ACCEPTED
    declared = {
        "model": Param("str", "a timm model name (timm.list_models()), with or without its "
                              "pretrained tag; required"),
        "weights": Param("str", "a state dict file (.pth, .bin, .safetensors) to load instead "
                                "of the hub's (pretrained: true)"),
        "resize": Param("bool", "resize each batch on the device to the model's own input size"),
    }

    @staticmethod
    def _checked(pretrained, params) -> dict[str, Any]:
        cfg = _config(params)
        if cfg["weights"] is not None and not pretrained:
            raise ParameterError("classifier 'timm': weights is given but pretrained is false; "
                                 "set pretrained: true to load them")
        return cfg

    def prepare(self, *, pretrained=False, download=True, **params):
        cfg = self._checked(pretrained, params)
        if pretrained:
            find_weights(cfg["model"], cfg["weights"], download=download)

    def normalization(self, in_channels, *, pretrained=False, **params):
        pcfg = _pretrained_cfg(_config(params)["model"])
        mean, std = tuple(pcfg.mean), tuple(pcfg.std)
        if len(mean) != in_channels:      # grey (or other) input: the channel average
            mean = (sum(mean) / len(mean),) * in_channels
            std = (sum(std) / len(std),) * in_channels
        return mean, std

    def build(self, num_classes, in_channels, image_size, *, pretrained=False, dropout=0.0,
              **params):
        check_build_args(self.name, num_classes, in_channels, image_size, dropout, params,
                         ACCEPTED)
        cfg = self._checked(pretrained, params)
        name = cfg["model"]
        timm = _timm()
        kwargs: dict[str, Any] = dict(num_classes=int(num_classes), in_chans=int(in_channels),
                                      drop_rate=float(dropout))
        if pretrained:
            path = find_weights(name, cfg["weights"])
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        try:
            net = timm.create_model(name, **kwargs)
        except Exception as exc:
            where = f" with the weights in {kwargs['pretrained_cfg_overlay']['file']}" \
                if pretrained else ""
            raise PluginError(f"classifier 'timm': could not build {name!r}{where} "
                              f"({type(exc).__name__}: {_one_line(exc)[:200]})") from None
        size = None
        if cfg["resize"]:
            _, h, w = net.pretrained_cfg.get("input_size") or (3, image_size, image_size)
            size = (int(h), int(w))
        return TimmNet(net, size, net.pretrained_cfg.get("interpolation", "bilinear"))


@hookimpl
def register_classifiers(register):
    register(Timm.name, Timm)
