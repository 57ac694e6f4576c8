"""The ddpm generator (plugins/generators/ddpm.py): it learns its data (the judge every
GAN faces, tests/gan_check.py), its snapshots and continued fits are the fits of those
budgets, it takes grey and RGB images of 28 to 224 px, and it refuses what it cannot fit
before any work."""

from __future__ import annotations

import pytest
import torch

import gan_check
from medbench.errors import ParameterError, SuiteError
from medbench.plugins.generators.ddpm import DDPM, DDPMPerClass, auto_channels
from medbench.registry import registry

# 15 kimg of the phantom set (200 images per class) with a small UNet: about 35 s on two
# cores. Measured (seed 0): recognition 0.67 with guidance 2 (0.51 without), diversity
# 0.72 of the real images'; the untrained UNet draws noise the judge calls one class (1/3).
LEARNING = {"kimg": 15, "channels": [16, 32, 32], "lr": 1e-3, "ema": 0.99, "sample_steps": 10,
            "guidance": 2.0, "collapse_check": False, "snapshots": 1}
TINY = {"channels": [8, 16, 16], "sample_steps": 3, "collapse_check": False}


def test_ddpm_learns_each_class_and_untrained_does_not():
    trained = gan_check.fit_conditional(DDPM, LEARNING)
    untrained = gan_check.fit_conditional(DDPM, LEARNING, train=False)
    r_t, d_t = gan_check.recognition(trained.sample), gan_check.diversity(trained.sample)
    r_u = gan_check.recognition(untrained.sample)
    _, ceiling = gan_check.judge()
    print(f"ddpm: recognition trained {r_t:.3f} (real-image ceiling {ceiling:.3f}), "
          f"untrained {r_u:.3f}; diversity {d_t:.3f}")
    assert r_t >= 0.55, f"ddpm samples are not recognised as their class ({r_t:.3f})"
    assert d_t >= 0.2, f"ddpm samples are not varied like the data ({d_t:.3f})"
    # noise left in the samples makes them more spread than real images, not less
    assert d_t <= 1.3, f"ddpm samples are noisier than the data ({d_t:.3f})"
    assert r_u <= 0.45
    # the loss fell: the last steps' denoising error is well below the first steps'
    first = sum(r["loss"] for r in trained.history[:20]) / 20
    last = sum(r["loss"] for r in trained.history[-20:]) / 20
    assert last < 0.5 * first


@pytest.mark.parametrize("cls", [DDPM, DDPMPerClass])
def test_ddpm_snapshots_and_continued_fits_equal_separate_fits(cls):
    x, y = gan_check.training_set(per_class=12)
    if not cls.conditional:
        x, y = x[y == 0], y[y == 0]
    kw = {**TINY, "balanced": cls.conditional}
    long = cls(kimg=0.2, snapshots_kimg=[0.1], **kw).fit(x, y, classes=gan_check.CLASSES, seed=3)
    short = cls(kimg=0.1, **kw).fit(x, y, classes=gan_check.CLASSES, seed=3)
    c = int(y[0])
    assert torch.equal(long.at(0.1).sample(c, 8), short.sample(c, 8))
    assert not torch.equal(long.sample(c, 8), short.sample(c, 8))
    more = cls(kimg=0.2, **kw).fit(x, y, classes=gan_check.CLASSES, seed=3, resume=short.state_dict())
    alone = cls(kimg=0.2, **kw).fit(x, y, classes=gan_check.CLASSES, seed=3)
    assert torch.equal(more.sample(c, 8), alone.sample(c, 8))
    # the cache's round trip keeps the model, its snapshots and its samples
    back = cls(kimg=0.2, snapshots_kimg=[0.1], **kw).load_state_dict(long.state_dict())
    assert torch.equal(back.sample(c, 8), long.sample(c, 8))
    assert torch.equal(back.at(0.1).sample(c, 8), short.sample(c, 8))
    assert [r["step"] for r in long.history] == list(range(1, len(long.history) + 1))
    assert long.grids and long.grids[-1][1].dtype == torch.uint8


def test_ddpm_takes_grey_and_rgb_from_28_to_224_px():
    assert auto_channels(28) == (32, 64, 64) and len(auto_channels(224)) == 4
    for size in (28, 32, 64, 128, 224):
        DDPM(kimg=1).check_data(size, 3)          # the automatic widths fit every size
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 4)
    g = DDPM(kimg=0.02, **TINY).fit(x, y, classes=["a", "b"], seed=0)
    img = g.sample(1, 4)
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.uint8
    assert torch.equal(img, g.sample(1, 4))          # deterministic from the seed
    # a 224 px RGB UNet builds with the automatic widths (4 levels down to 28 px)
    big = DDPM(kimg=1).prepare(torch.zeros(2, 3, 224, 224, dtype=torch.uint8), torch.tensor([0, 1]),
                               classes=["a", "b"])
    assert [b.__class__.__name__ for b in big.G.down_blocks][-1] == "AttnDownBlock2D"
    assert len(big.G.down_blocks) == 4


def test_ddpm_refuses_bad_settings_before_training():
    with pytest.raises(ParameterError, match="kimg"):
        DDPM(kimg=None)
    with pytest.raises(ParameterError, match="divisible by groups"):
        DDPM(kimg=1, channels=[12, 24], groups=8)
    with pytest.raises(ParameterError, match="snapshots_kimg"):
        DDPM(kimg=1, snapshots_kimg=[2])
    with pytest.raises(SuiteError, match="cannot be halved"):
        DDPM(kimg=1, channels=[16, 32, 32, 32]).check_data(28, 1)
    with pytest.raises(ParameterError):
        DDPM(kimg=1, prediction="x0")
    info = registry().get("generators", "ddpm")
    assert info.obj.conditional and not registry().get("generators", "ddpm-per-class").obj.conditional


def test_guidance_runs_the_unet_on_conditional_and_null_labels(monkeypatch):
    x, y = gan_check.training_set(per_class=4)
    g = DDPM(kimg=0.01, **TINY, guidance=3.0).fit(x, y, classes=gan_check.CLASSES, seed=0)
    seen = []
    forward = g.G.forward

    def spy(sample, t, class_labels=None, **kw):
        seen.append(class_labels.clone())
        return forward(sample, t, class_labels=class_labels, **kw)
    monkeypatch.setattr(g.G, "forward", spy)
    g.sample(2, 5)
    assert len(seen) == TINY["sample_steps"]
    assert seen[0].tolist() == [2] * 5 + [len(gan_check.CLASSES)] * 5     # cond, then null
    seen.clear()
    g.cfg["guidance"] = 1.0                        # no guidance: one conditional pass
    g.sample(2, 5)
    assert seen[0].tolist() == [2] * 5
