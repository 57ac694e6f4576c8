"""``medbench cache ls`` and ``medbench cache prune``: what the cache holds, and removing
it (see ``medbench.cache``)."""

from __future__ import annotations

import re
import time

import click

from .cache import KINDS, Cache, cache_root
from .errors import MedbenchError

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_UNITS_B = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_duration(text: str) -> float:
    """'30m', '12h', '7d', '2w', '1d12h' -> seconds."""
    t = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", t)
    if not t or "".join(n + u for n, u in parts) != t:
        raise MedbenchError(f"--older-than {text!r}: not a duration; use a number and a unit "
                            "(s, m, h, d, w), e.g. 30m, 12h, 7d")
    return sum(float(n) * _UNITS_S[u] for n, u in parts)


def parse_size(text: str) -> int:
    """'500M', '5G', '1.5GB', '200k', '1024' -> bytes (units of 1024)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt]?)(?:i?b)?", str(text).strip().lower().replace(" ", ""))
    if not m:
        raise MedbenchError(f"--max-size {text!r}: not a size; use a number and a unit "
                            "(K, M, G, T; powers of 1024), e.g. 500M, 5G")
    return int(float(m.group(1)) * _UNITS_B[m.group(2)])


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            big, rest = divmod(s, size)
            small = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            return f"{big}{unit}" + (f" {rest // small[1]}{small[0]}" if rest >= small[1] else "")
    return f"{s}s"


def _kind(kind: str | None) -> str | None:
    if kind is None:
        return None
    k = kind.strip().lower()
    if k not in KINDS:
        raise MedbenchError(f"unknown cache kind {kind!r}; use one of {', '.join(KINDS)}")
    return k


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if c in ("entries", "size") else "left",
                     overflow="fold" if i == len(columns) - 1 else "ellipsis")
    for r in rows:
        t.add_row(*r)
    Console(width=max(120, Console().width)).print(t)


@click.group("cache")
def cache():
    """Inspect or prune the cache of decoded datasets, fitted generators, synthetic
    images and cell results ($MEDBENCH_CACHE, default ~/.cache/medbench)."""


@cache.command("ls")
@click.option("--kind", default=None, metavar="KIND", help=f"Only this kind: {', '.join(KINDS)}.")
@click.option("--long", "-l", "long_", is_flag=True, help="List every entry.")
def ls(kind, long_):
    """What the cache holds, per kind: entries, size, oldest and newest."""
    k = _kind(kind)
    c = Cache(cache_root())
    entries, leftovers = c.entries(k), c.leftovers(k)
    now = time.time()
    click.echo(f"cache: {c.root}")
    if not entries:
        click.echo("no entries" + (f" of kind {k}" if k else ""))
    else:
        rows = []
        for kk in (KINDS if k is None else (k,)):
            es = [e for e in entries if e["kind"] == kk]
            if es:
                created = [e["created_ts"] for e in es]
                rows.append([kk, str(len(es)), human_size(sum(e["size"] for e in es)),
                             human_age(now - min(created)), human_age(now - max(created))])
        if len(rows) > 1:
            rows.append(["all", str(len(entries)), human_size(sum(e["size"] for e in entries)),
                         "", ""])
        _table("medbench cache", ["kind", "entries", "size", "oldest", "newest"], rows)
        if long_:
            rows = [[e["kind"], e["key"][:12], human_size(e["size"]),
                     human_age(now - e["created_ts"]), human_age(now - e["used_ts"]),
                     str(e.get("describe") or "")]
                    for e in sorted(entries, key=lambda e: (KINDS.index(e["kind"]), e["created_ts"]))]
            _table("entries", ["kind", "key", "size", "age", "last used", "describe"], rows)
    if leftovers:
        click.echo(f"{len(leftovers)} leftover file(s) ({human_size(sum(j['size'] for j in leftovers))}) "
                   "outside any entry; `medbench cache prune` removes them")


@cache.command("prune")
@click.option("--kind", default=None, metavar="KIND", help=f"Only this kind: {', '.join(KINDS)}.")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Remove entries not used for AGE: 30m, 12h, 7d, 2w.")
@click.option("--max-size", "max_size", default=None, metavar="SIZE",
              help="Then remove the least recently used until the rest takes at most SIZE: "
                   "500M, 5G.")
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def prune(kind, older_than, max_size, everything, dry_run):
    """Remove cache entries (and always files left outside any entry)."""
    k = _kind(kind)
    age = None if older_than is None else parse_duration(older_than)
    limit = None if max_size is None else parse_size(max_size)
    c = Cache(cache_root())
    removed = c.prune(k, older_than_s=age, max_bytes=limit, everything=everything,
                      dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        what = e["key"][:12] if e.get("key") else e["path"].name
        click.echo(f"{verb} {e['kind']} {what} {human_size(e['size'])} {e.get('describe') or ''}".rstrip())
    n_left = sum(1 for e in removed if e.get("leftover"))
    freed = human_size(sum(e["size"] for e in removed))
    if not removed:
        hint = "" if (everything or age is not None or limit is not None) else \
            " (choose with --older-than, --max-size or --all)"
        click.echo(f"nothing to remove from {c.root}{hint}")
    else:
        click.echo(f"{verb} {len(removed) - n_left} entr{'y' if len(removed) - n_left == 1 else 'ies'}"
                   f" and {n_left} leftover file(s): {freed} "
                   f"{'would be ' if dry_run else ''}freed in {c.root}")
