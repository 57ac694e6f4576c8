"""Generator plugins other than ProGAN (see test_progan.py): the DCGAN family learns its
data, SMOTE and augmentation make what they claim, and the engine fits generators on
the training part of a fold only, caches them, and turns divergence into a failed cell."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import gan_check
from conftest import tiny_suite
from medbench.api import Generator
from medbench.engine import Engine, load_dataset
from medbench.errors import DataError, GeneratorDiverged, SuiteError
from medbench.generative import mean_pairwise_distance
from medbench.plugins.generators import dcgan
from medbench.plugins.generators._losses import d_loss, g_loss, gradient_penalty, interpolate
from medbench.plugins.generators.classical import Augment, Smote
from medbench.registry import PluginInfo, registry
from medbench.runner import run_suite
from medbench.suite import load_suite

# Budgets that learn the 28-px phantom classes in about a minute each on 2 cores, with
# the defaults' DiffAugment (on for classes this small). The hinge + spectral-norm +
# PatchGAN members keep seed 003's architecture and n_critic 2 but run the two-time-scale
# rule (D's lr twice G's: 5e-4 / 1e-3), Adam betas (0, 0.9) and no dropout in D: with
# G's lr twice D's, as seed 003's 2e-4 / 1e-4, the discriminator sits at chance and
# recognition was 0.516 under DiffAugment (measured).
FAST = {"g_lr": 5e-4, "d_lr": 1e-3, "betas": [0.0, 0.9], "dropout": 0.0}
LEARNING = {
    "vanilla": {"epochs": 80, "width": 32},
    "lsgan": {"epochs": 150},
    "dcgan": {"epochs": 60, "width": 32, **FAST},
    "cgan": {"epochs": 60, "width": 32, **FAST},
}


def _fit(name: str, train: bool):
    cls = registry().get("generators", name).obj
    if cls.conditional:
        g = gan_check.fit_conditional(cls, LEARNING[name], train=train)
        return g.sample
    gens = gan_check.fit_per_class(cls, LEARNING[name], train=train)
    return lambda c, n: gens[c].sample(c, n)


@pytest.mark.parametrize("name", sorted(LEARNING))
def test_gan_learns_each_class_and_untrained_does_not(name):
    trained = _fit(name, train=True)
    untrained = _fit(name, train=False)
    r_t, d_t = gan_check.recognition(trained), gan_check.diversity(trained)
    r_u = gan_check.recognition(untrained)
    _, ceiling = gan_check.judge()
    print(f"{name}: recognition trained {r_t:.3f} (real-image ceiling {ceiling:.3f}), "
          f"untrained {r_u:.3f}; diversity {d_t:.3f}")
    assert r_t >= 0.55, f"{name} samples are not recognised as their class ({r_t:.3f})"
    # a fifth of the real images' spread: far from a collapse (0) or the class-mean image;
    # the conditional GAN measured 0.29 (the unconditional ones 0.8 to 1.4)
    assert d_t >= 0.2, f"{name} samples are not varied like the data ({d_t:.3f})"
    assert r_u <= 0.45


# ------------------------------------------------------------------ losses


def test_losses_have_their_textbook_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert math.isclose(float(d_loss("hinge", real, fake)), (0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert math.isclose(float(g_loss("hinge", fake)), 0.75)
    assert math.isclose(float(d_loss("mse", real, fake)), 0.5 * ((1 + 0.25) / 2 + (4 + 0.25) / 2))
    assert math.isclose(float(d_loss("wgan-gp", real, fake)), -0.75 - 1.25)
    sp = torch.nn.functional.softplus
    assert math.isclose(float(d_loss("bce", real, fake)),
                        float(sp(-real).mean() + sp(fake).mean()), rel_tol=1e-6)


def test_gradient_penalty_is_zero_for_a_unit_slope_critic():
    w = torch.zeros(1, 3, 4, 4)
    w[0, 0, 0, 0] = 1.0                                  # ||grad|| = 1 everywhere
    critic = lambda x: (x * w).flatten(1).sum(1)        # noqa: E731
    real, fake = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    assert float(gradient_penalty(critic, real, fake)) == pytest.approx(0.0, abs=1e-10)
    critic2 = lambda x: 3 * (x * w).flatten(1).sum(1)   # noqa: E731
    assert float(gradient_penalty(critic2, real, fake)) == pytest.approx(4.0)


def test_interpolates_are_per_sample():
    real, fake = torch.zeros(64, 1, 2, 2), torch.ones(64, 1, 2, 2)
    x_hat, eps = interpolate(real, fake)
    assert eps.shape == (64, 1, 1, 1)
    assert len(torch.unique(eps)) == 64
    assert torch.allclose(x_hat, (1 - eps).expand_as(x_hat))


# ------------------------------------------------------------------ DCGAN family


def test_family_defaults_follow_the_seed_papers():
    d = dcgan.DCGAN().cfg
    assert (d["loss"], d["spectral_norm"], d["patch"], d["g_lr"], d["d_lr"], d["n_critic"],
            d["latent"], d["batch_size"]) == ("hinge", True, True, 2e-4, 1e-4, 2, 256, 32)
    c = dcgan.CGAN()
    assert c.conditional and c.cfg["latent"] == 100
    assert dcgan.LSGAN().cfg["loss"] == "mse" and dcgan.LSGAN().cfg["arch"] == "fc"
    assert dcgan.Vanilla().cfg["loss"] == "bce" and dcgan.Vanilla().cfg["arch"] == "conv"


@pytest.mark.parametrize("loss", ["bce", "mse", "hinge", "wgan-gp"])
@pytest.mark.parametrize("patch", [True, False])
def test_every_loss_and_discriminator_trains_and_samples(loss, patch):
    x, y = gan_check.training_set(per_class=12)
    for cls in (dcgan.DCGAN, dcgan.CGAN):
        g = cls(loss=loss, patch=patch, spectral_norm=loss == "hinge", epochs=1, width=8,
                batch_size=8, collapse_check=False)
        g.fit(x, y, classes=gan_check.CLASSES, seed=0) if cls.conditional else \
            g.fit(x[y == 1], y[y == 1], classes=gan_check.CLASSES, seed=0)
        out = g.sample(1, 5)
        assert out.shape == (5, 1, 28, 28) and out.dtype == torch.uint8
        assert all(math.isfinite(r["d_loss"]) for r in g.history)


def test_patch_discriminator_scores_7x7_patches_at_28px():
    x, y = gan_check.training_set(per_class=4)
    g = dcgan.DCGAN(width=8).prepare(x, y, classes=gan_check.CLASSES)
    assert g.D(x[:3].float()).shape == (3, 1, 7, 7)
    g2 = dcgan.CGAN(width=8, n_layers=4).prepare(x, y, classes=gan_check.CLASSES)
    # projection: the class changes the score of the same image
    s0 = g2.D(x[:3].float() / 127.5 - 1, torch.zeros(3, dtype=torch.long))
    s1 = g2.D(x[:3].float() / 127.5 - 1, torch.ones(3, dtype=torch.long))
    assert not torch.allclose(s0, s1)
    assert any("capped" in n for n in g2.notes)        # 4 blocks asked, 2 fit 28 px


def test_unknown_or_bad_parameter_is_a_suite_error():
    with pytest.raises(SuiteError, match="unknown parameter 'epoch'"):
        dcgan.DCGAN(epoch=3)
    with pytest.raises(SuiteError, match="loss = 'l1'"):
        dcgan.DCGAN(loss="l1")


def test_nan_loss_is_reported_as_divergence():
    x, y = gan_check.training_set(per_class=16)
    g = dcgan.Vanilla(epochs=3, g_lr=1e30, d_lr=1e30, width=8)
    with pytest.raises(GeneratorDiverged, match="vanilla diverged"):
        g.fit(x[y == 0], y[y == 0], classes=gan_check.CLASSES, seed=0)


def test_collapse_to_one_image_is_reported():
    x, y = gan_check.training_set(per_class=16)
    g = dcgan.Vanilla(epochs=1, width=8)
    g.prepare(x[y == 0], y[y == 0], classes=gan_check.CLASSES)
    # a generator that ignores its noise: every sample is the same image
    for m in g.G.modules():
        if isinstance(m, torch.nn.ConvTranspose2d) and m.in_channels == g.latent_size():
            m.weight.data.zero_()
    with pytest.raises(GeneratorDiverged, match="collapsed"):
        g._check_collapse(x[y == 0], y[y == 0])


def test_sampling_is_deterministic_and_state_round_trips():
    x, y = gan_check.training_set(per_class=16)
    g = dcgan.CGAN(epochs=1, width=8, collapse_check=False).fit(
        x, y, classes=gan_check.CLASSES, seed=3)
    a = g.sample(2, 10)
    g.sample(0, 7)                                       # sampling something else first
    assert torch.equal(g.sample(2, 10), a)
    h = dcgan.CGAN(epochs=1, width=8, collapse_check=False).load_state_dict(g.state_dict())
    assert torch.equal(h.sample(2, 10), a)
    assert h.history == g.history


# ------------------------------------------------------------------ SMOTE, augment


def _flat_classes(values_by_class):
    """Images of constant grey values, so an interpolation is easy to recognise."""
    imgs, labels = [], []
    for c, vals in enumerate(values_by_class):
        for v in vals:
            imgs.append(torch.full((1, 6, 6), v, dtype=torch.uint8))
            labels.append(c)
    return torch.stack(imgs), torch.tensor(labels)


def test_smote_interpolates_between_neighbours_of_the_same_class():
    x, y = _flat_classes([[0, 10, 200, 210, 220, 230, 240, 250], [100, 110, 120]])
    g = Smote(k_neighbors=1).fit(x, y, classes=["a", "b"], seed=0)
    out = g.sample(1, 50)
    assert out.shape == (50, 1, 6, 6) and out.dtype == torch.uint8
    vals = out.flatten(1)
    assert (vals == vals[:, :1]).all()                   # still flat images
    assert ((vals[:, 0] >= 100) & (vals[:, 0] <= 120)).all()
    out0 = Smote(k_neighbors=1).fit(x, y, classes=["a", "b"], seed=0).sample(0, 200)
    v0 = out0.flatten(1)[:, 0]
    # nearest neighbours only: nothing between the two clusters of class a (10 .. 200)
    assert not ((v0 > 10) & (v0 < 200)).any()
    assert torch.equal(out, g.sample(1, 50))             # deterministic


def test_smote_reduces_k_with_a_note_and_refuses_a_single_image():
    x, y = _flat_classes([[0, 50, 100, 150, 200, 250], [10, 20, 30], [5]])
    g = Smote().fit(x, y, classes=["a", "b", "c"], seed=0)
    assert g.sample(1, 4).shape[0] == 4
    assert any("k_neighbors reduced from 5 to 2" in n for n in g.notes)
    with pytest.raises(DataError, match="smote needs at least 2"):
        g.sample(2, 3)


def test_smote_in_pca_space_decodes_images_and_says_so():
    x, y = gan_check.training_set(per_class=30)
    g = Smote(space="pca", components=8).fit(x, y, classes=gan_check.CLASSES, seed=0)
    out = g.sample(0, 20)
    assert out.shape == (20, 1, 28, 28)
    assert any("PCA reconstructions" in n for n in g.notes)


def test_augment_makes_transformed_copies_of_the_class():
    x, y = gan_check.training_set(per_class=30)
    g = Augment().fit(x, y, classes=gan_check.CLASSES, seed=0)
    out = g.sample(2, 40)
    assert out.shape == (40, 1, 28, 28) and torch.equal(out, g.sample(2, 40))
    pool = x[y == 2].float()
    nearest = torch.cdist(out.flatten(1).float(), pool.flatten(1)).min(1).values
    others = torch.cdist(out.flatten(1).float(), x[y != 2].flatten(1).float()).min(1).values
    assert (nearest > 0).float().mean() > 0.9            # transformed, not copied
    assert (nearest < others).float().mean() > 0.6       # still closest to its own class
    with pytest.raises(SuiteError):
        Augment(rotate=500)


# ------------------------------------------------------------------ engine


class _Spy(Generator):
    """A generator that records what it was fitted on and returns constant images."""

    name = "spy"
    conditional = True
    seen: list[torch.Tensor] = []

    def fit(self, images, labels, **kw):
        _Spy.seen.append(images.clone())
        self.shape = images.shape[1:]
        return self

    def sample(self, c, n):
        return torch.full((n, *self.shape), 7, dtype=torch.uint8)


def test_generators_see_only_the_training_part_and_synthetic_never_leaves_it(write_suite,
                                                                             monkeypatch):
    reg = registry()
    monkeypatch.setitem(reg.plugins["generators"], "spy",
                        PluginInfo("spy", "generators", _Spy, "tests", "0", __name__))
    _Spy.seen = []
    loaded = load_suite(write_suite(tiny_suite(arms=[{"name": "spy", "generator": "spy"}])))
    ds, _ = load_dataset(loaded)
    engine = Engine(loaded, ds, torch.device("cpu"))
    arm = engine.arm("spy")
    for fold in engine.folds(0):
        x, y, synth, wanted = engine.training_set(arm, fold, 0)
        fitted_on = _Spy.seen[-1]
        assert torch.equal(fitted_on, ds.images[torch.from_numpy(fold.train)])
        assert (x[synth] == 7).all() and not (x[~synth] == 7).all()
        held = ds.images[torch.from_numpy(np.concatenate([fold.val, fold.test]))]
        assert not (held.flatten(1) == 7).all(1).any()   # no synthetic image held out
        assert len(set(fold.train) & (set(fold.val) | set(fold.test))) == 0


def test_generators_are_cached_across_classifiers_and_reruns(write_suite, tmp_path, monkeypatch):
    calls = []
    orig = dcgan.DCGAN._train

    def counting(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(dcgan.DCGAN, "_train", counting)
    suite = tiny_suite(
        arms=[{"name": "dcgan", "generator": "dcgan", "injection": {"policy": "balance"}},
              {"name": "dcgan-siir", "generator": "dcgan",
               "injection": {"policy": "complementary", "siir": 0.3}}],
        classifiers=[{"name": "smallcnn"}, {"name": "smallcnn", "label": "cnn2"}],
        generator_params={"dcgan": {"epochs": 1, "width": 8, "collapse_check": False}},
        protocol={"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 1},
        training={"epochs": 1, "batch_size": 16})
    p = write_suite(suite)
    run_suite(load_suite(p), tmp_path / "a", quiet=True)
    assert len(calls) == 2                               # two minority classes, one fold
    run_suite(load_suite(p), tmp_path / "b", quiet=True)
    assert len(calls) == 2                               # fresh results folder, same cache
    art = list((tmp_path / "a" / "generators" / "dcgan").glob("*/info.json"))
    assert len(art) == 2
    info = json.loads(art[0].read_text())
    assert info["steps"] > 0 and info["params"]["epochs"] == 1
    assert list(art[0].parent.glob("samples_*.png")) and (art[0].parent / "losses.png").is_file()
    suite["generator_params"]["dcgan"]["epochs"] = 2     # another config: refit
    run_suite(load_suite(write_suite(suite, "s2.yaml")), tmp_path / "c", quiet=True)
    assert len(calls) == 4


def test_diverged_generator_fails_its_cells_and_the_suite_goes_on(write_suite, tmp_path):
    suite = tiny_suite(
        arms=[{"name": "none"},
              {"name": "broken", "generator": "vanilla",
               "params": {"epochs": 2, "g_lr": 1e30, "d_lr": 1e30, "width": 8}}],
        protocol={"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 1},
        training={"epochs": 1, "batch_size": 16})
    df = run_suite(load_suite(write_suite(suite)), tmp_path / "r", quiet=True)
    assert set(df.arm) == {"none"}
    failed = list((tmp_path / "r" / "cells").glob("*.failed.json"))
    assert len(failed) == 1
    assert "diverged" in json.loads(failed[0].read_text())["reason"]


def test_diversity_measure_tells_copies_from_varied_images():
    x, y = gan_check.training_set(per_class=20)
    assert mean_pairwise_distance(x[:1].repeat(10, 1, 1, 1)) == 0
    assert mean_pairwise_distance(x[:10]) > 100


# ------------------------------------------------------------------ injection properties


def test_injection_policies_hold_their_counts_on_random_class_sizes():
    from medbench import injection
    rng = np.random.default_rng(0)
    for _ in range(500):
        k = int(rng.integers(2, 8))
        counts = rng.integers(1, 5000, size=k).tolist()
        classes = [f"c{i}" for i in range(k)]
        n_max, total_real = max(counts), sum(counts)
        bal = injection.plan("balance", counts, classes)
        assert [c + b for c, b in zip(counts, bal)] == [n_max] * k
        siir = float(rng.uniform(0, 1))
        comp = injection.plan("complementary", counts, classes, siir=siir)
        gaps = [n_max - c for c in counts]
        assert min(comp) >= 0
        if sum(gaps):
            assert sum(comp) == round(siir * total_real)
            for n, gap in zip(comp, gaps):
                assert abs(n - sum(comp) * gap / sum(gaps)) < 1   # proportional, rounded
                if gap == 0:
                    assert n == 0                                # the majority gets none
            order = np.argsort(counts)
            assert all(comp[order[i]] >= comp[order[i + 1]] for i in range(k - 1))
        else:
            assert sum(comp) == 0
        n = int(rng.integers(0, 100))
        fixed = injection.plan("fixed", counts, classes, per_class=n)
        assert fixed == [0 if c == n_max else n for c in counts]
        assert injection.plan("complementary", counts, classes, siir=siir) == comp


@pytest.mark.parametrize("generator", ["oversample", "augment", "smote", "cgan"])
def test_training_set_is_deterministic_and_real_only_outside_training(generator, write_suite):
    suite = tiny_suite(arms=[{"name": generator, "generator": generator,
                              "injection": {"policy": "complementary", "siir": 0.5}}],
                       generator_params={"cgan": {"epochs": 1, "width": 8,
                                                  "collapse_check": False}})
    loaded = load_suite(write_suite(suite))
    ds, _ = load_dataset(loaded)
    fold = Engine(loaded, ds, torch.device("cpu")).folds(0)[1]
    runs = []
    for _ in range(2):                                   # two engines: nothing shared
        engine = Engine(loaded, ds, torch.device("cpu"))
        runs.append(engine.training_set(engine.arm(generator), fold, 0))
    (x1, y1, s1, w1), (x2, y2, s2, w2) = runs
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and w1 == w2
    counts = torch.bincount(ds.labels[torch.from_numpy(fold.train)], minlength=3).tolist()
    assert int(s1.sum()) == sum(w1) == round(0.5 * sum(counts))
    assert w1[int(np.argmax(counts))] == 0
    # the held-out images are untouched real images: none of them equals a synthetic one
    synth = {bytes(img.numpy().tobytes()) for img in x1[s1]}
    for idx in (fold.val, fold.test):
        held = ds.images[torch.from_numpy(idx)]
        assert not any(bytes(img.numpy().tobytes()) in synth for img in held)


def test_bad_generator_params_fail_validation_in_one_line(write_suite, tmp_path):
    from click.testing import CliRunner

    from medbench.cli import cli
    for params, words in (({"dcgan": {"epoch": 3}}, "unknown parameter 'epoch'"),
                          ({"progan": {"epochs": [1, 2]}}, "epochs has 2 entries")):
        gen = next(iter(params))
        p = write_suite(tiny_suite(arms=[{"name": gen, "generator": gen}],
                                   dataset={"loader": "phantom", "image_size": 28,
                                            "options": {"counts": [30, 10, 10]}},
                                   generator_params=params))
        for args in (["validate", str(p)], ["run", str(p), "--out", str(tmp_path / "r")]):
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 2 and words in r.output, r.output
            assert len(r.output.strip().splitlines()) == 1
        assert not (tmp_path / "r" / "cells").exists()


def test_cache_key_follows_the_generator_source_code(monkeypatch):
    """An edited plugin (here: its loss helpers) must not reuse models fitted before."""
    import inspect

    from medbench import cache
    before = cache.code_fingerprint(dcgan.DCGAN)
    real = inspect.getsource

    def edited(obj):
        text = real(obj)
        return text + "\n# edited\n" if obj.__name__.endswith("_losses") else text

    monkeypatch.setattr(cache.inspect, "getsource", edited)
    assert cache.code_fingerprint(dcgan.DCGAN) != before
    monkeypatch.setattr(cache.inspect, "getsource", real)
    assert cache.code_fingerprint(dcgan.DCGAN) == before
