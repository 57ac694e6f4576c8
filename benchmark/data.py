"""The data every stage passes around: ImageSet, plus resizing and duplicate checks.

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
        for attr in ("splits", "sources", "hashes"):
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
                    unreadable=list(ds.unreadable))


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
    """What duplicate detection found and what was done about it."""

    groups: int = 0              # groups of byte-identical images (size >= 2)
    within_split: int = 0        # extra copies inside one split with one label
    cross_split: int = 0         # groups that span two or more splits (leaks between splits)
    conflicting: int = 0         # groups whose copies carry different labels
    conflicting_cross: int = 0   # groups that are both: counted in the two numbers above
    dropped: int = 0             # images removed
    examples: list[list[str]] = field(default_factory=list)

    def found(self) -> bool:
        return self.groups > 0

    def summary(self) -> str:
        if not self.groups:
            return "no exact duplicates"
        both = f" ({self.conflicting_cross} of them across splits)" if self.conflicting_cross else ""
        return (f"{self.groups} groups of identical images: {self.within_split} extra copies "
                f"within a split, {self.cross_split} groups across splits, {self.conflicting} "
                f"groups with conflicting labels{both}; {self.dropped} images dropped")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("groups", "within_split", "cross_split", "conflicting", "conflicting_cross",
                 "dropped", "examples")}


def handle_duplicates(ds: ImageSet, policy: str = "drop") -> tuple[ImageSet, DuplicateReport]:
    """Find exact duplicates (content hash) and apply ``policy``.

    drop:   a group with conflicting labels is dropped entirely; a group spanning splits
            keeps only its copies in the latest split (test over val over train, so the
            published test set stays whole) and of those only the first; a group inside
            one split keeps its first copy.
    refuse: any duplicate group raises a DataError naming examples.
    keep:   nothing is removed (the report still says what is there).
    """
    if policy not in ("drop", "refuse", "keep"):
        raise DataError(f"unknown duplicates policy {policy!r}; use drop, refuse or keep")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(ds.content_hashes()):
        groups[h].append(i)
    rep = DuplicateReport()
    labels = ds.labels.numpy()
    rank = {"train": 0, "val": 1, "test": 2}
    drop: set[int] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
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
                        "set dataset.duplicates: drop to remove them")
    if policy == "keep" or not drop:
        return ds, rep
    rep.dropped = len(drop)
    kept = np.array([i for i in range(len(ds)) if i not in drop], dtype=np.int64)
    out = ds.subset(kept)
    out.notes.append(f"duplicates: {rep.summary()}")
    return out, rep
