"""DiffAugment, the budget in images shown, sampling from the EMA generator, and the
PatchGAN gradient penalty: the parts that make a GAN's training honest on small classes."""

from __future__ import annotations

import pytest
import torch

from medbench.errors import ParameterError
from medbench.generative import WeightAverage
from medbench.plugins.generators import dcgan
from medbench.plugins.generators._diffaug import DiffAugment, check, configure
from medbench.plugins.generators._losses import gradient_penalty
from medbench.plugins.generators.progan import ProGAN

import gan_check


def test_diffaugment_is_differentiable_and_gradients_reach_the_generator():
    torch.manual_seed(0)
    g = dcgan.DCGAN(width=8, latent=16).prepare(*gan_check.training_set(per_class=4),
                                               classes=gan_check.CLASSES)
    aug = DiffAugment()
    z = torch.randn(6, 16)
    fake = g.G(z, torch.zeros(6, dtype=torch.long))
    out = aug(fake)
    assert out.shape == fake.shape and not torch.allclose(out, fake)
    out.sum().backward()
    grads = [p.grad for p in g.G.parameters() if p.grad is not None]
    assert grads and any(float(gr.abs().sum()) > 0 for gr in grads)


@pytest.mark.parametrize("channels", [1, 3])
def test_one_draw_transforms_real_and_fake_alike(channels):
    torch.manual_seed(1)
    aug = DiffAugment()
    real = torch.rand(8, channels, 16, 16) * 2 - 1
    prm = aug.draw(8, real.shape[1:], "cpu")
    assert ("saturation" in prm) == (channels == 3)
    # the same parameters on the same images give the same images: the transform depends
    # on the draw, not on which batch it is applied to
    assert torch.equal(aug.apply(real, prm), aug.apply(real.clone(), prm))
    # and it is the same map for both batches: affine in the pixels, so the augmented
    # mixture is the mixture of the augmented batches (what the gradient penalty relies on)
    fake = torch.rand(8, channels, 16, 16) * 2 - 1
    eps = torch.rand(8, 1, 1, 1)
    mixed = aug.apply(eps * real + (1 - eps) * fake, prm)
    assert torch.allclose(mixed, eps * aug.apply(real, prm) + (1 - eps) * aug.apply(fake, prm),
                          atol=1e-5)
    # a new draw is another transform
    assert not torch.equal(aug.apply(real, prm), aug.apply(real, aug.draw(8, real.shape[1:], "cpu")))


def test_translation_shifts_and_cutout_zeroes():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2, 3] = 1.0
    shift = DiffAugment(policy=["translation"])
    prm = shift.draw(1, x.shape[1:], "cpu")
    prm["shift_y"], prm["shift_x"] = torch.tensor([1]), torch.tensor([-1])   # pad: 1 px
    out = shift.apply(x, prm)
    assert out[0, 0, 3, 2] == 1.0 and out.sum() == 1.0
    cut = DiffAugment(policy=["cutout"], cutout=0.5)
    out = cut(torch.ones(4, 1, 8, 8))
    assert torch.equal((out == 0).sum(dim=(1, 2, 3)) > 0, torch.ones(4, dtype=torch.bool))
    assert torch.equal(DiffAugment(p=0.0)(torch.ones(3, 1, 8, 8)), torch.ones(3, 1, 8, 8))


def test_ada_probability_follows_the_overfitting_heuristic():
    aug = DiffAugment(p=0.0, adaptive=True, target=0.6, speed_kimg=0.1)
    for _ in range(5):
        aug.adapt(torch.ones(32))          # D sure of every real image: r_t = 1 > 0.6
    assert aug.p > 0.5
    high = aug.p
    aug.adapt(-torch.ones(32))
    assert aug.p < high
    # p is 1 for plain DiffAugment; ADA starts from 0 unless told otherwise
    assert DiffAugment().p == 1.0 and DiffAugment(adaptive=True).p == 0.0
    assert DiffAugment(adaptive=True, p=0.3).p == 0.3


def test_diffaug_settings_are_checked():
    assert check("auto", "dcgan") == "auto" and check(False, "dcgan") is None
    assert configure("auto", 100, "dcgan") is not None and configure("auto", 10_000, "dcgan") is None
    for bad in ({"policy": ["zoom"]}, {"p": 2}, {"speed": 1}, "often"):
        with pytest.raises(ParameterError):
            check(bad, "dcgan")
    with pytest.raises(ParameterError, match="diffaug"):
        dcgan.DCGAN(diffaug={"policy": "rotate"})


def test_the_discriminator_step_sees_augmented_real_and_fake(monkeypatch):
    """Both batches of a D step go through DiffAugment with one draw."""
    seen = []
    real_apply = DiffAugment.apply

    def spy(self, x, prm):
        seen.append((id(prm), x.shape))
        return real_apply(self, x, prm)

    monkeypatch.setattr(DiffAugment, "apply", spy)
    x, y = gan_check.training_set(per_class=8)
    g = dcgan.DCGAN(width=8, latent=16, batch_size=8, epochs=1, n_critic=1, collapse_check=False,
                    diffaug=True)
    g.fit(x[y == 0], y[y == 0], classes=gan_check.CLASSES)
    steps = len(g.history)
    # per step: real and fake with the same draw, then the generator's own draw
    assert len(seen) == 3 * steps
    for k in range(steps):
        d_real, d_fake, g_step = seen[3 * k: 3 * k + 3]
        assert d_real[0] == d_fake[0] != g_step[0]
    assert any("DiffAugment" in n for n in g.notes)


def test_kimg_budget_counts_real_images_shown():
    x, y = gan_check.training_set(per_class=20)
    xc, yc = x[y == 0], y[y == 0]
    g = dcgan.DCGAN(width=8, latent=16, batch_size=8, kimg=0.1, collapse_check=False, diffaug=False)
    g.fit(xc, yc, classes=gan_check.CLASSES)
    # 100 images in batches of 8 (20 images: batches of 8, 8, 4): stops at the first >= 100
    assert 100 <= g.record["kimg"] * 1000 < 108 and g.record["stopped_by"] == "budget"
    assert g.record["steps"] == len(g.history) and g.history[-1]["kimg"] == g.record["kimg"]
    # epochs are converted: 2 epochs of 20 images show 40
    e = dcgan.DCGAN(width=8, latent=16, batch_size=8, epochs=2, collapse_check=False,
                    diffaug=False).fit(xc, yc, classes=gan_check.CLASSES)
    assert e.record["kimg"] == 0.04 and e.record["stopped_by"] == "epochs"
    # ProGAN: per stage, each step shows batch x n_critic real images to the critic
    p = ProGAN(latent=8, fmaps_base=16, fmaps_max=8, fmaps_min=4, batch_size=10, kimg=[0.02, 0.02, 0.04],
               collapse_check=False, diffaug=False)
    p.fit(xc, yc, classes=gan_check.CLASSES)
    per_stage = [sum(1 for r in p.history if r["stage"] == s) for s in range(3)]
    assert per_stage == [2, 2, 4] and p.record["kimg"] == 0.08
    with pytest.raises(ParameterError, match="kimg"):
        dcgan.DCGAN(kimg=-1)


def test_progan_samples_from_its_ema():
    x, y = gan_check.training_set(per_class=12)
    xc, yc = x[y == 0], y[y == 0]
    kw = dict(latent=8, fmaps_base=16, fmaps_max=8, fmaps_min=4, batch_size=4, epochs=[1, 1, 1], collapse_check=False,
              diffaug=False)
    averaged = {}
    real_update = WeightAverage.update

    def keep(self, net):
        real_update(self, net)
        averaged.update({k: v.clone() for k, v in self.params.items()})

    WeightAverage.update = keep
    try:
        g = ProGAN(ema=0.9, **kw).fit(xc, yc, classes=gan_check.CLASSES, seed=3)
    finally:
        WeightAverage.update = real_update
    for k, v in g.G.named_parameters():
        assert torch.equal(v.detach(), averaged[k]), k
    raw = ProGAN(ema=0.0, **kw).fit(xc, yc, classes=gan_check.CLASSES, seed=3)
    assert not torch.equal(g.sample(0, 8), raw.sample(0, 8))


def test_patchgan_gradient_penalty_equals_the_single_output_penalty_with_one_patch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, 2, 1), torch.nn.LeakyReLU(0.2),
                              torch.nn.Conv2d(4, 1, 4, 1, 0))            # 8 px -> 1 x 1 patch
    real, fake = torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8)
    torch.manual_seed(1)
    patch = gradient_penalty(lambda v: net(v), real, fake)               # N x 1 x 1 x 1
    torch.manual_seed(1)
    single = gradient_penalty(lambda v: net(v).flatten(), real, fake)    # N
    assert torch.allclose(patch, single)
    # with several patches the penalty is on the mean patch score, as the loss averages
    many = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, 1, 1))         # 8 x 8 patches
    torch.manual_seed(2)
    mean_pen = gradient_penalty(lambda v: many(v), real, fake)
    torch.manual_seed(2)
    by_mean = gradient_penalty(lambda v: many(v).mean(dim=(1, 2, 3)), real, fake)
    assert torch.allclose(mean_pen, by_mean)


def test_dcgan_depth_follows_the_image_size():
    x = torch.zeros(4, 1, 224, 224, dtype=torch.uint8)
    g = dcgan.DCGAN(width=64).prepare(x, torch.zeros(4, dtype=torch.long), classes=["a"])
    first = g.G.body.net[0]
    assert g.blocks == 5 and first.kernel_size == (7, 7)       # 7 -> 14 -> ... -> 224
    assert sum(p.numel() for p in g.G.parameters()) < 30e6     # not 100M in one layer
    small = dcgan.DCGAN(width=8).prepare(*gan_check.training_set(per_class=2), classes=gan_check.CLASSES)
    assert small.blocks == 2                                   # 7 -> 14 -> 28
    with pytest.raises(ParameterError, match="n_layers"):
        dcgan.DCGAN(n_layers="deep")


def test_cgan_fc_is_seed_001s_cgan():
    g = dcgan.CGAN(arch="fc")
    assert g.cfg["loss"] == "bce" and g.cfg["spectral_norm"] is False
    assert g.cfg["g_lr"] == g.cfg["d_lr"] == 2e-4
    assert dcgan.CGAN(arch="fc", loss="hinge").cfg["loss"] == "hinge"   # the suite's word wins
    assert dcgan.CGAN().cfg["loss"] == "hinge"                          # conv: seed 003's
    x, y = gan_check.training_set(per_class=4)
    fc = dcgan.CGAN(arch="fc", latent=8).prepare(x, y, classes=gan_check.CLASSES)
    assert isinstance(fc.D, dcgan.FCD) and not any("parametrizations" in n for n, _ in
                                                   fc.D.named_parameters())


def test_spectral_norm_goes_through_parametrizations():
    g = dcgan.DCGAN(width=8).prepare(*gan_check.training_set(per_class=2), classes=gan_check.CLASSES)
    names = [n for n, _ in g.D.named_parameters()]
    assert any("parametrizations.weight.original" in n for n in names)


@pytest.mark.parametrize("family", [dcgan.DCGAN, dcgan.CGAN])
def test_a_snapshot_equals_a_separate_fit_of_that_budget(family):
    """One fit of 0.4 kimg that keeps snapshots at 0.1 and 0.25 kimg samples, at each,
    exactly what a fit stopped there samples (same seed, same threads), EMA included;
    and the snapshots survive the cache's state round trip."""
    x, y = gan_check.training_set(per_class=12)
    small = {"width": 8, "latent": 16, "batch_size": 8, "collapse_check": False,
             "diffaug": True}
    long = family(**small, kimg=0.4, snapshots_kimg=[0.25, 0.1]).fit(
        x, y, classes=gan_check.CLASSES, seed=3)
    assert sorted(long.snapshots) == [0.1, 0.25]
    restored = family(**small, kimg=0.4, snapshots_kimg=[0.1, 0.25]).load_state_dict(
        long.state_dict())
    for k in (0.1, 0.25):
        alone = family(**small, kimg=k).fit(x, y, classes=gan_check.CLASSES, seed=3)
        snap = long.at(k)
        assert snap.record["kimg"] == alone.record["kimg"] and snap.record["steps"] == alone.record["steps"]
        for c in long.class_ids:
            assert torch.equal(snap.sample(c, 16), alone.sample(c, 16))
            assert torch.equal(restored.at(k).sample(c, 16), alone.sample(c, 16))
    # the end of the fit is not a snapshot of an earlier point
    assert not torch.equal(long.sample(long.class_ids[0], 16), long.at(0.25).sample(long.class_ids[0], 16))
    with pytest.raises(Exception, match="no snapshot at 0.3 kimg"):
        long.at(0.3)


def test_snapshot_milestones_are_checked_before_training():
    with pytest.raises(ParameterError, match="snapshots_kimg"):
        dcgan.DCGAN(kimg=1, snapshots_kimg=[0.5, 2])
    with pytest.raises(ParameterError, match="snapshots_kimg"):
        dcgan.DCGAN(snapshots_kimg=["5"])
    with pytest.raises(ParameterError, match="snapshots_kimg"):
        ProGAN(kimg=[1, 1, 1], snapshots_kimg=[4])


def test_balanced_batches_show_each_class_equally_often():
    """``balanced: true`` (conditional GANs): the minority class is drawn as often as the
    majority; without it, in proportion to its count."""
    from medbench.plugins.generators._adversarial import real_batches
    torch.manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 270)
    plain = torch.cat([labels[i] for _ in range(20) for i in real_batches(300, 16, "cpu")])
    fair = torch.cat([labels[i] for _ in range(20) for i in real_batches(300, 16, "cpu", labels)])
    assert len(plain) == len(fair) == 20 * 300
    assert float((plain == 0).float().mean()) == pytest.approx(0.1)
    assert float((fair == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_cgan_balanced_feeds_its_discriminator_balanced_batches(monkeypatch):
    seen = []
    real_embed = dcgan.ConvD.forward

    def spy(self, x, y=None):
        if y is not None and x.requires_grad is False:
            seen.append(y.clone())
        return real_embed(self, x, y)

    monkeypatch.setattr(dcgan.ConvD, "forward", spy)
    x, y = gan_check.training_set(per_class=8)
    keep = torch.cat([torch.nonzero(y == 0).ravel()[:2], torch.nonzero(y != 0).ravel()])
    x, y = x[keep], y[keep]
    g = dcgan.CGAN(width=8, latent=16, batch_size=8, kimg=1, n_critic=1, collapse_check=False,
                   diffaug=False, balanced=True)
    g.fit(x, y, classes=gan_check.CLASSES)
    drawn = torch.cat(seen)
    share = float((drawn == 0).float().mean())
    assert share > 2 * 2 / len(y)       # well above the class's share of the images
    with pytest.raises(ParameterError):
        dcgan.CGAN(balanced="yes")


@pytest.mark.parametrize("family,extra", [(dcgan.DCGAN, {"diffaug": {"adaptive": True}}),
                                          (dcgan.CGAN, {"balanced": True, "diffaug": True})])
def test_a_longer_budget_continues_a_shorter_fit_and_ends_where_a_separate_fit_ends(family, extra):
    """A fit of 0.25 kimg (stopped mid-epoch: 24 or 36 images, batch 8), continued to
    0.6 kimg from its saved state (after the cache's round trip), samples exactly what a
    fit of 0.6 kimg from scratch samples, with the same discriminator, the same counts
    and the same loss log; snapshots past the shorter budget are kept on the way."""
    x, y = gan_check.training_set(per_class=12)
    small = {"width": 8, "latent": 16, "batch_size": 8, "collapse_check": False, **extra}
    short = family(**small, kimg=0.25, snapshots_kimg=[0.1]).fit(x, y, classes=gan_check.CLASSES,
                                                                 seed=5)
    state = family(**small, kimg=0.25, snapshots_kimg=[0.1]).load_state_dict(
        short.state_dict()).state_dict()
    cont = family(**small, kimg=0.6, snapshots_kimg=[0.1, 0.4])
    assert cont.continues(state) is None
    cont.fit(x, y, classes=gan_check.CLASSES, seed=5, resume=state)
    alone = family(**small, kimg=0.6, snapshots_kimg=[0.1, 0.4]).fit(x, y, classes=gan_check.CLASSES,
                                                                    seed=5)
    assert cont.record["kimg"] == alone.record["kimg"] and cont.record["steps"] == alone.record["steps"]
    assert [r["d_loss"] for r in cont.history] == [r["d_loss"] for r in alone.history]
    for k, v in alone.D.state_dict().items():
        assert torch.equal(cont.D.state_dict()[k], v), k
    for c in alone.class_ids:
        assert torch.equal(cont.sample(c, 16), alone.sample(c, 16))
        for k in (0.1, 0.4):
            assert torch.equal(cont.at(k).sample(c, 16), alone.at(k).sample(c, 16))
    assert not torch.equal(short.sample(alone.class_ids[0], 16), alone.sample(alone.class_ids[0], 16))
    # what cannot be continued says why, and fit refuses it
    assert "not larger" in family(**small, kimg=0.2).continues(state)
    assert "other parameters" in family(**{**small, "width": 4}, kimg=0.6).continues(state)
    assert "no snapshot at [0.2]" in family(**small, kimg=0.6, snapshots_kimg=[0.2]).continues(state)
    with pytest.raises(Exception, match="cannot continue"):
        family(**small, kimg=0.2).fit(x, y, classes=gan_check.CLASSES, seed=5, resume=state)
    assert "cannot be continued" in ProGAN(kimg=[1, 1, 1]).continues(state)


@pytest.mark.parametrize("family,extra", [(dcgan.DCGAN, {}), (dcgan.CGAN, {"balanced": True})])
def test_batch_norm_statistics_are_those_of_the_weights_sampled_from(family, extra):
    """A fit that samples from its weight average gives G's batch norms the statistics
    of the averaged weights: each running mean and variance matches what those weights
    produce on a large batch of fresh noise (of the training class mix), not what the
    live weights of the last steps produced. A fast learning rate and a slow average
    keep the two nets apart, so the statistics of the live weights would fail this."""
    x, y = gan_check.training_set(per_class=12)
    g = family(width=8, latent=16, batch_size=8, kimg=1, g_lr=1e-2, ema=0.99,
               collapse_check=False, diffaug=False, **extra)
    g.fit(x, y, classes=gan_check.CLASSES, seed=2)
    norms = [m for m in g.G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    seen = {}
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.__setitem__(m, inp[0].detach()))
             for m in norms]
    big = 4096
    labels = (torch.randint(len(g.class_ids), (big,)) if family.conditional
              else torch.zeros(big, dtype=torch.long))
    g.G.train()
    with torch.no_grad():
        g._generate(torch.randn(big, 16), labels)
    g.G.eval()
    for h in hooks:
        h.remove()
    for m in norms:
        act = seen[m].transpose(0, 1).flatten(1)
        mean, var = act.mean(1), act.var(1)
        scale = var.sqrt().clamp(min=1e-3)
        assert float(((m.running_mean - mean).abs() / scale).max()) < 0.1
        assert float((m.running_var / var).log().abs().max()) < 0.15
