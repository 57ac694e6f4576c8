import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    env = os.environ.get("MEDBENCH_DATA")
    p = Path(env) if env else ROOT.parent / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache, so no test depends on another's files."""
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


def tiny_suite(**overrides) -> dict:
    """A phantom suite that trains in seconds on a CPU."""
    suite = {
        "name": "tiny",
        "dataset": {"loader": "phantom", "image_size": 16, "channels": 1,
                    "options": {"counts": [60, 24, 12], "seed": 1}},
        "protocol": {"kind": "kfold", "folds": 3, "seeds": [0]},
        "arms": [{"name": "none"}, {"name": "oversample", "generator": "oversample"}],
        "classifiers": [{"name": "smallcnn"}],
        "training": {"epochs": 2, "batch_size": 16},
    }
    for key, value in overrides.items():
        suite[key] = value
    return suite


@pytest.fixture
def write_suite(tmp_path):
    def write(data, name="suite.yaml") -> Path:
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return p
    return write
