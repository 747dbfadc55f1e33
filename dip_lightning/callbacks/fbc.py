"""Log how the fit moves through frequency bands: FBC per band, a TensorBoard chart, a heatmap.

The frequency-band correspondence (:func:`~dip_lightning.metrics.frequency_band_correspondence`,
Shi et al., IJCV 2022) of the network's output is computed every ``every_n_steps`` steps
against up to two references:

* ``target`` (scalars ``fbc/band_k``): what the data term fits, ``A(x_hat)`` against the
  observation ``y``, at the observation's size. For denoising (``A`` the identity) this is the
  output against the noisy observation, the authors' definition; for inpainting the masked
  output against the masked observation; for super-resolution the downsampled output against
  the low-resolution input.
* ``clean`` (scalars ``fbc_clean/band_k``): the output ``x_hat`` against the clean image, when
  one is known.

``x_hat`` is the network's raw output at that step (``last_output``), not the output average.
Band 0 holds the lowest frequencies. At the start of training one TensorBoard custom-scalars
layout (category ``FBC``, one multiline chart per reference) puts the bands of a reference in one
chart; at the end of the fit a band-by-step heatmap (``fbc/heatmap``, ``fbc_clean/heatmap``)
is added as an image and every value is written to ``fbc.csv`` in the run directory.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dip_lightning.callbacks.artifacts import run_directory
from dip_lightning.errors import ConfigError
from dip_lightning.io_utils import atomic_write_text
from dip_lightning.metrics.fbc import frequency_band_correspondence

log = logging.getLogger(__name__)

__all__ = ["FBCLogger", "colormap", "fbc_heatmap"]

FBCReference = Literal["target", "clean"]

#: Scalar tag prefix of each reference.
GROUPS: dict[str, str] = {"target": "fbc", "clean": "fbc_clean"}

_TITLES = {"target": "A(output) vs observation", "clean": "output vs clean image"}

#: Control points of the viridis colour map at 0, 1/4, 1/2, 3/4, 1.
_VIRIDIS = torch.tensor(
    [
        [0.267, 0.005, 0.329],
        [0.229, 0.322, 0.546],
        [0.128, 0.567, 0.551],
        [0.369, 0.789, 0.383],
        [0.993, 0.906, 0.144],
    ]
)


def colormap(values: torch.Tensor) -> torch.Tensor:
    """Viridis-like colours ``(..., 3)`` in [0, 1] for ``values`` in [0, 1] (clamped); NaN is
    mid gray.

    >>> colormap(torch.tensor([0.0, 1.0, float("nan")]))
    tensor([[0.2670, 0.0050, 0.3290],
            [0.9930, 0.9060, 0.1440],
            [0.5000, 0.5000, 0.5000]])
    """
    x = values.float().nan_to_num(0.0).clamp(0, 1) * (len(_VIRIDIS) - 1)
    low = x.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (x - low).unsqueeze(-1)
    colours = torch.lerp(_VIRIDIS[low], _VIRIDIS[low + 1], frac)
    return torch.where(values.isnan().unsqueeze(-1), torch.full_like(colours, 0.5), colours)


def fbc_heatmap(
    values: torch.Tensor,
    steps: Sequence[int] | None = None,
    *,
    cell_height: int = 16,
    min_width: int = 320,
    labels: bool = True,
) -> torch.Tensor:
    """A band-by-step heatmap of FBC values as a ``(3, H, W)`` image in [0, 1].

    ``values`` is ``(num_bands, num_steps)``: band 0 (the lowest frequencies) is drawn at the
    bottom, the logged steps from left to right, each cell ``cell_height`` pixels tall and as
    wide as needed to make the plot at least ``min_width`` pixels wide; colours from
    :func:`colormap` (dark blue 0 to yellow 1). With ``labels`` the bands, the first and last
    step and a colour bar are drawn around it with Pillow's default font.

    >>> image = fbc_heatmap(torch.tensor([[0.5, 1.0], [0.0, 0.2]]), labels=False)
    >>> image.shape
    torch.Size([3, 32, 320])
    >>> image[:, -1, 0]  # bottom left: band 0 at the first step, 0.5
    tensor([0.1280, 0.5670, 0.5510])
    """
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"values must be (num_bands, num_steps), got {tuple(values.shape)}")
    bands, count = values.shape
    column = max(1, math.ceil(min_width / count))
    grid = colormap(values.detach().cpu().flip(0))  # (bands, steps, 3), band 0 at the bottom
    plot = grid.repeat_interleave(cell_height, 0).repeat_interleave(column, 1).permute(2, 0, 1)
    if not labels:
        return plot.contiguous()
    return _with_labels(plot, bands, cell_height, list(steps or range(1, count + 1)))


def _with_labels(plot: torch.Tensor, bands: int, cell: int, steps: list[int]) -> torch.Tensor:
    """Draw band labels, first/last step and a colour bar around ``plot`` (white margins)."""
    import numpy as np
    from PIL import Image, ImageDraw

    _, height, width = plot.shape
    left, bottom, right, top = 58, 18, 44, 6
    canvas = Image.new("RGB", (left + width + right, top + height + bottom), "white")
    array = (plot.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    canvas.paste(Image.fromarray(array), (left, top))
    bar = colormap(torch.linspace(1, 0, height)).unsqueeze(1).expand(height, 10, 3)
    bar_array = (bar.numpy() * 255).round().astype(np.uint8)
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar_array)), (left + width + 6, top))
    draw = ImageDraw.Draw(canvas)
    black = (0, 0, 0)
    for k in range(bands):
        y = top + (bands - 1 - k) * cell + max(0, (cell - 11) // 2)
        draw.text((4, y), f"band {k}", fill=black)
    draw.text((left, top + height + 3), f"step {steps[0]}", fill=black)
    last = f"{steps[-1]}"
    draw.text((left + width - 7 * len(last), top + height + 3), last, fill=black)
    draw.text((left + width + 19, top), "1", fill=black)
    draw.text((left + width + 19, top + height - 11), "0", fill=black)
    image = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)
    return image.permute(2, 0, 1).contiguous()


def _tensorboard(trainer: Trainer) -> Any:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class FBCLogger(Callback):
    """Log the frequency-band correspondence of the output every ``every_n_steps`` steps.

    Args:
        every_n_steps: steps between two measurements (the last step is always measured).
        num_bands: number of frequency bands (5 in Shi et al.).
        against: the references, ``target`` (``A(x_hat)`` vs the observation, scalars
            ``fbc/band_k``) and/or ``clean`` (``x_hat`` vs the clean image, ``fbc_clean/band_k``,
            skipped when no clean image is known); both by default. See the module docstring.
        filename: the CSV written into the run directory at the end of the fit (one row per
            measured step: ``step`` and every band of every reference).

    The values are kept in the callback's state, so a fit resumed from a checkpoint writes the
    whole history. Needs a :class:`~dip_lightning.tasks.DIPModule` (it reads ``last_output``,
    ``degradation``, ``observation`` and ``clean``); images with 1 or 3 channels.

    It measures only in a fit with a logger (``trainer.logger``), and only where it is asked
    for (``--trainer.callbacks+=dip_lightning.callbacks.FBCLogger``): each measurement is a
    few FFTs and one read on the host.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        num_bands: int = 5,
        against: Sequence[FBCReference] = ("target", "clean"),
        filename: str = "fbc.csv",
    ) -> None:
        if every_n_steps < 1:
            raise ConfigError(f"FBCLogger every_n_steps must be >= 1, got {every_n_steps}")
        if num_bands < 1:
            raise ConfigError(f"FBCLogger num_bands must be >= 1, got {num_bands}")
        unknown = [a for a in against if a not in GROUPS]
        if unknown or not against:
            raise ConfigError(f"FBCLogger against must name target and/or clean, got {against}")
        self.every_n_steps = int(every_n_steps)
        self.num_bands = int(num_bands)
        self.against: tuple[str, ...] = tuple(dict.fromkeys(against))
        self.filename = filename
        self.active: tuple[str, ...] = ()
        self.steps: list[int] = []
        self.values: dict[str, list[list[float]]] = {}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "values": {k: list(v) for k, v in self.values.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict.get("steps", []))
        values = state_dict.get("values", {})
        self.values = {k: [list(row) for row in v] for k, v in values.items()}

    def tags(self, reference: str) -> list[str]:
        """The scalar tags of a reference: ``fbc/band_0`` ... (``fbc_clean/...``)."""
        return [f"{GROUPS[reference]}/band_{k}" for k in range(self.num_bands)]

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.loggers:
            log.info("FBCLogger: the fit has no logger, so no FBC is measured")
            self.active = ()
            return
        observation = getattr(pl_module, "observation", None)
        if observation is None or observation.shape[1] not in (1, 3):
            channels = None if observation is None else observation.shape[1]
            log.warning("FBCLogger: needs a DIP module with a 1- or 3-channel image (%s)", channels)
            self.active = ()
            return
        has_clean = getattr(pl_module, "clean", None) is not None
        self.active = tuple(a for a in self.against if a == "target" or has_clean)
        for reference in self.active:
            self.values.setdefault(reference, [])
        writer = _tensorboard(trainer)
        if writer is not None and self.active:
            charts = {
                f"{GROUPS[r]}: {_TITLES[r]}": [
                    "Multiline",
                    [f"^{re.escape(tag)}$" for tag in self.tags(r)],
                ]
                for r in self.active
            }
            writer.add_custom_scalars({"FBC": charts})

    def measure(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        """FBC per band, ``(num_bands,)`` on the module's device, of each active reference."""
        module: Any = pl_module
        output = module.last_output
        results: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for reference in self.active:
                if reference == "target":
                    prediction, target = module.degradation(output), module.observation
                else:
                    prediction, target = output, module.clean
                results[reference] = frequency_band_correspondence(
                    prediction, target, self.num_bands
                )
        return results

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = int(trainer.global_step)
        if not self.active or (step % self.every_n_steps and step != trainer.max_steps):
            return
        if self.steps and self.steps[-1] == step:
            return
        measured = self.measure(pl_module)
        rows = torch.stack(list(measured.values())).tolist()  # one host read
        metrics: dict[str, float] = {}
        for reference, row in zip(measured, rows, strict=True):
            self.values[reference].append(row)
            metrics.update(zip(self.tags(reference), row, strict=True))
        self.steps.append(step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self.steps:
            return
        self.write(trainer)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and self.steps:
            self.write(trainer, images=False)

    # ------------------------------------------------------------------ outputs

    def csv_text(self) -> str:
        """The CSV: a header ``step,fbc/band_0,...`` and one row per measured step."""
        references = [r for r in GROUPS if self.values.get(r)]
        header = ["step", *(tag for r in references for tag in self.tags(r))]
        lines = [",".join(header)]
        for i, step in enumerate(self.steps):
            row = [str(step)]
            for reference in references:
                values = self.values[reference]
                row += [f"{v:.6g}" for v in values[i]] if i < len(values) else [""] * self.num_bands
            lines.append(",".join(row))
        return "\n".join(lines) + "\n"

    def write(self, trainer: Trainer, images: bool = True) -> None:
        """Write ``fbc.csv`` into the run directory and add the heatmaps to TensorBoard."""
        directory = run_directory(trainer)
        atomic_write_text(directory / self.filename, self.csv_text())
        writer = _tensorboard(trainer)
        if writer is None or not images:
            return
        for reference, rows in self.values.items():
            if not rows:
                continue
            values = torch.tensor(rows, dtype=torch.float32).T  # (bands, steps)
            image = fbc_heatmap(values, self.steps[-len(rows) :])
            writer.add_image(f"{GROUPS[reference]}/heatmap", image, int(trainer.global_step))
        writer.flush()
