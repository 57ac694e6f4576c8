"""The data every stage passes around: ImageSet, plus resizing, duplicate checks (exact
and, on request, near-duplicates by perceptual hash) and the groups (patients, lesions)
that group-aware folds keep whole.

Images stay uint8 (N x C x H x W) until the trainer converts a batch on the device.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    """A labelled image collection.

    images:  uint8 tensor, N x C x H x W
    labels:  int64 tensor, N
    classes: class names, index = label
    splits:  optional per-image split name ("train", "val" or "test") when the source
             ships its own split; None when it does not
    sources: optional per-image origin (file path or "npz:train:17") for reports
    hashes:  optional per-image content hash (of the original file bytes when the
             loader has them); computed from the pixels when absent
    unreadable: files the loader found but could not read, each "path (reason)"; they
             are not in the set, and the engine refuses the set or warns about them as
             the suite's ``dataset.unreadable`` says
    groups:  optional per-image group id (a patient or lesion, ``dataset.groups``); the
             folds keep every group whole, so no patient is in training and test at once
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    splits: list[str] | None = None
    sources: list[str] | None = None
    hashes: list[str] | None = None
    name: str = ""
    notes: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    groups: list[str] | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"dataset {self.name!r}: images must be a uint8 N x C x H x W tensor, "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        n = self.images.shape[0]
        if self.labels.shape[0] != n:
            raise DataError(f"dataset {self.name!r}: {n} images but {self.labels.shape[0]} labels")
        for attr in ("splits", "sources", "hashes", "groups"):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise DataError(f"dataset {self.name!r}: {n} images but {len(value)} {attr}")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(
                f"dataset {self.name!r}: labels must lie in 0..{len(self.classes) - 1} "
                f"for classes {self.classes}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self, index: np.ndarray | None = None) -> list[int]:
        labels = self.labels if index is None else self.labels[torch.as_tensor(index)]
        return torch.bincount(labels, minlength=self.num_classes).tolist()

    def subset(self, index) -> "ImageSet":
        index = np.asarray(index, dtype=np.int64)
        pick = lambda seq: None if seq is None else [seq[i] for i in index]  # noqa: E731
        t = torch.from_numpy(index)
        return ImageSet(
            images=self.images[t], labels=self.labels[t], classes=list(self.classes),
            splits=pick(self.splits), sources=pick(self.sources), hashes=pick(self.hashes),
            name=self.name, notes=list(self.notes), unreadable=list(self.unreadable),
            groups=pick(self.groups),
        )

    def without_classes(self, names: list[str]) -> "ImageSet":
        """This set minus the images of the named classes, the rest renumbered in order."""
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise DataError(f"dataset {self.name!r} has no class {unknown[0]!r} to drop; its "
                            f"classes are {', '.join(map(repr, self.classes))}")
        gone = {self.classes.index(n) for n in names}
        kept_classes = [c for i, c in enumerate(self.classes) if i not in gone]
        if len(kept_classes) < 2:
            raise DataError(f"dataset {self.name!r}: dropping {', '.join(names)} leaves fewer "
                            "than 2 classes")
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[[i for i in range(self.num_classes) if i not in gone]] = torch.arange(len(kept_classes))
        index = np.flatnonzero(remap[self.labels].numpy() >= 0)
        out = self.subset(index)
        out.labels = remap[out.labels]
        out.classes = kept_classes
        return out

    def split_index(self, split: str) -> np.ndarray:
        if self.splits is None:
            raise DataError(f"dataset {self.name!r} has no predefined splits")
        return np.array([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)

    def content_hashes(self) -> list[str]:
        if self.hashes is None:
            self.hashes = [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in self.images]
        return self.hashes

    def fingerprint(self) -> str:
        """A hash of pixels, labels, classes and splits: the cache key of this data."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images.numpy()).tobytes())
        h.update(self.labels.numpy().tobytes())
        h.update("\x1f".join(self.classes).encode())
        if self.splits is not None:
            h.update("\x1f".join(self.splits).encode())
        if self.groups is not None:      # the folds depend on them (absent: as before)
            h.update(b"groups\x1e" + "\x1f".join(self.groups).encode())
        return h.hexdigest()[:16]


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 N x C x H x W tensor to size x size, bilinear with antialiasing."""
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for chunk in torch.split(images, 512):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """1 -> 3 repeats the grey plane; 3 -> 1 uses ITU-R 601 luma weights."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert images with {c} channels to {channels}; use 1 or 3")


def conform(ds: ImageSet, image_size: int, channels: int) -> ImageSet:
    """Return ``ds`` with images at ``image_size`` px and ``channels`` channels."""
    images = convert_channels(resize_images(ds.images, image_size), channels)
    if images is ds.images:
        return ds
    return ImageSet(images=images, labels=ds.labels, classes=ds.classes, splits=ds.splits,
                    sources=ds.sources, hashes=ds.hashes, name=ds.name, notes=list(ds.notes),
                    unreadable=list(ds.unreadable), groups=ds.groups)


def handle_unreadable(ds: ImageSet, policy: str, shown: int = 3) -> list[str]:
    """Apply ``dataset.unreadable`` to the files the loader could not read: ``refuse``
    raises a DataError that says how many, names the first few and the option; ``skip``
    returns the one-line warning to print (the files are already left out)."""
    bad = ds.unreadable
    if not bad:
        return []
    first = "; ".join(bad[:shown]) + (f"; and {len(bad) - shown} more" if len(bad) > shown else "")
    what = f"dataset {ds.name!r}: {len(bad)} file(s) cannot be read as images: {first}"
    if policy == "refuse":
        raise DataError(f"{what}; fix or remove them, or set dataset.unreadable: skip to leave "
                        "them out")
    return [f"{what}; skipped (dataset.unreadable: skip; listed in data_report.json)"]


# --------------------------------------------------------------------------- duplicates


@dataclass
class DuplicateReport:
    """What duplicate detection found and what was done about it: exact duplicates
    (``kind`` "exact", same content hash) or near-duplicates (``kind`` "near", perceptual
    hashes at most ``max_distance`` bits apart)."""

    groups: int = 0              # groups of duplicate images (size >= 2)
    within_split: int = 0        # extra copies inside one split with one label
    cross_split: int = 0         # groups that span two or more splits (leaks between splits)
    conflicting: int = 0         # groups whose copies carry different labels
    conflicting_cross: int = 0   # groups that are both: counted in the two numbers above
    dropped: int = 0             # images removed
    examples: list[list[str]] = field(default_factory=list)
    kind: str = "exact"
    hash: str = ""               # near: the perceptual hash
    max_distance: int = 0        # near: the largest Hamming distance that counts

    def found(self) -> bool:
        return self.groups > 0

    def _what(self) -> str:
        if self.kind == "near":
            return f"near-identical images ({self.hash} distance <= {self.max_distance})"
        return "identical images"

    def summary(self) -> str:
        if not self.groups:
            return ("no exact duplicates" if self.kind == "exact" else
                    f"no near-duplicates ({self.hash} distance <= {self.max_distance})")
        both = f" ({self.conflicting_cross} of them across splits)" if self.conflicting_cross else ""
        return (f"{self.groups} groups of {self._what()}: {self.within_split} extra copies "
                f"within a split, {self.cross_split} groups across splits, {self.conflicting} "
                f"groups with conflicting labels{both}; {self.dropped} images dropped")

    def as_dict(self) -> dict:
        keys = ["groups", "within_split", "cross_split", "conflicting", "conflicting_cross",
                "dropped", "examples"]
        if self.kind != "exact":         # the exact report keeps its old keys
            keys += ["kind", "hash", "max_distance"]
        return {k: getattr(self, k) for k in keys}


def _resolve(ds: ImageSet, groups: list[list[int]], policy: str, rep: DuplicateReport,
             option: str) -> tuple[ImageSet, DuplicateReport]:
    """Count and apply ``policy`` to groups of duplicate images (index lists, each of two
    or more images), the one rule for exact and near-duplicates alike; see
    ``handle_duplicates``. ``option`` names the setting that found them, for messages."""
    labels = ds.labels.numpy()
    rank = {"train": 0, "val": 1, "test": 2}
    drop: set[int] = set()
    for members in groups:
        rep.groups += 1
        if len(rep.examples) < 5:
            rep.examples.append([ds.sources[i] if ds.sources else f"#{i}" for i in members])
        splits = {ds.splits[i] for i in members} if ds.splits else {None}
        if len(set(labels[members].tolist())) > 1:
            rep.conflicting += 1
            if len(splits) > 1:
                rep.cross_split += 1
                rep.conflicting_cross += 1
            drop.update(members)
            continue
        if len(splits) > 1:
            rep.cross_split += 1
            top = max(splits, key=lambda s: rank.get(s, -1))
            keep = [i for i in members if ds.splits[i] == top][0]
        else:
            rep.within_split += len(members) - 1
            keep = members[0]
        drop.update(i for i in members if i != keep)
    if policy == "refuse" and rep.groups:
        ex = "; ".join(" = ".join(g[:2]) for g in rep.examples[:2])
        raise DataError(f"dataset {ds.name!r}: {rep.summary().split(';')[0]} (e.g. {ex}); "
                        f"set dataset.duplicates: drop to remove them{option}")
    if policy == "keep" or not drop:
        return ds, rep
    rep.dropped = len(drop)
    kept = np.array([i for i in range(len(ds)) if i not in drop], dtype=np.int64)
    out = ds.subset(kept)
    out.notes.append(f"{'near-' if rep.kind == 'near' else ''}duplicates: {rep.summary()}")
    return out, rep


def _check_policy(policy: str) -> None:
    if policy not in ("drop", "refuse", "keep"):
        raise DataError(f"unknown duplicates policy {policy!r}; use drop, refuse or keep")


def handle_duplicates(ds: ImageSet, policy: str = "drop") -> tuple[ImageSet, DuplicateReport]:
    """Find exact duplicates (content hash) and apply ``policy``.

    drop:   a group with conflicting labels is dropped entirely; a group spanning splits
            keeps only its copies in the latest split (test over val over train, so the
            published test set stays whole) and of those only the first; a group inside
            one split keeps its first copy.
    refuse: any duplicate group raises a DataError naming examples.
    keep:   nothing is removed (the report still says what is there).
    """
    _check_policy(policy)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(ds.content_hashes()):
        groups[h].append(i)
    return _resolve(ds, [m for m in groups.values() if len(m) >= 2], policy, DuplicateReport(),
                    "")


# --------------------------------------------------------------------------- near-duplicates

NEAR_HASHES = ("phash",)
HASH_SIZE = 8                    # 8 x 8 = 64 bits, as imagehash's phash
HASH_HIGHFREQ = 4                # the DCT runs on a (8 * 4) px square grey image


def perceptual_hashes(images: torch.Tensor, kind: str = "phash") -> np.ndarray:
    """64-bit perceptual hashes of uint8 N x C x H x W images, as an N x 64 bool array.

    ``phash`` is the DCT hash of imagehash (Zauner 2010): the image in grey, shrunk to
    32 x 32 px, its 2-D DCT-II, the 8 x 8 lowest frequencies each compared with their
    median. Computed here for all images at once (scipy's DCT over the batch) rather
    than through imagehash's one-PIL-image-at-a-time API; a crop, re-encoding, a change
    of brightness or of size moves a few bits, another image about half of them."""
    if kind not in NEAR_HASHES:
        raise DataError(f"unknown perceptual hash {kind!r}; use {', '.join(NEAR_HASHES)}")
    from scipy.fft import dctn
    n = images.shape[0]
    if n == 0:
        return np.zeros((0, HASH_SIZE * HASH_SIZE), dtype=bool)
    side = HASH_SIZE * HASH_HIGHFREQ
    grey = resize_images(convert_channels(images, 1), side)[:, 0].numpy().astype(np.float64)
    coeffs = dctn(grey, type=2, axes=(1, 2))[:, :HASH_SIZE, :HASH_SIZE].reshape(n, -1)
    return coeffs > np.median(coeffs, axis=1, keepdims=True)


def near_duplicate_groups(bits: np.ndarray, max_distance: int,
                          block: int | None = None) -> list[list[int]]:
    """Groups (index lists of two or more, in order) of hashes at most ``max_distance``
    bits apart, joined transitively (single linkage: a chain a~b~c is one group, as a
    leak through b would join a and c anyway). The Hamming distances of all pairs come
    from one matrix product per block of rows, so memory stays at block x N (by default
    about 128 MB of distances, whatever N)."""
    n = bits.shape[0]
    block = block or max(1, min(4096, (1 << 25) // max(n, 1)))
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    b = bits.astype(np.float32)
    nb = 1.0 - b
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        # differing bits = ones of a over zeros of b + zeros of a over ones of b
        dist = b[lo:hi] @ nb.T + nb[lo:hi] @ b.T
        rows, cols = np.nonzero(dist <= max_distance + 0.5)
        for i, j in zip((rows + lo).tolist(), cols.tolist()):
            if j > i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    return [m for m in members.values() if len(m) >= 2]


def handle_near_duplicates(ds: ImageSet, policy: str = "drop", *, max_distance: int = 4,
                           method: str = "phash") -> tuple[ImageSet, DuplicateReport]:
    """Find near-duplicates (perceptual hashes at most ``max_distance`` bits apart: the
    same picture re-encoded, resized, slightly cropped or brightened) and apply
    ``policy`` exactly as ``handle_duplicates`` does. Run it after the exact check, so
    each image here is the one copy of its content left."""
    _check_policy(policy)
    groups = near_duplicate_groups(perceptual_hashes(ds.images, method), max_distance)
    rep = DuplicateReport(kind="near", hash=method, max_distance=max_distance)
    return _resolve(ds, groups, policy, rep,
                    " (or lower dataset.near_duplicates.max_distance)")


# --------------------------------------------------------------------------- groups


def _image_keys(source: str) -> list[str]:
    """The names a metadata row may give an image by: its source as the loader wrote it
    (a path relative to dataset.path, ``npz:train:17``), its file name, and that name
    without the extension (``ISIC_0024306``, as HAM10000's metadata names images)."""
    name = source.replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return list(dict.fromkeys([source, name, stem]))


def read_metadata(path, key: str | None, column: str) -> dict[str, str]:
    """image key -> group id, from a CSV with one row per image: its column ``key``
    (default: the first) names the image, ``column`` its group."""
    import pandas as pd
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset.metadata: {path} not found; give a CSV with one row per "
                        "image (relative paths are looked up under MEDBENCH_DATA, then "
                        "dataset.path, then beside the suite)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"dataset.metadata: {path} is not a readable CSV: {first}") from None
    cols = list(table.columns)
    key = key or (cols[0] if cols else None)
    for what, name in (("dataset.metadata_key", key), ("dataset.groups", column)):
        if name not in cols:
            raise DataError(f"{what}: {path.name} has no column {name!r}; its columns are "
                            f"{', '.join(map(repr, cols)) or 'none'}")
    out: dict[str, str] = {}
    for k, g in zip(table[key].str.strip(), table[column].str.strip()):
        if not k:
            continue
        if k in out and out[k] != g:
            raise DataError(f"dataset.metadata: {path.name} gives image {k!r} two groups "
                            f"({out[k]!r} and {g!r}) in column {column!r}")
        out[k] = g
    return out


def attach_groups(ds: ImageSet, table: dict[str, str], column: str, shown: int = 3) -> ImageSet:
    """``ds`` with ``groups`` from ``table`` (``read_metadata``). Every image needs a
    non-empty group: one without could share a patient with a test image unseen, so the
    set is refused, naming the first few, rather than split as if it were alone."""
    if not ds.sources:
        raise DataError(f"dataset {ds.name!r}: the loader names no image sources, so "
                        "dataset.metadata cannot be matched to the images")
    groups, missing = [], []
    for src in ds.sources:
        g = next((table[k] for k in _image_keys(src) if k in table), "")
        if not g:
            missing.append(src)
        groups.append(g)
    if missing:
        first = ", ".join(missing[:shown]) + (f", and {len(missing) - shown} more"
                                               if len(missing) > shown else "")
        raise DataError(f"dataset {ds.name!r}: {len(missing)} of {len(ds)} images have no "
                        f"{column!r} in dataset.metadata ({first}); the metadata key must be "
                        "the image's path under dataset.path, its file name, or its name "
                        "without the extension")
    ds.groups = groups
    return ds


def group_report(ds: ImageSet, column: str) -> dict:
    """How the groups of ``ds`` look: how many, the images per group, the groups whose
    images carry more than one label, and (with the source's own splits) the groups
    that span them, whose training images the holdout folds leave out."""
    assert ds.groups is not None
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(ds.groups):
        members[g].append(i)
    sizes = np.array([len(m) for m in members.values()], dtype=np.int64)
    labels = ds.labels.numpy()
    mixed = sum(1 for m in members.values() if len(set(labels[m].tolist())) > 1)
    across = None
    if ds.splits is not None:
        across = sum(1 for m in members.values() if len({ds.splits[i] for i in m}) > 1)
    rep = {"column": column, "groups": int(len(sizes)), "images": int(sizes.sum()),
           "per_group_min": int(sizes.min()), "per_group_median": float(np.median(sizes)),
           "per_group_mean": round(float(sizes.mean()), 3), "per_group_max": int(sizes.max()),
           "single_image_groups": int((sizes == 1).sum()), "mixed_label_groups": int(mixed)}
    if across is not None:
        rep["across_splits"] = int(across)
    return rep


def group_summary(rep: dict) -> str:
    """The data report's line on the groups."""
    text = (f"{rep['groups']} groups (`{rep['column']}`) of {rep['per_group_min']}-"
            f"{rep['per_group_max']} images (median {rep['per_group_median']:g}, mean "
            f"{rep['per_group_mean']:g}; {rep['single_image_groups']} of one image), "
            f"{rep['mixed_label_groups']} with more than one label")
    if rep.get("across_splits"):
        text += (f", {rep['across_splits']} across the source's splits (a holdout on those "
                 "splits leaves their training and validation images out)")
    return text
