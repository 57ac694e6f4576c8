"""ProGAN training throughput through the plugin against a plain hand-written PyTorch
WGAN-GP loop over the same generator and critic modules (final stage at 28 px, same
batch size, same number of steps, same fade-in schedule).

Prints images/second for both and their ratio (plugin / plain loop; 1.0 = no overhead).
Run alone with:
    python -m pytest tests/perf/test_progan_throughput.py -s -q
"""

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from medbench.generative import to_unit
from medbench.plugins.generators.progan import ProGAN

pytestmark = pytest.mark.perf

N, SIZE, BATCH, EPOCHS, REPEATS = 128, 28, 16, 3, 3
# the same work as the plain loop: no DiffAugment (its cost is measured apart)
PARAMS = {"epochs": [0, 0, EPOCHS], "batch_size": BATCH, "fmaps_base": 64, "fmaps_max": 32, "fmaps_min": 8,
          "lr": 1e-3, "fade": 0.5, "diffaug": False}
STEPS = EPOCHS * (N // BATCH)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return x, torch.zeros(N, dtype=torch.int64)


def _plain_loop(x):
    """What a researcher writes by hand with the same G and critic: final stage only,
    WGAN-GP with per-sample interpolates, drift term, linear fade-in, Adam."""
    model = ProGAN(**PARAMS).prepare(x, torch.zeros(N, dtype=torch.int64), classes=["a"])
    G, D, stage, latent = model.G, model.D, 2, model.latent_size()
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    real_all = to_unit(x)
    low_all = F.interpolate(F.avg_pool2d(real_all, 2), scale_factor=2, mode="nearest")
    fade = round(0.5 * STEPS)
    step = 0
    for _ in range(EPOCHS):
        perm = torch.randperm(N)
        for i in range(0, N, BATCH):
            idx = perm[i:i + BATCH]
            alpha = min(1.0, step / max(1, fade - 1))
            real = alpha * real_all[idx] + (1 - alpha) * low_all[idx]
            with torch.no_grad():
                fake = G(torch.randn(len(idx), latent), stage, alpha)
            d_real = D(real, stage, alpha)
            d_fake = D(fake, stage, alpha)
            eps = torch.rand(len(idx), 1, 1, 1)
            x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(D(x_hat, stage, alpha).sum(), x_hat, create_graph=True)
            gp = (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
            d_loss = d_fake.mean() - d_real.mean() + 10.0 * gp + 0.001 * d_real.pow(2).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = -D(G(torch.randn(len(idx), latent), stage, alpha), stage, alpha).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            d_loss.item(), g_loss.item()
            step += 1
    return step


def _plugin(x):
    g = ProGAN(**PARAMS).fit(x, torch.zeros(N, dtype=torch.int64), classes=["a"])
    assert {row["stage"] for row in g.history} == {2}
    return len(g.history)


def test_progan_throughput_vs_plain_loop():
    x, _ = _data()
    times = {"plain": [], "plugin": []}
    for r in range(REPEATS):           # interleaved, so drift in machine load hits both
        for name, fn in (("plain", _plain_loop), ("plugin", _plugin)):
            torch.manual_seed(r)
            t0 = time.perf_counter()
            steps = fn(x)
            times[name].append(time.perf_counter() - t0)
            assert steps == STEPS          # the same work: every step, same batch size
    ips = {k: STEPS * BATCH / statistics.median(v) for k, v in times.items()}
    ratio = ips["plugin"] / ips["plain"]
    print(f"\n[perf] progan final stage ({SIZE} px, batch {BATCH}, {STEPS} steps, CPU): "
          f"plugin {ips['plugin']:.1f} img/s, plain loop {ips['plain']:.1f} img/s")
    print(f"progan throughput ratio (plugin / plain loop): {ratio:.3f}")
    # a loose floor (shared CI machines are noisy) that still catches a halved throughput
    assert ratio > 0.5, f"the plugin runs at {ratio:.2f} of the plain loop's throughput"
