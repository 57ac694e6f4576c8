"""Do the discriminators of a run discriminate? Reads the ``losses.csv`` that every GAN
fit of ``medbench run`` leaves under ``RESULTS/generators/<arm>/<seed-fold-class>/`` and
prints, per fit, the means over the last half of its training of the discriminator's
loss and of the margin D(real) - D(fake) (for ProGAN: the last half of its last stage,
the resolution its images are drawn at).

Chance levels, for reading the table: hinge loss 2.0 (DCGAN, cGAN with the hinge), BCE
2 ln 2 = 1.39 (vanilla GAN, cGAN `arch: fc`), least squares 0.25 (LSGAN: D = 0.5 on
real and generated images alike, targets 1 and 0, the sum halved); a margin near 0 means
the discriminator cannot tell real from generated images. A WGAN critic (ProGAN) has no
chance level for its loss; its margin is the Wasserstein estimate.

Fits with ADA's adaptive augmentation (``diffaug: {adaptive: true}``) log its probability
``augment_p`` at every step; for them the table adds its highest value over the fit, the
step it was reached at, and its last value.

Reads files only (no torch); run it as

    python tests/perf/discriminator_margins.py results/pneumoniamnist-gan-cpu
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def last_half(rows: list[dict]) -> list[dict]:
    if rows and "stage" in rows[0]:
        last = max(int(r["stage"]) for r in rows)
        rows = [r for r in rows if int(r["stage"]) == last]
    return rows[len(rows) // 2:]


def mean(rows: list[dict], key: str) -> float:
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "", "nan")]
    return sum(vals) / len(vals) if vals else float("nan")


def main(results: Path) -> None:
    files = sorted((results / "generators").glob("*/*/losses.csv"))
    if not files:
        sys.exit(f"error: no generators/*/*/losses.csv under {results}")
    print(f"{'arm':<10} {'fit':<18} {'steps':>6} {'D loss':>7} {'margin':>7}   (last half)")
    for f in files:
        with f.open() as fh:
            rows = list(csv.DictReader(fh))
        half = last_half(rows)
        print(f"{f.parent.parent.name:<10} {f.parent.name:<18} {len(rows):>6} "
              f"{mean(half, 'd_loss'):>7.3f} {mean(half, 'margin'):>7.3f}{ada(rows)}")


def ada(rows: list[dict]) -> str:
    """ADA's probability over the fit: highest (at which step) and last; '' without ADA."""
    ps = [(float(r["augment_p"]), int(r["step"])) for r in rows if r.get("augment_p") not in (None, "")]
    if not ps:
        return ""
    top, at = max(ps, key=lambda t: t[0])
    return f"   ADA p: max {top:.3f} at step {at}, last {ps[-1][0]:.3f}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/perf/discriminator_margins.py RESULTS_DIR")
    main(Path(sys.argv[1]))
