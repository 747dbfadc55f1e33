"""Study specs: what ``dip search`` reads from ``search/*.yaml`` and the command line.

A spec names a base fit config (a file in ``configs/``), overrides of it, a search space over
real config keys, the sampler, pruner, objective, number of trials, storage and log folder.
Every option can be given in the YAML file (``--config``) and on the command line.

>>> space = parse_space({
...     "model.init_args.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
...     "model.init_args.input_depth": {"type": "categorical", "choices": [8, 16, 32]},
... })
>>> [(p.key, p.extremes()) for p in space]
[('model.init_args.lr', [0.001, 0.1]), ('model.init_args.input_depth', [8, 16, 32])]
>>> parse_space({"model.init_args.lr": {"type": "float", "low": 1}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
dip_lightning.errors.ConfigError: search space model.init_args.lr: a float needs low and high; ...
>>> override_args({"trainer.max_steps": 400, "model.init_args.lr": 1e-05})
['--trainer.max_steps=400', '--model.init_args.lr=1.0e-05']
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dip_lightning.errors import ConfigError

__all__ = [
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "STOPPINGS",
    "Param",
    "StudySpec",
    "cli_value",
    "override_args",
    "parse_space",
]

SamplerName = Literal["tpe", "gp", "cmaes", "random"]
PrunerName = Literal["median", "hyperband", "none"]
ObjectiveName = Literal["psnr", "heldout"]
Direction = Literal["auto", "maximize", "minimize"]
StoppingName = Literal["end", "best"]

SAMPLERS: tuple[str, ...] = ("tpe", "gp", "cmaes", "random")
PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")
STOPPINGS: tuple[str, ...] = ("end", "best")
#: objective name -> (the metric the fit logs every ``log_every_n_steps``, its natural direction)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "psnr": ("psnr", "maximize"),
    "heldout": ("heldout/mse", "minimize"),
}

_SCALAR = (str, int, float, bool, type(None))


def cli_value(value: Any) -> str:
    """``value`` as the command line gives it to jsonargparse (YAML/JSON syntax).

    >>> [cli_value(v) for v in (0.5, 1e-5, 3, True, None, "bilinear", [1, 2])]
    ['0.5', '1.0e-05', '3', 'true', 'null', 'bilinear', '[1, 2]']
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if exponent and "." not in mantissa:  # YAML 1.1 reads "1e-05" as a string
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value)


def override_args(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    """Command-line arguments for ``overrides``: a list of CLI-style arguments as is, or a
    ``{key: value}`` mapping as ``--key=value``."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [f"--{key}={cli_value(value)}" for key, value in overrides.items()]
    return [str(arg) for arg in overrides]


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a config key and its distribution.

    ``kind`` is ``float`` or ``int`` (``low``, ``high``, optional ``log`` or ``step``) or
    ``categorical`` (``choices``: numbers, strings, booleans or null). The Optuna parameter
    name is the config key itself, so a trial's parameters are command-line overrides.
    """

    key: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @classmethod
    def from_dict(cls, key: str, raw: Any) -> Param:
        """Build and check a parameter from its YAML entry; a :class:`ConfigError` otherwise."""
        where = f"search space {key}"
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping such as "
                "{type: float, low: 0.001, high: 0.1, log: true}, got {raw!r}"
            )
        kind = raw.get("type", "categorical" if "choices" in raw else None)
        known = {"type", "low", "high", "log", "step", "choices"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}; use {sorted(known)}")
        if kind == "categorical":
            choices = raw.get("choices")
            if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
                raise ConfigError(f"{where}: a categorical needs a non-empty list of choices")
            for choice in choices:
                if not isinstance(choice, _SCALAR):
                    raise ConfigError(
                        f"{where}: choice {choice!r} is not a number, string, boolean or null; "
                        "give a class by its import path, e.g. dip_lightning.networks.UNet"
                    )
            return cls(key=key, kind="categorical", choices=tuple(choices))
        if kind not in ("float", "int"):
            raise ConfigError(f"{where}: type {kind!r} is unknown; use float, int or categorical")
        if raw.get("low") is None or raw.get("high") is None:
            raise ConfigError(f"{where}: a {kind} needs low and high; e.g. low: 1, high: 10")
        try:
            low, high = float(raw["low"]), float(raw["high"])
            step = None if raw.get("step") is None else float(raw["step"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: low, high and step must be numbers") from None
        log = bool(raw.get("log", False))
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ConfigError(f"{where}: needs finite low <= high, got low {low:g}, high {high:g}")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log scale needs low > 0, got {low:g}")
        if log and step is not None:
            raise ConfigError(f"{where}: give either log or step, not both")
        if step is not None and step <= 0:
            raise ConfigError(f"{where}: step must be > 0, got {step:g}")
        if kind == "int" and not all(v is None or float(v).is_integer() for v in (low, high, step)):
            raise ConfigError(f"{where}: an int needs integer low, high and step")
        return cls(key=key, kind=kind, low=low, high=high, log=log, step=step)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for ``trial`` (an :class:`optuna.Trial`)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """The values checked before the study starts: low and high, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


def parse_space(raw: Mapping[str, Any] | None) -> list[Param]:
    """The search space from its YAML mapping ``{config key: distribution}``."""
    if not raw:
        raise ConfigError(
            "the search space is empty; give space: {model.init_args.lr: "
            "{type: float, low: 0.001, high: 0.1, log: true}, ...}"
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(f"space must map config keys to distributions, got {type(raw).__name__}")
    params = []
    for key, entry in raw.items():
        key = str(key).removeprefix("--")
        params.append(Param.from_dict(key, entry))
    return params


@dataclass
class StudySpec:
    """A resolved study spec (see ``dip search --help`` for every field)."""

    base_config: Path
    space: list[Param]
    overrides: list[str] = field(default_factory=list)
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "psnr"
    direction: str = "maximize"
    holdout_fraction: float = 0.05
    stopping: str = "end"
    n_trials: int = 20
    timeout: float | None = None
    seed: int | None = 0
    storage: str = ""
    study_name: str = "dip"
    study_dir: Path = Path("runs/dip")
    n_workers: int = 1
    heartbeat_interval: int = 60
    grace_period: int | None = None
    max_retry: int | None = 3
    threads: int | None = None
    keep_checkpoints: bool = False
    progress_bar: bool = True
    worker: bool = False
    worker_index: int | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def monitor(self) -> str:
        """The metric reported to the pruner: ``psnr`` or ``heldout/mse``."""
        return OBJECTIVES[self.objective][0]

    @property
    def artifact_dir(self) -> Path:
        """The folder of the :class:`optuna.artifacts.FileSystemArtifactStore`."""
        return self.study_dir / "artifacts"

    def run_dir(self, number: int) -> Path:
        """The TensorBoard run directory of trial ``number``."""
        return self.study_dir / f"trial_{number}"

    def sampler_seed(self) -> int | None:
        """The sampler's seed in this process: ``seed + worker_index``, so that workers of one
        study draw different points; random for a worker started without an index."""
        if self.seed is None:
            return None
        if self.worker and self.worker_index is None:
            return int.from_bytes(os.urandom(4), "little")
        return self.seed + (self.worker_index or 0)
