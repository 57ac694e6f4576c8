"""Errors a user can cause. The CLI prints them in one line and exits with code 2."""


class MedbenchError(Exception):
    """Base class: something the user can fix. The message says what and how."""


class SuiteError(MedbenchError):
    """A suite file is missing, is not YAML, or does not match the schema."""


class PluginError(MedbenchError):
    """An unknown plugin name, or a plugin that cannot be used as asked."""


class ParameterError(SuiteError, PluginError):
    """A plugin parameter the plugin does not take, or a value it cannot use. Every kind
    of plugin raises this one type (through ``medbench.api.check_params`` or its own
    checks), so ``medbench validate`` reports them all alike."""


class DataError(MedbenchError):
    """Missing data, unreadable images, wrong shapes, too few images in a class."""


class TrainingError(MedbenchError):
    """Training could not go on (NaN or Inf loss, a model that does not fit the input)."""


class ResultsError(MedbenchError):
    """A results folder that cannot be written, read or resumed."""


class GeneratorDiverged(TrainingError):
    """A GAN's loss became NaN or Inf, or its samples collapsed to one image. The cells
    that needed it are recorded as failed with this reason and the suite goes on."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a batch scheduler's time limit): the run stops as on Ctrl-C,
    keeping every finished cell and trial, and the CLI exits with code 143."""
