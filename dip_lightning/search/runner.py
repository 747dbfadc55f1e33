"""Run a study: storage, study creation, workers, and what the study leaves behind.

The study is created once, by ``dip search`` (``create_study(load_if_exists=True)``), after the
spec has been validated; workers (``dip search ... --worker``, on this machine or any other that
reaches the same storage) load it and run trials until the study holds ``n_trials`` finished
(COMPLETE or PRUNED) trials, each counted once:

- before each trial a worker fails stale trials (heartbeats; their retries queue up as WAITING
  trials with the same parameters, see :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`)
  and starts a trial only while ``finished + running < n_trials``; while the remaining trials
  are running elsewhere it waits, so that it can take over the retry of a worker that dies;
- a trial that starts while the last slot is being taken by another worker finds out at once
  and ends as FAIL without running (:class:`~dip_lightning.search.objective.SurplusTrialError`);
- :class:`optuna.study.MaxTrialsCallback` counting COMPLETE and PRUNED stops ``optimize``.

A worker stopped by Ctrl-C or SIGTERM during a fit marks its trial FAIL and queues the retry
itself (:meth:`~dip_lightning.search.objective.Objective.requeue`); one killed outright
(SIGKILL, a lost machine) stops sending heartbeats, and the next worker to look fails the stale
trial after ``grace_period`` seconds and queues its retry. Heartbeats exist for RDB storages
(SQLite, PostgreSQL, MySQL); a journal file has none, so there the trial of a worker killed
outright stays RUNNING and is never retried.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from dip_lightning.errors import ConfigError, DIPError, one_line
from dip_lightning.io_utils import atomic_write_text
from dip_lightning.search.objective import (
    Objective,
    SurplusTrialError,
    WorkerInterrupted,
    _ParseOnlyCLI,
    retry_callback,
    trial_args,
    validate_spec,
)
from dip_lightning.search.spec import StudySpec

log = logging.getLogger(__name__)

__all__ = [
    "FINISHED",
    "create_study",
    "export_best",
    "load_study",
    "make_storage",
    "run_search",
    "run_worker",
    "short_key",
    "storage_display",
    "summarize",
]

#: the states that count towards ``n_trials``
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: a worker stops after this many trials in a row failed with a configuration error
MAX_CONSECUTIVE_FAILURES = 3
#: settings of a trial's command line that ``best.yaml`` drops (they name the trial's run)
_TRIAL_ONLY_TRAINER_KEYS = (
    "logger",
    "default_root_dir",
    "enable_progress_bar",
    "enable_model_summary",
)


def is_journal(url: str) -> bool:
    """Whether ``url`` names a journal file: ``journal:PATH`` or a path ending in ``.log``.

    >>> [is_journal(u) for u in ("journal:s.jl", "runs/s.log", "sqlite:///s.db")]
    [True, True, False]
    """
    return url.startswith("journal:") or ("://" not in url and url.endswith(".log"))


def journal_path(url: str) -> Path:
    """The file of a journal storage URL."""
    return Path(url.removeprefix("journal:")).expanduser()


def storage_display(url: str) -> str:
    """``url`` with any password hidden, for messages and printed commands.

    >>> storage_display("postgresql+psycopg2://dip:secret@127.0.0.1:5432/dip")
    'postgresql+psycopg2://dip:***@127.0.0.1:5432/dip'
    >>> storage_display("journal:runs/s.log")
    'runs/s.log'
    """
    if is_journal(url):
        return str(journal_path(url))
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: show it as given
        return url


def make_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """The study's storage: a journal file, or an RDB storage with heartbeats and retries.

    SQLite waits up to a minute for a lock held by another worker; other databases check a
    pooled connection before use.
    """
    url = spec.storage
    if is_journal(url):
        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any]
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats and retries are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _rdb_storage(url, engine_kwargs, spec)


def _rdb_storage(
    url: str, engine_kwargs: dict[str, Any], spec: StudySpec
) -> optuna.storages.RDBStorage:
    name = (
        "heartbeat_stale_trial_callback"  # Optuna >= 4.9
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
        else "failed_trial_callback"
    )
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period,
            **{name: retry_callback(spec.max_retry)},
        )
    except ImportError as exc:
        raise ConfigError(
            f"storage {storage_display(url)} needs a database driver "
            f"(e.g. pip install psycopg2-binary for PostgreSQL): {one_line(exc)}"
        ) from None
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlalchemy", "psycopg", "pymysql")):
            reason = one_line(str(getattr(exc, "orig", None) or exc)).split(" (Background", 1)[0]
            raise ConfigError(f"cannot open storage {storage_display(url)}: {reason}") from None
        raise


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The sampler named by the spec, seeded by :meth:`StudySpec.sampler_seed`."""
    seed = spec.sampler_seed()
    options = dict(spec.sampler_options)
    if spec.sampler == "tpe":
        options.setdefault("constant_liar", True)  # parallel workers spread out
        return _build("sampler", "tpe", optuna.samplers.TPESampler, options, seed=seed)
    if spec.sampler == "random":
        return _build("sampler", "random", optuna.samplers.RandomSampler, options, seed=seed)
    needs = {"gp": ("scipy", "scipy"), "cmaes": ("cmaes", "cmaes")}[spec.sampler]
    try:
        __import__(needs[0])
    except ImportError:
        raise ConfigError(
            f"sampler {spec.sampler} needs the {needs[1]} package: pip install {needs[1]} "
            '(or pip install "dip-lightning[search]")'
        ) from None
    cls = optuna.samplers.GPSampler if spec.sampler == "gp" else optuna.samplers.CmaEsSampler
    return _build("sampler", spec.sampler, cls, options, seed=seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The pruner named by the spec; its options go to the Optuna class as they are.

    Intermediate values are keyed by the global step, so ``n_warmup_steps`` (median) and
    ``min_resource`` (hyperband) count optimisation steps.
    """
    if spec.pruner == "none":  # pruner_options meant for another pruner do not matter
        return optuna.pruners.NopPruner()
    classes: dict[str, Any] = {
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    return _build("pruner", spec.pruner, classes[spec.pruner], spec.pruner_options)


def _build(kind: str, name: str, cls: Any, options: dict[str, Any], **fixed: Any) -> Any:
    """``cls(**fixed, **options)``; options the class refuses give a one-line error."""
    try:
        return cls(**fixed, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{kind}_options {options} do not fit {kind} {name}: {one_line(exc)}; "
            f"give other --{kind}_options (or '{{}}')"
        ) from None


def create_study(spec: StudySpec) -> optuna.Study:
    """Create the study (or load it when it exists, checking its direction)."""
    storage = make_storage(spec)
    study = optuna.create_study(
        storage=storage,
        study_name=spec.study_name,
        direction=optuna.study.StudyDirection[spec.direction.upper()],
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    direction = study.direction.name.lower()
    if direction != spec.direction:
        raise ConfigError(
            f"study {spec.study_name} already exists in {storage_display(spec.storage)} and "
            f"{direction}s its objective; use another --study_name"
        )
    for key, value in (
        ("objective", spec.objective),
        ("stopping", spec.stopping),
        ("base_config", str(spec.base_config)),
        ("n_trials", spec.n_trials),
    ):
        study.set_user_attr(key, value)
    return study


def load_study(spec: StudySpec) -> optuna.Study:
    """Load the study a worker joins; a clear error when it does not exist yet."""
    storage = make_storage(spec)
    try:
        return optuna.load_study(
            study_name=spec.study_name,
            storage=storage,
            sampler=make_sampler(spec),
            pruner=make_pruner(spec),
        )
    except KeyError:
        raise ConfigError(
            f"no study {spec.study_name!r} in {storage_display(spec.storage)}; start it with "
            "dip search (without --worker) first"
        ) from None


def _counts(study: optuna.Study) -> tuple[int, int]:
    finished = running = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in FINISHED:
            finished += 1
        elif trial.state == TrialState.RUNNING:
            running += 1
    return finished, running


def run_worker(spec: StudySpec, study: optuna.Study) -> None:
    """Run trials of ``study`` until it holds ``spec.n_trials`` finished trials (see the module
    docstring), or ``spec.timeout`` seconds have passed (no new trial starts after that)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    store = optuna.artifacts.FileSystemArtifactStore(_mkdir(spec.artifact_dir))
    objective = Objective(spec, store)
    heartbeat = is_heartbeat_enabled(study._storage)
    poll = max(0.5, spec.heartbeat_interval / 2)
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    stop = optuna.study.MaxTrialsCallback(spec.n_trials, states=FINISHED)
    with _sigterm_handler(objective.on_sigterm):
        _run_trials(spec, study, objective, heartbeat, poll, deadline, stop)


@contextlib.contextmanager
def _sigterm_handler(handler: Any) -> Iterator[None]:
    """Install ``handler`` for SIGTERM (in the main thread only) and restore the previous one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_trials(
    spec: StudySpec,
    study: optuna.Study,
    objective: Objective,
    heartbeat: bool,
    poll: float,
    deadline: float | None,
    stop: Any,
) -> None:
    """The loop of :func:`run_worker`."""
    from optuna.storages import fail_stale_trials

    while True:
        fail_stale_trials(study)
        finished, running = _counts(study)
        if finished >= spec.n_trials:
            return
        if deadline is not None and time.monotonic() >= deadline:
            log.info("timeout: %s s have passed; no new trial starts", spec.timeout)
            return
        if finished + running >= spec.n_trials:
            if not heartbeat:
                return
            time.sleep(poll)  # the last trials run elsewhere: wait in case one is retried
            continue
        study.optimize(
            objective,
            n_trials=1,
            catch=(DIPError, SurplusTrialError),
            callbacks=[stop],
            gc_after_trial=True,
        )
        if objective.stop_requested:
            raise WorkerInterrupted("stopped after its trial finished")
        if objective.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            assert objective.last_error is not None
            raise ConfigError(
                f"{objective.consecutive_failures} trials in a row failed: {objective.last_error}"
            )


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _spawn_workers(spec: StudySpec) -> None:
    """Run ``spec.n_workers`` worker processes of this study on this machine and wait."""
    threads = spec.threads or max(1, (os.cpu_count() or 1) // spec.n_workers)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(spec.n_workers):
            command = [
                sys.executable,
                "-m",
                "dip_lightning",
                "search",
                *spec.argv,
                "--storage",
                spec.storage,
                "--study_name",
                spec.study_name,
                "--n_workers",
                "1",
                "--threads",
                str(threads),
                "--worker",
                "--worker_index",
                str(index),
            ]
            processes.append(subprocess.Popen(command))
        codes = [process.wait() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
    failed = [code for code in codes if code != 0]
    if failed:
        log.warning("%d of %d workers exited with an error", len(failed), len(codes))


@contextlib.contextmanager
def _quiet_lightning(quiet: bool = False) -> Iterator[None]:
    """Silence Lightning's per-fit notices (devices, 'max_steps reached') and per-fit lines;
    with ``quiet`` also Optuna's per-trial lines and this package's notices."""
    names = ["lightning.pytorch", "lightning.fabric", "dip_lightning.callbacks"]
    if quiet:
        names += ["optuna", "dip_lightning"]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def run_search(spec: StudySpec) -> optuna.Study:
    """What ``dip search`` does: validate, create the study, run the workers, summarise.

    With ``--worker`` this process only joins the study and runs trials.
    """
    with _quiet_lightning(quiet=not spec.progress_bar):
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        if spec.worker:
            study = load_study(spec)
            run_worker(spec, study)
            return study
        validate_spec(spec)
        study = create_study(spec)
        log.info(
            "study %s: %d trials of %s (%s, stopping %s) in %s; log folder %s",
            spec.study_name,
            spec.n_trials,
            spec.objective,
            spec.direction,
            spec.stopping,
            storage_display(spec.storage),
            spec.study_dir,
        )
        if spec.n_workers > 1:
            _spawn_workers(spec)
        else:
            run_worker(spec, study)
        summarize(study, spec)
    return study


# ---------------------------------------------------------------------- what a study leaves


def short_key(key: str) -> str:
    """A config key without its ``init_args`` levels, for tables.

    >>> short_key("model.init_args.net.init_args.levels")
    'model.net.levels'
    """
    return key.replace(".init_args", "")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def top_trials_table(study: optuna.Study, limit: int = 10) -> str:
    """A markdown table of the best complete trials (value, best step, steps, parameters)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(
        (t for t in complete if t.value is not None and math.isfinite(t.value)),
        key=lambda t: float(t.value or 0.0),
        reverse=reverse,
    )[:limit]
    keys: list[str] = []
    for trial in ranked:
        keys += [key for key in trial.params if key not in keys]
    header = ["trial", "value", "best step", "steps", *(short_key(k) for k in keys)]
    rows = [
        [
            str(t.number),
            _format(t.value),
            _format(t.user_attrs.get("best_step", "")),
            _format(t.user_attrs.get("steps", "")),
            *(_format(t.params.get(k, "")) for k in keys),
        ]
        for t in ranked
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def importances_line(study: optuna.Study) -> str | None:
    """Parameter importances (Optuna's default evaluator) as one line; ``None`` when fewer
    than two trials are complete or the importances cannot be computed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        log.debug("no parameter importances: %s", exc)
        return None
    if not importances:
        return None
    return ", ".join(f"{short_key(key)} {value:.2f}" for key, value in importances.items())


def _trial_config(trial: FrozenTrial, spec: StudySpec) -> dict[str, Any]:
    """The resolved config of ``trial``: its run's ``config.yaml``, else parsed anew."""
    run_dir = Path(trial.user_attrs.get("run_dir") or spec.run_dir(trial.number))
    path = run_dir / "config.yaml"
    if path.is_file():
        config = yaml.safe_load(path.read_text())
    else:  # the trial ran on another machine: parse its command line here
        args = trial_args(spec, trial.params, trial.number)
        cli = _ParseOnlyCLI(args=args, run=False, parser_kwargs={"exit_on_error": False})
        config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a config mapping")
    return config


def export_best(study: optuna.Study, spec: StudySpec) -> Path | None:
    """Write ``<study dir>/best.yaml``, the resolved config of the best trial, which
    ``dip fit --config best.yaml`` runs as is (into ``lightning_logs/``, not the trial's run).

    ``None`` when no trial is complete.
    """
    try:
        best = study.best_trial
    except ValueError:
        return None
    config = _trial_config(best, spec)
    trainer = config.get("trainer")
    if isinstance(trainer, dict):
        for key in _TRIAL_ONLY_TRAINER_KEYS:
            trainer.pop(key, None)
        best_step = best.user_attrs.get("best_step")
        if spec.stopping == "best" and isinstance(best_step, int) and best_step > 0:
            trainer["max_steps"] = best_step  # the trial's stopping iteration
    lines = [
        f"# best trial {best.number} of study {spec.study_name}: {spec.objective} "
        f"{_format(best.value)} after {best.user_attrs.get('steps', '?')} steps "
        f"(best {_format(best.user_attrs.get('best_value', ''))} at step "
        f"{best.user_attrs.get('best_step', '?')})",
        f"# parameters: {', '.join(f'{k}={_format(v)}' for k, v in best.params.items())}",
        "# dip fit --config best.yaml",
    ]
    if spec.objective == "heldout":
        lines.append(
            "# it keeps the trial's held-out pixels (model.init_args.holdout_fraction); "
            "set it to 0 to fit every pixel"
        )
    text = "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False)
    path = spec.study_dir / "best.yaml"
    atomic_write_text(path, text)
    return path


def summarize(study: optuna.Study, spec: StudySpec) -> None:
    """Print the study's counts, the top trials, the importances and the commands to look at
    it, and write ``best.yaml``."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    print(
        f"\nstudy {spec.study_name}: "
        + ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n)
    )
    best_path = export_best(study, spec)
    if best_path is None:
        print("no trial completed; no best.yaml")
    else:
        print(top_trials_table(study))
        importances = importances_line(study)
        if importances:
            print(f"parameter importances: {importances}")
        print(f"best config: {best_path}  (dip fit --config {best_path})")
    print(
        f"optuna-dashboard {storage_display(spec.storage)} --artifact-dir {spec.artifact_dir}\n"
        f"tensorboard --logdir {spec.study_dir}"
    )
