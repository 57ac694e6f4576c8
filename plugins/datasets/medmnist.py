"""``medmnist``: the official MedMNIST v2 / v3 (MedMNIST+) 2D ``.npz`` releases.

Each file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images`` and ``test_labels``; images are uint8 (N, H, W) grey or (N, H, W, 3)
RGB, labels (N, 1). The loader keeps the official split ("train"/"val"/"test"), names
the classes from the table below and resizes to the suite's image_size with bilinear
antialiasing (``medbench.data.resize_images``).

Download URLs and MD5 sums are those of the official ``medmnist`` package
(``medmnist/info.py``, version 3.0.2, Zenodo record 10519652, which serves the 28 px
files of MedMNIST v2 and the 64/128/224 px files of MedMNIST+). A file is verified
against its MD5 once; the result is remembered in ``cache_dir`` by path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from medbench.api import DatasetLoader, DatasetSpec, Param
from medbench.data import ImageSet, convert_channels, resize_images
from medbench.errors import DataError
from medbench.files import atomic_text, fetch
from medbench.hookspecs import hookimpl

from ._decode import check_spec, file_digest, opt_choice

URL_PATTERN = "https://zenodo.org/records/10519652/files/{filename}?download=1"
SIZES = (28, 64, 128, 224)

_ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen"]

# MedMNIST v2 label names (medmnist/info.py "label"), single-label 2D sets only.
LABELS: dict[str, list[str]] = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma",
                  "colorectal adenocarcinoma epithelium"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                   "melanocytic nevi", "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["0", "1", "2", "3", "4"],       # ordinal DR grades, used as classes
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast",
                   "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
                   "lymphocyte", "monocyte", "neutrophil", "platelet"],
    "tissuemnist": ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                    "Glomerular endothelial cells", "Interstitial endothelial cells",
                    "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                    "Thick Ascending Limb"],
    "organamnist": _ORGANS,
    "organcmnist": _ORGANS,
    "organsmnist": _ORGANS,
}
MULTI_LABEL = {"chestmnist"}
VOLUMES = {"organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d",
           "vesselmnist3d", "synapsemnist3d"}

# MD5 of each official file, by file name (from medmnist/info.py 3.0.2). A file not
# listed here is loaded without verification, and the loader says so in the notes.
MD5: dict[str, str] = {
    "pathmnist.npz": "a8b06965200029087d5bd730944a56c1",
    "pathmnist_64.npz": "55aa9c1e0525abe5a6b9d8343a507616",
    "pathmnist_128.npz": "ac42d08fb904d92c244187169d1fd1d9",
    "pathmnist_224.npz": "2c51a510bcdc9cf8ddb2af93af1eadec",
    "chestmnist.npz": "02c8a6516a18b556561a56cbdd36c4a8",
    "chestmnist_64.npz": "9de6cd0b934ebb5b7426cfba5efbae16",
    "chestmnist_128.npz": "db107e5590b27930b62dbaf558aebee3",
    "chestmnist_224.npz": "45bd33e6f06c3e8cdb481c74a89152aa",
    "dermamnist.npz": "0744692d530f8e62ec473284d019b0c7",
    "dermamnist_64.npz": "b70a2f5635c6199aeaa28c31d7202e1f",
    "dermamnist_128.npz": "2defd784463fa5243564e855ed717de1",
    "dermamnist_224.npz": "8974907d8e169bef5f5b96bc506ae45d",
    "octmnist.npz": "c68d92d5b585d8d81f7112f81e2d0842",
    "octmnist_64.npz": "e229e9440236b774d9f0dfef9d07bdaf",
    "octmnist_128.npz": "0a97e76651ace45c5d943ee3f65b63ae",
    "octmnist_224.npz": "abc493b6d529d5de7569faaef2773ba3",
    "pneumoniamnist.npz": "28209eda62fecd6e6a2d98b1501bb15f",
    "pneumoniamnist_64.npz": "8f4eceb4ccffa70c672198ea285246c6",
    "pneumoniamnist_128.npz": "05b46931834c231683c68f40c47b2971",
    "pneumoniamnist_224.npz": "d6a3c71de1b945ea11211b03746c1fe1",
    "retinamnist.npz": "bd4c0672f1bba3e3a89f0e4e876791e4",
    "retinamnist_64.npz": "afda852cc34dcda56f86ad2b2457dbcc",
    "retinamnist_128.npz": "e48e916a24454daf90583d4e6efb1a18",
    "retinamnist_224.npz": "eae7e3b6f3fcbda4ae613ebdcbe35348",
    "breastmnist.npz": "750601b1f35ba3300ea97c75c52ff8f6",
    "breastmnist_64.npz": "742edef2a1fd1524b2efff4bd7ba9364",
    "breastmnist_128.npz": "363e4b3f8d712e9b5de15470a2aaadf1",
    "breastmnist_224.npz": "b56378a6eefa9fed602bb16d192d4c8b",
    "bloodmnist.npz": "7053d0359d879ad8a5505303e11de1dc",
    "bloodmnist_64.npz": "2b94928a2ae4916078ca51e05b6b800b",
    "bloodmnist_128.npz": "adace1e0ed228fccda1f39692059dd4c",
    "bloodmnist_224.npz": "b718ff6835fcbdb22ba9eacccd7b2601",
    "tissuemnist.npz": "ebe78ee8b05294063de985d821c1c34b",
    "tissuemnist_64.npz": "123ece2eba09d0aa5d698fda57103344",
    "tissuemnist_128.npz": "61b955355d7425a89687b06cca3ce0c2",
    "tissuemnist_224.npz": "b077128c4a949f0a4eb01517f9037b9c",
    "organamnist.npz": "68e3f8846a6bd62f0c9bf841c0d9eacc",
    "organamnist_64.npz": "2dcccc29b88e6da5a01161ef20cda288",
    "organamnist_128.npz": "eeae80d0a227a8d099027e1b3cfd3b60",
    "organamnist_224.npz": "50747347e05c87dd3aaf92c49f9f3170",
    "organcmnist.npz": "b9ceb9546e10131b32923c5bbeaea2b1",
    "organcmnist_64.npz": "3ce34a8724ea6f548e6db4744d03b6a9",
    "organcmnist_128.npz": "773c1f009daa3fe5d9a2a201b2a7ed94",
    "organcmnist_224.npz": "050f5e875dc056f6768abf94ec9995d1",
    "organsmnist.npz": "9ab87b696fb54e2a387ebe992d6ed5f1",
    "organsmnist_64.npz": "53a6d115339d874c25e309a994ff46d3",
    "organsmnist_128.npz": "ded0c5fa01a95dc4978b956f613e9b8e",
    "organsmnist_224.npz": "b354719e553fbbb2513d5533f52a4cb1",
}

KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
DOWNLOAD_TIMEOUT_S = 60


def filename_for(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def url_for(filename: str) -> str:
    return URL_PATTERN.format(filename=filename)


def _md5_text(filename: str) -> str:
    md5 = MD5.get(filename)
    return f"MD5 {md5}" if md5 else "MD5 unknown to medbench (the file will not be verified)"


def _candidates(path: Path | None, filename: str, cache_dir: Path | None) -> tuple[list[Path], Path]:
    """Where the file may be, and where it should go when it is not there."""
    if path is None:
        if cache_dir is None:
            raise DataError("medmnist: no dataset.path and no cache folder; set dataset.path "
                            "to the folder that holds (or should hold) the .npz files")
        home = Path(cache_dir) / "medmnist"
        return [home / filename], home / filename
    path = Path(path)
    if path.suffix.lower() == ".npz" and not path.is_dir():
        return [path], path
    found = [path / filename, path / "medmnist" / filename]
    dest = found[1] if (path / "medmnist").is_dir() and not (path / filename).exists() else found[0]
    return found, dest


def _verify_cache_file(cache_dir: Path | None) -> Path | None:
    return None if cache_dir is None else Path(cache_dir) / "medmnist-verified.json"


def _read_verified(cache_file: Path | None) -> dict:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        data = json.loads(cache_file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def verify_md5(file: Path, expected: str, cache_dir: Path | None) -> bool:
    """Check ``file`` against ``expected`` once per (path, size, mtime); raise on a
    mismatch. Returns True when the hash was computed now, False when it was cached."""
    st = file.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": expected}
    cache_file = _verify_cache_file(cache_dir)
    known = _read_verified(cache_file)
    key = str(file.resolve())
    if known.get(key) == stamp:
        return False
    got = _md5_of(file)
    if got != expected:
        raise DataError(
            f"medmnist: {file} has MD5 {got} but the official {file.name} has {expected}; "
            f"the file is damaged or not the official release: delete it and download it "
            f"again from {url_for(file.name)}")
    if cache_file is not None:
        known[key] = stamp
        try:
            atomic_text(cache_file, json.dumps(known, indent=1, sort_keys=True))
        except OSError:
            pass                                   # an unwritable cache only costs time
    return True


def _md5_of(file: Path) -> str:
    return file_digest(file, "md5")


def download(url: str, dest: Path, md5: str | None) -> None:
    """Fetch ``url`` to ``dest`` (atomic) and check its MD5. Any failure raises a one-line
    DataError and leaves nothing behind."""
    def check(got: str) -> None:
        if md5 and got != md5:
            raise DataError(f"medmnist: the download of {url} has MD5 {got}, expected {md5}; "
                            f"nothing was saved; try again or put the official file at {dest}")
    try:
        fetch(url, dest, algo="md5", timeout=DOWNLOAD_TIMEOUT_S, check=check)
    except DataError:
        raise
    except Exception as exc:                       # URLError, timeouts, HTTP errors, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"medmnist: could not download {url} ({reason}); download it by hand "
            f"({_md5_text(dest.name)}) and put it at {dest}") from None


class MedMNIST(DatasetLoader):
    """Official MedMNIST 2D ``.npz`` files with their train/val/test split.

    Options: flag (e.g. pneumoniamnist, breastmnist, dermamnist; chestmnist is
    multi-label and refused), size (28, 64, 128 or 224 -> ``{flag}.npz`` or
    ``{flag}_{size}.npz``), download (false; true fetches the official file from
    Zenodo and checks its MD5). The file is looked for at ``path`` when it names a
    file, else at ``path/{filename}``, else at ``path/medmnist/{filename}``.
    """

    description = "official MedMNIST v2 .npz files (pneumoniamnist, dermamnist, ...) with their splits"

    defaults = {"flag": None, "size": 28, "download": False}
    choices = {"size": SIZES}
    declared = {
        "flag": Param("str", "the MedMNIST set: pneumoniamnist, dermamnist, breastmnist, ..."),
        "size": Param(help="side of the published files, px"),
        "download": Param(help="download a missing file (its MD5 checked)"),
    }

    def load(self, spec: DatasetSpec) -> ImageSet:
        opts = self.check("dataset", "medmnist", spec.options)
        check_spec("medmnist", spec.image_size, spec.channels)
        flag = opts["flag"]
        if flag is None:
            raise DataError(f"medmnist: option flag is required; use one of {', '.join(sorted(LABELS))}")
        if isinstance(flag, str):
            flag = flag.strip().lower()
        if flag in MULTI_LABEL:
            raise DataError(f"medmnist: {flag} is multi-label (14 findings per image), which "
                            "medbench does not support; choose a single-label flag such as "
                            "pneumoniamnist")
        if flag in VOLUMES:
            raise DataError(f"medmnist: {flag} holds 3D volumes, which medbench does not "
                            "support; choose a 2D flag such as pneumoniamnist")
        opt_choice("medmnist", "flag", flag, sorted(LABELS))
        size, want_download = opts["size"], opts["download"]

        filename = filename_for(flag, size)
        url, md5 = url_for(filename), MD5.get(filename)
        found, dest = _candidates(spec.path, filename, spec.cache_dir)
        file = next((p for p in found if p.is_file()), None)
        notes: list[str] = []
        if file is None:
            if not want_download:
                raise DataError(
                    f"medmnist: {filename} not found (looked at {', '.join(map(str, found))}); "
                    f"download {url} ({_md5_text(filename)}) and put it at {dest}, "
                    "or set the option download: true")
            download(url, dest, md5)
            file = dest
            notes.append(f"medmnist: downloaded {url} to {dest}")
        elif md5:
            verify_md5(file, md5, spec.cache_dir)
        if not md5:
            notes.append(f"medmnist: no known MD5 for {filename}; {file} was not verified")
        return self._read(file, flag, size, spec, notes)

    def _read(self, file: Path, flag: str, size: int, spec: DatasetSpec,
              notes: list[str]) -> ImageSet:
        classes = LABELS[flag]
        try:
            with np.load(file, allow_pickle=False) as npz:
                missing = [k for k in KEYS if k not in npz.files]
                if missing:
                    raise DataError(f"medmnist: {file} lacks {', '.join(missing)}; "
                                    f"is it an official MedMNIST file? ({url_for(file.name)})")
                arrays = {k: npz[k] for k in KEYS}
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"medmnist: cannot read {file} ({type(exc).__name__}: {exc}); "
                            f"delete it and download {url_for(file.name)} again") from None

        parts, labels, splits, sources, hashes = [], [], [], [], []
        for split in ("train", "val", "test"):
            x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if x.ndim == 3:
                x = x[:, None]
            elif x.ndim == 4 and x.shape[-1] in (1, 3):
                x = x.transpose(0, 3, 1, 2)
            else:
                raise DataError(f"medmnist: {file}: {split}_images has shape {x.shape}; "
                                "expected (N, H, W) or (N, H, W, 3)")
            if x.dtype != np.uint8:
                raise DataError(f"medmnist: {file}: {split}_images are {x.dtype}, expected uint8")
            y = np.asarray(y)
            if y.ndim == 2 and y.shape[1] > 1:
                raise DataError(f"medmnist: {file}: {split}_labels has {y.shape[1]} labels per "
                                "image (multi-label), which medbench does not support")
            y = y.reshape(-1).astype(np.int64)
            if len(y) != len(x):
                raise DataError(f"medmnist: {file}: {len(x)} {split} images but {len(y)} labels")
            if len(y) and (y.min() < 0 or y.max() >= len(classes)):
                raise DataError(f"medmnist: {file}: {split} labels span {y.min()}..{y.max()} "
                                f"but {flag} has {len(classes)} classes")
            x = np.ascontiguousarray(x)
            parts.append(torch.from_numpy(x))
            labels.append(torch.from_numpy(y))
            splits += [split] * len(y)
            sources += [f"npz:{split}:{i}" for i in range(len(y))]
            hashes += [hashlib.sha1(img.tobytes()).hexdigest() for img in x]
        native = int(parts[0].shape[-1])
        images = torch.cat(parts)
        images = convert_channels(resize_images(images, spec.image_size), spec.channels)
        if spec.image_size > native:
            better = [s for s in SIZES if s >= spec.image_size]
            hint = f"; option size: {better[0]} uses the official {better[0]} px release" if better else ""
            notes.append(f"medmnist: {file.name} is {native} px, upsampled to {spec.image_size}{hint}")
        return ImageSet(images=images.contiguous(), labels=torch.cat(labels), classes=list(classes),
                        splits=splits, sources=sources, hashes=hashes,
                        name=f"medmnist:{flag}" + ("" if size == 28 else f"_{size}"), notes=notes)


@hookimpl
def register_datasets(register):
    register("medmnist", MedMNIST)
