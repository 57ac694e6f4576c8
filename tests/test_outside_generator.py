"""An outside generator package, written against ``medbench.api`` alone and installed
through the ``medbench`` entry-point group, runs in a suite like a built-in one: its
fits are cached and reused, its artifacts (loss log, loss figure, sample grids, real
images beside them) are written, and it passes the learned-its-data check the GANs face.
The same package adds an injection policy and a metric, which the suite uses.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import torch
import yaml

from medbench.engine import Engine, load_dataset
from medbench.suite import load_suite

import gan_check
from conftest import tiny_suite

# a per-class PCA-Gaussian generator: the class's images as mean + k principal
# directions, sampled with Gaussian coefficients of the measured variances
PCA_GAUSS = '''
import hashlib

import torch

from medbench.api import Generator, InjectionPolicy, Metric
from medbench.errors import ParameterError
from medbench.hookspecs import hookimpl


class PCAGauss(Generator):
    name = "pcagauss"
    description = "Gaussian in the top principal components of each class (outside plugin)"
    conditional = False
    cacheable = True
    defaults = {"components": 16}

    def __init__(self, **params):
        super().__init__(**params)
        k = self.cfg["components"]
        if not isinstance(k, int) or k < 1:
            raise ParameterError("generator 'pcagauss': components must be a positive integer")

    def fit(self, images, labels, *, classes, device="cpu", seed=0, progress=None):
        self.seed, self.shape = int(seed), tuple(images.shape[1:])
        self.class_index = int(labels[0])
        x = images.reshape(len(images), -1).double() / 255.0
        self.mean = x.mean(0)
        _, s, v = torch.linalg.svd(x - self.mean, full_matrices=False)
        k = min(self.cfg["components"], len(x) - 1)
        self.basis = v[:k]
        self.std = s[:k] / max(len(x) - 1, 1) ** 0.5
        total = float((s ** 2).sum())
        for i in range(1, k + 1):        # the loss log: residual variance per component count
            self.history.append({"step": i, "residual": 1 - float((s[:i] ** 2).sum()) / total})
            if progress is not None:
                progress(f"pcagauss: {i}/{k} components", i / k)
        kept = 1 - self.history[-1]["residual"]
        self.notes.append(f"pcagauss: {k} components keep {kept:.0%} of the variance")
        self.grids.append(("fitted", self.sample(self.class_index, 64)))
        return self

    def sample(self, class_index, n):
        h = hashlib.sha256(repr(("pcagauss", self.seed, class_index, n)).encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") >> 1)
        z = torch.randn(n, len(self.std), generator=gen, dtype=torch.float64)
        x = self.mean + (z * self.std) @ self.basis
        return (x * 255).round().clamp(0, 255).to(torch.uint8).reshape(n, *self.shape)

    def state_dict(self):
        return {"seed": self.seed, "shape": list(self.shape), "class_index": self.class_index,
                "mean": self.mean, "basis": self.basis, "std": self.std,
                "history": self.history, "grids": self.grids, "notes": self.notes}

    def load_state_dict(self, state, device="cpu"):
        self.seed, self.shape = state["seed"], tuple(state["shape"])
        self.class_index = state["class_index"]
        self.mean, self.basis, self.std = state["mean"], state["basis"], state["std"]
        self.history, self.grids = list(state["history"]), list(state["grids"])
        self.notes = list(state["notes"])
        return self


class Halfway(InjectionPolicy):
    description = "every class filled half way up to the majority"

    def plan(self, counts, classes, *, siir=0.2, per_class=None):
        return [(max(counts) - n) // 2 for n in counts]


@hookimpl
def register_generators(register):
    register("pcagauss", PCAGauss)


@hookimpl
def register_injections(register):
    register("halfway", Halfway())


@hookimpl
def register_metrics(register):
    register("worst_recall", Metric(lambda s: float(min(r for r in s.recall if r == r)), "set",
                                    "the lowest recall of a class present"))
'''


def _install(site):
    site.mkdir()
    (site / "medbench_pcagauss.py").write_text(textwrap.dedent(PCA_GAUSS))
    info = site / "medbench_pcagauss-0.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medbench-pcagauss\nVersion: 0.2.0\n")
    (info / "entry_points.txt").write_text("[medbench]\nmedbench_pcagauss = medbench_pcagauss\n")


def _medbench(args, site, cwd, cache):
    env = {**os.environ, "MEDBENCH_CACHE": str(cache),
           "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "medbench", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)


def _plugin_class(site):
    spec = importlib.util.spec_from_file_location("medbench_pcagauss_inproc",
                                                  site / "medbench_pcagauss.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.PCAGauss


def test_outside_generator_runs_in_a_suite_with_cache_and_artifacts(tmp_path):
    site, cache = tmp_path / "site", tmp_path / "cache"
    _install(site)
    suite = tiny_suite(arms=[{"name": "none"},
                             {"name": "pca", "generator": "pcagauss", "params": {"components": 8},
                              "injection": {"policy": "halfway"}}],
                       metrics=["accuracy", "recall", "worst_recall"])
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(suite))
    first = _medbench(["run", "a.yaml", "--out", "res-a"], site, tmp_path, cache)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("fitting pcagauss for class") == 6     # 2 minority classes x 3 folds
    df = pd.read_parquet(tmp_path / "res-a" / "results.parquet")
    pca = df[(df.arm == "pca") & (df.metric == "accuracy")]
    assert len(pca) == 3 and (pca.n_synthetic > 0).all()
    # the outside policy: per class, half of what balance would add
    same = copy.deepcopy(suite)
    same["arms"][1]["injection"]["policy"] = "balance"
    (tmp_path / "balance.yaml").write_text(yaml.safe_dump({**same, "metrics": ["accuracy"]}))
    loaded = load_suite(tmp_path / "balance.yaml")
    engine = Engine(loaded, load_dataset(loaded)[0], "cpu")
    for _, row in pca.iterrows():
        balance = engine.planned(engine.arm("pca"), engine.folds(0)[row.fold])
        assert row.n_synthetic == sum(n // 2 for n in balance) > 0
    # the outside metric, one number per cell: the lowest per-class recall
    for (arm, fold), cell in df.groupby(["arm", "fold"]):
        worst = cell[cell.metric == "worst_recall"].value
        assert len(worst) == 1
        assert worst.iloc[0] == cell[cell.metric == "recall"].value.min()
    assert pca.generator_plugin.iloc[0] == "pcagauss (medbench-pcagauss 0.2.0)"
    assert "note: pcagauss: 8 components keep" in first.stderr

    # artifacts of every fitted model: loss log and figure of its own series, grids, real images
    folders = sorted((tmp_path / "res-a" / "generators" / "pcagauss").iterdir())
    assert len(folders) == 6
    for folder in folders:
        losses = pd.read_csv(folder / "losses.csv")
        assert list(losses.columns) == ["step", "residual"] and 2 <= len(losses) <= 8
        assert losses.residual.is_monotonic_decreasing
        assert (folder / "losses.png").stat().st_size > 1000
        assert (folder / "samples_00_fitted.png").is_file() and (folder / "real.png").is_file()
        info = json.loads((folder / "info.json").read_text())
        assert info["source"] == "fitted" and info["notes"]

    # another classifier budget: new cells, but the fitted generators come from the cache
    suite["training"]["epochs"] = 1
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(suite))
    second = _medbench(["run", "b.yaml", "--out", "res-b"], site, tmp_path, cache)
    assert second.returncode == 0, second.stderr
    assert "fitting pcagauss" not in second.stderr
    infos = [json.loads(p.read_text()) for p in
             (tmp_path / "res-b" / "generators" / "pcagauss").glob("*/info.json")]
    assert len(infos) == 6 and {i["source"] for i in infos} == {"cache"}

    # a bad parameter is refused before any work, in one line
    suite["arms"][1]["params"] = {"components": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(suite))
    bad = _medbench(["run", "c.yaml", "--out", "res-c"], site, tmp_path, cache)
    assert bad.returncode == 2 and "components must be a positive integer" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_outside_generator_learned_its_data(tmp_path):
    site = tmp_path / "site"
    _install(site)
    cls = _plugin_class(site)
    gens = gan_check.fit_per_class(cls, {"components": 16})
    sample = lambda c, n: gens[c].sample(c, n)           # noqa: E731
    recognised, spread = gan_check.recognition(sample), gan_check.diversity(sample)
    print(f"\npcagauss: recognition {recognised:.3f}, diversity {spread:.3f}")
    assert recognised >= 0.55 and spread >= 0.2
    # the control: fitted on images of every class alike, it has nothing of its class to show
    x, y = gan_check.training_set()
    mixed = {}
    for c in range(len(gan_check.CLASSES)):
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(c))[:200]
        mixed[c] = cls(components=16).fit(x[pick], torch.full((200,), c), classes=gan_check.CLASSES,
                                          seed=0)
    assert gan_check.recognition(lambda c, n: mixed[c].sample(c, n)) <= 0.45
