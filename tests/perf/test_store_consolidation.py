"""What incremental consolidation saves on a long suite, measured side by side: saving N
cells (about 100 rows each, like a 8-class cell with its confusion matrix) into one
store, against the earlier way, where every save reread every cell file to rewrite the
tables (a fresh store per save, consolidating each time).

Run alone with:  python -m pytest tests/perf/test_store_consolidation.py -s -q
(MEDBENCH_PERF_FULL=1 for 1000 cells.)
"""

import os
import time

import numpy as np
import pandas as pd
import pytest

from medbench.store import ResultsStore

pytestmark = pytest.mark.perf


def _rows(i: int) -> pd.DataFrame:
    n = 100
    rng = np.random.default_rng(i)
    return pd.DataFrame({"suite": "long", "arm": f"arm{i % 10}", "classifier": "smallcnn",
                         "seed": i // 10, "fold": 0, "cell_order": i, "metric_order": range(n),
                         "metric": [f"m{j}" for j in range(n)], "class": "", "value": rng.random(n)})


def _save_all(root, n, fresh_each_time: bool) -> float:
    store = ResultsStore(root)
    store.open("h", {"suite": "long"})
    t0 = time.perf_counter()
    for i in range(n):
        if fresh_each_time:
            store = ResultsStore(root, consolidate_every=0)
        store.save_cell(f"c{i:05d}", _rows(i), None)
    store.consolidate()                      # the end of a run
    return time.perf_counter() - t0


def test_incremental_consolidation_against_rereading_every_cell(tmp_path):
    n = 1000 if os.environ.get("MEDBENCH_PERF_FULL") else 60
    old = _save_all(tmp_path / "old", n, fresh_each_time=True)
    new = _save_all(tmp_path / "new", n, fresh_each_time=False)
    a = pd.read_parquet(tmp_path / "old" / "results.parquet")
    b = pd.read_parquet(tmp_path / "new" / "results.parquet")
    pd.testing.assert_frame_equal(a, b)
    print(f"\n{n} cells: rereading every cell after each {old:.2f} s, incremental "
          f"{new:.2f} s, ratio {new / old:.3f}")
    assert len(b) == 100 * n
