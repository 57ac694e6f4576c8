"""Train on synthetic, test on real (TSTR) beside train on real, test on real (TRTR)."""

import pandas as pd
from click.testing import CliRunner

from medbench.cli import cli
from medbench.suite import load_suite

from conftest import tiny_suite


def test_tstr_arms_train_on_synthetic_images_only(write_suite, tmp_path):
    suite = tiny_suite(arms=[{"name": "class-weights", "class_weights": True},
                             {"name": "over", "generator": "oversample"}])
    suite["tstr"] = True
    path = write_suite(suite)
    loaded = load_suite(path)
    assert [a.name for a in loaded.suite.arms] == ["class-weights", "over", "none", "over-tstr"]
    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out / "results.parquet").drop_duplicates(["arm", "fold"])
    tstr = df[df.arm == "over-tstr"].set_index("fold")
    trtr = df[df.arm == "none"].set_index("fold")
    # no real image in a TSTR training set, and exactly as many synthetic ones as the
    # real training part has (the same size and class balance as TRTR's)
    assert (tstr.n_train_real == 0).all()
    assert (tstr.n_synthetic == trtr.n_train_real).all()
    assert (trtr.n_synthetic == 0).all()
    # validation and test stay the real ones
    assert (tstr.n_val == trtr.n_val).all() and (tstr.n_test == trtr.n_test).all()
    # the report says which arms trained on synthetic images only
    r = CliRunner().invoke(cli, ["report", str(out), "--out", str(tmp_path / "rep"),
                                 "--format", "md"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "tested on real ones (TSTR): `over-tstr`; beside `none`" in text


def test_train_on_synthetic_needs_a_generator(write_suite):
    suite = tiny_suite(arms=[{"name": "x", "train_on": "synthetic"}])
    r = CliRunner().invoke(cli, ["validate", str(write_suite(suite))])
    assert r.exit_code == 2 and "needs a generator" in r.output
