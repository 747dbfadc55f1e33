"""Write what a fit leaves in its run directory: ``restored.png`` and ``metrics.json``."""

from __future__ import annotations

import logging
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dip_lightning.callbacks.checkpoint import save_checkpoint_atomically
from dip_lightning.callbacks.protocol import FitModule
from dip_lightning.callbacks.stopping import StoppingCriterion, stopping_selection
from dip_lightning.data.io import save_image
from dip_lightning.io_utils import atomic_write_json
from dip_lightning.metrics.psnr import psnr
from dip_lightning.metrics.ssim import ssim

log = logging.getLogger(__name__)


def run_directory(trainer: Trainer) -> Path:
    """The run directory: the logger's ``log_dir``, else ``trainer.default_root_dir``."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def save_last_checkpoint(trainer: Trainer) -> Path:
    """Save the fit, atomically, as ``<run dir>/checkpoints/last.ckpt`` (what ``--ckpt_path``
    continues from after an interruption); its path."""
    checkpoint = run_directory(trainer) / "checkpoints" / "last.ckpt"
    save_checkpoint_atomically(trainer, str(checkpoint))
    return checkpoint


class RunArtifacts(Callback):
    """Time every step and, when the fit ends, write ``restored.png`` and ``metrics.json``.

    ``seconds_per_step`` is the median step time after the first ``warmup`` steps.
    """

    def __init__(self, filename: str = "restored.png", warmup: int = 5) -> None:
        self.filename = filename
        self.warmup = warmup
        self._ends: list[float] = []
        self._start = 0.0
        #: what the last :meth:`write` put in ``metrics.json``
        self.written: dict[str, Any] | None = None
        self._first_step = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        self._ends = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._first_step = trainer.global_step
        self._install_sigint_handler(trainer)

    def _install_sigint_handler(self, trainer: Trainer) -> None:
        """Make the first Ctrl-C stop the fit at the end of the current step (as Lightning does
        for SIGTERM), so the checkpoint it leaves resumes exactly; a second Ctrl-C stops at once.
        """
        connector = getattr(trainer, "_signal_connector", None)
        if connector is None or threading.current_thread() is not threading.main_thread():
            return

        def stop_after_this_step(signum: int, frame: Any) -> None:
            if connector.received_sigterm:
                raise KeyboardInterrupt
            log.warning("stopping after this step (Ctrl-C again to stop at once)")
            connector.received_sigint = True  # dip fit exits with 130, not SIGTERM's 143
            connector.received_sigterm = True

        self._previous_sigint = signal.signal(signal.SIGINT, stop_after_this_step)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        previous = getattr(self, "_previous_sigint", None)
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
            self._previous_sigint = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._ends.append(time.perf_counter())

    def seconds_per_step(self) -> float | None:
        """Median seconds per step after the warm-up (``None`` before enough steps ran)."""
        times = [b - a for a, b in zip(self._ends, self._ends[1:], strict=False)][self.warmup - 1 :]
        if not times and len(self._ends) >= 2:
            times = [b - a for a, b in zip(self._ends, self._ends[1:], strict=False)]
        return statistics.median(times) if times else None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0 or trainer.sanity_checking:
            return
        self.write(trainer, pl_module)  # type: ignore[arg-type]

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """On Ctrl-C or SIGTERM: save a checkpoint and the output so far, and say where."""
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        module: FitModule = pl_module  # type: ignore[assignment]
        if trainer.global_step == 0 or module.sample is None:
            return
        checkpoint = save_last_checkpoint(trainer)
        image = self.write(trainer, module, interrupted=True)
        log.warning(
            "interrupted at step %d: wrote %s and %s; continue with --ckpt_path %s",
            trainer.global_step,
            image,
            checkpoint,
            checkpoint,
        )

    def metrics(
        self,
        trainer: Trainer,
        module: FitModule,
        selected: tuple[torch.Tensor, int] | None = None,
    ) -> dict[str, Any]:
        """Every key of ``metrics.json`` for the current state of ``module``."""
        assert module.sample is not None
        restored, selected_step = selected or self.selected(trainer, module)
        channels, height, width = restored.shape
        steps = int(trainer.global_step)
        metrics: dict[str, Any] = {
            "task": module.task_name,
            "image": module.sample.name,
            "steps": steps,
            "selected_step": selected_step,
            "seconds": round(time.perf_counter() - self._start, 3),
            "seconds_per_step": self.seconds_per_step(),
            "height": int(height),
            "width": int(width),
            "channels": int(channels),
            "parameters": module.parameters_count,
            "recoveries": int(module.recoveries),
            "lr_reductions": int(module.lr_reductions),
            "stopped_on_divergence": bool(module.stopped_on_divergence),
        }
        clean = module.sample.clean
        if clean is not None:
            metrics["psnr"] = float(psnr(restored[None], clean[None]))
            metrics["ssim"] = float(ssim(restored[None], clean[None]))
            observation = module.sample.observation
            if observation.shape == clean.shape:
                metrics["input_psnr"] = float(psnr(observation[None], clean[None]))
            metrics["peak_psnr"] = float(module.peak_psnr)
            metrics["peak_step"] = int(module.peak_step)
        criteria = [c for c in trainer.callbacks if isinstance(c, StoppingCriterion)]  # type: ignore[attr-defined]
        if criteria:
            chosen = stopping_selection(trainer)
            metrics["stopping"] = chosen[0].name if chosen is not None else None
            metrics["criteria"] = {c.name: self.criterion_metrics(c, module) for c in criteria}
        metrics.update(module.extra_metrics(restored))
        return metrics

    @staticmethod
    def selected(trainer: Trainer, module: FitModule) -> tuple[torch.Tensor, int]:
        """The image to write ``(C, H, W)`` (on the CPU, in [0, 1]) and its step: a stopping
        criterion's choice when the fit has one, else the current restored image."""
        chosen = stopping_selection(trainer)
        if chosen is None:
            return module.restored(), int(trainer.global_step)
        _, image, step = chosen
        return image[0].detach().float().clamp(0, 1).cpu(), step

    @staticmethod
    def criterion_metrics(criterion: StoppingCriterion, module: FitModule) -> dict[str, Any]:
        """What a criterion chose: its step, the step it stopped (or would have) at and, with
        a clean reference, the PSNR of its image."""
        out: dict[str, Any] = {"would_stop_step": criterion.would_stop_step}
        selection = criterion.selection()
        if selection is None:
            return {**out, "selected_step": None}
        image, step, score = selection
        out.update(selected_step=step, score=score)
        assert module.sample is not None
        clean = module.sample.clean
        if clean is not None:
            restored = image[0].detach().float().clamp(0, 1).cpu()
            out["psnr"] = float(psnr(restored[None], clean[None]))
        return out

    def write(self, trainer: Trainer, module: FitModule, interrupted: bool = False) -> Path:
        """Write ``restored.png`` and ``metrics.json`` into the run directory, atomically."""
        assert module.sample is not None
        directory = run_directory(trainer)
        selected = self.selected(trainer, module)
        metrics = self.metrics(trainer, module, selected)
        if interrupted:
            metrics["interrupted"] = True
        image_path = directory / self.filename
        restored, _ = selected
        save_image(restored, image_path, like=module.sample.info, alpha=module.sample.alpha)
        atomic_write_json(directory / "metrics.json", metrics)
        self.written = metrics
        numbers = {
            f"final/{key}": float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for logger in trainer.loggers:
            # fills TensorBoard's HParams tab: the module's hyperparameters beside the results
            logger.log_hyperparams(module.hyperparameters_for_logging(), numbers)
        summary = ", ".join(
            f"{key} {metrics[key]:.2f}" for key in ("psnr", "input_psnr") if key in metrics
        )
        log.info("wrote %s%s", image_path, f" ({summary})" if summary else "")
        return image_path


__all__ = ["RunArtifacts", "run_directory", "save_last_checkpoint"]
