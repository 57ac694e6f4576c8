"""Group-aware splits (``dataset.groups``): every patient or lesion stays in one part of
every fold, the groups come from a metadata CSV matched to the images, and the data
report counts them."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from medbench.cli import cli
from medbench.data import ImageSet, attach_groups, group_report, read_metadata
from medbench.errors import DataError
from medbench.splits import make_folds

from conftest import tiny_suite


def grouped_set(n=240, n_groups=48, seed=0, splits=None) -> ImageSet:
    """Images whose groups hold 1 to 9 images of mostly one label (as patients do), a few
    groups of two labels, three classes of unequal size."""
    rng = np.random.default_rng(seed)
    groups = [f"p{g}" for g in rng.integers(0, n_groups, n)]
    labels = np.array([min(2, int(g[1:]) % 5 // 2) for g in groups])   # 0:40%, 1:40%, 2:20%
    labels[::23] = (labels[::23] + 1) % 3
    return ImageSet(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.from_numpy(labels),
                    ["a", "b", "c"], groups=groups, splits=splits)


def parts_of(fold) -> dict[int, str]:
    return {**{int(i): "train" for i in fold.train}, **{int(i): "val" for i in fold.val},
            **{int(i): "test" for i in fold.test}}


def assert_groups_whole(ds: ImageSet, fold) -> None:
    where = defaultdict(set)
    for i, part in parts_of(fold).items():
        where[ds.groups[i]].add(part)
    split = {g: p for g, p in where.items() if len(p) > 1}
    assert not split, f"fold {fold.index}: groups in two parts: {sorted(split.items())[:3]}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_kfold_keeps_every_group_in_one_fold(seed):
    ds = grouped_set(seed=seed)
    folds = make_folds(ds, "kfold", seed=seed, folds=4, val_fraction=0.15)
    test_fold = {}
    for f in folds:
        assert_groups_whole(ds, f)
        for i in f.test:
            assert ds.groups[i] not in test_fold or test_fold[ds.groups[i]] == f.index
            test_fold[ds.groups[i]] = f.index
        # still stratified: every class is tested in every fold, and validated on
        assert set(ds.labels[f.test].tolist()) == {0, 1, 2}
        assert set(ds.labels[f.val].tolist()) == {0, 1, 2}
    # every image is tested exactly once, and every group in exactly one fold
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(ds)))
    assert set(test_fold) == set(ds.groups)
    # the same seed gives the same folds
    again = make_folds(ds, "kfold", seed=seed, folds=4, val_fraction=0.15)
    assert [f.test.tolist() for f in folds] == [f.test.tolist() for f in again]


def test_without_groups_a_random_split_would_break_patients():
    """The check above can fail: plain stratified folds of the same images split groups."""
    ds = grouped_set()
    plain = ImageSet(ds.images, ds.labels, ds.classes)
    folds = make_folds(plain, "kfold", seed=0, folds=4, val_fraction=0.15)
    with pytest.raises(AssertionError, match="groups in two parts"):
        assert_groups_whole(ds, folds[0])


def test_group_holdout_carves_test_and_validation_by_group():
    ds = grouped_set(seed=3)
    (fold,) = make_folds(ds, "holdout", seed=0, test_fraction=0.2, val_fraction=0.15)
    assert_groups_whole(ds, fold)
    assert 0.1 < len(fold.test) / len(ds) < 0.35


def test_group_holdout_on_the_sources_splits_keeps_test_whole_and_leaves_out_shared_groups():
    ds = grouped_set(seed=4)
    rng = np.random.default_rng(4)
    ds.splits = ["test" if x < 0.2 else "train" for x in rng.random(len(ds))]   # not by group
    (fold,) = make_folds(ds, "holdout", seed=0, val_fraction=0.15)
    assert fold.test.tolist() == ds.split_index("test").tolist()      # the published test set
    assert_groups_whole(ds, fold)
    test_groups = {ds.groups[i] for i in fold.test}
    left_out = [i for i in ds.split_index("train") if ds.groups[i] in test_groups]
    assert left_out and not set(left_out) & (set(fold.train.tolist()) | set(fold.val.tolist()))
    assert group_report(ds, "patient")["across_splits"] > 0


def test_too_few_groups_for_the_folds_is_a_clear_error():
    ds = ImageSet(torch.zeros(40, 1, 2, 2, dtype=torch.uint8), torch.arange(40) % 2, ["a", "b"],
                  groups=[f"p{i % 4}" for i in range(40)])
    with pytest.raises(DataError, match="needs at least 5 groups"):
        make_folds(ds, "kfold", seed=0, folds=5)


def test_group_report_counts_groups_and_images_per_group():
    groups = ["a", "a", "a", "b", "c", "c"]
    ds = ImageSet(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1, 0, 2]),
                  ["x", "y", "z"], groups=groups)
    rep = group_report(ds, "lesion_id")
    assert (rep["groups"], rep["images"], rep["per_group_min"], rep["per_group_max"]) == (3, 6, 1, 3)
    assert rep["per_group_median"] == 2 and rep["single_image_groups"] == 1
    assert rep["mixed_label_groups"] == 2 and "across_splits" not in rep
    # subsets (duplicates dropped, classes left out) keep each image's group
    assert ds.subset([1, 4]).groups == ["a", "c"]
    assert ds.without_classes(["y"]).groups == ["a", "a", "c", "c"]
    assert ds.without_classes(["y"]).labels.tolist() == [0, 0, 0, 1]


def test_metadata_rows_match_by_path_file_name_or_name_without_extension(tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text("image_id,lesion_id\nISIC_1,L1\nb/two.png,L2\nthree.jpg,L1\n")
    ds = ImageSet(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 1]), ["a", "b"],
                  sources=["Train/a/ISIC_1.jpg", "b/two.png", "Test/b/three.jpg"])
    attach_groups(ds, read_metadata(csv, None, "lesion_id"), "lesion_id")
    assert ds.groups == ["L1", "L2", "L1"]
    ds.sources[1] = "b/other.png"
    with pytest.raises(DataError, match="1 of 3 images have no 'lesion_id'.*b/other.png"):
        attach_groups(ds, read_metadata(csv, "image_id", "lesion_id"), "lesion_id")
    csv.write_text("image_id,lesion_id\nISIC_1,L1\nISIC_1,L9\n")
    with pytest.raises(DataError, match="two groups"):
        read_metadata(csv, None, "lesion_id")


def _suite_with_groups(tmp_path, **protocol):
    meta = tmp_path / "meta.csv"       # the tiny phantom set: 96 images, 24 patients
    meta.write_text("image,patient\n" + "".join(f"phantom:1:{i},p{i // 4}\n" for i in range(96)))
    suite = tiny_suite()
    suite["dataset"] = {**suite["dataset"], "groups": "patient", "metadata": "meta.csv"}
    suite["protocol"] = {**suite["protocol"], **protocol}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_a_suite_reads_groups_beside_it_and_its_folds_keep_them(tmp_path):
    from medbench.engine import load_dataset, suite_folds
    from medbench.report import data_extras
    from medbench.suite import load_suite
    loaded = load_suite(_suite_with_groups(tmp_path))
    ds, report = load_dataset(loaded)
    assert ds.groups[:5] == ["p0", "p0", "p0", "p0", "p1"]
    assert report["groups"]["groups"] == 24 and report["groups"]["per_group_max"] == 4
    assert "24 groups (`patient`) of 4-4 images" in report["groups_summary"]
    assert "groups (folds keep each whole): 24 groups" in data_extras(report)
    for fold in suite_folds(loaded, ds, 0):
        assert_groups_whole(ds, fold)
    # the folds differ from those without groups, and so does the data's cache key
    plain = load_suite(_suite_with_groups(tmp_path), overrides={"dataset": {"groups": None,
                                                                           "metadata": None}})
    ds_plain, _ = load_dataset(plain)
    assert ds_plain.groups is None and ds_plain.fingerprint() != ds.fingerprint()
    r = CliRunner().invoke(cli, ["validate", str(_suite_with_groups(tmp_path)), "--data"])
    assert r.exit_code == 0, r.output
    assert json.dumps(report)        # the data report stays plain JSON
