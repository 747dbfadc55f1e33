"""The ``dip`` command: ``dip fit|validate|test|predict`` (LightningCLI) and the extra commands."""

from __future__ import annotations

import importlib
import logging
import re
import signal
import sys
import warnings
from typing import TYPE_CHECKING, Any, NoReturn

from jsonargparse import Namespace, lazy_instance
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from dip_lightning import __version__
from dip_lightning.callbacks.checkpoint import LastCheckpoint
from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.errors import ConfigError, DIPError, one_line
from dip_lightning.presets import print_presets, resolve_config_args
from dip_lightning.tasks.base import DIPModule

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
    return one_line(message)


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


class DIPArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, reporting a user's mistake as one line instead of usage text."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {tidy_parser_message(message)} (see {prog} --help)\n")
        self.exit(2)

    def parse_path(self, cfg_path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().parse_path(cfg_path, *args, **kwargs)
        except UnicodeDecodeError:
            self.error(f"config file {cfg_path} is not text; give a YAML file")


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
                nulls = [
                    key
                    for key, value in config.items()
                    if value is None and key in defaults and defaults[key] is not None
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
                self.check_memory(batched.grouped, batched.z, batched.first.crop_box)
            else:
                model.attach(data)
                assert model.net is not None and model.crop_box is not None
                self.check_memory(model.net, model.z, model.crop_box)
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

    def check_memory(self, net: nn.Module, z: Tensor, box: CropBox) -> None:
        """Refuse, in one line, a fit whose estimated peak memory exceeds what is available."""
        import torch

        from dip_lightning.memory import check_fit_memory

        trainer = self._get(self.config_init, "trainer", default={}) or {}
        precision = str(trainer.get("precision") or "32-true")
        accelerator = str(trainer.get("accelerator") or "auto")
        on_gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        estimate = check_fit_memory(net, z, precision, on_gpu, (box.height, box.width))
        log.debug("estimated peak memory: %s", estimate)

    def after_fit(self) -> None:
        directory = self.trainer.log_dir or self.trainer.default_root_dir
        log.info("run directory: %s", directory)
        for logger in self.trainer.loggers:
            root = getattr(logger, "root_dir", None)
            if isinstance(logger, TensorBoardLogger) and root:
                log.info("view it with: tensorboard --logdir %s", root)
                break


class _StderrHandler(logging.StreamHandler):
    """Write to the current ``sys.stderr`` (which may be replaced after logging is set up)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging() -> None:
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    logger = logging.getLogger("dip_lightning")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


#: ``dip <command>`` entry points beside LightningCLI's subcommands: "module:function", each
#: called with the remaining arguments.
EXTRA_COMMANDS: dict[str, str] = {
    "restore": "dip_lightning.restore:main",
    "search": "dip_lightning.search.cli:main",
    "experiment": "dip_lightning.experiments:main",
    "completion": "dip_lightning.completion:main",
}


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
    if argv[:1] == ["presets"]:
        print_presets()
        return
    command = EXTRA_COMMANDS.get(argv[0]) if argv else None
    if command is None and ("--quiet" in argv or "-q" in argv):
        # no progress bar, no model summary, warnings and errors only
        argv = [a for a in argv if a not in ("--quiet", "-q")]
        argv += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        for name in ("dip_lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if command is not None:
            module_name, function = command.rsplit(":", 1)
            getattr(importlib.import_module(module_name), function)(argv[1:])
        else:
            DIPCLI(args=argv)
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(2) from None
