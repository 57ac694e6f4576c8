"""The trainer's GPU path: AMP settings, torch.compile, cuDNN switches and what a fit
reports about them. The CPU tests pin down that these settings are no-ops (or fall back
cleanly) on a CPU; the CUDA tests run only where a GPU is present."""

import math
import warnings

import pytest
import torch
from torch import nn

from medbench import trainer as trainer_mod
from medbench.errors import SuiteError
from medbench.suite import TrainingConfig, load_suite
from medbench.trainer import Settings, Trainer, amp_dtype

from conftest import tiny_suite

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


class _ConvNet(nn.Module):
    """Conv + BatchNorm body and a linear head (reachable as .head), so channels_last,
    autocast and BatchNorm all have something to act on."""

    def __init__(self, channels: int = 1, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.body(x))


def _data(n=48, size=12, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    y = (x.float().mean((1, 2, 3)) > 127.5).long() + (x[:, 0, 0, 0] > 200).long()
    return x, y


def _fit(device="cpu", epochs=2, seed=0, **cfg):
    torch.manual_seed(seed)
    model = _ConvNet()
    config = TrainingConfig(epochs=epochs, batch_size=16, optimizer="adam", lr=1e-2, **cfg)
    trainer = Trainer(Settings.resolve(config, {}), torch.device(device), "half", 1)
    x, y = _data()
    result = trainer.fit(model, model.head, x[:36], y[:36], x[36:], y[36:], seed=seed)
    return model, trainer, result, (x, y)


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("bf16", "bf16"),
                                             ("fp16", "fp16"), ("BF16", "bf16")])
def test_amp_accepts_bools_and_dtypes(value, expected):
    assert TrainingConfig(amp=value).amp == expected


def test_gpu_settings_defaults():
    cfg = TrainingConfig()
    assert cfg.amp is True and cfg.channels_last is True
    assert cfg.compile is False and cfg.cudnn_benchmark is True


@pytest.mark.parametrize("text, expected", [("false", False), ("true", True), ("bf16", "bf16"),
                                            ("fp16", "fp16")])
def test_amp_from_yaml(write_suite, text, expected):
    data = tiny_suite()
    path = write_suite(data)
    path.write_text(path.read_text().replace("training:", f"training:\n  amp: {text}", 1))
    assert load_suite(path).suite.training.amp == expected


@pytest.mark.parametrize("bad", ["fp32", "auto", 3, None])
def test_bad_amp_is_a_one_line_suite_error(write_suite, bad):
    data = tiny_suite(training={"epochs": 1, "amp": bad})
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(data))
    msg = str(info.value)
    assert "\n" not in msg
    assert "`training.amp`" in msg and "bf16" in msg and "fp16" in msg


def test_unknown_gpu_field_is_still_refused(write_suite):
    with pytest.raises(SuiteError, match="compiled"):
        load_suite(write_suite(tiny_suite(training={"epochs": 1, "compiled": True})))


# ----------------------------------------------------------------------- CPU path


@pytest.mark.parametrize("setting", [True, False, "bf16", "fp16"])
def test_amp_is_off_on_cpu(setting):
    assert amp_dtype(setting, torch.device("cpu")) is None


def test_amp_settings_are_no_ops_on_cpu():
    """Every AMP setting trains exactly as fp32 on a CPU: same losses, same weights."""
    runs = {amp: _fit(amp=amp, channels_last=True) for amp in (False, True, "bf16", "fp16")}
    ref_model, _, ref, _ = runs[False]
    ref_state = ref_model.state_dict()
    for amp, (model, _, res, _) in runs.items():
        assert res.amp == "off" and res.channels_last is False
        assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref.history]
        assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in ref.history]
        state = model.state_dict()
        assert all(torch.equal(state[k], ref_state[k]) for k in ref_state), amp


def test_train_result_reports_what_was_used():
    _, _, res, _ = _fit(epochs=2)
    assert res.images_seen == 2 * 36
    assert res.images_per_second > 0
    assert math.isclose(res.images_per_second, res.images_seen / res.seconds)
    assert res.amp == "off" and res.compiled is False and res.channels_last is False
    assert res.peak_memory_bytes is None            # CPU: no GPU memory to report


def test_cudnn_switch_is_left_alone_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    _fit(epochs=1, cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is False


# -------------------------------------------------------------------- torch.compile


class _LinearNet(nn.Module):
    """The smallest model to compile: a cold torch.compile on 2 CPU cores is ~10 s."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(x.flatten(1))


@pytest.mark.slow
def test_compile_on_cpu_works_or_falls_back():
    torch.manual_seed(0)
    model = _LinearNet()
    # batch sizes that divide the data, so no extra recompile for a ragged last batch
    cfg = TrainingConfig(epochs=1, batch_size=16, eval_batch_size=16, optimizer="adam",
                         lr=1e-2, compile=True)
    trainer = Trainer(Settings.resolve(cfg, {}), torch.device("cpu"), "half", 1)
    x, y = _data(n=48, size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = trainer.fit(model, model.head, x[:32], y[:32], x[32:], y[32:], seed=0)
    fell_back = [w for w in caught if "training.compile" in str(w.message)]
    assert res.compiled != bool(fell_back)          # compiled, or said why not
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])
               for h in res.history)
    # the checkpoint belongs to the plain module: no torch.compile prefixes
    assert set(model.state_dict()) == {"head.weight", "head.bias"}
    probs, loss = trainer.evaluate(model, x[32:], y[32:])
    assert probs.shape == (16, 3) and math.isfinite(loss)


def test_compile_failing_at_construction_falls_back(monkeypatch):
    def broken(model, *args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="training.compile: torch.compile failed.*no compiler"):
        _, _, res, _ = _fit(epochs=1, compile=True)
    assert res.compiled is False
    _, _, plain, _ = _fit(epochs=1)
    assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in plain.history]


class _CompilerFailure(RuntimeError):
    """Stands in for the errors torch.compile raises lazily, on a first call."""


_CompilerFailure.__module__ = "torch._dynamo.exc"


def test_compile_failing_on_first_call_falls_back_once(monkeypatch):
    calls = []

    def lazy_broken(model, *args, **kwargs):
        def call(x):
            calls.append(1)
            raise _CompilerFailure("backend compiler failed")
        return call

    monkeypatch.setattr(torch, "compile", lazy_broken)
    with pytest.warns(UserWarning, match="training.compile") as record:
        _, _, res, _ = _fit(epochs=2, compile=True)
    assert len([w for w in record if "training.compile" in str(w.message)]) == 1
    assert calls == [1]                              # never tried again after failing
    assert res.compiled is False
    _, _, plain, _ = _fit(epochs=2)
    assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in plain.history]


def test_model_errors_under_compile_are_not_swallowed(monkeypatch):
    """Only compiler failures fall back; the model's own errors still surface."""
    def compiled_but_model_breaks(model, *args, **kwargs):
        def call(x):
            raise ValueError("shape mismatch in the model")
        return call

    monkeypatch.setattr(torch, "compile", compiled_but_model_breaks)
    with pytest.raises(ValueError, match="shape mismatch"):
        _fit(epochs=1, compile=True)


# ------------------------------------------------------------------------- CUDA


@needs_cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_fit_is_finite_and_reports_memory(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    model, trainer, res, (x, y) = _fit("cuda", amp=amp)
    assert res.amp == amp and res.channels_last is True
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])
               for h in res.history)
    assert res.peak_memory_bytes is not None and res.peak_memory_bytes > 0
    assert res.images_per_second > 0
    probs, loss = trainer.evaluate(model, x, y)
    assert probs.shape == (len(x), 3) and math.isfinite(loss)


@needs_cuda
def test_cuda_amp_true_picks_bf16_where_supported():
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert amp_dtype(True, torch.device("cuda")) == (torch.bfloat16 if native else torch.float16)
    assert amp_dtype(False, torch.device("cuda")) is None


@needs_cuda
def test_cuda_fp16_skipped_steps_are_not_a_training_error(monkeypatch):
    """A loss scale far too large makes the fp16 gradients overflow: the scaler skips
    those steps and lowers the scale; the (finite, unscaled) loss raises nothing."""
    scalers = []

    class HugeScale(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, init_scale=2.0 ** 60, **kwargs)
            scalers.append(self)

    monkeypatch.setattr(trainer_mod.torch.amp, "GradScaler", HugeScale)
    _, _, res, _ = _fit("cuda", amp="fp16", epochs=2)
    assert len(scalers) == 1 and scalers[0].get_scale() < 2.0 ** 60   # steps were skipped
    assert all(math.isfinite(h["train_loss"]) for h in res.history)


@needs_cuda
def test_cuda_compile_fit():
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        model, _, res, _ = _fit("cuda", epochs=1, compile=True, amp=True)
    assert all(math.isfinite(h["val_loss"]) for h in res.history)
    assert not any(k.startswith("_orig_mod.") for k in model.state_dict())
