"""The built-in dataset loaders: phantom, medmnist and folder.

Every fixture is built in tmp_path; the network is never used (urlopen is patched to
fail unless a test serves bytes itself). The real-data smoke test runs only where the
shared data folder exists.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medbench.api import DatasetLoader, DatasetSpec
from medbench.cache import Cache
from medbench.data import handle_duplicates
from medbench.errors import DataError, MedbenchError, ParameterError
from medbench.plugins.datasets import _decode, folder, medmnist, phantom
from medbench.plugins.datasets.folder import Folder
from medbench.plugins.datasets.medmnist import MedMNIST
from medbench.plugins.datasets.phantom import Phantom


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def spec(loader, path=None, size=32, channels=1, cache_dir=None, **options):
    return DatasetSpec(loader=loader, path=path, image_size=size, channels=channels,
                       options=options, cache_dir=cache_dir)


def split_counts(ds):
    return {s: ds.splits.count(s) for s in ("train", "val", "test")}


def test_every_loader_registers_a_class_with_a_one_line_description():
    for module, name in ((phantom, "phantom"), (medmnist, "medmnist"), (folder, "folder")):
        got = {}
        module.register_datasets(register=lambda n, obj: got.setdefault(n, obj))
        cls = got[name]
        assert isinstance(cls, type) and issubclass(cls, DatasetLoader)
        assert cls.description and "\n" not in cls.description


@pytest.mark.parametrize("loader", [Phantom, MedMNIST, Folder])
def test_unknown_options_are_refused_naming_the_allowed_ones(loader, tmp_path):
    with pytest.raises(ParameterError, match="unknown parameter 'bogus'; it takes") as e:
        loader().load(spec(loader.__name__.lower(), tmp_path, bogus=1))
    assert "\n" not in str(e.value)


# ============================================================================ phantom


def test_phantom_is_deterministic_and_seeded():
    a = Phantom().load(spec("phantom", counts=[30, 10, 5]))
    b = Phantom().load(spec("phantom", counts=[30, 10, 5]))
    c = Phantom().load(spec("phantom", counts=[30, 10, 5], seed=1))
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert len(set(a.content_hashes())) == len(a)          # no two images alike


def test_phantom_defaults_are_imbalanced_chest_classes():
    ds = Phantom().load(spec("phantom", size=16))
    assert ds.classes == ["normal", "pneumonia", "covid"]
    assert ds.counts() == [240, 80, 40]
    assert ds.splits is None and ds.name == "phantom"
    assert ds.labels[:60].unique().numel() == 3             # shuffled, not sorted by class


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_phantom_shape_and_dtype(size, channels):
    ds = Phantom().load(spec("phantom", size=size, channels=channels, counts=[6, 4, 2]))
    assert ds.images.shape == (12, channels, size, size) and ds.images.dtype == torch.uint8
    if channels == 3:
        assert torch.equal(ds.images[:, 0], ds.images[:, 2])
    assert 20 < ds.images.float().mean() < 160               # neither black nor white
    assert ds.images.float().std() > 20


def test_phantom_splits_are_stratified_70_10_20():
    ds = Phantom().load(spec("phantom", size=16, splits=True))
    labels = ds.labels.numpy()
    for split, want in (("train", [168, 56, 28]), ("val", [24, 8, 4]), ("test", [48, 16, 8])):
        assert np.bincount(labels[ds.split_index(split)], minlength=3).tolist() == want
    again = Phantom().load(spec("phantom", size=16, splits=True))
    assert again.splits == ds.splits


def test_phantom_classes_differ_where_the_findings_are():
    """Pneumonia adds opacities to the lower lungs: their mean, relative to the upper
    lungs of the same image, must be clearly higher than in normal images."""
    ds = Phantom().load(spec("phantom", size=64, counts=[150, 150], classes=["normal", "pneumonia"]))
    img = ds.images[:, 0].float() / 255
    lower = img[:, 36:50, 10:54].mean((1, 2))
    upper = img[:, 14:28, 10:54].mean((1, 2))
    score = lower - upper
    a, b = score[ds.labels == 0], score[ds.labels == 1]
    t = (b.mean() - a.mean()) / (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert t > 4, t
    # ... but no single pixel separates the classes
    flat = img.flatten(1)
    gap = (flat[ds.labels == 1].mean(0) - flat[ds.labels == 0].mean(0)).abs().max()
    assert gap < 0.25


def test_phantom_five_classes_and_native_size():
    ds = Phantom().load(spec("phantom", size=32, counts=[5, 5, 5, 5, 5], native_size=96))
    assert ds.classes == ["normal", "pneumonia", "covid", "nodule", "effusion"]
    assert ds.images.shape == (25, 1, 32, 32)


@pytest.mark.parametrize("options,match", [
    ({"counts": [10, 0]}, "counts must be a list of positive integers"),
    ({"counts": [5, 5], "classes": ["a", "b", "c"]}, "one count per class"),
    ({"classes": ["a", "a"]}, "twice"),
    ({"counts": [5] * 6}, "2 to 5 classes"),
    ({"splits": "yes"}, "splits = 'yes'; allowed: true or false"),
    ({"native_size": 8}, r"native_size = 8; allowed: an integer in \[16, 512\]"),
    ({"seed": -1}, "seed = -1; allowed: an integer"),
    ({"seed": "one"}, "seed = 'one'; allowed: an integer"),
])
def test_phantom_bad_options(options, match):
    with pytest.raises(MedbenchError, match=match):
        Phantom().load(spec("phantom", **options))


# ============================================================================ medmnist


def fake_npz(path: Path, n=(8, 3, 4), rgb=False, classes=2, seed=0, side=28) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        shape = (k, side, side, 3) if rgb else (k, side, side)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % classes).astype(np.uint8).reshape(k, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


@pytest.fixture
def md5_of_fakes(monkeypatch):
    """Make the MD5 table expect the given fake file's bytes."""
    def patch(filename, data):
        monkeypatch.setitem(medmnist.MD5, filename, hashlib.md5(data).hexdigest())
    return patch


def test_medmnist_grey_file_with_splits_and_names(tmp_path, md5_of_fakes, monkeypatch):
    data = fake_npz(tmp_path / "medmnist" / "pneumoniamnist.npz")
    md5_of_fakes("pneumoniamnist.npz", data)
    cache = tmp_path / "cache"
    ds = MedMNIST().load(spec("medmnist", tmp_path, size=32, cache_dir=cache, flag="pneumoniamnist"))
    assert ds.classes == ["normal", "pneumonia"]
    assert split_counts(ds) == {"train": 8, "val": 3, "test": 4}
    assert ds.images.shape == (15, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.sources[0] == "npz:train:0" and ds.sources[-1] == "npz:test:3"
    assert ds.counts() == [8, 7]
    # the MD5 was checked once and remembered: the next load does not hash again
    monkeypatch.setattr(medmnist, "_md5_of", lambda p: pytest.fail("hashed twice"))
    again = MedMNIST().load(spec("medmnist", tmp_path, size=32, cache_dir=cache, flag="pneumoniamnist"))
    assert torch.equal(again.images, ds.images)


def test_medmnist_rgb_file_and_channels(tmp_path, md5_of_fakes):
    f = tmp_path / "dermamnist_64.npz"
    md5_of_fakes(f.name, fake_npz(f, rgb=True, classes=7, side=64))
    for channels in (3, 1):
        ds = MedMNIST().load(DatasetSpec("medmnist", tmp_path, 32, channels,
                                         {"flag": "dermamnist", "size": 64}))
        assert ds.images.shape == (15, channels, 32, 32)
        assert len(ds.classes) == 7 and ds.classes[4] == "melanoma"
        assert ds.name == "medmnist:dermamnist_64"


def test_medmnist_path_may_name_the_file(tmp_path, monkeypatch):
    f = tmp_path / "somewhere" / "my-breast.npz"
    fake_npz(f)
    with pytest.raises(DataError, match="750601b1f35ba3300ea97c75c52ff8f6"):   # breastmnist's
        MedMNIST().load(spec("medmnist", f, flag="breastmnist"))
    monkeypatch.delitem(medmnist.MD5, "breastmnist.npz")      # an unknown MD5: not verified
    ds = MedMNIST().load(spec("medmnist", f, size=28, flag="breastmnist"))
    assert ds.classes == ["malignant", "normal, benign"]
    assert any("not verified" in n for n in ds.notes)


def test_medmnist_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        MedMNIST().load(spec("medmnist", tmp_path, flag="pneumoniamnist"))
    msg = str(e.value)
    assert "\n" not in msg
    assert "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1" in msg
    assert "28209eda62fecd6e6a2d98b1501bb15f" in msg
    assert str(tmp_path / "pneumoniamnist.npz") in msg
    with pytest.raises(DataError, match="files/pneumoniamnist_128.npz.*05b46931834c231683c68f40c47b2971"):
        MedMNIST().load(DatasetSpec("medmnist", tmp_path, 28, 1, {"flag": "pneumoniamnist", "size": 128}))


def test_medmnist_md5_mismatch_of_a_known_file_is_an_error(tmp_path):
    fake_npz(tmp_path / "pneumoniamnist.npz")
    with pytest.raises(DataError, match="28209eda62fecd6e6a2d98b1501bb15f") as e:
        MedMNIST().load(spec("medmnist", tmp_path, cache_dir=tmp_path / "c", flag="pneumoniamnist"))
    assert "download it again" in str(e.value)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_medmnist_download(tmp_path, monkeypatch, md5_of_fakes):
    data = fake_npz(tmp_path / "src" / "x.npz")
    md5_of_fakes("pneumoniamnist.npz", data)
    urls = []

    def serve(url, timeout=None):
        urls.append(url)
        return _Response(data)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    target = tmp_path / "data"
    ds = MedMNIST().load(spec("medmnist", target, flag="pneumoniamnist", download=True))
    assert urls == ["https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"]
    assert (target / "pneumoniamnist.npz").read_bytes() == data
    assert sorted(p.name for p in target.iterdir()) == ["pneumoniamnist.npz"]   # no temp left
    assert split_counts(ds) == {"train": 8, "val": 3, "test": 4}
    # present now: no second download
    MedMNIST().load(spec("medmnist", target, flag="pneumoniamnist", download=True))
    assert len(urls) == 1


def test_medmnist_download_with_wrong_md5_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _Response(b"junk"))
    with pytest.raises(DataError, match="expected 28209eda62fecd6e6a2d98b1501bb15f"):
        MedMNIST().load(spec("medmnist", tmp_path, flag="pneumoniamnist", download=True))
    assert list(tmp_path.iterdir()) == []


def test_medmnist_download_failure_is_one_clear_line(tmp_path):
    with pytest.raises(DataError) as e:       # urlopen refuses (see _no_network)
        MedMNIST().load(spec("medmnist", tmp_path, flag="breastmnist", download=True))
    msg = str(e.value)
    assert "\n" not in msg and "could not download" in msg
    assert "breastmnist.npz?download=1" in msg and "750601b1f35ba3300ea97c75c52ff8f6" in msg
    assert str(tmp_path / "breastmnist.npz") in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options,match", [
    ({"flag": "chestmnist"}, "multi-label"),
    ({"flag": "organmnist3d"}, "3D"),
    ({"flag": "nosuchmnist"}, "flag must be one of"),
    ({}, "flag is required"),
    ({"flag": "pneumoniamnist", "size": 32}, "size = 32; use one of 28, 64, 128, 224"),
    ({"flag": "pneumoniamnist", "download": "yes"}, "download = 'yes'; allowed: true or false"),
])
def test_medmnist_bad_options(tmp_path, options, match):
    with pytest.raises(MedbenchError, match=match):
        MedMNIST().load(DatasetSpec("medmnist", tmp_path, 28, 1, options))


def test_medmnist_multilabel_labels_are_refused(tmp_path, md5_of_fakes):
    f = tmp_path / "pneumoniamnist.npz"
    fake_npz(f)
    with np.load(f) as z:
        arrays = dict(z)
    arrays["train_labels"] = np.zeros((8, 3), np.uint8)
    np.savez(f, **arrays)
    md5_of_fakes(f.name, f.read_bytes())
    with pytest.raises(DataError, match="multi-label"):
        MedMNIST().load(spec("medmnist", tmp_path, flag="pneumoniamnist"))


# ============================================================================ folder


def save(path: Path, mode="L", size=(40, 30), seed=0, fmt=None) -> Path:
    """A random image of ``mode`` (L, RGB, RGBA or I;16) and size (w, h)."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        arr = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        im = Image.fromarray(arr)
    else:
        bands = {"L": None, "RGB": 3, "RGBA": 4}[mode]
        shape = (h, w) if bands is None else (h, w, bands)
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        if mode == "RGBA":
            arr[..., 3] = 255
        im = Image.fromarray(arr, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


KAGGLE = {   # split -> class -> [(file name, mode, (w, h))]
    "train": {
        "Covid": [("c1.png", "L", (40, 30)), ("c2.jpeg", "RGB", (50, 70)),
                  ("c3.JPG", "RGB", (33, 33)), ("c4.png", "RGBA", (64, 48))],
        "Normal": [("n1.jpg", "L", (80, 60)), ("n2.png", "I;16", (30, 40)),
                   ("n3.bmp", "RGB", (20, 20))],
        "Viral Pneumonia": [("v 1.png", "RGB", (45, 45)), ("v2.tif", "L", (36, 28)),
                            ("v3.TIFF", "RGB", (28, 36))],
    },
    "test": {
        "Covid": [("t c1.jpeg", "RGB", (30, 50)), ("tc2.png", "L", (50, 30))],
        "Normal": [("tn1.png", "RGBA", (32, 32))],
        "Viral Pneumonia": [("tv1.jpg", "L", (60, 40)), ("tv2.png", "RGB", (24, 24))],
    },
}


def kaggle_tree(base: Path, split_names=("train", "test")) -> Path:
    root = base / "Covid19-dataset"
    seed = 0
    for split, rename in zip(("train", "test"), split_names):
        for cls, entries in KAGGLE[split].items():
            for name, mode, size in entries:
                seed += 1
                save(root / rename / cls / name, mode, size, seed)
    (root / "README.md").write_text("not an image")
    (root / split_names[0] / "Covid" / "metadata.xlsx").write_bytes(b"PK\x03\x04 spreadsheet")
    (root / split_names[0] / "Covid" / ".DS_Store").write_bytes(b"junk")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_kaggle_split_layout(tmp_path, channels):
    root = kaggle_tree(tmp_path)
    ds = Folder().load(spec("folder", root, size=32, channels=channels))
    assert ds.classes == ["Covid", "Normal", "Viral Pneumonia"]
    assert ds.images.shape == (15, channels, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.counts() == [6, 4, 5]
    assert split_counts(ds) == {"train": 10, "val": 0, "test": 5}
    assert np.bincount(ds.labels.numpy()[ds.split_index("train")]).tolist() == [4, 3, 3]
    assert "train/Viral Pneumonia/v 1.png" in ds.sources
    assert "test/Covid/t c1.jpeg" in ds.sources
    i = ds.sources.index("train/Normal/n1.jpg")
    assert ds.labels[i] == 1 and ds.splits[i] == "train"
    assert ds.hashes[i] == hashlib.sha1((root / "train/Normal/n1.jpg").read_bytes()).hexdigest()
    assert any("non-image" in n for n in ds.notes)
    # the archive folder above is entered on its own; sources stay relative to the path given
    outer = Folder().load(spec("folder", tmp_path, size=32, channels=channels))
    assert torch.equal(outer.images, ds.images)
    assert outer.sources[0] == "Covid19-dataset/" + ds.sources[0]


def test_folder_pixels_match_pil(tmp_path):
    """Decoding is PIL convert + bilinear resize, 16-bit scaled to 8 bits, alpha over black."""
    root = tmp_path / "d"
    save(root / "a" / "x.png", "RGB", (64, 48), seed=1)
    arr16 = (np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 160)
    Image.fromarray(arr16).save(root / "a" / "deep.png")
    clear = np.zeros((10, 10, 4), np.uint8)
    clear[..., :3] = 255                                   # white but fully transparent
    (root / "b").mkdir()
    Image.fromarray(clear, "RGBA").save(root / "b" / "clear.png")
    ds = Folder().load(spec("folder", root, size=16, channels=1))
    x = ds.images[ds.sources.index("a/x.png"), 0].numpy()
    want = np.asarray(Image.open(root / "a" / "x.png").convert("L").resize((16, 16), Image.BILINEAR))
    assert np.array_equal(x, want)
    deep = ds.images[ds.sources.index("a/deep.png"), 0].float()
    assert deep.max() > 200 and deep.min() < 10              # full range, not clipped
    assert ds.images[ds.sources.index("b/clear.png")].max() == 0


def test_folder_center_crop(tmp_path):
    root = tmp_path / "d"
    arr = np.zeros((30, 60), np.uint8)
    arr[:, 15:45] = 255                                    # white centre square
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(arr).save(root / cls / "wide.png")
    squash = Folder().load(spec("folder", root, size=8))
    crop = Folder().load(spec("folder", root, size=8, resize="center-crop"))
    assert 100 < squash.images.float().mean() < 160
    assert crop.images.float().mean() > 240
    assert (crop.images[..., 1:-1] == 255).all()          # only the edges see the black
    with pytest.raises(ParameterError, match="resize = 'stretch'; use one of squash, center-crop"):
        Folder().load(spec("folder", root, resize="stretch"))


def test_folder_split_names_are_case_insensitive(tmp_path):
    root = kaggle_tree(tmp_path, split_names=("Train", "Test"))
    save(root / "Validation" / "Covid" / "v.png", seed=99)
    save(root / "Validation" / "Normal" / "v.png", seed=98)
    ds = Folder().load(spec("folder", root, size=16))
    assert split_counts(ds) == {"train": 10, "val": 2, "test": 5}
    assert any("val split has no images of 'Viral Pneumonia'" in n for n in ds.notes)


def test_folder_radiography_layout_ignores_masks(tmp_path):
    root = tmp_path / "COVID-19_Radiography_Dataset"
    for k, cls in enumerate(("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")):
        for i in range(k + 2):
            save(root / cls / "images" / f"{cls}-{i + 1}.png", "L", (30, 30), seed=10 * k + i)
            save(root / cls / "masks" / f"{cls}-{i + 1}.png", "L", (20, 20), seed=500 + 10 * k + i)
        save(root / cls / "masks" / "extra.png", "L", (20, 20), seed=900 + k)
    (root / "COVID.metadata.xlsx").write_bytes(b"PK\x03\x04")
    (root / "README.md.txt").write_text("readme")
    ds = Folder().load(spec("folder", root, size=16))
    assert ds.classes == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert ds.counts() == [2, 3, 4, 5] and ds.splits is None
    assert all("/images/" in s for s in ds.sources)
    assert "Viral Pneumonia/images/Viral Pneumonia-1.png" in ds.sources


def test_folder_flat_layout(tmp_path):
    root = tmp_path / "flat"
    for k, cls in enumerate(("benign", "malignant")):
        for i in range(3 + k):
            save(root / cls / f"{i}.png", "RGB", (25, 20), seed=k * 10 + i)
    ds = Folder().load(spec("folder", root, size=16, channels=3))
    assert ds.classes == ["benign", "malignant"] and ds.counts() == [3, 4]
    assert ds.splits is None
    with pytest.raises(DataError, match="layout splits needs train/ and test/ folders"):
        Folder().load(spec("folder", root, layout="splits"))
    with pytest.raises(ParameterError, match="layout = 'nested'; use one of auto, splits, classes, radiography"):
        Folder().load(spec("folder", root, layout="nested"))


def test_folder_class_subset_order_and_map(tmp_path):
    root = kaggle_tree(tmp_path)
    ds = Folder().load(spec("folder", root, size=16, classes=["Normal", "Covid"]))
    assert ds.classes == ["Normal", "Covid"] and ds.counts() == [4, 6]
    assert all("Viral" not in s for s in ds.sources)
    assert any("left out folders 'Viral Pneumonia'" in n for n in ds.notes)
    merged = Folder().load(spec("folder", root, size=16,
                                class_map={"Covid": "pneumonia", "Viral Pneumonia": "pneumonia",
                                           "Normal": "normal"}))
    assert merged.classes == ["normal", "pneumonia"] and merged.counts() == [4, 11]
    with pytest.raises(DataError, match="class_map names folder 'Covid-19'.*folders found"):
        Folder().load(spec("folder", root, class_map={"Covid-19": "covid"}))
    with pytest.raises(DataError, match="option classes names 'Pneumonia'.*classes found"):
        Folder().load(spec("folder", root, classes=["Pneumonia", "Normal"]))


def test_folder_empty_class_is_an_error(tmp_path):
    root = tmp_path / "d"
    save(root / "a" / "1.png")
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="class folder 'b' .* holds no images"):
        Folder().load(spec("folder", root))
    save(root / "c" / "1.png", seed=3)
    assert Folder().load(spec("folder", root, classes=["a", "c"])).counts() == [1, 1]


def test_folder_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        Folder().load(spec("folder", tmp_path / "nope"))
    with pytest.raises(DataError, match="set dataset.path"):
        Folder().load(spec("folder", None))


def test_folder_corrupt_files_are_skipped_and_noted(tmp_path):
    root = kaggle_tree(tmp_path)
    (root / "train" / "Covid" / "broken.png").write_bytes(b"\x89PNG not really")
    good = (root / "train" / "Normal" / "n1.jpg").read_bytes()
    (root / "train" / "Normal" / "cut.jpg").write_bytes(good[: len(good) // 2])
    ds = Folder().load(spec("folder", root, size=16))
    assert ds.counts() == [6, 4, 5]
    # left out of the set and listed for the engine (dataset.unreadable refuses or skips)
    assert [u.split(" (")[0] for u in ds.unreadable] == ["train/Covid/broken.png",
                                                         "train/Normal/cut.jpg"]
    # a class whose every image is unreadable is an error
    bad = tmp_path / "bad"
    save(bad / "a" / "1.png")
    (bad / "b").mkdir()
    (bad / "b" / "1.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="class 'b' has no readable images"):
        Folder().load(spec("folder", bad))


def test_folder_all_unreadable_is_an_error(tmp_path):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 2 images"):
        Folder().load(spec("folder", root))


def test_folder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    root = kaggle_tree(tmp_path / "data")
    cache = tmp_path / "cache"
    first = Folder().load(spec("folder", root, size=24, channels=3, cache_dir=cache))
    entries = Cache(cache).entries("datasets")
    assert len(entries) == 1 and entries[0]["config"]["size"] == 24
    assert not Cache(cache).leftovers() and not list(cache.rglob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoder called on a cache hit")

    monkeypatch.setattr(_decode, "decode_image", no_decoding)
    second = Folder().load(spec("folder", root, size=24, channels=3, cache_dir=cache))
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    assert (second.sources, second.hashes, second.splits, second.classes, second.notes) == \
           (first.sources, first.hashes, first.splits, first.classes, first.notes)
    # other settings or a changed file mean another key, so the decoder runs again
    with pytest.raises(DataError, match="could be read"):
        Folder().load(spec("folder", root, size=16, channels=3, cache_dir=cache))
    target = root / "test" / "Normal" / "tn1.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="could be read"):
        Folder().load(spec("folder", root, size=24, channels=3, cache_dir=cache))


def test_folder_damaged_cache_is_rebuilt(tmp_path):
    root = kaggle_tree(tmp_path / "data")
    cache = tmp_path / "cache"
    first = Folder().load(spec("folder", root, size=16, cache_dir=cache))
    (entry,) = Cache(cache).entries("datasets")
    entry["path"].write_bytes(b"damaged")
    again = Folder().load(spec("folder", root, size=16, cache_dir=cache))
    assert torch.equal(again.images, first.images)
    (rebuilt,) = Cache(cache).entries("datasets")       # decoded again and stored anew
    assert rebuilt["key"] == entry["key"] and rebuilt["path"].stat().st_size > 100


def test_folder_duplicates_across_splits_and_labels(tmp_path):
    root = kaggle_tree(tmp_path)
    # the same file in train and test (one label), and one filed under two classes
    shutil.copy(root / "train" / "Normal" / "n1.jpg", root / "test" / "Normal" / "leak.jpg")
    shutil.copy(root / "train" / "Covid" / "c1.png", root / "train" / "Normal" / "conflict.png")
    ds = Folder().load(spec("folder", root, size=16))
    assert len(ds) == 17
    out, rep = handle_duplicates(ds, "drop")
    assert (rep.groups, rep.cross_split, rep.conflicting, rep.within_split) == (2, 1, 1, 0)
    assert rep.dropped == 3 and len(out) == 14
    assert "test/Normal/leak.jpg" in out.sources                  # the test copy stays
    assert "train/Normal/n1.jpg" not in out.sources
    assert not {"train/Covid/c1.png", "train/Normal/conflict.png"} & set(out.sources)
    with pytest.raises(DataError, match="2 groups of identical images"):
        handle_duplicates(ds, "refuse")


def test_a_conflicting_group_across_splits_counts_as_a_leak_too(tmp_path):
    # the same file as a training Covid image and as a test Normal image: a leak between
    # splits and a label conflict at once; the report must not hide either
    root = kaggle_tree(tmp_path)
    shutil.copy(root / "train" / "Covid" / "c1.png", root / "test" / "Normal" / "both.png")
    ds = Folder().load(spec("folder", root, size=16))
    out, rep = handle_duplicates(ds, "drop")
    assert (rep.groups, rep.cross_split, rep.conflicting, rep.conflicting_cross) == (1, 1, 1, 1)
    assert "1 groups across splits, 1 groups with conflicting labels (1 of them across splits)" \
        in rep.summary()
    assert rep.dropped == 2 and not {"train/Covid/c1.png", "test/Normal/both.png"} & set(out.sources)


def test_without_classes_renumbers_the_rest_and_names_a_wrong_class(tmp_path):
    ds = Folder().load(spec("folder", kaggle_tree(tmp_path), size=16))
    out = ds.without_classes(["Normal"])
    assert out.classes == ["Covid", "Viral Pneumonia"] and out.counts() == [6, 5]
    kept = [i for i, src in enumerate(ds.sources) if "/Normal/" not in src]
    assert out.sources == [ds.sources[i] for i in kept]
    assert torch.equal(out.images, ds.images[kept])
    assert out.labels.tolist() == [0 if ds.labels[i] == 0 else 1 for i in kept]
    with pytest.raises(DataError, match="has no class 'Norm' to drop; its classes are 'Covid'"):
        ds.without_classes(["Norm"])
    with pytest.raises(DataError, match="leaves fewer than 2 classes"):
        ds.without_classes(["Normal", "Covid"])


# ============================================================================ real data


def _data_root() -> Path | None:
    env = os.environ.get("MEDBENCH_DATA")
    p = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return p if p.is_dir() else None


DATA = _data_root()
needs_data = pytest.mark.skipif(DATA is None, reason="shared data folder not found (set MEDBENCH_DATA)")


@needs_data
def test_real_covid19_image_dataset(tmp_path):
    root = DATA / "covid19-image-dataset" / "Covid19-dataset"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    ds = Folder().load(spec("folder", root, size=32, channels=1, cache_dir=tmp_path))
    assert ds.classes == ["Covid", "Normal", "Viral Pneumonia"]
    assert split_counts(ds) == {"train": 251, "val": 0, "test": 66}
    assert np.bincount(ds.labels.numpy()[ds.split_index("train")]).tolist() == [111, 70, 70]
    assert np.bincount(ds.labels.numpy()[ds.split_index("test")]).tolist() == [26, 20, 20]
    assert ds.images.shape == (317, 1, 32, 32)
    assert not [n for n in ds.notes if "skipped" in n]


@needs_data
def test_real_pneumoniamnist(tmp_path):
    if not (DATA / "medmnist" / "pneumoniamnist.npz").is_file():
        pytest.skip("pneumoniamnist.npz not present")
    ds = MedMNIST().load(spec("medmnist", DATA, size=28, cache_dir=tmp_path, flag="pneumoniamnist"))
    assert split_counts(ds) == {"train": 4708, "val": 524, "test": 624}
    assert np.bincount(ds.labels.numpy()[ds.split_index("train")]).tolist() == [1214, 3494]
    assert ds.images.shape == (5856, 1, 28, 28)


@needs_data
def test_real_isic_duplicates_are_found_and_the_leaks_named(tmp_path):
    """The Kaggle ISIC 9-class set files 155 images under two classes (78 of the 80
    seborrheic keratosis images are melanoma images; 77 of the 130 actinic keratosis
    images are nevus images, 15 of its 16 test images among them), 18 of those across
    Train and Test."""
    root = DATA / "isic-skin-cancer" / "Skin cancer ISIC The International Skin Imaging Collaboration"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    ds = Folder().load(spec("folder", root, size=16, channels=3, cache_dir=tmp_path))
    assert split_counts(ds) == {"train": 2241, "val": 0, "test": 118}
    out, rep = handle_duplicates(ds, "drop")
    assert (rep.groups, rep.conflicting, rep.cross_split, rep.conflicting_cross) == (159, 155, 18, 18)
    test = out.split_index("test")
    counts = dict(zip(out.classes, np.bincount(out.labels.numpy()[test], minlength=9).tolist()))
    assert counts["actinic keratosis"] == 1 and counts["seborrheic keratosis"] == 0
    train_hashes = {out.hashes[i] for i in out.split_index("train")}
    assert not train_hashes & {out.hashes[i] for i in test}       # no leak is left
    assert dict(zip(out.classes, out.counts()))["seborrheic keratosis"] == 2
