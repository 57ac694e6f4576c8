"""Trainer epoch time against a plain hand-written PyTorch loop, same model and tensors.

Prints the ratio (target <= 1.10). Run alone with:
    python -m pytest tests/perf -s -q
"""

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from medbench.plugins.classifiers.smallcnn import SmallCNN
from medbench.suite import TrainingConfig
from medbench.trainer import Settings, Trainer

pytestmark = pytest.mark.perf

N, VAL, SIZE, BATCH, EPOCHS, REPEATS = 3072, 256, 28, 64, 1, 3


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (N,), generator=g)
    xv = torch.randint(0, 256, (VAL, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    yv = torch.randint(0, 3, (VAL,), generator=g)
    return x, y, xv, yv


def _plain_loop(model, x, y, xv, yv):
    """What a researcher writes by hand: floats prepared once, shuffled batches, Adam."""
    xf = (x.float() / 255 - 0.5) / 0.5
    xvf = (xv.float() / 255 - 0.5) / 0.5
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        model.train()
        perm = torch.randperm(N, generator=g)
        for i in range(0, N, BATCH):
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(model(xf[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            F.cross_entropy(model(xvf), yv).item()


def _ours(model, x, y, xv, yv):
    cfg = TrainingConfig(epochs=EPOCHS, batch_size=BATCH, optimizer="adam", lr=1e-3)
    trainer = Trainer(Settings.resolve(cfg, {}), torch.device("cpu"), "half", 1)
    return trainer.fit(model, model.head, x, y, xv, yv, seed=0)


def test_trainer_epoch_time_vs_plain_loop():
    data = _data()
    times = {"plain": [], "medbench": []}
    for r in range(REPEATS):           # interleaved, so drift in machine load hits both
        for name, fn in (("plain", _plain_loop), ("medbench", _ours)):
            torch.manual_seed(r)
            model = SmallCNN().build(3, 1, SIZE, dropout=0.2)
            t0 = time.perf_counter()
            result = fn(model, *data)
            if name == "medbench":       # the same work was done: every image, every epoch
                assert result.images_seen == N * EPOCHS
            times[name].append(time.perf_counter() - t0)
    plain, ours = statistics.median(times["plain"]), statistics.median(times["medbench"])
    ratio = ours / plain
    print(f"\n[perf] trainer epoch (smallcnn, {N} images at {SIZE}px, batch {BATCH}, CPU): "
          f"medbench {ours / EPOCHS:.3f} s, plain loop {plain / EPOCHS:.3f} s, "
          f"ratio {ratio:.3f} (target <= 1.10)")
