"""The ``dip`` command: ``dip fit|validate|test|predict`` (LightningCLI) and the extra commands."""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.errors import DIPError, one_line
from dip_lightning.tasks.base import DIPModule

log = logging.getLogger("dip_lightning")


class DIPArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, reporting a user's mistake as one line instead of usage text."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        sys.stderr.write(f"error: {one_line(message)} (see {self.prog} --help)\n")
        self.exit(2)


class DIPCLI(LightningCLI):
    """LightningCLI over every :class:`DIPModule` task and the :class:`SingleImageDataModule`."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
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

    def after_fit(self) -> None:
        directory = self.trainer.log_dir or self.trainer.default_root_dir
        log.info("run directory: %s", directory)
        for logger in self.trainer.loggers:
            root = getattr(logger, "root_dir", None)
            if isinstance(logger, TensorBoardLogger) and root:
                log.info("view it with: tensorboard --logdir %s", root)
                break


def _configure_logging() -> None:
    logger = logging.getLogger("dip_lightning")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``dip`` console script and ``python -m dip_lightning``."""
    _configure_logging()
    try:
        DIPCLI(args=args)
    except DIPError as error:
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(2) from None
