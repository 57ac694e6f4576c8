"""ddpm training throughput (real images per second) of the plugin against a plain
hand-written PyTorch loop over the same diffusers UNet and scheduler: the same data,
batch size, v-prediction loss, AdamW, gradient clipping and EMA, the same number of
steps. Prints the ratio plugin / plain (1.0 = no overhead; the target is a slowdown of
at most 5%, a ratio of 0.95 or more), then the plugin's sampling speed in images per
second (DDIM, guided and not). Measured with the pneumoniamnist-gan cpu profile's UNet
(16, 32, 32) and the default 28 px one (32, 64, 64). Run alone with:
    python -m pytest tests/perf/test_ddpm_throughput.py -s -q
"""

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from medbench.generative import WeightAverage, to_unit
from medbench.plugins.generators.ddpm import DDPM

pytestmark = pytest.mark.perf

N, SIZE, BATCH, REPEATS = 512, 28, 32, 3
KIMG = 1.024                     # two passes over the 512 images: 32 steps of 32


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return x, torch.arange(N) % 2


def _params(channels):
    return {"kimg": KIMG, "channels": channels, "batch_size": BATCH, "lr": 1e-3, "ema": 0.995,
            "collapse_check": False, "snapshots": 1}


def _plain(x, y, channels):
    """What a researcher writes by hand around the same UNet and scheduler."""
    model = DDPM(**_params(channels)).prepare(x, y, classes=["a", "b"])
    net, sched = model.G, model._train_schedule()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    ema = WeightAverage(net, 0.995)
    xf = to_unit(x)
    t0 = time.perf_counter()
    for _ in range(2):
        perm = torch.randperm(N)
        for i in range(0, N, BATCH):
            idx = perm[i:i + BATCH]
            x0, lab = xf[idx], y[idx]
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (len(x0),))
            lab = torch.where(torch.rand(len(lab)) < 0.1, torch.full_like(lab, 2), lab)
            pred = net(sched.add_noise(x0, noise, t), t, class_labels=lab).sample
            loss = F.mse_loss(pred, sched.get_velocity(x0, noise, t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            ema.update(net)
    return time.perf_counter() - t0


def _plugin(x, y, channels):
    """Seconds of the fit's training loop: the fit less its one-off end (the last sample
    grid, 64 DDIM samples, which the plain loop does not draw)."""
    model = DDPM(**_params(channels))
    grids = []
    inner = model._snapshot

    def timed(label):
        t = time.perf_counter()
        try:
            return inner(label)
        finally:
            grids.append(time.perf_counter() - t)
    model._snapshot = timed
    t0 = time.perf_counter()
    model.fit(x, y, classes=["a", "b"], seed=0)
    took = time.perf_counter() - t0 - sum(grids)
    assert len(model.history) == 2 * N // BATCH           # the same number of steps
    return took, model


@pytest.mark.parametrize("channels", [[16, 32, 32], [32, 64, 64]], ids=["cpu-profile", "auto-28px"])
def test_ddpm_training_step_vs_plain_loop_and_sampling_speed(channels):
    x, y = _data()
    plain, ours = [], []
    model = None
    for r in range(REPEATS):          # interleaved, so drift in machine load hits both
        torch.manual_seed(r)
        plain.append(_plain(x, y, channels))
        torch.manual_seed(r)
        took, model = _plugin(x, y, channels)
        ours.append(took)
    images = 2 * N
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"\n[perf] ddpm training, UNet {channels} ({model.parameter_count() / 1e6:.2f} M "
          f"parameters), {SIZE} px, batch {BATCH}, {torch.get_num_threads()} thread(s): plugin "
          f"{images / o:.0f} img/s, plain loop {images / p:.0f} img/s, ratio (plugin / plain) "
          f"{p / o:.3f} (runs: plain {', '.join(f'{v:.2f}' for v in plain)} s; plugin "
          f"{', '.join(f'{v:.2f}' for v in ours)} s)")
    for guidance in (2.0, 1.0):
        for steps in (10, 25):
            model.cfg.update(guidance=guidance, sample_steps=steps)
            t = time.perf_counter()
            model.sample(0, 64)
            s = time.perf_counter() - t
            print(f"[perf] ddpm sampling, UNet {channels}, DDIM {steps} steps, guidance "
                  f"{guidance:g}: {64 / s:.1f} img/s")
    assert p / o > 0.5               # a sanity bound only: the ratio is the printed number
