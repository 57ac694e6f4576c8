"""Near-duplicates (``dataset.near_duplicates``): a perceptual hash finds the same picture
re-encoded, resized or brightened, and the duplicate policy handles it as it handles
byte-identical copies."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from medbench.data import (DuplicateReport, ImageSet, handle_duplicates, handle_near_duplicates,
                           near_duplicate_groups, perceptual_hashes)
from medbench.errors import DataError


def pictures(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """n different grey pictures (light and dark blobs at random places), uint8
    n x size x size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.zeros((size, size))
        for _ in range(12):
            cx, cy, r, a = rng.random(4)
            img += (a - 0.5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.003 + 0.03 * r))
        img -= img.min()
        out.append((255 * img / img.max()).astype(np.uint8))
    return np.stack(out)


def jpeg(img: np.ndarray, quality: int = 60) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def distance(a: np.ndarray, b: np.ndarray) -> int:
    h = perceptual_hashes(torch.from_numpy(np.stack([a, b])[:, None]))
    return int((h[0] != h[1]).sum())


def test_phash_is_near_for_the_same_picture_and_far_for_others():
    pics = pictures(12)
    base = pics[0]
    brighter = np.clip(base.astype(int) + 12, 0, 255).astype(np.uint8)
    shrunk = np.asarray(Image.fromarray(base).resize((40, 40), Image.BILINEAR).resize(
        (48, 48), Image.BILINEAR))
    for copy in (jpeg(base), brighter, shrunk):
        assert distance(base, copy) <= 4
    others = [distance(base, p) for p in pics[1:]]
    assert min(others) > 10, others
    h = perceptual_hashes(torch.from_numpy(pics[:, None]))
    assert h.shape == (12, 64) and h.dtype == bool
    assert 20 <= h.sum(1).min() and h.sum(1).max() <= 40     # about half the bits set
    rgb = torch.from_numpy(np.repeat(pics[:, None], 3, axis=1))
    assert (perceptual_hashes(rgb) == h).all()               # colour: hashed in grey


def test_groups_are_transitive_and_the_same_in_any_block_size():
    rng = np.random.default_rng(1)
    bits = rng.random((40, 64)) < 0.5
    bits[7] = bits[3]
    bits[7, :3] ^= True                         # 3 bits from 3
    bits[21] = bits[7]
    bits[21, 10:13] ^= True                     # 3 bits from 7, 6 from 3: one chain
    want = [[3, 7, 21]]
    assert near_duplicate_groups(bits, 3) == want
    assert near_duplicate_groups(bits, 3, block=4) == want
    assert near_duplicate_groups(bits, 2) == []


def _set(images: np.ndarray, labels, splits=None) -> ImageSet:
    return ImageSet(torch.from_numpy(images[:, None]), torch.tensor(labels), ["a", "b"],
                    splits=splits, sources=[f"img{i}.png" for i in range(len(labels))])


def test_near_duplicates_follow_the_duplicate_policy():
    pics = pictures(8)
    images = np.concatenate([pics, jpeg(pics[0])[None], jpeg(pics[1])[None], jpeg(pics[2])[None]])
    labels = [0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1]   # 9 ~ 1 with another label: conflicting
    splits = ["train"] * 8 + ["test", "train", "train"]
    ds = _set(images, labels, splits)
    out, rep = handle_near_duplicates(ds, "drop", max_distance=4)
    assert (rep.groups, rep.cross_split, rep.conflicting, rep.within_split) == (3, 1, 1, 1)
    # the leak keeps its test copy, the conflict loses both, the copy within train one
    assert out.sources == ["img2.png", "img3.png", "img4.png", "img5.png", "img6.png",
                           "img7.png", "img8.png"]
    assert rep.dropped == 4
    assert rep.summary().startswith("3 groups of near-identical images (phash distance <= 4)")
    assert rep.as_dict()["kind"] == "near" and "kind" not in DuplicateReport().as_dict()
    kept, rep_keep = handle_near_duplicates(ds, "keep", max_distance=4)
    assert kept is ds and rep_keep.groups == 3 and rep_keep.dropped == 0
    with pytest.raises(DataError, match="near-identical images.*lower dataset.near_duplicates"):
        handle_near_duplicates(ds, "refuse", max_distance=4)
    # the exact check alone finds none of them: they are other bytes
    assert handle_duplicates(ds, "drop")[1].groups == 0


def test_a_suite_asks_for_near_duplicates_and_the_data_report_says_what_they_found(tmp_path):
    import yaml
    from medbench.engine import load_dataset
    from medbench.report import data_extras
    from medbench.suite import load_suite
    pics = pictures(10, size=32)
    for i, img in enumerate(pics):
        cls = "a" if i % 2 else "b"
        (tmp_path / "d" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "d" / cls / f"{i}.png")
    Image.fromarray(jpeg(pics[1], 50)).save(tmp_path / "d" / "a" / "again.jpg")
    suite = {"name": "near", "dataset": {"loader": "folder", "path": str(tmp_path / "d"),
                                         "image_size": 32, "near_duplicates": {"max_distance": 4}},
             "classifiers": [{"name": "smallcnn"}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    ds, report = load_dataset(load_suite(tmp_path / "s.yaml"))
    assert len(ds) == 10 and "a/again.jpg" not in ds.sources
    assert report["near_duplicates"]["groups"] == 1 and report["duplicates"]["groups"] == 0
    assert "near-duplicates: 1 groups of near-identical images" in data_extras(report)
