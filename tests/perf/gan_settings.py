"""Which settings let a GAN learn PneumoniaMNIST `normal` at the cpu budget: one fit per
setting on the class's official training images (MEDBENCH_DATA), each measured the way
`medbench fidelity` measures (Inception features; FID of 300 synthetic against 300
training images, the report's old protocol, and KID / FID against the held-out test
images of the class at matched n, beside real training images; the copy rate), with the
discriminator's last-half loss and margin. Not collected by pytest (minutes per fit);
run as

    MEDBENCH_DATA=../shared/data python tests/perf/gan_settings.py [SETTING ...] [--seed S]

SETTING names one of SETTINGS below (default: the DCGAN pair that set the
pneumoniamnist-gan cpu profile). Needs the Inception weights `medbench fidelity` uses.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from medbench.extractors import INCEPTION, resolve_extractor
from medbench.plugins.generators import dcgan, progan
from medbench.quality import FidelityMeter

CPU = {"width": 32, "batch_size": 16, "dropout": 0.0, "spectral_norm": False, "diffaug": False}
SEED_003 = {"g_lr": 5e-4, "d_lr": 1e-3, "betas": [0.0, 0.9], "n_critic": 2}
SEED_001 = {"g_lr": 2e-4, "d_lr": 2e-4, "betas": [0.5, 0.999], "n_critic": 1}
PROGAN = {"kimg": [10, 20, 30], "batch_size": 16, "fmaps_base": 64, "fmaps_max": 32,
          "diffaug": False}
PROGAN_CPU = {**PROGAN, "ema": 0.99, "fmaps_base": 128, "fmaps_max": 64}   # its nets and EMA
SETTINGS = {
    # the cpu profile before and after: D at twice G's rate, two D steps per G step ...
    "dcgan-fast-d": (dcgan.DCGAN, {**CPU, **SEED_003, "kimg": 60}),
    # ... against one step each at 2e-4, Adam (0.5, 0.999)
    "dcgan": (dcgan.DCGAN, {**CPU, **SEED_001, "kimg": 60}),
    "dcgan-diffaug-fast-d": (dcgan.DCGAN, {**CPU, **SEED_003, "kimg": 60, "diffaug": True}),
    "lsgan-dense": (dcgan.LSGAN, {"kimg": 60, "batch_size": 16, "diffaug": False}),
    "lsgan-conv": (dcgan.LSGAN, {"kimg": 60, "batch_size": 16, "diffaug": False, "arch": "conv",
                                 "width": 32}),
    "cgan-balanced": (dcgan.CGAN, {**CPU, **SEED_001, "kimg": 80, "balanced": True}),
    "progan-ema999": (progan.ProGAN, {**PROGAN, "ema": 0.999}),
    "progan-ema99": (progan.ProGAN, {**PROGAN, "ema": 0.99}),
    "progan-ema99-wide": (progan.ProGAN, {**PROGAN, "ema": 0.99, "fmaps_base": 128,
                                          "fmaps_max": 64}),
    "progan-ema99-wide-long": (progan.ProGAN, {**PROGAN, "ema": 0.99, "fmaps_base": 128,
                                               "fmaps_max": 64, "kimg": [10, 20, 60]}),
    # against the cpu profile's ProGAN (progan-ema99-wide): more of the 60 kimg spent at
    # 28 px, with 16 or 32 maps there
    "progan-late": (progan.ProGAN, {**PROGAN_CPU, "kimg": [5, 15, 40]}),
    "progan-min32-late": (progan.ProGAN, {**PROGAN_CPU, "fmaps_min": 32, "kimg": [5, 15, 40]}),
    # twice the maps again: 128, 64, 32 (DCGAN width 32's)
    "progan-128": (progan.ProGAN, {**PROGAN_CPU, "fmaps_base": 256, "fmaps_max": 128}),
    # the last stage twice as long in images, at twice the batch: as many steps
    "progan-long-b32": (progan.ProGAN, {**PROGAN_CPU, "kimg": [10, 20, 60],
                                        "batch_size": [16, 16, 32]}),
    # the last stage of progan-ema99-wide-long half as long again in images (90 kimg) ...
    "progan-cpu-90": (progan.ProGAN, {**PROGAN_CPU, "kimg": [10, 20, 90]}),
    # ... against its 60 kimg at 28 px in batches of 8: twice the steps, each cheaper (the
    # cpu profile's ProGAN since)
    "progan-b8": (progan.ProGAN, {**PROGAN_CPU, "kimg": [10, 20, 60], "batch_size": [16, 16, 8]}),
    "cgan-fast-d-balanced": (dcgan.CGAN, {**CPU, **SEED_003, "kimg": 80, "balanced": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", nargs="*", default=["dcgan-fast-d", "dcgan"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("MEDBENCH_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    z = np.load(root / "medmnist" / "pneumoniamnist.npz")
    labels = z["train_labels"].ravel()
    x_all = torch.from_numpy(z["train_images"][:, None]).contiguous()
    y_all = torch.from_numpy(labels).long()
    x = x_all[y_all == 0]
    test = torch.from_numpy(z["test_images"][z["test_labels"].ravel() == 0][:, None]).contiguous()
    meter = FidelityMeter(resolve_extractor(INCEPTION), "cpu")
    pick = np.sort(np.random.default_rng(0).choice(len(x), 300, replace=False))
    f_train, f_test = meter.features(x[pick]), meter.features(test)
    print(f"normal: {len(x)} training images (FID against 300 of them), {len(test)} held out")
    for name in args.settings:
        cls, params = SETTINGS[name]
        t0 = time.perf_counter()
        if cls.conditional:         # one model for both classes, measured on `normal`
            g = cls(**params).fit(x_all, y_all, classes=["normal", "pneumonia"], seed=args.seed)
        else:
            g = cls(**params).fit(x, torch.zeros(len(x), dtype=torch.long), classes=["normal"],
                                  seed=args.seed)
        fit_s = time.perf_counter() - t0
        f_synth = meter.features(g.sample(0, 300))
        h = meter.heldout(f_synth, f_train, f_test)
        d = np.array([r["d_loss"] for r in g.history])
        m = np.array([r["margin"] for r in g.history])
        print(f"{name} (seed {args.seed}): {g.record['kimg']:.0f} kimg, {g.record['steps']} D steps, "
              f"{fit_s:.0f} s; FID vs training {meter.fid(f_synth, f_train):.1f}; held out "
              f"(n={h['n_heldout']}): KID {h['kid_heldout']:.4f} (real train "
              f"{h['kid_train_heldout']:.4f}), FID {h['fid_heldout']:.1f} (real train "
              f"{h['fid_train_heldout']:.1f}); copy rate {h['copy_rate']:.3f}; last half: "
              f"D loss {d[len(d) // 2:].mean():.3f}, margin {m[len(m) // 2:].mean():.3f}",
              flush=True)


if __name__ == "__main__":
    main()
