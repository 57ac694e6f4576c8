"""One paper-profile training cell on a GPU: the ResNet50V2 classifier plugin at 224 px,
3 channels, batch 64, on synthetic uint8 images, trained by the engine's trainer with
AMP + channels_last against plain fp32 (TF32 matmuls and cuDNN autotuning in both).

Prints images/second, peak GPU memory and wall time of each, and the speed-up
(AMP + channels_last over fp32). Skipped without CUDA. Run alone with:
    python -m pytest tests/perf/test_cell_gpu.py -s -q
or as a script (same figures; ``--compile`` adds a torch.compile'd AMP run):
    python tests/perf/test_cell_gpu.py [--compile]
medbench must be importable (``pip install -e .``; on a machine without network, carry
the wheels it lacks, e.g. pydantic and pydantic-core, and install with --no-deps).
"""

import math
import statistics
import sys

import pytest
import torch

from medbench.plugins.classifiers.resnet50v2 import ResNet50V2
from medbench.suite import TrainingConfig
from medbench.trainer import Settings, Trainer, TrainResult

pytestmark = pytest.mark.perf

N, VAL, SIZE, CHANNELS, CLASSES, BATCH, EPOCHS, REPEATS = 384, 64, 224, 3, 4, 64, 2, 3
CONFIGS = {
    "fp32": {"amp": False, "channels_last": False},
    "amp+channels_last": {"amp": True, "channels_last": True},
}
COMPILED = {"amp+channels_last+compile": {"amp": True, "channels_last": True, "compile": True}}


def _data(device: torch.device):
    """Random uint8 images and labels, put on the device once (as the runner's data is)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N + VAL, CHANNELS, SIZE, SIZE), generator=g, dtype=torch.uint8)
    y = torch.randint(0, CLASSES, (N + VAL,), generator=g)
    x, y = x.to(device), y.to(device)
    return x[:N], y[:N], x[N:], y[N:]


def _fit(data, epochs: int, n: int = N, **gpu) -> TrainResult:
    x, y, xv, yv = data
    torch.manual_seed(0)
    model = ResNet50V2().build(CLASSES, CHANNELS, SIZE, dropout=0.17)
    cfg = TrainingConfig(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=1e-4,
                         cudnn_benchmark=True, **gpu)
    trainer = Trainer(Settings.resolve(cfg, {}), x.device, "half", CHANNELS)
    return trainer.fit(model, model.head, x[:n], y[:n], xv, yv, seed=0)


def run_cell(compile_too: bool = False, device: str = "cuda") -> dict[str, dict]:
    """Median figures per configuration over REPEATS interleaved fits. (The trainer
    syncs with the GPU every step, so its wall times need no extra synchronize.)"""
    configs = {**CONFIGS, **(COMPILED if compile_too else {})}
    data = _data(torch.device(device))
    # warm-up with the timed shapes: CUDA context, cuBLAS/cuDNN handles, cuDNN autotuning
    # and compilation are not charged to whichever configuration happens to run first
    for gpu in configs.values():
        _fit(data, epochs=1, n=2 * BATCH, **gpu)
    runs: dict[str, list[TrainResult]] = {name: [] for name in configs}
    for _ in range(REPEATS):          # interleaved, so drift in clocks or load hits all
        for name, gpu in configs.items():
            runs[name].append(_fit(data, epochs=EPOCHS, **gpu))
    out = {}
    for name, results in runs.items():
        last = results[-1]
        out[name] = {
            "images_per_second": statistics.median(r.images_per_second for r in results),
            "seconds": statistics.median(r.seconds for r in results),
            "peak_mib": max(r.peak_memory_bytes or 0 for r in results) / 2 ** 20,
            "images_seen": last.images_seen, "amp": last.amp,
            "channels_last": last.channels_last, "compiled": last.compiled,
            "finite": all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])
                          for r in results for h in r.history),
        }
    return out


def report(figures: dict[str, dict]) -> str:
    lines = [f"[perf] paper-profile cell on {torch.cuda.get_device_name()}: resnet50v2, "
             f"{N} images at {SIZE}x{SIZE}x{CHANNELS} + {VAL} validation, batch {BATCH}, "
             f"{EPOCHS} epochs, median of {REPEATS} (images/s over the whole fit)"]
    for name, f in figures.items():
        lines.append(f"  {name:<26} {f['images_per_second']:8.1f} img/s  "
                     f"peak {f['peak_mib']:8.0f} MiB  wall {f['seconds']:6.2f} s  "
                     f"(amp {f['amp']}, channels_last {f['channels_last']}, "
                     f"compiled {f['compiled']})")
    base = figures["fp32"]["images_per_second"]
    for name, f in figures.items():
        if name != "fp32":
            lines.append(f"speed-up ({name} / fp32): {f['images_per_second'] / base:.2f}x, "
                         f"memory ratio {f['peak_mib'] / figures['fp32']['peak_mib']:.2f}")
    return "\n".join(lines)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="the paper-profile cell benchmark needs a CUDA GPU")
def test_paper_cell_amp_channels_last_vs_fp32():
    figures = run_cell()
    print("\n" + report(figures))
    for f in figures.values():
        assert f["finite"]
        assert f["images_seen"] == N * EPOCHS          # the same work in every configuration
        assert f["peak_mib"] > 0                       # the memory was measured
    assert figures["fp32"]["amp"] == "off"
    assert figures["amp+channels_last"]["amp"] in ("bf16", "fp16")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: the paper-profile cell benchmark needs one")
    print(report(run_cell(compile_too="--compile" in sys.argv[1:])))
