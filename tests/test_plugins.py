"""Plugin discovery: built-ins through the hooks, an outside package through the
``medbench`` entry-point group, and a broken outside plugin reported and skipped."""

import os
import subprocess
import sys
import textwrap

import pandas as pd
import yaml

from medbench.registry import build_registry

from conftest import tiny_suite

TOY = '''
import torch
from torch import nn
from medbench.api import Classifier
from medbench.hookspecs import hookimpl


class ToyNet(Classifier):
    description = "linear model on average-pooled pixels (outside plugin)"
    default_training = {"optimizer": "adam", "lr": 0.01}

    def build(self, num_classes, in_channels, image_size, *, pretrained=False, dropout=0.0):
        return Toy(in_channels, num_classes)


class Toy(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(in_channels * 16, num_classes)

    def forward(self, x):
        return self.head(self.pool(x))


@hookimpl
def register_classifiers(register):
    register("toynet", ToyNet)


@hookimpl
def register_commands(cli):
    import click

    @cli.command("toy-hello")
    def hello():
        click.echo("hello from the toy plugin")
'''


def _dist(root, name, version, module, body):
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[medbench]\n{module} = {module}\n")


def _env(site):
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _medbench(args, site, cwd):
    return subprocess.run([sys.executable, "-m", "medbench", *args], env=_env(site), cwd=cwd,
                          capture_output=True, text=True)


def test_builtins_are_registered_through_hooks():
    reg = build_registry(entry_points=False)
    assert {"smallcnn", "resnet18", "resnet50", "vgg16", "alexnet", "densenet121",
            "mobilenet_v2", "resnet50v2"} <= set(reg.names("classifiers"))
    assert {"phantom", "medmnist", "folder"} <= set(reg.names("datasets"))
    assert "oversample" in reg.names("generators") and "local" in reg.names("executors")
    assert all(info.package == "medbench" for info in reg.all())


def test_outside_plugin_is_listed_and_runs_in_a_suite(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "medbench-toy", "0.3.1", "medbench_toy", TOY)
    _dist(site, "medbench-broken", "9.9", "medbench_broken", "raise ImportError('needs libfoo')\n")

    listing = _medbench(["plugins"], site, tmp_path)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "toynet" in line)
    assert "classifier" in row and "medbench-toy" in row and "0.3.1" in row
    assert "resnet18" in listing.stdout                         # built-ins still there
    skipped = [line for line in listing.stderr.splitlines() if "medbench-broken" in line]
    assert len(skipped) >= 1 and "needs libfoo" in skipped[0] and "Traceback" not in listing.stderr

    hello = _medbench(["toy-hello"], site, tmp_path)
    assert hello.returncode == 0 and "hello from the toy plugin" in hello.stdout

    suite = tiny_suite(classifiers=[{"name": "toynet"}], arms=[{"name": "none"}])
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(suite))
    run = _medbench(["run", "toy.yaml", "--out", "res", "-q"], site, tmp_path)
    assert run.returncode == 0, run.stderr
    df = pd.read_parquet(tmp_path / "res" / "results.parquet")
    assert set(df.classifier) == {"toynet"}
    assert df.classifier_plugin.iloc[0] == "toynet (medbench-toy 0.3.1)"
