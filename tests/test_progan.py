"""The ``progan`` generator plugin: it learns the phantom classes, fades new stages in
with one shared alpha, grows to the scheduled sizes, uses the per-sample gradient
penalty, rejects bad parameters, stops on NaN and survives a state round-trip."""

import math
import time

import pytest
import torch

import gan_check
from medbench.errors import SuiteError
from medbench.plugins.generators import _losses, progan
from medbench.errors import GeneratorDiverged
from medbench.plugins.generators.progan import ProCritic, ProGAN, ProGenerator

# Tuned for the learning test: a few hundred steps per class on a CPU. The equalized
# learning rate moves weights by about lr per step, so so few steps need lr 0.01.
LEARN = {"epochs": [6, 12, 16], "batch_size": 16, "fmaps_base": 64, "fmaps_max": 32, "fmaps_min": 8, "lr": 0.01}
TINY = {"latent": 16, "epochs": [1, 3, 3], "batch_size": 8, "fmaps_base": 16, "fmaps_max": 8, "fmaps_min": 4,
        "fade": 0.5}


def _images(n=24, size=28, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def _class0(n=24):
    x, y = gan_check.training_set()
    return x[y == 0][:n], y[y == 0][:n]


# --------------------------------------------------------------------------- learning


def test_progan_learns_the_phantom_classes():
    _, judge_acc = gan_check.judge()
    t0 = time.perf_counter()
    gens = gan_check.fit_per_class(ProGAN, LEARN)
    rec = gan_check.recognition(lambda c, n: gens[c].sample(c, n))
    div = gan_check.diversity(lambda c, n: gens[c].sample(c, n))
    t1 = time.perf_counter()
    untrained = gan_check.fit_per_class(ProGAN, LEARN, train=False)
    rec0 = gan_check.recognition(lambda c, n: untrained[c].sample(c, n))
    div0 = gan_check.diversity(lambda c, n: untrained[c].sample(c, n))
    print(f"\nprogan: trained recognition {rec:.3f} diversity {div:.3f} ({t1 - t0:.1f} s); "
          f"untrained recognition {rec0:.3f} diversity {div0:.3f}; "
          f"judge accuracy on real images {judge_acc:.3f}")
    assert rec >= 0.55
    assert div >= 0.3
    assert rec0 <= 0.45
    # every stage was trained and logged with finite losses
    for g in gens.values():
        assert {row["resolution"] for row in g.history} == {7, 14, 28}
        assert all(math.isfinite(row["d_loss"]) and math.isfinite(row["g_loss"])
                   for row in g.history)
        assert [label for label, _ in g.grids] == ["stage 1/3 (7 px) (EMA)",
                                                   "stage 2/3 (14 px) (EMA)",
                                                   "stage 3/3 (28 px) (EMA)"]
        assert g.record["steps"] == len(g.history) and g.record["kimg"] > 0


# --------------------------------------------------------------------------- fade-in


def test_alpha_is_shared_and_rises_from_0_to_1(monkeypatch):
    """Alphas are recorded where they are used (G, critic, real blend), independently
    of the plugin's own alpha_trace, and must agree at every step."""
    seen = {"G": [], "D": [], "real": []}
    current = {"step": None}
    orig_step, orig_g, orig_d = ProGAN._step, ProGenerator.forward, ProCritic.forward
    orig_blend = ProGAN.blend_real

    def step(self, *args, **kw):
        current["step"] = len(self.history)
        try:
            return orig_step(self, *args, **kw)
        finally:
            current["step"] = None

    def g_forward(self, z, stage, alpha=1.0):
        if current["step"] is not None:
            seen["G"].append((current["step"], float(alpha)))
        return orig_g(self, z, stage, alpha)

    def d_forward(self, x, stage, alpha=1.0):
        if current["step"] is not None:
            seen["D"].append((current["step"], float(alpha)))
        return orig_d(self, x, stage, alpha)

    def blend(real, alpha):
        seen["real"].append((current["step"], float(alpha)))
        return orig_blend(real, alpha)

    monkeypatch.setattr(ProGAN, "_step", step)
    monkeypatch.setattr(ProGenerator, "forward", g_forward)
    monkeypatch.setattr(ProCritic, "forward", d_forward)
    monkeypatch.setattr(ProGAN, "blend_real", staticmethod(blend))

    calls = []
    x, y = _class0(40)
    g = ProGAN(**TINY).fit(x, y, classes=gan_check.CLASSES,
                           progress=lambda text, frac: calls.append((text, frac)))
    steps = len(g.history)
    assert steps == len(g.alpha_trace) == 5 * 1 + 5 * 3 + 5 * 3     # 40 images, batch 8

    # one alpha per step, the same for G, critic and real blend, as alpha_trace says
    per_step = {}
    for who, rows in seen.items():
        for s, a in rows:
            per_step.setdefault(s, {}).setdefault(who, set()).add(a)
    assert sorted(per_step) == list(range(steps))
    for (stage, s, a_g, a_d, a_real), row in zip(g.alpha_trace, g.history):
        used = per_step[s]
        assert used["G"] == used["D"] == used["real"] == {a_g}
        assert a_g == a_d == a_real == row["alpha"]
        assert row["stage"] == stage and row["step"] == s

    by_stage = {}
    for stage, _, a, _, _ in g.alpha_trace:
        by_stage.setdefault(stage, []).append(a)
    assert by_stage[0] == [1.0] * 5
    for stage in (1, 2):
        alphas = by_stage[stage]
        assert alphas[0] == 0.0
        assert all(b >= a for a, b in zip(alphas, alphas[1:]))
        assert alphas[-1] == 1.0
        fading = sum(a < 1.0 for a in alphas)          # fade 0.5 of 15 steps
        assert 6 <= fading <= 8
        # linear rise
        rises = [b - a for a, b in zip(alphas[:fading + 1], alphas[1:fading + 1])]
        assert max(rises) - min(rises) < 1e-6

    # progress: stage and epoch in the text, fractions rising to 1
    assert calls[0][0] == "progan stage 1/3 (7 px) epoch 1/1"
    assert calls[-1][0] == "progan stage 3/3 (28 px) epoch 3/3"
    fracs = [f for _, f in calls]
    assert all(b >= a for a, b in zip(fracs, fracs[1:])) and fracs[-1] == pytest.approx(1.0)


def test_blend_real_mixes_with_the_low_resolution_version():
    real = torch.arange(16.0).reshape(1, 1, 4, 4)
    low = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(real, 2),
                                          scale_factor=2, mode="nearest")
    out, a = ProGAN.blend_real(real, 0.25)
    assert a == 0.25 and torch.allclose(out, 0.25 * real + 0.75 * low)
    assert torch.equal(ProGAN.blend_real(real, 1.0)[0], real)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("base,size,expected", [(7, 28, [7, 14, 28]), (4, 32, [4, 8, 16, 32])])
def test_stage_outputs_grow_as_scheduled(base, size, expected):
    g = ProGAN(base=base, latent=16, fmaps_base=16, fmaps_max=8, fmaps_min=4, epochs=1)
    g.prepare(_images(8, size), torch.zeros(8, dtype=torch.int64), classes=["a"])
    assert g.sizes == expected
    z = torch.randn(5, 16)
    for stage, res in enumerate(expected):
        for alpha in (0.0, 0.5, 1.0):
            assert tuple(g.stage_output(z, stage, alpha).shape) == (5, 1, res, res)
        x = torch.randn(5, 1, res, res)
        assert tuple(g.D(x, stage, 0.5).shape) == (5,)
    imgs = g.sample(0, 6)
    assert imgs.dtype == torch.uint8 and tuple(imgs.shape) == (6, 1, size, size)


def test_fade_blends_old_and_new_outputs():
    g = ProGAN(**TINY)
    g.prepare(_images(8), torch.zeros(8, dtype=torch.int64), classes=["a"])
    z = torch.randn(4, 16)
    new = g.stage_output(z, 1, 1.0)
    old = torch.nn.functional.interpolate(g.stage_output(z, 0, 1.0), scale_factor=2)
    assert torch.allclose(g.stage_output(z, 1, 0.0), old, atol=1e-5)
    assert torch.allclose(g.stage_output(z, 1, 0.3), 0.3 * new + 0.7 * old, atol=1e-5)


def test_sample_is_28px_uint8_and_rgb_works():
    x, y = _class0(16)
    g = ProGAN(**TINY).fit(x, y, classes=gan_check.CLASSES)
    imgs = g.sample(0, 10)
    assert imgs.dtype == torch.uint8 and tuple(imgs.shape) == (10, 1, 28, 28)
    g3 = ProGAN(**{**TINY, "epochs": 1}).fit(_images(16, 28, 3), torch.zeros(16, dtype=torch.int64),
                                             classes=["a"])
    assert tuple(g3.sample(0, 3).shape) == (3, 3, 28, 28)


def test_critic_has_no_batch_norm_and_layers_use_equalized_lr():
    g = ProGAN(**TINY)
    g.prepare(_images(8), torch.zeros(8, dtype=torch.int64), classes=["a"])
    mods = list(g.D.modules()) + list(g.G.modules())
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)) for m in mods)
    eq = [m for m in mods if isinstance(m, (progan.EqConv2d, progan.EqLinear))]
    assert eq and not any(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in mods)
    for m in eq:
        fan_in = m.weight[0].numel()
        assert m.scale == pytest.approx(math.sqrt(2.0 / fan_in))


# --------------------------------------------------------------------------- loss


def test_gradient_penalty_uses_per_sample_interpolates(monkeypatch):
    eps_seen, gp_calls = [], []
    orig_interp, orig_gp = _losses.interpolate, _losses.gradient_penalty

    def interp(real, fake):
        x_hat, eps = orig_interp(real, fake)
        eps_seen.append(eps.detach().clone())
        return x_hat, eps

    def gp(critic, real, fake, *args):
        gp_calls.append((critic, real.shape, fake.shape, args))
        return orig_gp(critic, real, fake, *args)

    monkeypatch.setattr(_losses, "interpolate", interp)
    monkeypatch.setattr(_losses, "gradient_penalty", gp)
    x, y = _class0(40)
    g = ProGAN(**{**TINY, "n_critic": 2, "diffaug": False}).fit(x, y, classes=gan_check.CLASSES)
    critic_updates = 5 * (1 + 3 + 3)          # 5 batches of 8 per epoch, one update each
    assert len(g.history) == 3 * (1 + 3 + 3)  # ceil(5 / 2) generator steps per epoch
    assert len(gp_calls) == len(eps_seen) == critic_updates
    for (critic, rs, fs, args), eps in zip(gp_calls, eps_seen):
        assert critic is g.D and rs == fs
        assert tuple(eps.shape) == (rs[0], 1, 1, 1)
        assert eps.unique().numel() > 1                   # one weight per sample
        stage, alpha = args                               # the critic gets the step's alpha
        assert rs[-1] == g.sizes[stage] and 0.0 <= alpha <= 1.0
    assert all(row["gp"] >= 0 for row in g.history)


def test_nan_loss_raises_generator_diverged(monkeypatch):
    monkeypatch.setattr(_losses, "gradient_penalty",
                        lambda critic, real, fake, *a: torch.tensor(float("nan")))
    x, y = _class0(16)
    with pytest.raises(GeneratorDiverged, match="progan diverged"):
        ProGAN(**TINY).fit(x, y, classes=gan_check.CLASSES)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("params,size,words", [
    ({}, 30, ["image size 30", "7, 14, 28, 56"]),
    ({"base": 4}, 28, ["image size 28", "4, 8, 16, 32"]),
    ({"epochs": [1, 2]}, 28, ["epochs has 2 entries", "3 stages"]),
    ({"batch_size": [8, 8, 8, 8]}, 28, ["batch_size has 4 entries"]),
])
def test_bad_schedule_raises_suite_error(params, size, words):
    g = ProGAN(**params)
    with pytest.raises(SuiteError) as err:
        g.prepare(_images(4, size), torch.zeros(4, dtype=torch.int64), classes=["a"])
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("params,words", [
    ({"learning_rate": 0.1}, ["unknown parameter 'learning_rate'"]),
    ({"fade": 0}, ["fade"]),
    ({"fade": 1.5}, ["fade"]),
    ({"epochs": [3, "x", 2]}, ["epochs"]),
    ({"batch_size": 1}, ["batch_size"]),
    ({"betas": [0.0]}, ["betas"]),
    ({"base": 1}, ["base"]),
    ({"lr": -1.0}, ["lr"]),
])
def test_bad_parameters_raise_suite_error(params, words):
    with pytest.raises(SuiteError) as err:
        ProGAN(**params)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_defaults_follow_the_paper_where_it_says():
    d = ProGAN.defaults
    assert d["latent"] == 112 and d["base"] == 7 and d["betas"] == [0.0, 0.99]
    assert d["lr"] == 1e-3 and d["gp_lambda"] == 10.0 and d["drift"] == 0.001
    assert ProGAN.conditional is False and ProGAN.name == "progan"


def test_registered_as_a_builtin_generator():
    from medbench.registry import build_registry
    info = build_registry(entry_points=False).get("generators", "progan")
    assert info.obj is ProGAN and info.package == "medbench"


# --------------------------------------------------------------------------- state


def test_state_round_trip_gives_identical_samples(tmp_path):
    x, y = _class0(16)
    g = ProGAN(**TINY).fit(x, y, classes=gan_check.CLASSES, seed=3)
    before = g.sample(0, 12)
    path = tmp_path / "progan.pt"
    torch.save(g.state_dict(), path)
    state = torch.load(path, weights_only=False)
    fresh = ProGAN(**TINY).load_state_dict(state)
    assert fresh.stage == 2
    assert torch.equal(fresh.sample(0, 12), before)
    # parameters travel with the state: a default instance rebuilds the same networks
    assert torch.equal(ProGAN().load_state_dict(state).sample(0, 12), before)
    # a different model gives different samples (the comparison can fail)
    other = ProGAN(**TINY).fit(x, y, classes=gan_check.CLASSES, seed=4)
    assert not torch.equal(other.sample(0, 12), before)
