"""What re-estimating G's batch-norm statistics for its averaged weights does to the
samples of fits already in the generator cache (no refit): each cached DCGAN-family fit
of PneumoniaMNIST's `normal` class (or the conditional one, sampled for `normal`) is
sampled twice, with the running statistics it was saved with (gathered on the live
weights of the last steps) and with statistics re-estimated for the weights it samples
with (``NeuralGenerator._standing_stats``, what a fit now does at its end), each
measured as `medbench fidelity` measures. Not collected by pytest; run as

    MEDBENCH_DATA=../shared/data python tests/perf/standing_stats.py [--since ISO-DATE] [--only cgan ...]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from medbench.cache import cache_root
from medbench.extractors import INCEPTION, resolve_extractor
from medbench.plugins.generators import dcgan
from medbench.quality import FidelityMeter

FAMILIES = {c.name: c for c in (dcgan.DCGAN, dcgan.CGAN, dcgan.LSGAN, dcgan.Vanilla)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--since", default="", help="only entries created at or after this ISO time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=sorted(FAMILIES), help="generator names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("MEDBENCH_DATA", "../shared/data"))
    z = np.load(root / "medmnist" / "pneumoniamnist.npz")
    y_all = torch.from_numpy(z["train_labels"].ravel()).long()
    x = torch.from_numpy(z["train_images"][:, None]).contiguous()[y_all == 0]
    test = torch.from_numpy(z["test_images"][z["test_labels"].ravel() == 0][:, None]).contiguous()
    meter = FidelityMeter(resolve_extractor(INCEPTION), "cpu")
    pick = np.sort(np.random.default_rng(0).choice(len(x), 300, replace=False))
    f_train, f_test = meter.features(x[pick]), meter.features(test)
    for side in sorted((cache_root() / "generators").glob("*/*.json")):
        meta = json.loads(side.read_text())
        cfg = meta.get("config", {})
        if cfg.get("generator") not in args.only or meta.get("created", "") < args.since:
            continue
        if cfg.get("class") not in (None, 0):
            continue
        cls = FAMILIES[cfg["generator"]]
        entry = torch.load(side.with_suffix(".pt"), map_location="cpu", weights_only=False)
        if not isinstance(entry, dict) or "state" not in entry:     # a cached failure
            continue
        state = entry["state"]
        g = cls(**state["cfg"]).load_state_dict(state)
        # the training labels a fit saw: both classes for the conditional one
        y = y_all if cls.conditional else torch.zeros(len(x), dtype=torch.long)
        rows = []
        for label in ("as saved", "re-estimated"):
            if label == "re-estimated":
                g._standing_stats(y)
            f = meter.features(g.sample(0, 300))
            h = meter.heldout(f, f_train, f_test)
            rows.append(f"{label}: FID vs training {meter.fid(f, f_train):.1f}, held out "
                        f"KID {h['kid_heldout']:.4f} FID {h['fid_heldout']:.1f}, copy rate "
                        f"{h['copy_rate']:.3f}")
        print(f"{meta['describe']} ({meta['created']}):\n  " + "\n  ".join(rows), flush=True)


if __name__ == "__main__":
    main()
