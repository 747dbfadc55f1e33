"""The objective of a study: every trial is a fit built by the same CLI parser a person uses.

A trial's command line is the base config, the spec's overrides, the trial's own logger (a
TensorBoard run in ``<study dir>/trial_<n>``) and one ``--key=value`` per searched parameter,
given to :class:`~dip_lightning.cli.DIPCLI` with ``run=False``; the objective then calls
``trainer.fit``. :func:`validate_spec` parses the space at both ends before any trial runs, so
a key that does not exist fails at once with one line.

A trial's value depends on the spec's ``stopping``:

* ``end``: the value at the end of the fit (the PSNR of the written ``restored.png``, or the
  held-out MSE at the last step); the stopping iteration is a parameter (``trainer.max_steps``).
  :class:`StepPruning` reports the *current* value of the objective's metric (``psnr`` or
  ``heldout/mse``, as the fit logs it every ``trainer.log_every_n_steps``) at the global step:
  the value the trial would end with if it stopped there.
* ``best``: the best value the fit passes through. A stopping criterion watches the fit
  (:class:`~dip_lightning.callbacks.PeakPSNR` or
  :class:`~dip_lightning.callbacks.HeldoutStopping`, never stopping it) and keeps the image of its
  best step, which is written as ``restored.png``; that step is the trial's stopping iteration
  (``best.yaml`` sets ``trainer.max_steps`` to it). :class:`StepPruning` reports the best value
  so far: again the value the trial would end with if it stopped there.

A trial is never pruned at its last step: that would save no step and throw its result away.
The step of the best value seen during the fit is kept as the user attribute ``best_step``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from dip_lightning.callbacks.stopping import HeldoutStopping, PeakPSNR, StoppingCriterion
from dip_lightning.cli import DIPCLI, tidy_parser_message, user_error
from dip_lightning.errors import ConfigError, DIPError, one_line
from dip_lightning.search.spec import StudySpec, cli_value
from dip_lightning.tasks.base import DIPModule

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

__all__ = [
    "Objective",
    "StepPruning",
    "SurplusTrialError",
    "TrialProgress",
    "WorkerInterrupted",
    "build_cli",
    "retry_callback",
    "trial_args",
    "validate_spec",
]


class SurplusTrialError(Exception):
    """Raised at the start of a trial that another worker's trial made unnecessary."""


class WorkerInterrupted(KeyboardInterrupt):
    """A worker was stopped (Ctrl-C, SIGTERM) during a trial; the trial is marked FAIL and a
    retry with the same parameters is queued (a ``KeyboardInterrupt``, so Optuna records the
    failure before it ends the worker)."""


class StepPruning(Callback):
    """Report ``monitor`` to an Optuna trial at the global step and prune when told to.

    Every ``trainer.log_every_n_steps`` steps (and at the last step), the value the fit logged
    under ``monitor`` is reported with ``trial.report(value, step=global_step)``; when
    ``trial.should_prune()`` the fit stops with :class:`optuna.TrialPruned`. The value is the
    current one (not the best so far), the same quantity as the trial's final value. The last
    step (``trainer.max_steps``) is reported but never pruned: the fit has run every step by
    then, so the trial completes with its value.

    With ``best`` (``"maximize"`` or ``"minimize"``), the value reported is the best one logged
    so far instead of the current one.
    """

    def __init__(self, trial: optuna.Trial, monitor: str, best: str | None = None) -> None:
        self.trial = trial
        self.monitor = monitor
        self.best = best
        self.reported: dict[int, float] = {}
        self._best_value: float | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        import optuna

        step = int(trainer.global_step)
        every = max(int(getattr(trainer, "log_every_n_steps", 50)), 1)
        last = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        if step % every and not last:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"the fit logs no {self.monitor!r} to report to the pruner; "
                "check the objective (psnr needs a clean reference)"
            )
        number = float(value)
        if self.best is not None:
            previous = self._best_value
            if previous is not None and (
                number < previous if self.best == "maximize" else number > previous
            ):
                number = previous
            self._best_value = number
        self.reported[step] = number
        self.trial.report(number, step)
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.monitor} {number:.4g})")


class TrialProgress(Callback):
    """One progress bar per trial: ``trial 3/16`` with the steps, the ETA and the objective's
    metric as the pruner sees it; closed with the trial's outcome (complete or pruned).

    Workers started by ``--n-workers`` draw their bars on lines of their own (``position``).
    """

    def __init__(
        self,
        trial: optuna.Trial,
        n_trials: int,
        monitor: str,
        position: int = 0,
        file: Any = None,
    ) -> None:
        self.trial = trial
        self.n_trials = n_trials
        self.monitor = monitor
        self.position = position
        self.file = file
        self.bar: Any = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from tqdm.auto import tqdm

        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.bar = tqdm(
            total=total,
            initial=int(trainer.global_step),
            desc=f"trial {self.trial.number + 1}/{self.n_trials}",
            unit="step",
            position=self.position,
            leave=True,
            dynamic_ncols=True,
            file=self.file,
        )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.bar is None:
            return
        self.bar.update(int(trainer.global_step) - self.bar.n)
        every = max(int(getattr(trainer, "log_every_n_steps", 50)), 1)
        if trainer.global_step % every == 0:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                self.bar.set_postfix({self.monitor: f"{float(value):.4g}"}, refresh=False)

    def close(self, outcome: str) -> None:
        """End the bar with ``outcome`` (e.g. ``psnr 28.41 (best step 450)`` or ``pruned``)."""
        if self.bar is None:
            return
        self.bar.set_postfix_str(outcome, refresh=False)
        self.bar.close()
        self.bar = None


def retry_callback(max_retry: int | None) -> Any:
    """Optuna's callback that queues a failed trial again with the same parameters
    (``RetryHeartbeatStaleTrialCallback``, ``RetryFailedTrialCallback`` before Optuna 4.9)."""
    import optuna

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if retry is None:
        retry = optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return retry(max_retry=max_retry)


def trial_args(
    spec: StudySpec, values: Mapping[str, Any] | None = None, number: int | None = None
) -> list[str]:
    """The command line of a trial: the base config, fixed settings, the spec's overrides,
    the trial's logger (none when ``number`` is ``None``) and one argument per parameter."""
    args = [
        "--config",
        str(spec.base_config),
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *spec.overrides,
    ]
    if number is None:
        args.append("--trainer.logger=false")
    else:
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {
                "save_dir": str(spec.study_dir),
                "name": "",
                "version": f"trial_{number}",
                "default_hp_metric": False,
            },
        }
        args.append(f"--trainer.logger={json.dumps(logger)}")
    if spec.objective == "heldout":
        args.append(f"--model.init_args.holdout_fraction={cli_value(spec.holdout_fraction)}")
    args += [f"--{key}={cli_value(value)}" for key, value in (values or {}).items()]
    return args


class _ParseOnlyCLI(DIPCLI):
    """:class:`DIPCLI` that parses and stops: nothing is instantiated."""

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def _parser_error(exc: BaseException) -> str:
    return tidy_parser_message(str(exc))


def build_cli(args: Sequence[str]) -> DIPCLI:
    """``DIPCLI(args=args, run=False)``; a parser error or an invalid value becomes a
    one-line :class:`ConfigError`."""
    try:
        return DIPCLI(args=list(args), run=False, parser_kwargs={"exit_on_error": False})
    except argparse.ArgumentError as exc:
        raise ConfigError(_parser_error(exc)) from None
    except Exception as exc:
        error = user_error(exc)
        if error is not None:
            raise ConfigError(str(error)) from None
        raise


def validate_spec(spec: StudySpec) -> None:
    """Check the whole spec before any trial runs; raise a one-line :class:`ConfigError`.

    The base config with its overrides must parse; then every key of the search space is parsed
    at each end of its range (every choice of a categorical), so a key that does not exist or a
    value its type refuses names the key; finally the fit is built (not run) with every
    parameter at its low end and at its high end, which runs every check of the data and the
    model, and the objective's needs are checked (``psnr`` needs a clean reference).
    """
    base = trial_args(spec)
    try:
        cli = _ParseOnlyCLI(args=base, run=False, parser_kwargs={"exit_on_error": False})
    except argparse.ArgumentError as exc:
        raise ConfigError(
            f"base config {spec.base_config} with the spec's overrides: {_parser_error(exc)}"
        ) from None
    parser = cli.parser
    for param in spec.space:
        for value in param.extremes():
            try:
                parser.parse_args([*base, f"--{param.key}={cli_value(value)}"])
            except argparse.ArgumentError as exc:
                raise ConfigError(
                    f"search space key {param.key} (= {value!r}) does not fit "
                    f"{spec.base_config.name}: {_parser_error(exc)}"
                ) from None
    for end, pick in (("low", 0), ("high", -1)):
        values = {param.key: param.extremes()[pick] for param in spec.space}
        try:
            built = build_cli(trial_args(spec, values))
        except DIPError as exc:
            raise ConfigError(f"search space at its {end} end: {exc}") from None
        sample = getattr(built.model, "sample", None)
        if spec.objective == "psnr" and (sample is None or sample.clean is None):
            raise ConfigError(
                "objective psnr needs a clean reference: give data.clean, or simulate the "
                "observation (e.g. data.noise_sigma); use objective heldout for a real image"
            )


def _best_watcher(spec: StudySpec) -> StoppingCriterion:
    """The criterion that keeps a trial's best image and step with ``stopping: best``: it
    watches the whole fit (``stop: false``) and selects its best step."""
    never = 2**62  # the best over the whole fit, not the choice when a patience ran out
    if spec.objective == "psnr":
        return PeakPSNR(patience=never, min_steps=0, stop=False)
    return HeldoutStopping(patience=never, min_steps=0, stop=False)


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


class Objective:
    """The function Optuna calls: build one fit through :class:`DIPCLI`, run it, return the
    objective's value (see the module docstring), and record what the trial left.

    User attributes of a trial: ``worker`` (host:pid), ``run_dir``, ``steps`` (steps run,
    pruned or not), ``best_step`` and ``best_value`` (the best value of the objective's metric
    during the fit and its step), ``psnr``/``peak_psnr``/``peak_step`` when a clean reference is
    known, ``heldout_mse`` for the held-out objective, and ``restored_artifact`` (the id of
    ``restored.png`` in the artifact store).
    """

    def __init__(self, spec: StudySpec, artifact_store: Any | None = None) -> None:
        self.spec = spec
        self.artifact_store = artifact_store
        self.consecutive_failures = 0
        self.last_error: DIPError | None = None
        #: Ctrl-C or SIGTERM arrived when a fit had already finished its last step
        self.stop_requested = False
        #: a trial (``in_trial``) or its fit (``in_fit``) is running in this process
        self.in_trial = False
        self.in_fit = False

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM outside a fit: during a trial, finish and record it, then stop the worker
        (``stop_requested``); between trials, stop at once. While Lightning's handler is
        installed (it calls this one too) it stops the fit at the end of the step and the trial
        is queued again."""
        import signal

        if self.in_fit and signal.getsignal(signal.SIGTERM) != self.on_sigterm:
            return  # called by Lightning's handler
        if self.in_trial:
            self.stop_requested = True
            return
        raise WorkerInterrupted("stopped between trials")

    def is_surplus(self, trial: optuna.Trial) -> bool:
        """Whether the study already has ``n_trials`` finished or running trials without this
        one. Running trials count when they are older or already started (have a worker), so
        that of two workers racing for the last slot exactly one goes on."""
        from optuna.trial import TrialState

        done = running = 0
        for other in trial.study.get_trials(deepcopy=False):
            if other.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done += 1
            elif (
                other.state == TrialState.RUNNING
                and other.number != trial.number
                and (other.number < trial.number or "worker" in other.user_attrs)
            ):
                running += 1
        return done + running + 1 > self.spec.n_trials

    def requeue(self, trial: optuna.Trial) -> None:
        """Queue a retry of ``trial`` (same parameters, WAITING) when its worker is stopped by
        Ctrl-C or SIGTERM, as a heartbeat does for a worker killed outright."""
        frozen = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
        if frozen:
            retry_callback(self.spec.max_retry)(trial.study, frozen[0])

    def __call__(self, trial: optuna.Trial) -> float:
        if self.is_surplus(trial):
            raise SurplusTrialError(
                f"the study already has {self.spec.n_trials} finished or running trials"
            )
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        self.in_trial = True
        try:
            value = self._run(trial)
        except DIPError as exc:
            self.consecutive_failures += 1
            self.last_error = exc
            raise
        finally:
            self.in_trial = False
        self.consecutive_failures = 0
        return value

    def _run(self, trial: optuna.Trial) -> float:
        import optuna

        spec = self.spec
        values = {param.key: param.suggest(trial) for param in spec.space}
        run_dir = spec.run_dir(trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        cli = build_cli(trial_args(spec, values, trial.number))
        trainer, module = cli.trainer, cli.model
        assert isinstance(module, DIPModule)
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        if not spec.keep_checkpoints:  # the trial's image and config are what a study keeps
            callbacks[:] = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        watcher = _best_watcher(spec) if spec.stopping == "best" else None
        if watcher is not None:
            callbacks.append(watcher)
        best = spec.direction if spec.stopping == "best" else None
        callbacks.append(StepPruning(trial, spec.monitor, best=best))
        progress = None
        if spec.progress_bar:
            position = spec.worker_index or 0
            progress = TrialProgress(trial, spec.n_trials, spec.monitor, position=position)
            callbacks.append(progress)
        outcome = "failed"
        self.in_fit = True
        try:
            trainer.fit(module, datamodule=cli.datamodule)
            outcome = "done"
        except optuna.TrialPruned:
            outcome = f"pruned at step {trainer.global_step}"
            raise
        except (KeyboardInterrupt, SystemExit) as exc:  # Lightning exits on Ctrl-C and SIGTERM
            outcome = "interrupted"
            self.requeue(trial)
            raise WorkerInterrupted(
                f"stopped during trial {trial.number} at step {trainer.global_step}; "
                "it is queued to run again"
            ) from exc
        finally:
            self.in_fit = False
            trial.set_user_attr("steps", int(trainer.global_step))
            if progress is not None and outcome != "done":
                progress.close(outcome)
        if getattr(trainer, "received_sigterm", False):  # came during the last step: the fit
            self.stop_requested = True  # is whole; the worker stops after recording it
        metrics = _read_metrics(run_dir)
        attrs: dict[str, Any] = {
            key: metrics[key]
            for key in ("psnr", "ssim", "peak_psnr", "peak_step", "seconds")
            if key in metrics
        }
        if watcher is not None:
            selection = watcher.selection()
            if selection is None:
                raise ConfigError(f"trial {trial.number} ran no step that could be selected")
            _, step, score = selection
            value = -score if spec.objective == "psnr" else score
            if spec.objective == "psnr" and "psnr" in metrics:
                value = float(metrics["psnr"])  # of the written image: the selected one
            elif spec.objective == "heldout":
                attrs["heldout_mse"] = value
            attrs["best_step"] = step
            attrs["best_value"] = value
        elif spec.objective == "psnr":
            if "psnr" not in metrics:
                raise ConfigError(f"the fit wrote no psnr to {run_dir / 'metrics.json'}")
            value = float(metrics["psnr"])
            attrs["best_step"] = int(metrics.get("peak_step", trainer.global_step))
            attrs["best_value"] = float(metrics.get("peak_psnr", value))
        else:
            final = trainer.callback_metrics.get(spec.monitor)
            if final is None or module.heldout_best is None or module.heldout_best_step is None:
                raise ConfigError("the fit tracked no held-out pixels (model.holdout_fraction)")
            value = float(final)
            attrs["heldout_mse"] = value
            attrs["best_step"] = int(module.heldout_best_step)
            attrs["best_value"] = float(module.heldout_best)
        for key, item in attrs.items():
            trial.set_user_attr(key, item)
        image = run_dir / "restored.png"
        if self.artifact_store is not None and image.is_file():
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.artifact_store, file_path=str(image), study_or_trial=trial
            )
            trial.set_user_attr("restored_artifact", artifact_id)
        log.debug("trial %d: %s", trial.number, one_line(attrs))
        if progress is not None:
            progress.close(f"{spec.objective} {value:.4g} (best step {attrs['best_step']})")
        return value
