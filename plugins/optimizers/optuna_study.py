"""Optuna studies: TPE by default; random, CMA-ES, quasi-Monte Carlo and Gaussian-process
samplers where the installed Optuna (and its optional packages) provide them.

The space's own types are suggested (float with log scale, int, categorical), so Optuna
sees the space as declared rather than a unit cube.

In memory (no ``storage``): a fresh study per call, its sampler seeded with ``seed``;
the same seed and the same objective values give the same trials. The trials this call
evaluated are returned, in order.

With ``storage`` (an Optuna RDB URL: ``sqlite:////abs/path/study.db``,
``postgresql://user@host/db``, ...) any number of processes, on one machine or several,
share the study ``study_name``:

* The trial budget is the number of COMPLETE trials of the whole study. Trial numbers are
  handed out in creation order by the database, and a new trial only runs if fewer than
  ``budget.trials`` trials numbered before it are COMPLETE, RUNNING or WAITING, so the
  study never ends with more COMPLETE trials than the budget, however the workers
  interleave (a trial that loses that race is marked FAIL without being evaluated, with
  the user attribute ``medbench`` saying why).
* Every trial records the user attributes ``host`` and ``pid``. A worker starting on a
  host marks that host's RUNNING trials whose process is gone (killed, crashed) as FAIL
  and enqueues their parameters, so they are evaluated again first.
* The sampler seed is mixed with the host name and process id so that workers do not
  all propose the same parameters; a shared study is not reproducible from its seed (the
  interleaving of the workers decides what each one sees).
* The COMPLETE trials of the whole study are returned, in trial number order, with
  ``number``, ``host`` and ``pid``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import time
import warnings
import zlib
from pathlib import Path

from medbench.api import Optimizer, Param
from medbench.errors import ParameterError, PluginError
from medbench.hookspecs import hookimpl
from medbench.space import BudgetedObjective, BudgetExhausted

# name -> (class in optuna.samplers, packages it needs besides optuna)
SAMPLERS = {
    "tpe": ("TPESampler", ()),
    "random": ("RandomSampler", ()),
    "cmaes": ("CmaEsSampler", ("cmaes",)),
    "qmc": ("QMCSampler", ("scipy",)),
    "gp": ("GPSampler", ("scipy", "torch")),
}
WITH_STARTUP = ("tpe", "gp", "cmaes")   # samplers that take n_startup_trials
DEFAULTS = {"sampler": "tpe", "storage": None, "study_name": "medbench",
            "n_startup_trials": None}
CATEGORICAL_TYPES = (bool, int, float, str)   # and None: what Optuna can store


def _missing(sampler: str) -> list[str]:
    return [m for m in SAMPLERS[sampler][1] if importlib.util.find_spec(m) is None]


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (True when unsure)."""
    if os.name != "posix":      # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:             # EPERM: it exists, owned by someone else
        return True
    return True


def _suggest(trial, dim):
    if dim.kind == "categorical":
        return trial.suggest_categorical(dim.name, list(dim.choices))
    if dim.kind == "int":
        return trial.suggest_int(dim.name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(dim.name, float(dim.low), float(dim.high), log=dim.log)


class OptunaStudy(Optimizer):
    description = "Optuna study (TPE default); shared across processes with an RDB storage URL"
    defaults = DEFAULTS
    choices = {"sampler": tuple(SAMPLERS)}
    declared = {
        "sampler": Param(help="Optuna's sampler"),
        "storage": Param("str", "database URL several processes share, e.g. sqlite:///study.db"),
        "study_name": Param("str", "the study's name in the storage"),
        "n_startup_trials": Param("int", "random trials before the sampler's model (tpe, gp, "
                                         "cmaes)", low=0),
    }

    def __init__(self, **params):
        cfg = self.check("optimizer", "optuna", params)
        sampler = cfg["sampler"]
        missing = _missing(sampler)
        if missing:
            raise ParameterError(f"optimizer 'optuna': sampler {sampler!r} needs the "
                                 f"{' and '.join(missing)} package(s): pip install "
                                 f"{' '.join(missing)}")
        startup = cfg["n_startup_trials"]
        if startup is not None:
            if sampler not in WITH_STARTUP:
                raise ParameterError(f"optimizer 'optuna': n_startup_trials applies to the "
                                     f"{', '.join(WITH_STARTUP)} samplers, not {sampler!r}")
        storage = cfg["storage"]
        if storage is not None:
            if not isinstance(storage, str) or "://" not in storage:
                raise ParameterError("optimizer 'optuna': storage must be a database URL such as "
                                     f"sqlite:////abs/path/study.db, got {storage!r}")
            if storage.startswith("sqlite:///"):
                folder = Path(storage[len("sqlite:///"):]).parent
                if not folder.is_dir():
                    raise ParameterError(f"optimizer 'optuna': storage {storage!r}: folder "
                                         f"{str(folder)!r} does not exist")
        if not isinstance(cfg["study_name"], str) or not cfg["study_name"]:
            raise ParameterError("optimizer 'optuna': study_name must be a non-empty string")
        self.sampler = sampler
        self.storage = storage
        self.study_name = cfg["study_name"]
        self.n_startup_trials = startup
        self.notes: list[str] = []
        self.plan: dict | None = None

    # ------------------------------------------------------------------ helpers
    def _make_sampler(self, seed: int):
        import optuna

        cls = getattr(optuna.samplers, SAMPLERS[self.sampler][0], None)
        if cls is None:
            raise PluginError(f"optimizer 'optuna': sampler {self.sampler!r} needs a newer "
                              f"Optuna than {optuna.__version__}")
        kwargs: dict = {"seed": seed}
        if self.n_startup_trials is not None:
            kwargs["n_startup_trials"] = self.n_startup_trials
        if self.sampler == "qmc":
            kwargs["scramble"] = True    # unscrambled Sobol starts at the lower corner
        if self.sampler == "tpe" and self.storage is not None:
            kwargs["constant_liar"] = True   # workers avoid what others are running
        with warnings.catch_warnings():     # "QMCSampler is experimental" and the like
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**kwargs)

    def _open_storage(self):
        import optuna
        import sqlalchemy.exc

        kwargs = {}
        if self.storage.startswith("sqlite"):
            # concurrent writers wait for the lock instead of failing at once
            kwargs = {"connect_args": {"timeout": 60}}
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(self.storage, engine_kwargs=kwargs)
            except ImportError as exc:
                raise PluginError(f"optimizer 'optuna': storage {self._shown_url()}: "
                                  f"{exc} (is the database driver installed?)") from None
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                    optuna.exceptions.StorageInternalError) as exc:
                # workers starting together race to create the tables; the loser retries
                if attempt == 4:
                    raise PluginError(f"optimizer 'optuna': cannot open storage "
                                      f"{self._shown_url()}: {exc}") from None
                time.sleep(0.2 * (attempt + 1))

    def _shown_url(self) -> str | None:
        """The storage URL without its password (it goes to logs and result files)."""
        if self.storage is None:
            return None
        try:
            from sqlalchemy.engine import make_url
            return make_url(self.storage).render_as_string(hide_password=True)
        except Exception:
            return "<storage URL>"

    @staticmethod
    def _distributions(space) -> dict:
        from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                          IntDistribution)

        out = {}
        for d in space.dims:
            if d.kind == "categorical":
                bad = [c for c in d.choices if c is not None and not isinstance(c, CATEGORICAL_TYPES)]
                if bad:
                    raise PluginError(f"optimizer 'optuna': choices of {d.name!r} must be None, "
                                      f"bool, int, float or str; got {bad[0]!r}")
                out[d.name] = CategoricalDistribution(list(d.choices))
            elif d.kind == "int":
                out[d.name] = IntDistribution(int(d.low), int(d.high), log=d.log)
            else:
                out[d.name] = FloatDistribution(float(d.low), float(d.high), log=d.log)
        return out

    def _check_study_space(self, study, dists: dict) -> None:
        """A shared study must have been made with the same space."""
        for t in study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                if dists.get(name) != dist:
                    raise PluginError(
                        f"optimizer 'optuna': study {self.study_name!r} in {self._shown_url()} "
                        f"was made with a different search space (parameter {name!r}: {dist}); "
                        "use another study_name")

    def _requeue_stale(self, study, host: str) -> None:
        """RUNNING trials of this host whose process is gone: FAIL, then enqueue again."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        others = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = t.user_attrs.get("pid")
            if t.user_attrs.get("host") != host or not isinstance(pid, int):
                others += 1
                continue
            # our own pid: a trial left RUNNING by an interrupted earlier call
            if pid != os.getpid() and _alive(pid):
                others += 1
                continue
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, UpdateFinishedTrialError):
                continue            # another worker got to it first
            if any(x.user_attrs.get("retry_of") == t.number for x in study.get_trials(deepcopy=False)):
                continue
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            self.notes.append(f"optuna: trial {t.number} was left RUNNING by process {pid}, "
                              "which is gone; marked FAIL and queued to run again")
        if others:
            self.notes.append(f"optuna: {others} trial(s) of study {self.study_name!r} are "
                              "RUNNING in other processes; they count against the budget")

    # ------------------------------------------------------------------ minimize
    def minimize(self, objective, space, budget, seed=0):
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if not isinstance(objective, BudgetedObjective):
            objective = BudgetedObjective(objective, budget)
        self.notes = []
        host, pid = socket.gethostname(), os.getpid()
        dists = self._distributions(space)
        shared = self.storage is not None
        # workers of a shared study must not share a seed (they would propose the same
        # parameters); in memory the seed is used as given, for reproducibility
        sampler_seed = zlib.crc32(f"{seed}:{host}:{pid}".encode()) if shared else seed
        sampler = self._make_sampler(sampler_seed)
        self.plan = {"sampler": self.sampler, "storage": self._shown_url(),
                     "study_name": self.study_name if shared else None,
                     "sampler_seed": sampler_seed, "trials": budget.trials,
                     "seconds": budget.seconds}
        if not shared:
            study = optuna.create_study(direction="minimize", sampler=sampler)
        else:
            study = optuna.create_study(study_name=self.study_name, storage=self._open_storage(),
                                        direction="minimize", sampler=sampler,
                                        load_if_exists=True)
            if study.direction != optuna.study.StudyDirection.MINIMIZE:
                raise PluginError(f"optimizer 'optuna': study {self.study_name!r} in "
                                  f"{self._shown_url()} maximizes; use another study_name")
            self._check_study_space(study, dists)
            self._requeue_stale(study, host)
        limit = budget.trials if shared else None   # in memory the objective counts
        counted = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)

        evaluated: list[dict] = []
        while not objective.exhausted():
            if limit is not None and len(study.get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))) >= limit:
                break
            trial = study.ask()     # a WAITING (enqueued) trial first, if any
            trial.set_user_attr("host", host)
            trial.set_user_attr("pid", pid)
            if limit is not None:
                ahead = sum(1 for t in study.get_trials(deepcopy=False, states=counted)
                            if t.number < trial.number)
                if ahead >= limit:
                    trial.set_user_attr("medbench", "not run: other workers reached the budget")
                    study.tell(trial, state=TrialState.FAIL)
                    break
            try:
                params = {d.name: _suggest(trial, d) for d in space.dims}
                value = float(objective(params))
            except BudgetExhausted:     # the clock ran out between the check and the call
                trial.set_user_attr("medbench", "not run: budget exhausted")
                study.tell(trial, state=TrialState.FAIL)
                break
            except Exception:
                study.tell(trial, state=TrialState.FAIL)
                raise
            # KeyboardInterrupt and the like leave the trial RUNNING: the next start on
            # this host finds its process gone and runs it again
            evaluated.append({"params": params, "value": value})
            if math.isnan(value):       # Optuna cannot store NaN: FAIL, quietly
                trial.set_user_attr("medbench", "objective returned NaN")
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, value)
        if not shared:
            return evaluated
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [{"params": dict(t.params), "value": t.value, "number": t.number,
                 "host": t.user_attrs.get("host"), "pid": t.user_attrs.get("pid")}
                for t in sorted(done, key=lambda t: t.number)]


@hookimpl
def register_optimizers(register):
    register("optuna", OptunaStudy)
