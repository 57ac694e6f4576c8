"""The hooks a medbench plugin can implement.

Every hook receives a ``register`` callable; a plugin calls it once per thing it
provides::

    from medbench.hookspecs import hookimpl

    @hookimpl
    def register_classifiers(register):
        register("tinynet", TinyNet)

``register(name, obj)`` takes the plugin's public name (what suites refer to) and the
object that implements it (see ``medbench.api`` for what each kind must provide).
"""

import pluggy

PROJECT = "medbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_generators(register):
    """Register generator classes (GANs, SMOTE, oversampling): ``register(name, cls)``."""


@hookspec
def register_classifiers(register):
    """Register classifier classes: ``register(name, cls)``; ``cls().build(...)`` gives an nn.Module."""


@hookspec
def register_optimizers(register):
    """Register hyper-parameter optimizer classes: ``register(name, cls)``."""


@hookspec
def register_datasets(register):
    """Register dataset loader classes: ``register(name, cls)``; ``cls().load(spec)`` gives an ImageSet."""


@hookspec
def register_executors(register):
    """Register executor classes that run a list of independent cells."""


@hookspec
def register_injections(register):
    """Register injection policies (how many synthetic images each class receives):
    ``register(name, policy)`` with a ``medbench.api.InjectionPolicy`` instance."""


@hookspec
def register_metrics(register):
    """Register classification metrics: ``register(name, metric)`` with a
    ``medbench.api.Metric`` instance."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``medbench`` command group: ``cli.add_command(cmd)``."""
