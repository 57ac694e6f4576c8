"""The built-in classifiers: shapes, heads, gradients, argument errors, the pretrained
weight cache (never touching the network), ResNet50V2's size and a small learning test."""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from medbench.api import Classifier
from medbench.errors import PluginError

MODULES = ("smallcnn", "torchvision_models", "resnet50v2")


smallcnn, tvm, resnet50v2 = [importlib.import_module(f"medbench.plugins.classifiers.{m}")
                             for m in MODULES]


def _registered() -> dict[str, type]:
    found: dict[str, type] = {}

    def register(name, cls):
        assert name not in found, f"{name} registered twice"
        found[name] = cls

    for module in (smallcnn, tvm, resnet50v2):
        module.register_classifiers(register)
    return found


REGISTERED = _registered()
NAMES = ["smallcnn", "resnet18", "resnet50", "vgg16", "alexnet", "densenet121",
         "mobilenet_v2", "resnet50v2"]
TORCHVISION = ["resnet18", "resnet50", "vgg16", "alexnet", "densenet121", "mobilenet_v2"]
CASES = [(n, c, s) for n in NAMES for c in (1, 3) for s in (28, 64)]
CASES += [(n, c, 224) for n in ("smallcnn", "resnet18") for c in (1, 3)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch, no_network):
    """An empty torch hub cache and a download that fails the way an offline one does."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvm, "_download", offline)
    return calls


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


# ------------------------------------------------------------------ registration
def test_registered_names_and_attributes():
    assert sorted(REGISTERED) == sorted(NAMES)
    for name, cls in REGISTERED.items():
        assert isinstance(cls, type) and issubclass(cls, Classifier), name
        assert cls.description and "\n" not in cls.description, name
        train = cls.default_training
        assert set(train) <= {"optimizer", "lr", "weight_decay", "momentum", "batch_size"}
        assert train["optimizer"] in {"adam", "adamw", "sgd"} and train["lr"] > 0, name
        assert isinstance(cls.supports_pretrained, bool), name
    assert REGISTERED["resnet18"].default_training == {"optimizer": "adam", "lr": 1e-3}
    assert REGISTERED["smallcnn"].default_training == {"optimizer": "adam", "lr": 1e-3}
    assert ({n for n, c in REGISTERED.items() if c.supports_pretrained}
            == set(TORCHVISION) | {"resnet50v2"})


def test_import_is_light():
    """Importing the classifier modules does not import torchvision, timm or h5py
    (imported when a model is built)."""
    heavy = ("torchvision", "timm", "h5py")
    code = ("import sys, medbench.api, medbench.hookspecs; "
            f"had = any(m in sys.modules for m in {heavy!r}); "
            + "; ".join(f"import medbench.plugins.classifiers.{m}"
                        for m in MODULES + ("timm_models",))
            + f"; print(had or not any(m in sys.modules for m in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# ------------------------------------------------------------------ shapes, heads, gradients
@pytest.mark.parametrize("name,channels,size", CASES,
                         ids=[f"{n}-{c}ch-{s}px" for n, c, s in CASES])
def test_builds_forward_head_backward(name, channels, size):
    torch.manual_seed(0)
    clf = REGISTERED[name]()
    model = clf.build(3, channels, size, dropout=0.25)
    assert isinstance(model, nn.Module)
    conv = _first_conv(model)
    assert conv.in_channels == channels
    if name == "vgg16":     # the fifth max-pool would get a 1x1 map at 28 px
        pools = sum(isinstance(m, nn.MaxPool2d) for m in model.features)
        assert pools == (4 if size == 28 else 5)

    head = clf.head(model)
    assert isinstance(head, nn.Module) and head is model.head
    head_ids = {id(p) for p in head.parameters()}
    model_ids = {id(p) for p in model.parameters()}
    assert head_ids and head_ids < model_ids
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert linears and linears[-1].out_features == 3
    assert any(isinstance(m, nn.Dropout) and m.p == 0.25 for m in head.modules())

    model.train()
    x = torch.rand(2, channels, size, size) * 2 - 1
    out = model(x)
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert linears[-1].weight.grad is not None

    model.eval()
    with torch.no_grad():
        again = model(x)
    assert again.shape == (2, 3) and torch.isfinite(again).all()


def test_state_dict_has_no_duplicate_head_and_round_trips():
    clf = REGISTERED["resnet18"]()
    model = clf.build(2, 1, 28)
    keys = list(model.state_dict())
    assert not any(k.startswith("head.") for k in keys)
    assert "fc.1.weight" in keys
    other = clf.build(2, 1, 28)
    other.load_state_dict(model.state_dict())
    twin = copy.deepcopy(model)
    assert {id(p) for p in twin.head.parameters()} < {id(p) for p in twin.parameters()}
    x = torch.rand(2, 1, 28, 28)
    model.eval(), other.eval()
    torch.testing.assert_close(model(x), other(x))


def test_small_input_adaptations():
    r18 = REGISTERED["resnet18"]()
    small, big = r18.build(2, 3, 28), r18.build(2, 3, 64)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2)
    assert isinstance(big.maxpool, nn.MaxPool2d)
    assert REGISTERED["alexnet"]().build(2, 1, 28).features[0].stride == (1, 1)
    assert REGISTERED["alexnet"]().build(2, 1, 64).features[0].stride == (4, 4)
    v2 = REGISTERED["resnet50v2"]()
    assert v2.build(2, 3, 28).stem[0].kernel_size == (3, 3)
    assert v2.build(2, 3, 64).stem[0].kernel_size == (7, 7)
    with pytest.raises(PluginError, match="at least 15 px"):
        REGISTERED["alexnet"]().build(2, 1, 12)


def test_smallcnn_grid_keeps_dense_size_fixed():
    clf = REGISTERED["smallcnn"]()
    for size in (28, 64, 224):
        model = clf.build(2, 1, size)
        assert model.head[1].in_features == 128 * 3 * 3
    paper = clf.build(2, 3, 224, grid=28, hidden=64)
    assert paper.head[1].in_features == 128 * 28 * 28
    assert paper.head[1].out_features == 64
    assert paper(torch.rand(1, 3, 224, 224)).shape == (1, 2)
    # numpy integers (shapes from arrays) are fine
    import numpy as np
    model = clf.build(np.int64(2), np.int64(1), np.int64(28))
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 2)
    # tiny images (the engine's phantom tests use 16 px) still work
    assert clf.build(2, 1, 8)(torch.rand(2, 1, 8, 8)).shape == (2, 2)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("name", NAMES)
def test_unknown_param_is_a_plugin_error(name):
    with pytest.raises(PluginError) as err:
        REGISTERED[name]().build(2, 3, 28, widht=3)
    msg = str(err.value)
    assert "'widht'" in msg and "accepted" in msg and name in msg and "\n" not in msg


def test_unknown_param_lists_accepted_ones():
    with pytest.raises(PluginError, match="accepted parameters: grid, hidden"):
        REGISTERED["smallcnn"]().build(2, 3, 28, depth=4)
    with pytest.raises(PluginError, match="grid = 0; allowed: an integer >= 1"):
        REGISTERED["smallcnn"]().build(2, 3, 28, grid=0)
    with pytest.raises(PluginError, match="hidden = 'wide'; allowed: an integer >= 1"):
        REGISTERED["smallcnn"]().build(2, 3, 28, hidden="wide")


@pytest.mark.parametrize("kwargs", [dict(dropout=1.0), dict(dropout=-0.1)])
def test_bad_dropout(kwargs):
    with pytest.raises(PluginError, match="dropout"):
        REGISTERED["resnet18"]().build(2, 3, 28, **kwargs)


@pytest.mark.parametrize("name", ["smallcnn"])
def test_pretrained_refused_without_weights(name, no_network):
    with pytest.raises(PluginError, match="no pretrained weights") as err:
        REGISTERED[name]().build(2, 3, 64, pretrained=True)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", TORCHVISION)
def test_pretrained_not_cached_and_offline(name, empty_hub, tmp_path):
    clf = REGISTERED[name]()
    with pytest.raises(PluginError) as err:
        clf.build(2, 1, 64, pretrained=True)
    msg = str(err.value)
    assert len(empty_hub) == 1
    url, dst = empty_hub[0]
    assert url.startswith("https://download.pytorch.org/models/")
    assert Path(dst) == tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    assert url in msg and dst in msg and "\n" not in msg
    assert not Path(dst).exists()


def _fake_checkpoint(path: Path, arch: str = "resnet18") -> dict:
    import torchvision
    torch.manual_seed(1)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_pretrained_loads_from_cache_and_sums_rgb_kernels(empty_hub):
    from torchvision.models import ResNet18_Weights
    _, path = tvm.weights_location(ResNet18_Weights.DEFAULT)
    state = _fake_checkpoint(Path(path))
    clf = REGISTERED["resnet18"]()

    gray = clf.build(4, 1, 64, pretrained=True, dropout=0.1)
    assert empty_hub == []          # cached: no download attempted
    torch.testing.assert_close(gray.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(gray.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert gray.head[1].out_features == 4

    rgb = clf.build(4, 3, 64, pretrained=True)
    torch.testing.assert_close(rgb.conv1.weight, state["conv1.weight"])

    small = clf.build(4, 3, 28, pretrained=True)      # new 3x3 stem, rest pretrained
    assert small.conv1.weight.shape == (64, 3, 3, 3)
    torch.testing.assert_close(small.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert small(torch.rand(2, 3, 28, 28)).shape == (2, 4)


def test_corrupt_cached_weights_are_a_plugin_error(empty_hub):
    from torchvision.models import MobileNet_V2_Weights
    _, path = tvm.weights_location(MobileNet_V2_Weights.DEFAULT)
    Path(path).parent.mkdir(parents=True)
    Path(path).write_bytes(b"not a checkpoint")
    with pytest.raises(PluginError) as err:
        REGISTERED["mobilenet_v2"]().build(2, 3, 64, pretrained=True)
    assert path in str(err.value) and "\n" not in str(err.value)
    assert empty_hub == []


def test_one_channel_conversion_helper():
    torch.manual_seed(0)
    rgb = REGISTERED["resnet18"]().build(2, 3, 224).conv1
    assert rgb.weight.shape == (64, 3, 7, 7)
    gray = tvm.adapt_first_conv(rgb, 1, keep_weights=True)
    assert gray.in_channels == 1 and gray.stride == rgb.stride and gray.padding == rgb.padding
    torch.testing.assert_close(gray.weight, rgb.weight.sum(dim=1, keepdim=True))
    # a grey image through the 1-channel conv == the same image as R = G = B through RGB
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
    two = tvm.adapt_first_conv(rgb, 2, keep_weights=True)
    torch.testing.assert_close(two.weight.sum(1), rgb.weight.sum(1))
    fresh = tvm.adapt_first_conv(rgb, 1, keep_weights=False)
    assert fresh.weight.shape == (64, 1, 7, 7)
    assert not torch.allclose(fresh.weight, gray.weight)
    assert tvm.adapt_first_conv(rgb, 3, keep_weights=True) is rgb
    moved = tvm.adapt_first_conv(rgb, 3, keep_weights=True, stride=1)
    assert moved.stride == (1, 1)
    torch.testing.assert_close(moved.weight, rgb.weight)


# ------------------------------------------------------------------ ResNet50V2
def test_resnet50v2_matches_keras_size():
    model = REGISTERED["resnet50v2"]().build(4, 3, 224, dropout=0.17)
    head = sum(p.numel() for p in model.head.parameters())
    backbone = sum(p.numel() for p in model.parameters()) - head
    assert head == 2048 * 4 + 4
    keras_no_top = 23_564_800     # Keras ResNet50V2(include_top=False).count_params()
    assert abs(backbone - keras_no_top) / keras_no_top < 0.05
    # exactly Keras' layout: its count includes the BN moving means and variances
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean",
                                                                           "running_var")))
    assert backbone + stats == keras_no_top
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]
    x = torch.rand(1, 3, 224, 224)
    feats = model.post(model.stages(model.stem(x)))
    assert feats.shape == (1, 2048, 7, 7)


# ------------------------------------------------------------------ learning
def _squares(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """28 px, 1 channel, unit Gaussian noise plus a faint (+0.7) 6x6 square near the
    top-left (class 0) or bottom-right (class 1) corner, shifted by 0-4 px. Tuned so that
    60 Adam steps reach 95-99% on held-out samples (seeds 0-5) while 5 steps stay under
    80%: the test fails if the network does not really learn."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    shift = torch.randint(0, 5, (n, 2), generator=gen)
    for i in range(n):
        r, c = (2, 2) if y[i] == 0 else (16, 16)
        r, c = r + int(shift[i, 0]), c + int(shift[i, 1])
        x[i, 0, r:r + 6, c:c + 6] += 0.7
    return x, y


def test_smallcnn_learns_a_synthetic_task():
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = _squares(256, gen)
    x_test, y_test = _squares(400, gen)
    torch.manual_seed(0)
    clf = REGISTERED["smallcnn"]()
    model = clf.build(2, 1, 28, dropout=0.2)
    train = clf.default_training
    opt = torch.optim.Adam(model.parameters(), lr=train["lr"])
    model.eval()
    with torch.no_grad():
        before = (model(x_test).argmax(1) == y_test).float().mean().item()
    model.train()
    for step in range(60):
        idx = torch.randint(0, len(x_train), (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert before < 0.8           # the task is not solved by the initial weights
    assert acc > 0.9, f"held-out accuracy {acc:.3f} after 60 Adam steps"
    print(f"smallcnn synthetic task: {before:.3f} -> {acc:.3f}")
