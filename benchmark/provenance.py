"""Where a result came from: the checkout's commit (the rest of a row's provenance, the
versions of medbench, torch and the plugins, is read where the row is made)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(here: Path | None = None) -> str:
    """The checkout's commit, with ``-dirty`` when a tracked file differs from it; the
    tables and figures medbench itself writes under reports/ do not count."""
    here = here or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)reports"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
