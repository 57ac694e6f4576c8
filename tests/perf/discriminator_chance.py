"""Does the hinge + PatchGAN discriminator discriminate? DCGAN on the PneumoniaMNIST
`normal` training images (MEDBENCH_DATA), 10 kimg at width 32, Adam betas (0, 0.9), one
torch thread; prints the D loss per quarter of the run, and over its last half the mean
D loss (chance: 2.0) and margin D(real) - D(fake).

What it showed: with spectral norm on every layer the critic of this width stays within
about +-0.2 of zero on real and generated images alike (its margin), whatever the
learning rates, so the hinge's loss relu(1 - D(real)) + relu(1 + D(fake)) sits at about
2 - margin = 1.8; with batch norm instead (seed 003's variant 2, the cpu profiles now)
the margin grows past 2 and the loss falls well below 1.

Not collected by pytest (it takes about 5 minutes); run it as

    MEDBENCH_DATA=../shared/data python tests/perf/discriminator_chance.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from medbench.plugins.generators import dcgan

CONFIGS = {
    "spectral norm, G lr twice D's (1e-3 / 5e-4), batch 64, n_critic 1":
        {"g_lr": 1e-3, "d_lr": 5e-4, "diffaug": False, "n_critic": 1, "batch_size": 64},
    "spectral norm, D lr twice G's (2e-4 / 4e-4), batch 64, no dropout":
        {"g_lr": 2e-4, "d_lr": 4e-4, "dropout": 0.0, "diffaug": False, "batch_size": 64},
    "spectral norm, 5e-4 / 1e-3, batch 16, no dropout":
        {"g_lr": 5e-4, "d_lr": 1e-3, "dropout": 0.0, "diffaug": False, "batch_size": 16},
    "spectral norm, 5e-4 / 1e-3, batch 16, no dropout, DiffAugment":
        {"g_lr": 5e-4, "d_lr": 1e-3, "dropout": 0.0, "diffaug": True, "batch_size": 16},
    "batch norm (the cpu profile), 5e-4 / 1e-3, batch 16, no dropout":
        {"g_lr": 5e-4, "d_lr": 1e-3, "dropout": 0.0, "diffaug": False, "batch_size": 16,
         "spectral_norm": False},
    "batch norm, 5e-4 / 1e-3, batch 16, no dropout, DiffAugment":
        {"g_lr": 5e-4, "d_lr": 1e-3, "dropout": 0.0, "diffaug": True, "batch_size": 16,
         "spectral_norm": False},
}


def main() -> None:
    torch.set_num_threads(1)
    root = Path(os.environ.get("MEDBENCH_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    z = np.load(root / "medmnist" / "pneumoniamnist.npz")
    x = torch.from_numpy(z["train_images"][z["train_labels"].ravel() == 0][:, None]).contiguous()
    y = torch.zeros(len(x), dtype=torch.long)
    print(f"PneumoniaMNIST normal, {len(x)} training images, 10 kimg per run")
    for label, extra in CONFIGS.items():
        params = {"width": 32, "betas": [0.0, 0.9], "kimg": 10,
                  "collapse_check": False, **extra}
        t0 = time.perf_counter()
        g = dcgan.DCGAN(**params).fit(x, y, classes=["normal"], seed=0)
        d = np.array([r["d_loss"] for r in g.history])
        m = np.array([r["margin"] for r in g.history])
        n = len(d)
        quarters = ", ".join(f"{d[q * n // 4:(q + 1) * n // 4].mean():.3f}" for q in range(4))
        print(f"{label}: D loss by quarter {quarters}; last half D loss {d[n // 2:].mean():.3f}, "
              f"margin {m[n // 2:].mean():.3f} ({g.record['steps']} steps, "
              f"{time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
