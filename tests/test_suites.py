"""Suite validation: malformed suites give exit code 2 and one line, never a traceback."""

import copy

import pandas as pd

import pytest
from click.testing import CliRunner

from medbench.cli import cli
from medbench.errors import SuiteError
from medbench.suite import load_suite

from conftest import ROOT, tiny_suite


def _bad(**kw):
    s = tiny_suite()
    for path, value in kw.items():
        node = s
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is KeyError:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return s


MALFORMED = {
    "not yaml": ("name: x\ndataset: [unclosed\n", "not valid YAML"),
    "empty file": ("", "must be a YAML mapping"),
    "top-level list": ("- a\n- b\n", "must be a YAML mapping"),
    "missing dataset": (_bad(dataset=KeyError), "`dataset` is required"),
    "typo field": ({**tiny_suite(), "clasifiers": []}, "unknown field `clasifiers`"),
    "negative size": (_bad(dataset__image_size=-5), "dataset.image_size"),
    "two channels": (_bad(dataset__channels=2), "dataset.channels"),
    "lr not a number": (_bad(training__lr="fast"), "training.lr"),
    "protocol kind": (_bad(protocol__kind="bootstrap"), "protocol.kind"),
    "repeated seeds": (_bad(protocol__seeds=[1, 1]), "seeds must be distinct"),
    "duplicate arms": (_bad(arms=[{"name": "none"}, {"name": "none"}]), "appears twice"),
    "unknown metric": (_bad(metrics=["accuracy", "kappa"]), "unknown metric 'kappa'"),
    "no classifiers": (_bad(classifiers=[]), "classifiers"),
    "unknown loader": (_bad(dataset__loader="nosuch"), "unknown dataset plugin 'nosuch'"),
    "unknown classifier": (_bad(classifiers=[{"name": "resnet999"}]),
                           "unknown classifier plugin 'resnet999'"),
    "unknown generator": (_bad(arms=[{"name": "g", "generator": "stylegan9"}]),
                          "unknown generator plugin 'stylegan9'"),
    "bad suite name": (_bad(name="my suite/1"), "field `name`"),
    "bad injection": (_bad(arms=[{"name": "o", "generator": "oversample",
                                  "injection": {"policy": "magic"}}]), "injection.policy"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_suite_exit_2_one_line(case, write_suite):
    content, expected = MALFORMED[case]
    path = write_suite(content)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert expected in err, err
    # the message names the file
    assert str(path) in err or case in ("unknown loader", "unknown classifier", "unknown generator")


def test_run_rejects_bad_suite_without_touching_results(write_suite, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    path = write_suite(_bad(training__epochs=-1))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert (out / "keep.txt").read_text() == "precious"


def test_missing_file_and_unknown_profile(write_suite, tmp_path):
    r = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "not found" in r.stderr
    path = write_suite(tiny_suite())
    r = CliRunner().invoke(cli, ["validate", str(path), "--profile", "gpu9000"])
    assert r.exit_code == 2 and "unknown profile 'gpu9000'" in r.stderr


def test_profile_overrides_are_deep_merged(write_suite):
    s = tiny_suite(profiles={"smoke": {"training": {"epochs": 1}, "dataset": {"image_size": 12}}})
    path = write_suite(s)
    base = load_suite(path)
    smoke = load_suite(path, "smoke")
    assert base.suite.training.epochs == 2 and smoke.suite.training.epochs == 1
    assert smoke.suite.training.batch_size == 16          # untouched keys survive
    assert smoke.suite.dataset.image_size == 12
    assert smoke.suite.dataset.options["counts"] == [60, 24, 12]
    assert base.hash != smoke.hash


def test_hash_ignores_report_block_but_not_training(write_suite):
    s1 = tiny_suite()
    s2 = copy.deepcopy(s1)
    s2["report"] = {"formats": ["md"]}
    s3 = copy.deepcopy(s1)
    s3["training"]["epochs"] = 3
    h = [load_suite(write_suite(s, f"s{i}.yaml")).hash for i, s in enumerate((s1, s2, s3))]
    assert h[0] == h[1] != h[2]


@pytest.mark.parametrize("path", sorted((ROOT / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_validate(path):
    loaded = load_suite(path)
    for profile in loaded.suite.profiles:
        load_suite(path, profile)
    r = CliRunner().invoke(cli, ["validate", str(path)])
    assert r.exit_code == 0, r.output


def test_load_suite_raises_suite_error(write_suite):
    with pytest.raises(SuiteError):
        load_suite(write_suite("name: [1, 2"))


@pytest.mark.parametrize("name,classes", [
    ("covid4", ["COVID", "Normal", "Lung_Opacity", "Viral Pneumonia"]),
    ("covid2", ["COVID", "Normal"]),
])
def test_covid_suites_smoke_on_a_radiography_layout(name, classes, tmp_path, monkeypatch):
    """The COVID-19 Radiography Database is not shipped; a folder of phantom PNGs in its
    layout (<class>/images/*.png beside <class>/masks/) runs the suite's smoke profile
    end to end, every arm included."""
    from PIL import Image

    from medbench.api import DatasetSpec
    from medbench.plugins.datasets.phantom import Phantom

    counts = [40, 90, 60, 25][:len(classes)]
    ds = Phantom().load(DatasetSpec("phantom", None, 64, 1, {"counts": counts, "seed": 5}))
    root = tmp_path / "data" / "COVID-19_Radiography_Dataset"
    for i, (img, lbl) in enumerate(zip(ds.images, ds.labels)):
        folder = root / classes[int(lbl)] / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (root / classes[int(lbl)] / "masks").mkdir(exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{classes[int(lbl)]}-{i}.png")
    monkeypatch.setenv("MEDBENCH_DATA", str(tmp_path / "data"))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["run", str(ROOT / "suites" / f"{name}.yaml"), "--profile",
                                 "smoke", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out / "results.parquet")
    arms = [a.name for a in load_suite(ROOT / "suites" / f"{name}.yaml").suite.arms]
    assert sorted(set(df.arm)) == sorted(arms)
    n_syn = df[df.metric == "accuracy"].set_index("arm").n_synthetic
    assert n_syn["none"] == 0 and (n_syn.drop(["none", "class-weights"]) > 0).all()


def test_bad_classifier_training_override_is_one_line_at_load(write_suite):
    bad = tiny_suite(classifiers=[{"name": "smallcnn", "training": {"epochs": -3}}])
    r = CliRunner().invoke(cli, ["validate", str(write_suite(bad))])
    assert r.exit_code == 2
    assert r.stderr.strip().endswith("classifier 'smallcnn': training.epochs: Input should be "
                                     "greater than or equal to 1")
    assert len(r.stderr.strip().splitlines()) == 1
