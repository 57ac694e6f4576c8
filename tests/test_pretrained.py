"""Pretrained classifiers: Keras' ResNet50V2 weights converted into medbench's layout,
the timm plugin with weights from a file or the Hugging Face cache, the one-line error
when weights cannot be had, the classifiers' own input normalisation, and the frozen
backbone's batch norms. Nothing here reaches the network; the Keras equivalence test
runs only where TensorFlow is installed."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from medbench.cli import cli
from medbench.errors import ParameterError, PluginError, TrainingError
from medbench.plugins.classifiers import resnet50v2 as r50
from medbench.plugins.classifiers import timm_models
from medbench.suite import StageConfig, TrainingConfig
from medbench.trainer import Normalizer, Settings, Trainer

from conftest import tiny_suite

timm = pytest.importorskip("timm")
h5py = pytest.importorskip("h5py")

TINY_TIMM = "test_resnet"          # timm's 0.37 M-parameter test network


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def offline(monkeypatch, no_network):
    """Every download fails as it does without a network; the URLs tried are recorded.
    A socket that tries to connect anyway fails the test (``no_network``)."""
    tried: list[str] = []

    def no_dns(url, *args, **kwargs):
        tried.append(url if isinstance(url, str) else url.full_url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_dns)
    return tried


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


# ------------------------------------------------------------------ Keras-layout files
def _keras_weights(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random weights with the names and shapes of Keras' ResNet50V2 (no top), written
    out from Keras' naming scheme (conv{stack}_block{i}_{part}), independently of the
    converter's own table."""
    rng = np.random.default_rng(seed)
    layers: dict[str, dict[str, np.ndarray]] = {}

    def conv(name, k, cin, cout, bias):
        layers[name] = {"kernel": rng.normal(0, 0.05, (k, k, cin, cout)).astype("float32")}
        if bias:
            layers[name]["bias"] = rng.normal(0, 0.05, cout).astype("float32")

    def bn(name, c):
        layers[name] = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0, 0.1, c),
                        "moving_mean": rng.normal(0, 0.1, c),
                        "moving_variance": rng.uniform(0.5, 1.5, c)}
        layers[name] = {k: v.astype("float32") for k, v in layers[name].items()}

    conv("conv1_conv", 7, 3, 64, True)
    cin = 64
    for stack, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 2):
        for b in range(1, blocks + 1):
            n = f"conv{stack}_block{b}"
            bn(f"{n}_preact_bn", cin)
            if b == 1:
                conv(f"{n}_0_conv", 1, cin, 4 * width, True)
            conv(f"{n}_1_conv", 1, cin, width, False)
            bn(f"{n}_1_bn", width)
            conv(f"{n}_2_conv", 3, width, width, False)
            bn(f"{n}_2_bn", width)
            conv(f"{n}_3_conv", 1, width, 4 * width, True)
            cin = 4 * width
    bn("post_bn", 2048)
    return layers


def _write_h5(path: Path, layers: dict, *, keras2: bool = True, wrap: bool = False) -> Path:
    """Keras' legacy h5 layout: Keras 2's save_weights (the published file, weight names
    ending in ":0") or Keras 3's model.save (under model_weights, no ":0")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if wrap else f
        names = ["input_1", "conv1_pad"] + list(layers)      # layers without weights too
        root.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            g = root.create_group(name)
            weights = layers.get(name, {})
            wnames = [f"{name}/{w}" + (":0" if keras2 else "") for w in weights]
            g.attrs["weight_names"] = [w.encode() for w in wnames]
            for w, value in zip(wnames, weights.values()):
                g.create_dataset(w, data=value)
    return path


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    layers = _keras_weights()
    return _write_h5(tmp_path_factory.mktemp("h5") / "r50v2.h5", layers), layers


def _oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(kernel).permute(3, 2, 0, 1)


def test_converter_table_is_keras_resnet50v2():
    table = r50.keras_layers()
    assert len(table) == 102         # 1 stem + 16 blocks x 6 + 4 shortcuts + post_bn
    assert {name for name, _, _ in table} == set(_keras_weights())
    model = r50.ResNet50V2Net(2)
    modules = dict(model.named_modules())
    for name, kind, module in table:
        assert isinstance(modules[module], nn.Conv2d if kind == "conv" else nn.BatchNorm2d), name


@pytest.mark.parametrize("keras2,wrap", [(True, False), (False, True)],
                         ids=["keras2-save_weights", "keras3-model.save"])
def test_keras_weights_land_in_the_right_tensors(keras2, wrap, tmp_path, offline):
    layers = _keras_weights(seed=3)
    path = _write_h5(tmp_path / "w.h5", layers, keras2=keras2, wrap=wrap)
    model = r50.ResNet50V2().build(4, 3, 64, pretrained=True, dropout=0.17, weights=str(path))
    sd = model.state_dict()
    torch.testing.assert_close(sd["stem.0.weight"], _oihw(layers["conv1_conv"]["kernel"]))
    torch.testing.assert_close(sd["stem.0.bias"], torch.from_numpy(layers["conv1_conv"]["bias"]))
    blk = layers["conv4_block6_2_conv"]["kernel"]          # the stride-2 block of stack 3
    torch.testing.assert_close(sd["stages.2.5.body.3.weight"], _oihw(blk))
    assert model.stages[2][5].body[3].stride == (2, 2)
    torch.testing.assert_close(sd["stages.1.0.shortcut.bias"],
                               torch.from_numpy(layers["conv3_block1_0_conv"]["bias"]))
    for keras_name, torch_name in (("gamma", "weight"), ("beta", "bias"),
                                   ("moving_mean", "running_mean"),
                                   ("moving_variance", "running_var")):
        torch.testing.assert_close(sd[f"post.0.{torch_name}"],
                                   torch.from_numpy(layers["post_bn"][keras_name]))
    assert model.head[2].p == pytest.approx(0.17) and model.head[3].out_features == 4
    assert offline == []


def test_grey_input_sums_the_rgb_stem_and_small_input_keeps_a_fresh_stem(keras_file):
    path, layers = keras_file
    rgb = r50.ResNet50V2().build(2, 3, 64, pretrained=True, weights=str(path)).eval()
    grey = r50.ResNet50V2().build(2, 1, 64, pretrained=True, weights=str(path)).eval()
    torch.testing.assert_close(grey.stem[0].weight,
                               _oihw(layers["conv1_conv"]["kernel"]).sum(1, keepdim=True))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():       # a grey image == the same image as R = G = B
        torch.testing.assert_close(grey.stem(x), rgb.stem(x.expand(-1, 3, -1, -1)),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grey.stages[3][2].body[6].weight, rgb.stages[3][2].body[6].weight)
    small = r50.ResNet50V2().build(2, 1, 28, pretrained=True, weights=str(path))
    assert small.stem[0].weight.shape == (64, 1, 3, 3)
    torch.testing.assert_close(small.stages[3][2].body[6].weight,
                               _oihw(layers["conv5_block3_3_conv"]["kernel"]))


def test_wrong_files_are_one_line_plugin_errors(tmp_path, keras_file):
    _, layers = keras_file
    clf = r50.ResNet50V2()
    bad_shape = {k: dict(v) for k, v in layers.items()}
    bad_shape["conv3_block2_1_conv"]["kernel"] = np.zeros((1, 1, 512, 64), "float32")
    missing = {k: v for k, v in layers.items() if k != "conv5_block2_2_bn"}
    cases = {
        "shape": (_write_h5(tmp_path / "shape.h5", bad_shape), "stages.1.1.body.0.weight"),
        "missing": (_write_h5(tmp_path / "missing.h5", missing), "conv5_block2_2_bn"),
        "not-h5": (tmp_path / "junk.h5", "cannot read Keras weights"),
    }
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file")
    for case, (path, expected) in cases.items():
        with pytest.raises(PluginError) as err:
            clf.build(2, 3, 64, pretrained=True, weights=str(path))
        msg = str(err.value)
        assert expected in msg and str(path) in msg and "\n" not in msg, case
    with pytest.raises(ParameterError, match="does not exist"):
        clf.build(2, 3, 64, pretrained=True, weights=str(tmp_path / "nope.h5"))
    with pytest.raises(ParameterError, match="pretrained is false"):
        clf.build(2, 3, 64, weights=str(cases["shape"][0]))


def test_keras_cache_file_is_used_only_with_the_published_md5(keras_home, keras_file,
                                                               monkeypatch, offline):
    path, layers = keras_file
    cached = r50.keras_cache_path()
    assert cached == keras_home / "models" / r50.KERAS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    with pytest.raises(PluginError) as err:          # not the published file
        r50.ResNet50V2().build(2, 3, 64, pretrained=True)
    assert r50.KERAS_MD5 in str(err.value) and r50.KERAS_URL in str(err.value)
    monkeypatch.setattr(r50, "KERAS_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    model = r50.ResNet50V2().build(2, 3, 64, pretrained=True)
    torch.testing.assert_close(model.stem[0].bias,
                               torch.from_numpy(layers["conv1_conv"]["bias"]))
    assert offline == []                              # cached: no download tried


def test_download_goes_to_the_keras_cache_and_is_checked(keras_home, keras_file, monkeypatch):
    path, _ = keras_file
    data = path.read_bytes()

    class Response:
        def __init__(self):
            self.chunks = [data]

        def read(self, n):
            return self.chunks.pop() if self.chunks else b""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    urls = []
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: urls.append(url) or Response())
    with pytest.raises(PluginError, match="checksum mismatch"):
        r50.ResNet50V2().prepare(pretrained=True)
    assert not r50.keras_cache_path().exists()       # a bad download leaves nothing
    monkeypatch.setattr(r50, "KERAS_MD5", hashlib.md5(data).hexdigest())
    r50.ResNet50V2().prepare(pretrained=True)
    assert urls == [r50.KERAS_URL] * 2
    assert r50.keras_cache_path().read_bytes() == data


def test_offline_without_weights_fails_in_one_line_through_the_cli(keras_home, offline,
                                                                   write_suite, tmp_path):
    suite = tiny_suite(classifiers=[{"name": "resnet50v2", "pretrained": True}])
    path = write_suite(suite)
    ok = CliRunner().invoke(cli, ["validate", str(path)])   # validate does not download
    assert ok.exit_code == 0, ok.output
    assert offline == []
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "-q"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output
    where = str(keras_home / "models" / r50.KERAS_FILE)
    assert r50.KERAS_URL in err and where in err
    assert offline == [r50.KERAS_URL]
    assert not (out / "results.parquet").exists()


def test_resnet50v2_input_is_scaled_like_keras():
    clf = r50.ResNet50V2()
    assert clf.normalization(3, pretrained=True) == ((0.5,) * 3, (0.5,) * 3)
    norm = Normalizer(clf.normalization(1, pretrained=True), 1, torch.device("cpu"))
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    # keras.applications.resnet_v2.preprocess_input: x / 127.5 - 1
    torch.testing.assert_close(norm(x).flatten(), torch.tensor([0, 51, 255]) / 127.5 - 1)
    with pytest.raises(TrainingError, match="channel"):
        Normalizer(((0.5, 0.5), (0.5, 0.5)), 1, torch.device("cpu"))


@pytest.mark.skipif(os.environ.get("MEDBENCH_NO_TF") == "1", reason="MEDBENCH_NO_TF=1")
def test_keras_resnet50v2_gives_the_same_features(tmp_path):
    """Keras' own ResNet50V2 (random weights, random BN statistics), saved as h5 and
    converted, gives the same features on random input in eval mode."""
    pytest.importorskip("tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    size = 64
    km = keras.applications.ResNet50V2(include_top=False, weights=None,
                                       input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    for layer in km.layers:              # BN statistics other than 0 / 1, to see them mapped
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)])
    path = tmp_path / "keras_resnet50v2.h5"
    km.save(path)
    x = rng.uniform(-1, 1, (2, size, size, 3)).astype("float32")   # Keras-scaled input
    expected = np.asarray(km(x, training=False))
    model = r50.ResNet50V2().build(3, 3, size, pretrained=True, weights=str(path)).eval()
    with torch.no_grad():
        got = model.post(model.stages(model.stem(torch.from_numpy(x).permute(0, 3, 1, 2))))
    got = got.permute(0, 2, 3, 1).numpy()
    diff = float(np.abs(got - expected).max())
    print(f"Keras vs medbench ResNet50V2, max abs difference: {diff:.3g}")
    assert got.shape == expected.shape == (2, 2, 2, 2048)
    assert np.abs(expected).max() > 0.1            # not a comparison of zeros
    assert diff <= 1e-4


# ------------------------------------------------------------------ freeze -> fine-tune
def test_frozen_backbone_keeps_its_batch_norm_statistics():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x))

    model = Net()
    x = torch.randint(0, 255, (32, 1, 6, 6), dtype=torch.uint8)
    y = (x.float().mean((1, 2, 3)) > 127).long()
    stats = lambda: model.body[1].running_mean.clone()      # noqa: E731
    before = stats()
    frozen = TrainingConfig(stages=[StageConfig(epochs=2, freeze_backbone=True)])
    Trainer(Settings.resolve(frozen, {"lr": 0.01}), torch.device("cpu"), "half", 1).fit(
        model, model.head, x, y, x, y, seed=0)
    assert torch.equal(stats(), before)
    both = TrainingConfig(stages=[StageConfig(epochs=1, freeze_backbone=True),
                                  StageConfig(epochs=1, lr=1e-3)])
    Trainer(Settings.resolve(both, {"lr": 0.01}), torch.device("cpu"), "half", 1).fit(
        model, model.head, x, y, x, y, seed=0)
    assert not torch.equal(stats(), before)          # fine-tuning updates them again


# ------------------------------------------------------------------ timm
def _timm_checkpoint(path: Path, name: str = TINY_TIMM, seed: int = 1) -> dict:
    """What a timm weight file holds: the model's state dict at 3 channels and 1000
    classes (ImageNet's head)."""
    torch.manual_seed(seed)
    state = timm.create_model(name).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, and a hub download that fails offline."""
    import huggingface_hub
    from huggingface_hub import constants
    root = tmp_path / "hf"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    calls = []

    def offline(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        raise OSError("offline: cannot reach huggingface.co")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    return root, calls


def _put_in_hf_cache(root: Path, repo: str, filename: str) -> Path:
    """The hub cache layout: models--org--name/refs/main -> snapshots/<commit>/file."""
    folder = root / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit / filename


def test_timm_loads_a_weights_file_with_grey_input_and_a_new_head(tmp_path, offline):
    state = _timm_checkpoint(tmp_path / "w.pth")
    model = timm_models.Timm().build(3, 1, 32, pretrained=True, dropout=0.2,
                                     model=TINY_TIMM, weights=str(tmp_path / "w.pth"))
    net = model.net
    # timm's in_chans: the RGB kernels of the first conv summed for one channel
    torch.testing.assert_close(net.conv1[0].weight, state["conv1.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(net.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert model.head is net.get_classifier() and model.head.out_features == 3
    assert net.drop_rate == pytest.approx(0.2)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    assert offline == []


def test_timm_finds_weights_in_the_hugging_face_cache(hf_cache):
    root, calls = hf_cache
    repo = timm.models.get_pretrained_cfg(TINY_TIMM).hf_hub_id
    state = _timm_checkpoint(_put_in_hf_cache(root, repo, "model.safetensors"), seed=2)
    model = timm_models.Timm().build(2, 3, 32, pretrained=True, model=TINY_TIMM)
    torch.testing.assert_close(model.net.conv1[0].weight, state["conv1.0.weight"])
    assert calls == []


def test_timm_without_cached_weights_offline_is_one_line(hf_cache):
    root, calls = hf_cache
    with pytest.raises(PluginError) as err:
        timm_models.Timm().prepare(pretrained=True, model=TINY_TIMM)
    msg = str(err.value)
    repo = timm.models.get_pretrained_cfg(TINY_TIMM).hf_hub_id
    assert f"https://huggingface.co/{repo}/resolve/main/model.safetensors" in msg
    assert str(root) in msg and "weights: PATH" in msg and "\n" not in msg
    assert [f for _, f in calls] == list(timm_models.HF_FILES)
    timm_models.Timm().prepare(pretrained=True, download=False, model=TINY_TIMM)   # validate


def test_timm_parameter_errors():
    clf = timm_models.Timm()
    with pytest.raises(ParameterError, match="needs params: {model: NAME}"):
        clf.build(2, 3, 32)
    with pytest.raises(ParameterError, match="did you mean .*resnet18"):
        clf.prepare(model="resnet18x")
    with pytest.raises(ParameterError, match="unknown parameter"):
        clf.prepare(model=TINY_TIMM, depth=3)
    with pytest.raises(ParameterError, match="resize must be true or false"):
        clf.prepare(model=TINY_TIMM, resize="yes")


def test_timm_uses_the_models_normalisation_and_input_size():
    clf = timm_models.Timm()
    assert clf.normalization(3, model=TINY_TIMM) == ((0.5,) * 3, (0.5,) * 3)
    mean, std = clf.normalization(1, model="resnet10t")       # ImageNet's, averaged
    assert mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    assert std == pytest.approx((np.mean([0.229, 0.224, 0.225]),))
    seen = []
    model = clf.build(2, 1, 32, model=TINY_TIMM)
    model.net.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    model(torch.rand(2, 1, 32, 32))
    native = clf.build(2, 1, 32, model=TINY_TIMM, resize=False)
    native.net.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    native(torch.rand(2, 1, 32, 32))
    assert seen == [(2, 1, 160, 160), (2, 1, 32, 32)]          # test_resnet's 160 px


def _squares(n: int, gen: torch.Generator, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 noise (mean 100, sd 40) with a brighter 12x12 square near the top-left
    (class 0) or bottom-right (class 1) corner, shifted by up to 7 px."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 1, size, size, generator=gen) * 40 + 100
    shift = torch.randint(0, 8, (n, 2), generator=gen)
    for i in range(n):
        r = c = 4 if y[i] == 0 else size - 20
        x[i, 0, r + shift[i, 0]:r + shift[i, 0] + 12, c + shift[i, 1]:c + shift[i, 1] + 12] += 60
    return x.clamp(0, 255).to(torch.uint8), y


def test_timm_pretrained_learns_after_freeze_then_fine_tune(tmp_path):
    """test_resnet from a weights file: one frozen epoch (head only), then 8 of all of
    it, on the model's own normalisation; held-out accuracy goes from chance to >= 0.9
    (1.0 on seeds 0-4 when written)."""
    _timm_checkpoint(tmp_path / "w.pth")
    gen = torch.Generator().manual_seed(0)
    (xt, yt), (xv, yv), (xs, ys) = _squares(192, gen), _squares(64, gen), _squares(128, gen)
    torch.manual_seed(0)
    clf = timm_models.Timm()
    params = dict(model=TINY_TIMM, weights=str(tmp_path / "w.pth"), resize=False)
    model = clf.build(2, 1, 48, pretrained=True, **params)
    cfg = TrainingConfig(batch_size=32, lr=3e-3,
                         stages=[StageConfig(epochs=1, freeze_backbone=True),
                                 StageConfig(epochs=8)])
    trainer = Trainer(Settings.resolve(cfg, clf.default_training), torch.device("cpu"),
                      clf.normalization(1, pretrained=True, **params), 1)
    before = (trainer.evaluate(model, xs)[0].argmax(1) == ys.numpy()).mean()
    result = trainer.fit(model, model.head, xt, yt, xv, yv, seed=0)
    after = (trainer.evaluate(model, xs)[0].argmax(1) == ys.numpy()).mean()
    assert [h["stage"] for h in result.history] == [0] + [1] * 8
    assert before < 0.7 and after >= 0.9, (before, after)


def test_timm_pretrained_runs_through_the_cli(tmp_path, write_suite, offline):
    """`medbench run` with a pretrained timm model (weights the test made) in a frozen
    stage then a fine-tuning stage: every cell finishes, offline."""
    weights = tmp_path / "w.pth"
    _timm_checkpoint(weights)
    suite = tiny_suite(
        dataset={"loader": "phantom", "image_size": 32, "channels": 1,
                 "options": {"counts": [40, 20], "seed": 1}},
        protocol={"kind": "holdout", "seeds": [0]},
        classifiers=[{"name": "timm", "pretrained": True,
                      "params": {"model": TINY_TIMM, "weights": str(weights), "resize": False},
                      "training": {"stages": [{"epochs": 1, "freeze_backbone": True},
                                              {"epochs": 1}]}}])
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["run", str(write_suite(suite)), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out / "results.parquet")
    acc = df[df.metric == "accuracy"]
    assert sorted(acc.arm) == ["none", "oversample"] and acc.value.between(0, 1).all()
    assert set(acc.classifier) == {"timm"}
    assert offline == []
