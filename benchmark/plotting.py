"""The one matplotlib set-up of medbench, and figure files that are the same bytes on
every run.

``pyplot()`` gives matplotlib.pyplot with the Agg backend (no display needed);
``save_figure`` writes a figure as PNG and PDF with nothing in them that depends on the
time of saving, so rerunning a report with the same matplotlib and Pillow rewrites the
same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from .files import atomic_write

# fixed PDF metadata: matplotlib otherwise writes the time of saving and its version
# (the Creator entry still names matplotlib's version)
PDF_METADATA = {"CreationDate": None, "Producer": None}

# columns of a generator's loss log (losses.csv) that say where in training a row is,
# not how it went: loss figures plot every other numeric column
LOSS_BOOKKEEPING = ("step", "stage", "kimg", "epoch", "alpha", "seconds", "lr", "resolution")
# terms already counted inside a plotted loss (ProGAN's gradient penalty is part of the
# critic's loss): kept in losses.csv, not drawn a second time
LOSS_TERMS = ("gp",)
# legend labels of the usual losses (any other column is labelled by its name)
LOSS_LABELS = {"d_loss": "discriminator / critic", "g_loss": "generator"}


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    # imported here: matplotlib takes a noticeable part of a second to import, and the
    # backend must be chosen before pyplot is first imported
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def loss_series(columns) -> list[tuple[str, str]]:
    """(column, legend label) of each series a loss figure plots, from the columns of a
    loss log: all but LOSS_BOOKKEEPING and LOSS_TERMS; those of LOSS_LABELS first, in its order, then
    the others in the given order, labelled by their name. Which columns hold numbers
    is the caller's to check."""
    names = [str(c) for c in dict.fromkeys(columns)
             if c not in LOSS_BOOKKEEPING and c not in LOSS_TERMS]
    first = [c for c in LOSS_LABELS if c in names]
    rest = [c for c in names if c not in first]
    return [(c, LOSS_LABELS.get(c, c)) for c in first + rest]


def _png_256(fig, path: Path, dpi) -> None:
    """The PNG with an adaptive palette of 256 colours: plots lose nothing visible, and a
    page of image grids (embedded in report.html) becomes a third of the size. Pillow
    writes no metadata, so the bytes depend on the pixels alone."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


def save_figure(fig, stem: Path, formats=("png", "pdf"), *, dpi: float | None = None
                ) -> list[Path]:
    """Write ``fig`` as ``<stem>.<format>`` for each of ``formats`` (png, pdf), each file
    atomically, then close the figure (callers draw nothing on it afterwards). The PNG
    goes through a 256-colour palette (``_png_256``); the PDF has fixed metadata
    (``PDF_METADATA``). ``dpi``: that of the files (default: the figure's own). Returns
    the paths in the order of ``formats``."""
    bad = [f for f in formats if f not in ("png", "pdf")]
    if bad:
        raise ValueError(f"save_figure writes png and pdf, not {', '.join(map(repr, bad))}")
    stem = Path(stem)
    out = []
    for fmt in formats:
        # the format appended, so a dot in the stem (a classifier called "vit.b") stays
        p = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "png":
            atomic_write(p, lambda f: _png_256(fig, f, dpi))
        else:
            atomic_write(p, lambda f: fig.savefig(f, format="pdf", metadata=PDF_METADATA,
                                                  dpi=dpi))
        out.append(p)
    pyplot().close(fig)
    return out
