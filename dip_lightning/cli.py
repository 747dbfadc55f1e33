"""The ``dip`` command: ``dip fit|validate|test|predict`` (LightningCLI) and the extra commands."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from jsonargparse import DefaultHelpFormatter, Namespace, lazy_instance
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from dip_lightning.callbacks.checkpoint import LastCheckpoint
from dip_lightning.data.datamodule import SingleImageDataModule, settle_observation
from dip_lightning.errors import ConfigError, DIPError, one_line
from dip_lightning.presets import option_sources, print_presets, resolve_config_args
from dip_lightning.tasks.base import DIPModule
from dip_lightning.version import __version__

if TYPE_CHECKING:
    from torch import Tensor, nn

    from dip_lightning.data.padding import CropBox
    from dip_lightning.tasks.batched import BatchedDIP

log = logging.getLogger("dip_lightning")


def tidy_parser_message(message: str) -> str:
    """One line from jsonargparse's message: for a value that fits none of a union's types, the
    first specific error instead of the list of every subtype tried.

    >>> tidy_parser_message(
    ...     'Parser key "model":\\n  Does not validate against any of the Union subtypes\\n'
    ...     "  Subtypes: [<class 'A'>, <class 'NoneType'>]\\n  Errors:\\n"
    ...     "    - Problem with given class_path 'A':\\n        Parser key \\"lr\\":\\n"
    ...     "          Expected a <class 'float'>. Got value: abc\\n"
    ...     "    - Expected a <class 'NoneType'>\\n  Given value type: <class 'X'>")
    'Parser key "model": Parser key "lr": Expected a float. Got value: abc'
    """
    if "Does not validate against any of the Union subtypes" in message:
        head = message.split("Does not validate", 1)[0].strip()
        lines = message.split("Errors:", 1)[-1].split("Given value type:", 1)[0].splitlines()
        items: list[list[str]] = []
        indent = -1
        for line in lines:
            stripped = line.strip()
            if not stripped:
                continue
            depth = len(line) - len(line.lstrip())
            if stripped.startswith("- ") and (indent < 0 or depth <= indent):
                indent = depth
                items.append([stripped[2:]])
            elif items:
                items[-1].append(stripped)
        details = [" ".join(item) for item in items]
        details = [d for d in details if "NoneType" not in d] or details
        if details:
            detail = re.sub(r"^Problem with given class_path [^:]*:\s*", "", details[0])
            message = f"{head} {detail}"
    message = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", message)
    literal = re.search(r"Expected a (?:typing\.)?Literal\[([^\]]*)\]\. Got value: (\S*)", message)
    if literal:  # a choice: the values as a set, and the closest one to what was given
        values = [v.strip().strip("'\"") for v in literal.group(1).split(",")]
        got = literal.group(2)
        guess = closest(got, values)
        text = f"Expected a value in {{{', '.join(values)}}}. Got value: {got}"
        message = message[: literal.start()] + text + (f"; did you mean {guess}?" if guess else "")
    return one_line(plain_text(message))


def add_option(parser: Any, name: str, **kwargs: Any) -> None:
    """Add ``--name`` to a jsonargparse parser, also spelled with ``-`` for ``_``
    (``--max_steps`` and ``--max-steps``)."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*names, **kwargs)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def plain_text(text: str) -> str:
    """Help text without the markup of docstrings: Sphinx roles, double backquotes, ``%%``
    and ``typing.Literal[...]`` (written as ``{a,b}``, as argparse writes choices).

    >>> plain_text("see :func:`~dip_lightning.data.io.load_image` and ``simulate``; 5%%")
    'see load_image and simulate; 5%'
    >>> plain_text("(type: Optional[Literal['mse', 'l1']], default: mse)")
    '(type: Optional[{mse,l1}], default: mse)'
    """
    text = re.sub(r":[a-z]+:`~[\w.]*?(\w+)`", r"\1", text)
    text = re.sub(r":[a-z]+:`([^`<]*?)\s*<[^`>]*>`", r"\1", text)
    text = re.sub(r":[a-z]+:`([^`]*)`", r"\1", text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(
        r"(?:typing\.)?Literal\[([^\]]*)\]",
        lambda m: "{" + ",".join(v.strip().strip("'\"") for v in m.group(1).split(",")) + "}",
        text,
    )
    return text.replace("%%", "%")


class DIPHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter, writing the help texts as plain text."""

    def _expand_help(self, action: Any) -> str:
        return plain_text(super()._expand_help(action))

    def start_section(self, heading: str | None) -> None:
        super().start_section(plain_text(heading) if heading else heading)


def closest(word: str, choices: Any) -> str | None:
    """The choice closest to a mistyped ``word``, if one is close enough."""
    import difflib

    found = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


CHECKPOINT_HELP = {
    "fit": "resume the fit of this checkpoint (<run>/checkpoints/last.ckpt): without --config, "
    "with its run's config.yaml, continuing in its run folder",
    "other": "the checkpoint of a fit (<run>/checkpoints/last.ckpt), required; without "
    "--config, read with its run's config.yaml",
}


def task_arguments() -> list[str]:
    """The names of the init arguments of every DIP task."""
    import inspect

    from dip_lightning import tasks

    names: list[str] = []
    for name in getattr(tasks, "__all__", []):
        cls = getattr(tasks, name, None)
        if inspect.isclass(cls) and issubclass(cls, DIPModule):
            for parameter in inspect.signature(cls.__init__).parameters.values():
                keyword = parameter.kind == parameter.POSITIONAL_OR_KEYWORD
                if keyword and parameter.name not in ("self", *names):
                    names.append(parameter.name)
    return names


class DIPArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, reporting a user's mistake as one line instead of usage text,
    with a help that lists the data and model options first, in plain text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", "dip")
        kwargs.setdefault("formatter_class", DIPHelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self, *args: Any, **kwargs: Any) -> str:
        dests = {action.dest for action in self._actions}
        if {"trainer", "model", "data"} <= dests:  # fit, validate, test, predict
            command = self.prog.split()[-1]
            order = ("config", "data", "model", "ckpt_path", "trainer")

            def rank(group: Any) -> int:
                names = {action.dest.split(".")[0] for action in group._group_actions}
                ranks = [order.index(name) for name in names if name in order]
                return min(ranks, default=-1)

            titles = {
                "data": "data: the image to restore (--data.NAME VALUE)",
                "model": "model: the task (--model CLASS) and its options (--model.init_args.NAME "
                f"VALUE; all of them: dip {command} --model.help CLASS)",
                "ckpt_path": f"dip {command}",
                "trainer": "trainer: Lightning's Trainer (--trainer.NAME VALUE)",
            }
            for group in self._action_groups:
                names = {action.dest for action in group._group_actions}
                group.title = next((t for k, t in titles.items() if k in names), group.title)
            self._action_groups = sorted(self._action_groups, key=rank)
            self.description = COMMANDS.get(command, self.description)
            for action in self._actions:
                if action.dest == "ckpt_path":
                    action.help = CHECKPOINT_HELP["fit" if command == "fit" else "other"]
                elif action.dest in ("return_predictions", "verbose"):
                    action.help = argparse.SUPPRESS
            self.usage = (
                f"dip {command} [-c CONFIG] [--data.NAME VALUE] [--model.init_args.NAME VALUE]\n"
                f"{' ' * (11 + len(command))}[--trainer.NAME VALUE] [--ckpt_path CKPT] ..."
            )
        return super().format_help(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        prog = re.sub(r"^\S+", "dip", self.prog.replace(" [options]", ""))
        text = tidy_parser_message(message)
        unknown = re.match(r"unrecognized arguments: (--?[\w.-]+)", text, re.IGNORECASE)
        key = re.match(r"Parser key \"model\": Option '(\w+)' is not accepted", text)
        guess = None
        if unknown:
            options = [s for action in self._actions for s in action.option_strings]
            guess = closest(unknown.group(1).split("=")[0], options)
        elif key:
            guess = closest(key.group(1), task_arguments())
            guess = f"model.init_args.{guess}" if guess else None
        if guess:
            text = f"{text}; did you mean {guess}?"
        sys.stderr.write(f"error: {text} (see {prog} --help)\n")
        self.exit(2)

    def parse_path(self, cfg_path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().parse_path(cfg_path, *args, **kwargs)
        except UnicodeDecodeError:
            self.error(f"config file {cfg_path} is not text; give a YAML file")

    def get_defaults(self, *args: Any, **kwargs: Any) -> Namespace:
        # The default task is a class path only: its signature's values are filled in after
        # parsing, so a task chosen instead (on the command line or in a config) starts from
        # its own defaults, not from the default task's.
        defaults = super().get_defaults(*args, **kwargs)
        model = defaults.get("model")
        if isinstance(model, Namespace) and "init_args" in model:
            del model["init_args"]
        return defaults

    def _parse_common(self, cfg: Namespace, *args: Any, **kwargs: Any) -> Namespace:
        # --print_config prints the data options the fit settles on, not the raw merge
        from jsonargparse._actions import _ActionPrintConfig

        data = cfg.get("data") if isinstance(cfg, Namespace) else None
        if isinstance(data, Namespace) and _ActionPrintConfig.is_print_config_requested(self):
            root: Any = self
            while getattr(root, "parent_parser", None) is not None:
                root = root.parent_parser
            settle_data_options(data, [str(a) for a in getattr(root, "args", None) or []])
        return super()._parse_common(cfg, *args, **kwargs)


def settle_data_options(
    data: Namespace, args: list[str], subcommand: str | None = None
) -> list[str]:
    """Settle, in place, how the data options ``data`` parsed from ``args`` make the
    observation (:func:`~dip_lightning.data.datamodule.settle_observation`); what an image
    given after a preset's simulation set aside."""
    settled, aside = settle_observation(data.as_dict(), option_sources(args, subcommand))
    for key, value in settled.items():
        data[key] = value
    return aside


class DIPCLI(LightningCLI):
    """LightningCLI over every :class:`DIPModule` task and the :class:`SingleImageDataModule`."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # every random number is drawn from explicit generators seeded by model.seed / data.seed
        kwargs.setdefault("seed_everything_default", False)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault(
            "trainer_defaults",
            {
                "max_steps": 1800,  # the paper's denoising table; configs set their own
                "callbacks": [LastCheckpoint()],
                "logger": lazy_instance(TensorBoardLogger, save_dir=".", default_hp_metric=False),
            },
        )
        super().__init__(
            DIPModule,
            SingleImageDataModule,
            subclass_mode_model=True,
            parser_class=DIPArgumentParser,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": "dip_lightning.tasks.DenoisingDIP"}})
        parser.add_argument(
            "--batch.images",
            type=list[str] | None,
            default=None,
            help="fit these images at once, each with the data options (its own network, "
            "grouped with the others; outputs in <run dir>/<image name>/)",
        )
        parser.add_argument(
            "--batch.seeds",
            type=int,
            default=1,
            help="fit each image with this many model seeds (model.seed, model.seed + 1, ...) "
            "at once",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._args = [str(a) for a in args] if isinstance(args, (list, tuple)) else []
        #: what an image given after a preset's simulation set aside (see settle_observation)
        self.simulation_aside: list[str] = []
        try:
            super().parse_arguments(parser, args)
        except ValueError as exc:  # one jsonargparse lets through: a NUL byte in a path
            if user_error(exc) is not None:
                raise
            parser.error(f"invalid value: {one_line(exc)}")

    def _set_seed(self) -> None:
        try:
            super()._set_seed()
        except ValueError as exc:
            raise ConfigError(f"seed_everything: {one_line(exc)}") from None

    def instantiate_classes(self) -> None:
        # A value the parser lets through but a class refuses (a null number, a seed too large
        # for a generator, an accelerator without its package, Lightning's checks of the trainer
        # options) is the user's mistake.
        sub = self.subcommand
        config = self.config[sub] if sub else self.config
        for key in ("data", "trainer"):
            value = config.get(key)
            if value is not None and not isinstance(value, Namespace):
                raise ConfigError(f"{key} must hold options (name: value), got {value!r}")
        try:
            super().instantiate_classes()
        except (
            TypeError,
            ValueError,
            OverflowError,
            ImportError,
            MisconfigurationException,
        ) as exc:
            if user_error(exc) is not None:
                raise
            message = tidy_parser_message(str(exc))
            if "NoneType" in message:
                parser = self._subcommand_parsers.get(sub) if sub else None
                defaults = (parser or self.parser).get_defaults()
                model_defaults = _class_defaults(config.get("model.class_path"))
                nulls = [
                    key
                    for key, value in config.items()
                    if value is None
                    and (
                        (key in defaults and defaults[key] is not None)
                        or model_defaults.get(key.removeprefix("model.init_args."))
                        not in (None, inspect.Parameter.empty)
                    )
                ]
                if nulls:
                    message = f"{', '.join(nulls)} cannot be null"
            raise ConfigError(f"invalid configuration: {message}") from exc

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        # Build the network, z and the observation before the trainer exists, so that a bad
        # setting fails before anything (a log folder, a config file) is written.
        model, data = self.model, self.datamodule
        if isinstance(model, DIPModule) and isinstance(data, SingleImageDataModule):
            trainer = self._get(self.config_init, "trainer", default={}) or {}
            steps = trainer.get("max_steps")
            if self.subcommand == "fit" and steps is None:
                raise ConfigError(
                    "trainer.max_steps cannot be null: give the number of optimisation steps"
                )
            if self.subcommand == "fit" and int(steps or 0) < 1:
                raise ConfigError(
                    f"trainer.max_steps = {steps}: a fit runs a number of optimisation steps; "
                    "give one >= 1 (the stopping iteration)"
                )
            batched = self.batched_model(model, data)
            if batched is not None:
                self.model = batched
                batched.attach()
                assert batched.grouped is not None and batched.first.crop_box is not None
                box = batched.first.crop_box
                self.check_memory(batched.grouped, batched.z, box, batched.dip_members())
            else:
                model.attach(data)
                assert model.net is not None and model.crop_box is not None
                self.check_memory(model.net, model.z, model.crop_box, [model])
        return super().instantiate_trainer(**kwargs)

    def batched_model(self, model: DIPModule, data: SingleImageDataModule) -> BatchedDIP | None:
        """The batched fit that ``batch.images`` and ``batch.seeds`` ask for, else ``None``."""
        from dip_lightning.tasks.batched import BatchedDIP, batch_names

        config = self.config[self.subcommand] if self.subcommand else self.config
        batch = config.get("batch") or Namespace()
        images: list[str | None] | None = batch.get("images")
        seeds = batch.get("seeds", 1)
        if seeds is None or int(seeds) < 1:
            raise ConfigError(f"batch.seeds = {seeds} is out of range; use >= 1")
        if not images and seeds == 1:
            return None
        if self.subcommand not in (None, "fit"):
            raise ConfigError(f"batch.* is for dip fit, not dip {self.subcommand}")
        data_options = config.data.as_dict()
        members: list[DIPModule] = []
        datas: list[SingleImageDataModule] = []
        parser = self._parser(self.subcommand)
        for image in images or [config.data.image]:
            # one data module per image, shared by its seeds (the config's own without images)
            image_data = (
                SingleImageDataModule(**{**data_options, "image": image}) if images else data
            )
            for seed in range(int(seeds)):
                datas.append(image_data)
                if not members:  # the first is the model the config built (seed offset 0)
                    members.append(model)
                    continue
                member_config = config.clone()
                member_config.model.init_args.seed = model.seed + seed
                members.append(parser.instantiate_classes(member_config).model)
        return BatchedDIP(members, datas, batch_names(images or [config.data.image], int(seeds)))

    def check_memory(
        self, net: nn.Module, z: Tensor, box: CropBox, members: list[DIPModule]
    ) -> None:
        """Refuse, in one line, a fit whose estimated peak memory exceeds what is available."""
        import torch

        from dip_lightning.memory import check_fit_memory

        trainer = self._get(self.config_init, "trainer", default={}) or {}
        precision = str(trainer.get("precision") or "32-true")
        accelerator = str(trainer.get("accelerator") or "auto")
        on_gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        callbacks = list(trainer.get("callbacks") or [])
        guard = members[0].guard_drop_db is not None
        size = (box.height, box.width)
        estimate = check_fit_memory(
            net, z, precision, on_gpu, size, modules=members, callbacks=callbacks, guard=guard
        )
        log.debug("estimated peak memory: %s", estimate)

    def after_fit(self) -> None:
        directory = self.trainer.log_dir or self.trainer.default_root_dir
        log.info("run directory: %s", directory)
        for logger in self.trainer.loggers:
            root = getattr(logger, "root_dir", None)
            if isinstance(logger, TensorBoardLogger) and root:
                log.info("view it with: tensorboard --logdir %s", root)
                break

    # ------------------------------------------------------------------ the subcommands

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument(
                "-o",
                "--output",
                type=str | None,
                default=None,
                help="where to write the restored image (default: predicted.png in the "
                "checkpoint's run folder, else beside the checkpoint)",
            )
        return parser

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        self.settle_observation()
        if sub is None:
            return
        config = self.config[sub]
        checkpoint = config.get("ckpt_path")
        if sub != "fit" and not checkpoint:
            raise ConfigError(
                f"dip {sub} needs --ckpt_path: the checkpoint of a fit, e.g. "
                "lightning_logs/version_0/checkpoints/last.ckpt"
            )
        if sub == "fit" and checkpoint:
            self._continue_in_run(config, str(checkpoint))

    def settle_observation(self) -> None:
        """Settle how the observation is made from the data options of every source (see
        :func:`~dip_lightning.data.datamodule.settle_observation`): a later source replaces an
        earlier one's way of making it, and an image given after a preset's simulation is the
        observation as it is."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        data = config.get("data")
        if not isinstance(data, Namespace):
            return
        self.simulation_aside = settle_data_options(data, self._args, self.subcommand)

    def _continue_in_run(self, config: Namespace, checkpoint: str) -> None:
        """Point the logger of a resumed fit at the checkpoint's run folder, so it continues
        there (unless the logger or ``trainer.default_root_dir`` is given on the command line)."""
        run = checkpoint_run(checkpoint)
        given = ("--trainer.logger", "--trainer.default_root_dir", "--trainer.default-root-dir")
        if run is None or any(a.startswith(given) for a in getattr(self, "_args", [])):
            return
        trainer = config.get("trainer")
        if not isinstance(trainer, Namespace):
            return
        logger = trainer.get("logger")
        where = {"save_dir": str(run.parent.parent), "name": run.parent.name, "version": run.name}
        if isinstance(logger, TensorBoardLogger):  # the default, a lazy instance
            trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(**where, default_hp_metric=False),
            )
        elif isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
            if {"save_dir", "name", "version"} <= set(logger.init_args.keys()):
                for key, value in where.items():
                    logger.init_args[key] = value
        elif logger in (False, None):
            trainer.default_root_dir = str(run)

    def read_checkpoint(self, checkpoint: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
        """A fit's checkpoint, checked against the model the configuration built: a missing
        file, a file that is not a checkpoint, or one of another network or image size is one
        :class:`ConfigError` naming the checkpoint and the configuration."""
        import torch

        path = Path(checkpoint)
        if not path.is_file():
            raise ConfigError(f"checkpoint not found: {path}; check the path")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"cannot read checkpoint {path}: {one_line(exc)}") from None
        state = loaded.get("state_dict") if isinstance(loaded, dict) else None
        if not isinstance(state, dict):
            raise ConfigError(f"{path} is not a checkpoint of dip fit (it has no state_dict)")
        own = {k: v for k, v in self.model.state_dict().items() if k not in ignore}
        theirs = {k: v for k, v in state.items() if k not in ignore}
        problems = [
            f"{key} is {list(theirs[key].shape)} in the checkpoint, {list(value.shape)} with it"
            for key, value in own.items()
            if key in theirs and tuple(theirs[key].shape) != tuple(value.shape)
        ]
        problems += [f"{key} is missing from the checkpoint" for key in own if key not in theirs]
        problems += [f"the checkpoint has {key}, the model not" for key in theirs if key not in own]
        if problems:
            configs = [str(c) for c in (self.config[self.subcommand].get("config") or [])]
            source = ", ".join(configs) if configs else "the default configuration"
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            run = checkpoint_run(path)
            fix = (
                f"give no --config to use its run's own ({run / 'config.yaml'})"
                if run is not None
                else "give the configuration it was fitted with"
            )
            raise ConfigError(
                f"checkpoint {path} does not match the configuration ({source}): "
                f"{problems[0]}{more}; {fix}"
            )
        return loaded

    def before_fit(self) -> None:
        checkpoint = self.config.fit.get("ckpt_path")
        if checkpoint:
            step = int(self.read_checkpoint(str(checkpoint)).get("global_step", 0))
            directory = os.path.normpath(self.trainer.log_dir or self.trainer.default_root_dir)
            log.info("resuming %s at step %d, writing into %s", checkpoint, step, directory)
        data = self.datamodule
        if isinstance(data, SingleImageDataModule) and not self.config.fit.get("batch.images"):
            log.info(data.describe_observation(self.simulation_aside))

    def fit(self, model: Any, **kwargs: Any) -> None:
        """``trainer.fit``; stopped by Ctrl-C, exit with 130 (and 143 for SIGTERM)."""
        try:
            self.trainer.fit(model, **kwargs)
        except SIGTERMException:
            connector = getattr(self.trainer, "_signal_connector", None)
            sigint = bool(getattr(connector, "received_sigint", False))
            raise SystemExit(128 + (signal.SIGINT if sigint else signal.SIGTERM)) from None
        except SystemExit as exc:  # Lightning exits with 1 on a second Ctrl-C
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise SystemExit(128 + signal.SIGINT) from None
            raise

    def checkpoint_image(self) -> tuple[Any, int, int]:
        """Load ``--ckpt_path`` into the model: the image that ``dip fit`` would write at that
        checkpoint (the stopping criterion's choice, else the output average or the last
        output) ``(C, H, W)``, its step and the checkpoint's step."""
        from dip_lightning.callbacks.artifacts import RunArtifacts
        from dip_lightning.callbacks.stopping import StoppingCriterion, stopping_selection

        model = self.model
        if not isinstance(model, DIPModule):
            raise ConfigError(f"dip {self.subcommand} takes the checkpoint of a single fit")
        checkpoint = str(self.config[self.subcommand].ckpt_path)
        # the clean image is the data's (dip test --data.clean), not the one fitted with
        loaded = self.read_checkpoint(checkpoint, ignore=("clean",))
        state = {k: v for k, v in loaded["state_dict"].items() if k != "clean"}
        model.load_state_dict(state, strict=False)
        model.on_load_checkpoint(loaded)
        states = loaded.get("callbacks") or {}
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, StoppingCriterion) and states.get(callback.state_key):
                callback.load_state_dict(states[callback.state_key])
                callback.on_fit_start(self.trainer, model)
        steps = int(loaded.get("global_step", 0))
        if stopping_selection(self.trainer) is None:
            return model.restored(), steps, steps
        image, step = RunArtifacts.selected(self.trainer, model)
        return image, step, steps

    def _report(self, scores: dict[str, float], step: int, steps: int) -> None:
        checkpoint = self.config[self.subcommand].ckpt_path
        print(f"{checkpoint} at step {steps} (its image: step {step})")
        width = max(len(name) for name in scores) + 2
        for name, value in scores.items():
            print(f"  {name:<{width}}{value:.6g}")

    def validate(self, model: Any, **kwargs: Any) -> dict[str, float]:
        """``dip validate --ckpt_path CKPT``: the checkpoint's score without a clean image."""
        image, step, steps = self.checkpoint_image()
        scores = self.model.validation_scores(image)
        self._report(scores, step, steps)
        return scores

    def test(self, model: Any, **kwargs: Any) -> dict[str, float]:
        """``dip test --ckpt_path CKPT [--data.clean CLEAN]``: PSNR and SSIM of the
        checkpoint's image against the clean one."""
        image, step, steps = self.checkpoint_image()
        scores = self.model.test_scores(image)
        self._report(scores, step, steps)
        return scores

    def predict(self, model: Any, **kwargs: Any) -> Path:
        """``dip predict --ckpt_path CKPT [-o OUT]``: write the checkpoint's image."""
        from dip_lightning.data.io import save_image

        image, step, steps = self.checkpoint_image()
        config = self.config.predict
        checkpoint = Path(str(config.ckpt_path))
        run = checkpoint_run(checkpoint)
        default = (run if run is not None else checkpoint.parent) / "predicted.png"
        output = Path(config.get("output") or default)
        sample = self.model.sample
        assert sample is not None
        save_image(image, output, like=sample.info, alpha=sample.alpha)
        print(f"wrote {output} (the image of step {step} of {checkpoint} at step {steps})")
        return output


class _StderrHandler(logging.StreamHandler):
    """Write to the current ``sys.stderr`` (which may be replaced after logging is set up)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging() -> None:
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    logger = logging.getLogger("dip_lightning")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.level == logging.NOTSET:  # a level set by the caller (or --quiet) stays
        logger.setLevel(logging.INFO)


#: ``dip <command>`` entry points beside LightningCLI's subcommands: "module:function", each
#: called with the remaining arguments.
EXTRA_COMMANDS: dict[str, str] = {
    "restore": "dip_lightning.restore:main",
    "search": "dip_lightning.search.cli:main",
    "experiment": "dip_lightning.experiments:main",
    "completion": "dip_lightning.completion:main",
}

#: Every ``dip`` command with its one-line description, in the order ``dip --help`` lists them.
COMMANDS: dict[str, str] = {
    "restore": "restore images: denoise, jpeg, inpaint, super-resolution, flash",
    "search": "tune the settings of dip fit with an Optuna study",
    "experiment": "run a seed experiment: a set of fits, a CSV and plots",
    "presets": "list the built-in configs (names for dip fit --config)",
    "completion": "print a shell completion script (bash, zsh, tcsh)",
    "fit": "fit a task to one image from a config (Lightning; resumable)",
    "validate": "score a fit's checkpoint without a clean image",
    "test": "score a fit's checkpoint against the clean image (PSNR, SSIM)",
    "predict": "write the restored image of a fit's checkpoint",
}


def overview() -> str:
    """What ``dip``, ``dip --help`` and ``dip -h`` print: every command, one line each."""
    width = max(len(name) for name in [*COMMANDS, "-V, --version"]) + 2
    lines = [
        "usage: dip <command> [options]",
        "",
        "Deep Image Prior: restore an image by fitting a network to that image alone.",
        "",
        "commands:",
        *(f"  {name:<{width}}{about}" for name, about in COMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}show this list",
        f"  {'-V, --version':<{width}}print the version",
        "",
        "dip <command> --help shows the options of a command.",
    ]
    return "\n".join(lines) + "\n"


def unknown_command(name: str) -> ConfigError:
    """The error for ``dip <name>`` when no command has that name, with the closest one."""
    import difflib

    close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"the commands: {', '.join(COMMANDS)}"
    return ConfigError(f"unknown command {name!r}; {hint} (see dip --help)")


#: LightningCLI's commands: each runs on one fit's configuration and, but for fit, a checkpoint.
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def checkpoint_argument(argv: list[str]) -> str | None:
    """The value of ``--ckpt_path`` in ``argv`` (the last one given), else ``None``."""
    value = None
    for index, arg in enumerate(argv):
        if arg == "--ckpt_path" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--ckpt_path="):
            value = arg.split("=", 1)[1]
    return value


def checkpoint_run(checkpoint: str | Path) -> Path | None:
    """The run folder of a fit's checkpoint, ``<run>/checkpoints/<name>.ckpt`` beside
    ``<run>/config.yaml``; ``None`` for a checkpoint kept anywhere else."""
    path = Path(checkpoint)
    run = path.parent.parent
    if path.parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


def with_run_config(argv: list[str]) -> list[str]:
    """``argv`` with the configuration of the checkpoint's run first: ``dip fit --ckpt_path
    <run>/checkpoints/last.ckpt`` (and validate, test, predict) without ``--config`` reads
    ``<run>/config.yaml``, so the network and the data are the ones the checkpoint was fitted
    with; the options given still override it."""
    if argv[:1] not in [[name] for name in LIGHTNING_COMMANDS]:
        return argv
    if any(a in ("-c", "--config") or a.startswith("--config=") for a in argv):
        return argv
    checkpoint = checkpoint_argument(argv)
    run = checkpoint_run(checkpoint) if checkpoint else None
    if run is None:
        return argv
    return [argv[0], "--config", str(run / "config.yaml"), *argv[1:]]


def _class_defaults(class_path: Any) -> dict[str, Any]:
    """The default of each ``__init__`` argument of the class named ``class_path`` (empty when
    it does not name an importable class)."""
    if not isinstance(class_path, str) or "." not in class_path:
        return {}
    module_name, name = class_path.rsplit(".", 1)
    defaults: dict[str, Any] = {}
    try:
        cls = getattr(importlib.import_module(module_name), name)
        # a task's own arguments first, then those its **kwargs pass on to its bases
        for base in inspect.getmro(cls):
            init = base.__dict__.get("__init__")
            if init is None:
                continue
            for key, parameter in inspect.signature(init).parameters.items():
                if key != "self" and parameter.kind is not parameter.VAR_KEYWORD:
                    defaults.setdefault(key, parameter.default)
    except (ImportError, AttributeError, TypeError, ValueError):
        return {}
    return defaults


def user_error(exc: BaseException) -> DIPError | None:
    """The :class:`DIPError` behind ``exc``, following ``__cause__``/``__context__`` (parsers
    and instantiators wrap the errors that classes raise in their ``__init__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DIPError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``dip`` console script and ``python -m dip_lightning``."""
    # Lightning 2.6 with torch >= 2.10 warns about its own use of torch's pytree API
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # one epoch is the whole fit, so Lightning's per-epoch logging advice does not apply
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller")
    _configure_logging()
    argv = resolve_config_args(list(sys.argv[1:] if args is None else args))
    if argv in (["--version"], ["-V"]):
        print(f"dip-lightning {__version__}")
        return
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(overview())
        return
    if not argv[0].startswith("-") and argv[0] not in COMMANDS:
        sys.stderr.write(f"error: {unknown_command(argv[0])}\n")
        raise SystemExit(2)
    if argv[:1] == ["presets"]:
        print_presets()
        return
    argv = with_run_config(argv)
    command = EXTRA_COMMANDS.get(argv[0]) if argv else None
    names = ("dip_lightning", "lightning.pytorch", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    if command is None and ("--quiet" in argv or "-q" in argv):
        # no progress bar, no model summary, warnings and errors only
        argv = [a for a in argv if a not in ("--quiet", "-q")]
        argv += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if command is not None:
            module_name, function = command.rsplit(":", 1)
            getattr(importlib.import_module(module_name), function)(argv[1:])
        else:
            DIPCLI(args=argv)
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(2) from None
    finally:
        # a quiet command in a process leaves the next one (main called again) as it found it
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
