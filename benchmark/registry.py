"""The plugin registry: built-ins and third-party packages go through the same hooks."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from . import __version__, api, hookspecs
from .errors import PluginError

KINDS = ("generators", "classifiers", "optimizers", "datasets", "executors", "injections",
         "metrics")

# what each kind registers: a subclass of the class (the engine makes instances with
# the suite's parameters), or an instance (stateless policies and metrics)
CONTRACTS: dict[str, tuple[type, bool]] = {
    "generators": (api.Generator, True), "classifiers": (api.Classifier, True),
    "optimizers": (api.Optimizer, True), "datasets": (api.DatasetLoader, True),
    "executors": (api.Executor, True), "injections": (api.InjectionPolicy, False),
    "metrics": (api.Metric, False),
}

BUILTIN_MODULES = (
    "medbench.injection",
    "medbench.metrics",
    "medbench.plugins.classifiers.smallcnn",
    "medbench.plugins.classifiers.torchvision_models",
    "medbench.plugins.classifiers.resnet50v2",
    "medbench.plugins.classifiers.timm_models",
    "medbench.plugins.datasets.phantom",
    "medbench.plugins.datasets.medmnist",
    "medbench.plugins.datasets.folder",
    "medbench.plugins.generators.oversample",
    "medbench.plugins.generators.classical",
    "medbench.plugins.generators.dcgan",
    "medbench.plugins.generators.progan",
    "medbench.plugins.generators.ddpm",
    "medbench.plugins.optimizers.sma",
    "medbench.plugins.optimizers.random_search",
    "medbench.plugins.optimizers.optuna_study",
    "medbench.plugins.executors.local",
    "medbench.plugins.executors.processes",
    "medbench.plugins.executors.ray_executor",
)


@dataclass
class PluginInfo:
    name: str
    kind: str
    obj: Any
    package: str       # "medbench" for built-ins, the distribution name otherwise
    version: str
    module: str


@dataclass
class Registry:
    plugins: dict[str, dict[str, PluginInfo]]
    failures: list[str]          # one line per third-party plugin that could not load
    manager: pluggy.PluginManager

    def get(self, kind: str, name: str) -> PluginInfo:
        table = self.plugins[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise PluginError(f"unknown {kind[:-1]} plugin {name!r}; available: {known}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def all(self) -> list[PluginInfo]:
        return [info for kind in KINDS for info in self.plugins[kind].values()]


_REGISTRY: Registry | None = None


def build_registry(entry_points: bool = True) -> Registry:
    """Register built-in modules, then the ``medbench`` entry points, in one
    PluginManager, and call every ``register_<kind>`` hook implementation."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    origin: dict[str, tuple[str, str]] = {}   # pluggy plugin name -> (package, version)
    failures: list[str] = []
    for modname in BUILTIN_MODULES:
        pm.register(importlib.import_module(modname), name=modname)
        origin[modname] = ("medbench", __version__)
    if entry_points:
        for ep in md.entry_points(group=hookspecs.PROJECT):
            dist = getattr(ep, "dist", None)
            package = dist.name if dist is not None else ep.module
            version = dist.version if dist is not None else "?"
            try:
                pname = f"{package}:{ep.name}"
                pm.register(ep.load(), name=pname)
                origin[pname] = (package, version)
            except Exception as exc:  # a broken third-party plugin never stops the tool
                failures.append(_one_line(f"plugin {ep.name!r} from {package} {version} "
                                          f"skipped: {type(exc).__name__}: {exc}"))
    plugins: dict[str, dict[str, PluginInfo]] = {k: {} for k in KINDS}
    for kind in KINDS:
        for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
            package, version = origin.get(impl.plugin_name, ("?", "?"))
            module = getattr(impl.plugin, "__name__", impl.plugin_name)

            def register(name: str, obj: Any, _kind=kind, _module=module, _pkg=package,
                         _ver=version) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"{_module}: plugin names must be non-empty strings")
                base, is_class = CONTRACTS[_kind]
                ok = (isinstance(obj, type) and issubclass(obj, base)) if is_class \
                    else isinstance(obj, base)
                if not ok:
                    what = "a subclass" if is_class else "an instance"
                    raise PluginError(f"{_kind[:-1]} {name!r} from {_module} is not {what} of "
                                      f"medbench.api.{base.__name__}")
                prev = plugins[_kind].get(name)
                if prev is not None and prev.module != _module:
                    raise PluginError(f"{_kind[:-1]} {name!r} from {_module} clashes with "
                                      f"the one from {prev.module}")
                plugins[_kind][name] = PluginInfo(name, _kind, obj, _pkg, _ver, _module)

            try:
                impl.function(register=register)
            except Exception as exc:
                if package == "medbench":
                    raise
                failures.append(_one_line(f"plugin {impl.plugin_name} skipped: "
                                          f"{type(exc).__name__}: {exc}"))
    return Registry(plugins, failures, pm)


def _one_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = build_registry()
        for line in _REGISTRY.failures:
            print(f"warning: {line}", file=sys.stderr)
    return _REGISTRY


def get(kind: str, name: str) -> PluginInfo:
    return registry().get(kind, name)
