"""Files that are either complete or absent: atomic writes and verified downloads."""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.request
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp_path)`` then rename over ``path`` (same folder).

    The temporary file is created with mode 0666 minus the umask, like any new file, so
    results and caches are as shareable as the user's other files (mkstemp would make
    them 0600). If ``write`` raises, nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, *, algo: str, timeout: float,
          check: Callable[[str], None] | None = None) -> str:
    """Stream ``url`` into ``dest`` atomically, hashing it on the way; returns the hex
    digest. ``check(digest)`` runs before the rename and may raise to keep nothing.
    Network errors propagate as urllib raises them."""
    digest = hashlib.new(algo)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if check is not None:
            check(digest.hexdigest())

    atomic_write(Path(dest), write)
    return digest.hexdigest()


# at most this many ".." in a path written relative to the working folder: further up
# is the layout of the machine (/home/<user>/...), not of the project and its data
MAX_UP = 2


def portable_path(path) -> str:
    """A path as the header of a published table may show it: never an absolute path of
    this machine. A relative path stays as it is; an absolute one is written relative
    to the working folder (``../shared/data``) when that climbs at most ``MAX_UP``
    folders, else by its last part alone (the reader puts their copy there)."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    try:
        rel = os.path.relpath(text)
    except ValueError:                 # another drive (Windows): no relative form
        return Path(text).name
    ups = 0
    for part in Path(rel).parts:
        if part != "..":
            break
        ups += 1
    return Path(rel).as_posix() if ups <= MAX_UP else (Path(text).name or text)
