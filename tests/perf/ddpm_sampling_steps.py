"""Why ddpm's images at the pneumoniamnist-gan cpu profile are far from the real ones:
held-out FID and KID of one ddpm fit's `normal` images at several DDIM step counts and
guidance scales, with everything else fixed (the same fit, the same start noise, 300
images against the same held-out real images as `medbench fidelity --max-images 300`).

    MEDBENCH_DATA=../shared/data python tests/perf/ddpm_sampling_steps.py [--kimg 180] [--seed 0]

--kimg: the fit's budget; 60 is the cpu profile's fit (the budget ablation's, from the
cache if `medbench ablate suites/pneumoniamnist-gan.yaml --component budget --arm ddpm
--profile cpu` ran), a larger one continues that fit (the generator cache's budget line).
Takes about 5 minutes beyond the fit on 2 cores (Inception features on the CPU, and 50
guided steps are 100 UNet passes per image).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from medbench.engine import Engine, load_dataset
from medbench.extractors import INCEPTION, resolve_extractor
from medbench.fidelity import _subset
from medbench.quality import FidelityMeter
from medbench.suite import load_suite
from medbench.tuning import derived

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = [{}, {"sample_steps": 25}, {"sample_steps": 50}, {"guidance": 1.0},
            {"guidance": 3.0}, {"sample_steps": 50, "guidance": 1.0}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kimg", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)       # as the ablation's workers fitted it
    loaded = load_suite(ROOT / "suites" / "pneumoniamnist-gan.yaml", "cpu")
    raw = copy.deepcopy(loaded.raw)
    arm = next(a for a in raw["arms"] if a["name"] == "ddpm")
    params = {"snapshots_kimg": [15.0, 30.0, 45.0]}          # the budget ablation's fit
    if args.kimg != 60:
        params = {"kimg": args.kimg}                      # continues that fit
    raw["arms"] = [{**arm, "params": params}]
    raw["protocol"]["seeds"] = [args.seed]
    raw.pop("subject", None)
    level = derived(loaded, raw, what="ddpm sampling check")
    ds, _ = load_dataset(level)
    eng = Engine(level, ds, torch.device("cpu"), out=None)
    meter = FidelityMeter(resolve_extractor(INCEPTION, None), "cpu")
    seed, f, c = args.seed, 0, ds.classes.index("normal")
    fold = eng.folds(seed)[0]
    x, y = eng.real(fold)
    train = x[y == c]
    pick = torch.from_numpy(_subset(len(train), args.images, seed, f, c, 0))
    x_te, y_te = eng.real(fold, "test")
    test = x_te[y_te == c]
    test = test[torch.from_numpy(_subset(len(test), args.images, seed, f, c, 1))]
    f_all = meter.features(train)
    f_train = {k: v[pick] for k, v in f_all.items()}
    f_test = meter.features(test)
    wanted = [1 if i == c else 0 for i in range(ds.num_classes)]
    g = eng.generators(level.suite.arms[0], fold, seed, wanted)[c]
    base = dict(g.cfg)
    print(f"ddpm, pneumoniamnist-gan cpu profile, {args.kimg:g} kimg, seed {seed}: "
          f"{args.images} 'normal' images against {len(test)} held-out real ones")
    for var in VARIANTS:
        g.cfg.update({**base, **var})
        h = meter.heldout(meter.features(g.sample(c, args.images)), f_train, f_test, f_all)
        what = ", ".join(f"{k} {v:g}" for k, v in {"sample_steps": g.cfg["sample_steps"],
                                                   "guidance": g.cfg["guidance"]}.items())
        print(f"  {what}: FID held out {h['fid_heldout']:.1f}, KID held out "
              f"{h['kid_heldout']:.4f} (floor {h['kid_train_heldout']:.4f}), copy rate "
              f"{h['copy_rate']:.3f}", flush=True)


if __name__ == "__main__":
    main()
