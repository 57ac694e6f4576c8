"""medbench.plotting: figure files are the same bytes however often and whenever they are
written; and loss figures plot every loss series of a loss log."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medbench import figures, plotting


def _draw(title: str = "a figure"):
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    x = np.linspace(0, 1, 50)
    ax.plot(x, x ** 2, label="square")
    ax.imshow(np.arange(16).reshape(4, 4), extent=(0, 0.3, 0, 0.3))   # raster in the PDF too
    ax.set_title(title)
    ax.legend()
    return fig


def test_saving_a_figure_twice_gives_the_same_bytes(tmp_path, monkeypatch):
    # matplotlib stamps a PDF with the time unless told not to; SOURCE_DATE_EPOCH moves
    # that time to 1970 for the second file, so only fixed metadata keeps the two equal
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first = plotting.save_figure(_draw(), tmp_path / "one", dpi=80)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    second = plotting.save_figure(_draw(), tmp_path / "two", dpi=80)
    assert [p.name for p in first] == ["one.png", "one.pdf"]
    assert [p.name for p in second] == ["two.png", "two.pdf"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    pdf = first[1].read_bytes()
    assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf
    with Image.open(first[0]) as im:
        assert im.mode == "P" and im.size == (240, 160)   # the 256-colour palette, 80 dpi
        assert not im.text                                # no metadata chunks
    # drawing something else changes the bytes (the comparison above means something)
    third = plotting.save_figure(_draw("another"), tmp_path / "three", dpi=80)
    assert third[0].read_bytes() != first[0].read_bytes()
    # no temporary files left beside them
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}.{e}" for s in ("one", "two", "three") for e in ("png", "pdf"))


def test_save_figure_formats_dots_and_closing(tmp_path):
    plt = plotting.pyplot()
    fig = _draw()
    out = plotting.save_figure(fig, tmp_path / "roc-vit.b", formats=("pdf",))
    assert out == [tmp_path / "roc-vit.b.pdf"] and out[0].is_file()
    assert not plt.fignum_exists(fig.number)               # the figure is closed
    with pytest.raises(ValueError, match="svg"):
        plotting.save_figure(_draw(), tmp_path / "x", formats=("png", "svg"))
    assert not (tmp_path / "x.png").exists()                # nothing written


def test_loss_series_are_every_column_but_bookkeeping():
    columns = ["stage", "resolution", "epoch", "step", "alpha", "gp", "g_loss", "d_loss",
               "seconds", "lr", "kimg", "w_dist"]
    # gp is a term of the critic's loss, already in d_loss
    assert plotting.loss_series(columns) == [("d_loss", "discriminator / critic"),
                                             ("g_loss", "generator"), ("w_dist", "w_dist")]
    assert plotting.loss_series(["epoch", "step"]) == []


def test_loss_panel_draws_the_series_of_losses_csv(tmp_path):
    path = tmp_path / "losses.csv"
    # text and true/false columns are not series
    path.write_text("stage,step,kind,ok,margin,g_loss,d_loss\n0,1,a,True,0.1,2.0,1.0\n"
                    "0,2,b,True,0.2,2.1,1.1\n1,3,c,False,0.3,2.2,1.2\n", encoding="utf-8")
    plt = plotting.pyplot()
    fig, ax = plt.subplots()
    figures._loss_panel(ax, path, "losses")
    assert [line.get_label() for line in ax.get_lines()[:3]] == [
        "discriminator / critic", "generator", "margin"]
    assert np.allclose(ax.get_lines()[2].get_ydata(), [0.1, 0.2, 0.3])
    assert len(ax.get_lines()) == 4                        # + the dashed line at stage 1
    plt.close(fig)
