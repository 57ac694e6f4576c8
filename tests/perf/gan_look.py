"""Look at one GAN on real data before believing a table: a DCGAN fitted on the
PneumoniaMNIST `normal` training images (MEDBENCH_DATA) at the pneumoniamnist-gan cpu
settings, with and without DiffAugment at the same kimg. Writes, per run, the artifacts
a results folder would hold (losses.png, samples_*.png, real.png) under OUT, and prints
the discriminator's last-half loss and margin and the held-out numbers of
``medbench.quality`` (matched n against the real test images of the class; the tiny
extractor, so only comparable with each other). Not collected by pytest; run as

    MEDBENCH_DATA=../shared/data python tests/perf/gan_look.py [KIMG] [OUT]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from medbench.extractors import TINY, resolve_extractor
from medbench.generators import write_generator_artifacts
from medbench.plugins.generators import dcgan
from medbench.quality import FidelityMeter

CPU = {"width": 32, "batch_size": 16, "g_lr": 5e-4, "d_lr": 1e-3, "betas": [0.0, 0.9],
       "dropout": 0.0, "spectral_norm": False}


def main() -> None:
    kimg = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "gan-look")
    torch.set_num_threads(2)
    root = Path(os.environ.get("MEDBENCH_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    z = np.load(root / "medmnist" / "pneumoniamnist.npz")
    x = torch.from_numpy(z["train_images"][z["train_labels"].ravel() == 0][:, None]).contiguous()
    xt = torch.from_numpy(z["test_images"][z["test_labels"].ravel() == 0][:, None]).contiguous()
    y = torch.zeros(len(x), dtype=torch.long)
    meter = FidelityMeter(resolve_extractor(TINY), "cpu")
    f_train, f_test = meter.features(x), meter.features(xt)
    for label, aug in (("diffaug", True), ("no-diffaug", False)):
        params = {**CPU, "kimg": kimg, "diffaug": aug}
        g = dcgan.DCGAN(**params).fit(x, y, classes=["normal"], seed=0)
        folder = write_generator_artifacts(out / label, "dcgan", params, label, 0, 0, "normal", g,
                                           "fitted", real=(x, y))
        d = np.array([r["d_loss"] for r in g.history])
        m = np.array([r["margin"] for r in g.history])
        h = meter.heldout(meter.features(g.sample(0, len(xt))), f_train, f_test)
        print(f"{label}: {g.record['kimg']} kimg, {g.record['steps']} steps; last half D loss "
              f"{d[len(d) // 2:].mean():.3f}, margin {m[len(m) // 2:].mean():.3f}; held out "
              f"(n={h['n_heldout']}): KID {h['kid_heldout']:.4f} (real train "
              f"{h['kid_train_heldout']:.4f}), FID {h['fid_heldout']:.4f} (real train "
              f"{h['fid_train_heldout']:.4f}), copy rate {h['copy_rate']:.3f}; figures in {folder}")


if __name__ == "__main__":
    main()
