"""``dip search``: an Optuna study over the settings of ``dip fit``.

    dip search --config search/denoise.yaml
    dip search --config search/denoise.yaml --storage postgresql://user@host/db --n-workers 4
    dip search --config search/denoise.yaml --storage postgresql://user@host/db --worker

Every option can be set in the spec file (``--config``) and on the command line (with ``_`` or
``-`` in its name); ``--print_config`` prints the resolved spec.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from dip_lightning.cli import add_option, tidy_parser_message
from dip_lightning.errors import ConfigError
from dip_lightning.search.spec import OBJECTIVES, StudySpec, override_args, parse_space

__all__ = ["main", "parse_spec", "search_parser"]


def search_parser() -> ArgumentParser:
    """The jsonargparse parser of ``dip search`` (errors raise instead of exiting)."""
    parser = ArgumentParser(
        prog="dip search",
        description="Search the settings of a dip fit with Optuna.",
        exit_on_error=False,
        default_env=False,
    )

    def option(name: str, **kwargs: Any) -> None:
        add_option(parser, name, **kwargs)

    parser.add_argument("--config", action=ActionConfigFile, help="A study spec (YAML).")
    option(
        "base_config",
        type=str | None,
        default=None,
        help="The fit config the trials start from (e.g. configs/denoise.yaml); a relative path "
        "is looked up from the working directory, then beside the spec and its parent folder.",
    )
    option(
        "overrides",
        type=list[str] | dict[str, Any],
        default=[],
        help="Settings of the base config changed for every trial: CLI-style arguments "
        "(['--trainer.max_steps=400']) or a mapping ({trainer.max_steps: 400}); given on the "
        "command line, it replaces the spec's.",
    )
    option(
        "space",
        type=dict[str, Any],
        default={},
        help="The search space, {config key: distribution}; a distribution is "
        "{type: float|int, low, high, log?, step?} or {type: categorical, choices: [...]}.",
    )
    option("sampler", type=Literal["tpe", "gp", "cmaes", "random"], default="tpe")
    option("sampler_options", type=dict[str, Any], default={}, help="Keyword arguments.")
    option(
        "pruner",
        type=Literal["median", "hyperband", "none"],
        default="median",
        help="Prunes on the objective's metric reported at the global step every "
        "trainer.log_every_n_steps steps.",
    )
    option(
        "pruner_options",
        type=dict[str, Any],
        default={},
        help="Keyword arguments (e.g. {n_startup_trials: 5, n_warmup_steps: 200}); steps are "
        "optimisation steps.",
    )
    option(
        "objective",
        type=Literal["psnr", "heldout"],
        default="psnr",
        help="psnr: PSNR of the written image against the clean reference (maximised); "
        "heldout: MSE on held-out observed pixels at the end of the fit (minimised; no "
        "reference needed).",
    )
    option(
        "stopping",
        type=Literal["end", "best"],
        default="end",
        help="end: a trial's value is the objective at its last step (search the stopping "
        "iteration as trainer.max_steps); best: the best value it passes through, its step is "
        "the trial's stopping step (best.yaml stops there) and the pruner compares the best "
        "value so far.",
    )
    option(
        "direction",
        type=Literal["auto", "maximize", "minimize"],
        default="auto",
        help="auto: maximize psnr, minimize heldout.",
    )
    option(
        "holdout_fraction",
        type=float,
        default=0.05,
        help="Fraction of observed pixels held out for the heldout objective.",
    )
    option("n_trials", type=int, default=20, help="Finished (complete or pruned) trials.")
    option(
        "timeout",
        type=float | None,
        default=None,
        help="Seconds after which a worker starts no new trial.",
    )
    option("seed", type=int | None, default=0, help="Seed of the sampler (worker i: seed + i).")
    option(
        "storage",
        type=str | None,
        default=None,
        help="An SQLAlchemy URL (sqlite:///study.db, postgresql://user:pw@host/db) or a "
        "journal file (journal:PATH or PATH.log); default sqlite:///<log_dir>/<study>/study.db.",
    )
    option(
        "study_name",
        type=str | None,
        default=None,
        help="Default: the spec file's name (denoise for search/denoise.yaml).",
    )
    option(
        "log_dir",
        type=str,
        default="runs",
        help="Each study writes into <log_dir>/<study_name>/: trial_<n>/ TensorBoard runs, "
        "artifacts/, best.yaml, and the SQLite file by default.",
    )
    option("n_workers", type=int, default=1, help="Worker processes on this machine.")
    option(
        "heartbeat_interval",
        type=int,
        default=60,
        help="Seconds between heartbeats of a running trial (RDB storages).",
    )
    option(
        "grace_period",
        type=int | None,
        default=None,
        help="Seconds without a heartbeat after which a running trial is failed and retried "
        "(default: twice the heartbeat interval).",
    )
    option("max_retry", type=int | None, default=3, help="Retries of a killed worker's trial.")
    option("threads", type=int | None, default=None, help="torch threads per worker.")
    option("keep_checkpoints", type=bool, default=False, help="Keep each trial's checkpoint.")
    option(
        "worker",
        action=ActionYesNo,
        default=False,
        help="Join an existing study (same --storage and --study_name) and run its trials.",
    )
    option("worker_index", type=int | None, default=None, help="Set by dip search --n-workers.")
    option(
        "quiet",
        action=ActionYesNo,
        default=False,
        help="No progress bars and no per-trial lines; the summary, warnings and errors only.",
    )
    return parser


def _config_file(cfg: Namespace) -> Path | None:
    files = cfg.get("config") or []
    if not files:
        return None
    last = files[-1]
    return Path(getattr(last, "absolute", None) or os.fspath(last))


def _find_base_config(name: str, spec_file: Path | None) -> Path:
    path = Path(name).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path.cwd() / path]
        if spec_file is not None:
            candidates += [spec_file.parent / path, spec_file.parent.parent / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"base config not found: {name}; looked in " + ", ".join(str(c.parent) for c in candidates)
    )


def _check_positive(name: str, value: float | None, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{name} = {value} is out of range; use >= {minimum:g}")


def spec_from_namespace(cfg: Namespace, argv: list[str]) -> StudySpec:
    """A :class:`StudySpec` from parsed options, with paths, names and storage resolved."""
    spec_file = _config_file(cfg)
    if not cfg.base_config:
        raise ConfigError("no base config; give base_config: configs/<task>.yaml in the spec")
    base_config = _find_base_config(cfg.base_config, spec_file)
    space = parse_space(cfg.space)
    _check_positive("n_trials", cfg.n_trials)
    _check_positive("n_workers", cfg.n_workers)
    _check_positive("heartbeat_interval", cfg.heartbeat_interval)
    _check_positive("grace_period", cfg.grace_period)
    _check_positive("threads", cfg.threads)
    _check_positive("timeout", cfg.timeout, 0)
    _check_positive("max_retry", cfg.max_retry, 0)
    if not 0 < cfg.holdout_fraction < 1:
        raise ConfigError(f"holdout_fraction = {cfg.holdout_fraction} is out of range; use (0, 1)")
    study_name = cfg.study_name or (spec_file.stem if spec_file else base_config.stem)
    study_dir = Path(cfg.log_dir).expanduser().absolute() / study_name
    storage = cfg.storage or f"sqlite:///{study_dir / 'study.db'}"
    direction = cfg.direction
    if direction == "auto":
        direction = OBJECTIVES[cfg.objective][1]
    return StudySpec(
        base_config=base_config,
        space=space,
        overrides=override_args(cfg.overrides),
        sampler=cfg.sampler,
        sampler_options=dict(cfg.sampler_options or {}),
        pruner=cfg.pruner,
        pruner_options=dict(cfg.pruner_options or {}),
        objective=cfg.objective,
        direction=direction,
        holdout_fraction=float(cfg.holdout_fraction),
        stopping=cfg.stopping,
        n_trials=int(cfg.n_trials),
        timeout=cfg.timeout,
        seed=cfg.seed,
        storage=storage,
        study_name=study_name,
        study_dir=study_dir,
        n_workers=int(cfg.n_workers),
        heartbeat_interval=int(cfg.heartbeat_interval),
        grace_period=cfg.grace_period,
        max_retry=cfg.max_retry,
        threads=cfg.threads,
        keep_checkpoints=bool(cfg.keep_checkpoints),
        progress_bar=not cfg.quiet,
        worker=bool(cfg.worker),
        worker_index=cfg.worker_index,
        argv=list(argv),
    )


def parse_spec(argv: list[str]) -> StudySpec:
    """Parse ``dip search`` arguments into a :class:`StudySpec`; a one-line
    :class:`ConfigError` for anything wrong (``--help``/``--print_config`` exit as usual)."""
    parser = search_parser()
    try:
        cfg = parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{tidy_parser_message(str(exc))} (see dip search --help)") from None
    return spec_from_namespace(cfg, argv)


def main(argv: list[str] | None = None) -> None:
    """``dip search``: called by :func:`dip_lightning.cli.main` with the arguments after
    ``search``."""
    import sys

    from dip_lightning.search.runner import run_search

    args = list(sys.argv[2:] if argv is None else argv)
    spec = parse_spec(args)
    try:
        run_search(spec)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a fit
        detail = f": {exc}" if str(exc) else ""
        sys.stderr.write(f"dip search interrupted{detail}\n")
        raise SystemExit(130) from None
