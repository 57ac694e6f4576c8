"""``folder``: images filed in one folder per class.

Layouts under ``dataset.path`` (detected, or forced with the option ``layout``):

* ``splits``: ``train/<class>/*``, ``test/<class>/*`` and optionally ``val/<class>/*``;
  split folder names are matched case-insensitively (train/training, val/valid/
  validation, test/testing). The images keep that split (ImageSet.splits).
* ``classes``: plain ``<class>/*``; no predefined split.
* ``radiography``: the COVID-19 Radiography Database, ``<class>/images/*`` with
  ``<class>/masks/`` ignored (its older flat release is just ``classes``).

Hidden files and non-image files (metadata spreadsheets, READMEs) are ignored; images
are .png .jpg .jpeg .bmp .tif .tiff in any case. A root that holds nothing but one
folder (an unpacked archive) is entered automatically.

Decoding (``_decode.decode_image``): PIL, converted to "L" for 1 channel (ITU-R 601
luma) or "RGB" for 3; alpha is composited over black, 16-bit images scaled to 8 bit.
``resize: squash`` (default) resizes the whole image straight to image_size x
image_size with PIL's bilinear filter, which is antialiased when shrinking (the aspect
ratio is not kept); ``resize: center-crop`` scales the shorter side to image_size and
crops the centre square. An unreadable image (damaged, empty, or above the imaging
library's decompression-bomb limit) is left out and listed in ImageSet.unreadable, which
the engine refuses or warns about (``dataset.unreadable``); a class left with no images
is an error.

``sources`` are paths relative to ``dataset.path``; ``hashes`` are SHA-1 sums of the
original file bytes, so byte-identical copies are found as duplicates. The decoded set
is cached in the ``datasets`` kind of the medbench cache (``medbench.cache``); the key
covers the root, every file's relative path, size and mtime, and all options that
change the pixels or labels. A damaged entry is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medbench.api import DatasetLoader, DatasetSpec, Param
from medbench.cache import Cache, content_key
from medbench.data import ImageSet
from medbench.errors import DataError
from medbench.hookspecs import hookimpl

from . import _decode
from ._decode import IMAGE_EXTENSIONS, RESIZE_METHODS, check_spec, opt_str_list

CACHE_VERSION = 2                # 2: the unreadable files are kept with the set
LAYOUTS = ("auto", "splits", "classes", "radiography")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}
SPLIT_RANK = {"train": 0, "val": 1, "test": 2}
JUNK_DIRS = {"__macosx"}
PROGRESS_MIN_FILES = 200



@dataclass
class _File:
    path: Path
    rel: str
    folder: str            # class folder name as on disk
    split: str | None
    size: int
    mtime_ns: int


def _dirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and d.name.lower() not in JUNK_DIRS)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _files(p: Path) -> tuple[list[Path], int]:
    """Image files directly in ``p`` (sorted) and how many other files were ignored."""
    images, other = [], 0
    for f in p.iterdir():
        if f.is_file():
            if _is_image(f):
                images.append(f)
            elif not f.name.startswith("."):
                other += 1
    return sorted(images), other


def _class_image_dir(class_dir: Path) -> Path:
    """``<class>/images`` when it exists (radiography layout), else the folder itself."""
    for d in _dirs(class_dir):
        if d.name.lower() == "images":
            return d
    return class_dir


def _fmt(names) -> str:
    return ", ".join(repr(n) for n in names) or "none"


class Folder(DatasetLoader):
    """One folder per class, optionally under train/val/test folders; see the module
    docstring for layouts, decoding and caching.

    Options: layout (auto, splits, classes, radiography), classes (subset and order),
    class_map (folder -> class name, to rename or merge), resize (squash: bilinear with
    antialiasing straight to a square; center-crop: shorter side to image_size, then the
    centre square), jpeg_draft (false), workers (decoding threads).
    """

    description = "images in one folder per class (optionally train/val/test folders above them)"

    defaults = {"layout": "auto", "classes": None, "class_map": None, "resize": "squash",
                "jpeg_draft": False, "workers": None}
    choices = {"layout": LAYOUTS, "resize": RESIZE_METHODS}
    declared = {
        "layout": Param(help="auto: detected; splits: train/val/test folders; classes: one "
                             "folder per class; radiography: <class>/images"),
        "classes": Param("list", "class names to keep, in order (default: all, sorted)"),
        "class_map": Param("mapping", "folder name -> class name, to rename or merge folders"),
        "resize": Param(help="squash: the whole image to a square; center-crop: the central one"),
        "jpeg_draft": Param(help="decode big JPEGs at a reduced scale first (faster)"),
        "workers": Param("int", "decoding threads (default: the CPUs, at most 8)", low=1, high=64),
    }

    def load(self, spec: DatasetSpec) -> ImageSet:
        opts = self.check("dataset", "folder", spec.options)
        check_spec("folder", spec.image_size, spec.channels)
        layout, resize, jpeg_draft = opts["layout"], opts["resize"], opts["jpeg_draft"]
        workers = opts["workers"] or min(8, os.cpu_count() or 1)
        want = opts["classes"]
        if want is not None:
            want = opt_str_list("folder", "classes", want)
        cmap = opts["class_map"]
        if cmap is not None and not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in cmap.items()):
            raise DataError("folder: option class_map must map folder names to class names "
                            f"(strings), got {cmap!r}")
        cmap = dict(cmap or {})

        if spec.path is None:
            raise DataError("folder: set dataset.path to the folder that holds one sub-folder "
                            "per class (or train/ and test/ folders)")
        top = Path(spec.path)
        if not top.exists():
            raise DataError(f"folder: {top} does not exist; set dataset.path to the folder that "
                            "holds one sub-folder per class (or train/ and test/ folders), "
                            "relative paths are looked up under MEDBENCH_DATA")
        if not top.is_dir():
            raise DataError(f"folder: {top} is a file; dataset.path must be a folder with one "
                            "sub-folder per class")
        notes: list[str] = []
        root, layout, files, ignored, empty_folders = self._scan(top, layout, notes)

        # class names: folder -> class_map -> classes subset/order
        folders = sorted({f.folder for f in files} | set(empty_folders))
        unknown = sorted(set(cmap) - set(folders))
        if unknown:
            raise DataError(f"folder: class_map names folder {unknown[0]!r}, which is not in "
                            f"{root}; folders found: {_fmt(folders)}")
        mapped = {f: cmap.get(f, f) for f in folders}
        available = sorted(set(mapped.values()))
        if want is None:
            classes = available
        else:
            missing = [c for c in want if c not in available]
            if missing:
                raise DataError(f"folder: option classes names {missing[0]!r}, which is not a "
                                f"class in {root}; classes found: {_fmt(available)}")
            classes = want
            dropped = sorted(f for f in folders if mapped[f] not in classes)
            if dropped:
                notes.append(f"folder: left out folders {_fmt(dropped)} (not in option classes)")
        if len(classes) < 2:
            raise DataError(f"folder: found only {len(classes)} class ({_fmt(classes)}) in {root}; "
                            "a classifier needs at least 2 class folders")
        index = {c: i for i, c in enumerate(classes)}
        for folder in empty_folders:
            if mapped[folder] in index:
                raise DataError(f"folder: class folder {folder!r} in {root} holds no images "
                                f"({', '.join(e.lower() for e in IMAGE_EXTENSIONS)}); add images, "
                                "or leave it out with the option classes")
        files = [f for f in files if mapped[f.folder] in index]
        files.sort(key=lambda f: (SPLIT_RANK.get(f.split, -1), index[mapped[f.folder]], f.rel))
        labels = [index[mapped[f.folder]] for f in files]
        self._check_counts(classes, labels, [f.split for f in files], layout, root, notes)
        if ignored:
            notes.append(f"folder: ignored {ignored} non-image files in the class folders")

        desc = self._cache_desc(top, root, layout, files, labels, spec, resize, jpeg_draft,
                                want, cmap)
        key = content_key(desc)
        cache = None if spec.cache_dir is None else Cache(spec.cache_dir, warn=lambda m: None)
        name = f"folder:{top.name}"
        if cache is not None:
            ds = cache.load("datasets", key, lambda p: self._read_cache(p, name))
            if ds is not None:
                return ds

        images, keep, hashes, failed, large = self._decode_all(files, spec, resize, jpeg_draft,
                                                               workers)
        if large:
            from PIL import Image
            line = (f"folder: {len(large)} image(s) above {Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx "
                    f"decoded, slowly and in much memory ({'; '.join(large[:3])}"
                    f"{'; ...' if len(large) > 3 else ''}); shrink them to speed up loading")
            notes.append(line)
            print(f"warning: {line}", file=sys.stderr, flush=True)
        if not keep:
            raise DataError(f"folder: none of the {len(files)} images in {root} could be read "
                            f"(first: {failed[0]})")
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
        counts = np.bincount(labels, minlength=len(classes))
        for c, n in zip(classes, counts):
            if n == 0:
                raise DataError(f"folder: class {c!r} has no readable images in {root} "
                                f"({len(failed)} files could not be read); fix or remove them")
        has_splits = layout == "splits"
        ds = ImageSet(
            images=torch.from_numpy(np.stack(images)),
            labels=torch.tensor(labels, dtype=torch.int64), classes=list(classes),
            splits=[f.split for f in files] if has_splits else None,
            sources=[f.rel for f in files], hashes=hashes, name=name, notes=notes,
            unreadable=failed,
        )
        if cache is not None:
            size = f"{spec.image_size} px, {spec.channels} channel(s)"
            if not cache.store("datasets", key, lambda p: self._write_cache(p, ds), ".pt",
                               f"folder {root}: {len(ds)} images, {size}", desc):
                ds.notes.append(f"folder: could not write the decode cache in {spec.cache_dir}")
        return ds

    # ------------------------------------------------------------------ scanning

    def _scan(self, top: Path, layout: str, notes: list[str]):
        """Find the class folders; returns (root, layout, files, the number of ignored
        non-image files, class folders without a single image in any split)."""
        root = top
        if layout == "auto":
            for _ in range(3):          # an archive unpacked into one folder: go inside
                subs = _dirs(root)
                if len(subs) == 1 and not _files(root)[0] and \
                        subs[0].name.lower() not in SPLIT_NAMES and _dirs(subs[0]):
                    root = subs[0]
                else:
                    break
            if root != top:
                notes.append(f"folder: using {root.relative_to(top).as_posix()}/ inside {top}")
        subs = _dirs(root)
        split_dirs: dict[str, Path] = {}
        for d in subs:
            split = SPLIT_NAMES.get(d.name.strip().lower())
            if split is None:
                continue
            if split in split_dirs:
                raise DataError(f"folder: {root} has two {split} folders "
                                f"({split_dirs[split].name!r} and {d.name!r}); keep one")
            split_dirs[split] = d
        if layout == "auto":
            if split_dirs:
                layout = "splits"
            elif any(_class_image_dir(d) is not d for d in subs):
                layout = "radiography"
            else:
                layout = "classes"
        if layout == "splits":
            if not split_dirs:
                raise DataError(f"folder: layout splits needs train/ and test/ folders in {root}; "
                                f"found {_fmt(d.name for d in subs)}")
            if "train" not in split_dirs:
                raise DataError(f"folder: {root} has {_fmt(d.name for d in split_dirs.values())} "
                                "but no train folder; add train/<class>/ or use layout classes")
            other = [d.name for d in subs if d not in split_dirs.values()]
            if other:
                notes.append(f"folder: ignored folders {_fmt(other)} beside the split folders")
            parents = [(split, split_dirs[split]) for split in ("train", "val", "test")
                       if split in split_dirs]
        else:
            parents = [(None, root)]

        files: list[_File] = []
        ignored = 0
        empty: set[str] = set()
        for split, parent in parents:
            class_dirs = _dirs(parent)
            if not class_dirs:
                where = f"{parent}" if split is None else f"the {split} folder {parent}"
                raise DataError(f"folder: no class folders in {where}; put each class's images "
                                "in a sub-folder named after the class")
            for cdir in class_dirs:
                img_dir = cdir if layout == "classes" else _class_image_dir(cdir)
                found, other = _files(img_dir)
                ignored += other
                if not found:
                    empty.add(cdir.name)
                for p in found:
                    st = p.stat()
                    files.append(_File(p, p.relative_to(top).as_posix(), cdir.name, split,
                                       st.st_size, st.st_mtime_ns))
        present = {f.folder for f in files}
        return root, layout, files, ignored, sorted(empty - present)

    @staticmethod
    def _check_counts(classes, labels, splits, layout, root, notes):
        if layout != "splits":
            return
        labels = np.asarray(labels, dtype=np.int64)
        for split in ("train", "val", "test"):
            mask = np.array([s == split for s in splits], dtype=bool)
            if not mask.any():
                continue
            counts = np.bincount(labels[mask], minlength=len(classes))
            lacking = [c for c, n in zip(classes, counts) if n == 0]
            if lacking:
                notes.append(f"folder: {split} split has no images of {_fmt(lacking)}")

    # ------------------------------------------------------------------ decoding

    @staticmethod
    def _decode_all(files, spec, resize, jpeg_draft, workers):
        size, channels = spec.image_size, spec.channels

        large: list[str] = []

        def work(f: _File):
            try:
                data = f.path.read_bytes()
            except OSError as exc:
                return None, None, f"{f.rel} ({exc.strerror or exc})"
            if not data:
                return None, None, f"{f.rel} (empty file)"
            digest = hashlib.sha1(data).hexdigest()
            try:
                arr = _decode.decode_image(data, channels, size, resize, jpeg_draft,
                                           on_large=lambda w, h: large.append(
                                               f"{f.rel}: {w} x {h} px"))
            except _decode.OversizedImage as exc:
                return None, None, f"{f.rel} ({exc})"
            except Exception as exc:                  # PIL raises many kinds
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                return None, None, f"{f.rel} ({type(exc).__name__}{': ' + reason if reason else ''})"
            return arr, digest, None

        images, keep, hashes, failed = [], [], [], []
        progress = None
        if len(files) >= PROGRESS_MIN_FILES and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import Progress
                progress = Progress(console=Console(stderr=True), transient=True)
            except ImportError:                       # pragma: no cover
                progress = None
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files) or 1))) as pool:
            results = pool.map(work, files)
            if progress is not None:
                progress.start()
                task = progress.add_task(f"decoding {len(files)} images", total=len(files))
            try:
                for i, (arr, digest, err) in enumerate(results):
                    if progress is not None:
                        progress.advance(task)
                    if err is not None:
                        failed.append(err)
                        continue
                    images.append(arr)
                    hashes.append(digest)
                    keep.append(i)
            finally:
                if progress is not None:
                    progress.stop()
        return images, keep, hashes, failed, sorted(large)

    # ------------------------------------------------------------------ cache

    @staticmethod
    def _cache_desc(top, root, layout, files, labels, spec, resize, jpeg_draft, want,
                    cmap) -> dict:
        """What the decoded set depends on; the file list enters as a digest of every
        file's relative path, size, mtime, split and label."""
        h = hashlib.sha256()
        for f, label in zip(files, labels):
            h.update(json.dumps([f.rel, f.size, f.mtime_ns, f.split, label]).encode())
        return {"loader": "folder", "v": CACHE_VERSION, "top": str(top.resolve()),
                "root": str(root.resolve()), "layout": layout, "size": spec.image_size,
                "channels": spec.channels, "resize": resize, "jpeg_draft": jpeg_draft,
                "classes": want, "class_map": sorted(cmap.items()), "files": len(files),
                "files_digest": h.hexdigest()}

    @staticmethod
    def _read_cache(path: Path, name: str) -> ImageSet:
        blob = torch.load(path, weights_only=True)
        if blob.get("version") != CACHE_VERSION:
            raise ValueError(f"decode cache version {blob.get('version')!r}")
        return ImageSet(images=blob["images"], labels=blob["labels"],
                        classes=list(blob["classes"]), splits=blob["splits"],
                        sources=blob["sources"], hashes=blob["hashes"], name=name,
                        notes=list(blob["notes"]), unreadable=list(blob["unreadable"]))

    @staticmethod
    def _write_cache(path: Path, ds: ImageSet) -> None:
        blob = {"version": CACHE_VERSION, "images": ds.images, "labels": ds.labels,
                "classes": ds.classes, "splits": ds.splits, "sources": ds.sources,
                "hashes": ds.hashes, "notes": ds.notes, "unreadable": ds.unreadable}
        torch.save(blob, path)


@hookimpl
def register_datasets(register):
    register("folder", Folder)
