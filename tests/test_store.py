"""The results store: cell files are the record, the consolidated tables follow them."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from medbench.errors import ResultsError
from medbench.store import ResultsStore


def cell_rows(order: int, value: float) -> pd.DataFrame:
    metrics = ["accuracy", "macro_f1", "roc_auc"]
    return pd.DataFrame({"arm": f"arm{order}", "cell_order": order, "metric": metrics,
                         "metric_order": range(len(metrics)), "class": "",
                         "value": [value, value / 2, value / 3]})


def opened(root, **kw) -> ResultsStore:
    store = ResultsStore(root, **kw)
    store.open("h", {"suite": "s"})
    return store


def test_tables_follow_the_cells_and_load_catches_up_after_a_kill(tmp_path):
    store = opened(tmp_path, consolidate_every=3600)      # one consolidation, then none
    for i in (2, 0, 1):
        store.save_cell(f"c{i}", cell_rows(i, 0.5 + i / 10), None)
    on_disk = pd.read_parquet(tmp_path / "results.parquet")
    assert on_disk["cell_order"].unique().tolist() == [2]  # throttled: written after the first
    # a killed run never consolidated again: a fresh store (the report) catches up
    df = ResultsStore(tmp_path).load()
    assert df["cell_order"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expect = pd.concat([cell_rows(i, 0.5 + i / 10) for i in range(3)], ignore_index=True)
    pd.testing.assert_frame_equal(df, expect, check_dtype=False)
    assert pd.read_csv(tmp_path / "results.csv")["value"].round(6).tolist() == \
        expect["value"].round(6).tolist()
    # up to date now: load reads the table and writes nothing
    before = (tmp_path / "results.parquet").stat().st_mtime_ns
    ResultsStore(tmp_path).load()
    assert (tmp_path / "results.parquet").stat().st_mtime_ns == before


def test_a_changed_or_removed_cell_file_is_read_again(tmp_path):
    store = opened(tmp_path, consolidate_every=0)
    for i in range(3):
        store.save_cell(f"c{i}", cell_rows(i, 0.1), None)
    # another writer replaces c1 (e.g. a resumed run in another process) and removes c2
    path = tmp_path / "cells" / "c1.parquet"
    cell_rows(1, 0.9).to_parquet(path, index=False)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    (tmp_path / "cells" / "c2.parquet").unlink()
    df = store.consolidate()
    assert df.query("metric == 'accuracy'")["value"].tolist() == [0.1, 0.9]


def test_load_of_an_empty_folder_says_so(tmp_path):
    opened(tmp_path)
    with pytest.raises(ResultsError, match="no finished cells yet"):
        ResultsStore(tmp_path).load()
    with pytest.raises(ResultsError, match="not a medbench results folder"):
        ResultsStore(tmp_path / "nothing").load()


def test_predictions_are_kept_beside_the_cell(tmp_path):
    store = opened(tmp_path)
    store.save_cell("c0", cell_rows(0, 0.3), {"y": np.arange(4), "p": np.eye(4)})
    got = store.load_preds("c0")
    assert got["y"].tolist() == [0, 1, 2, 3] and got["p"].shape == (4, 4)
