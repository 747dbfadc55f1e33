"""The perturbation of the input: ``z + sigma_p * eps`` with fresh noise at every step.

``fresh`` draws ``eps`` anew every step from the module's ``perturbation`` stream (the
paper's); ``bank`` draws one bank of normal numbers of twice the input's height and width once
and takes a window of it at a random offset every step, the offsets drawn a block of
:data:`OFFSET_BLOCK` at a time from the ``offsets`` stream. :class:`Perturbation` is the part of
:class:`~dip_lightning.tasks.DIPModule` that does this, with its part of the checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from dip_lightning.seeding import stream_generator

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = ["OFFSET_BLOCK", "Perturbation"]

#: Offsets of the perturbation bank drawn at a time (one read of a CPU tensor per block).
OFFSET_BLOCK = 1024


class Perturbation(_Base):
    """The perturbed input of a :class:`~dip_lightning.tasks.DIPModule`: its generators, the
    noise bank and their state in a checkpoint."""

    z: torch.Tensor
    seed: int
    sigma_p: float
    channels_last: bool
    perturbation: str
    _generator: torch.Generator | None
    _generator_state: torch.Tensor | None
    _bank: torch.Tensor | None
    _offsets: torch.Generator
    _offset_queue: list[int]
    _step_input: torch.Tensor | None

    def start_perturbation(self) -> None:
        """At the start of a fit: the perturbation's generator (with its state of a checkpoint
        when the fit resumes)."""
        generator = stream_generator(self.seed, "perturbation", self.device)
        if self._generator_state is not None:
            generator.set_state(self._generator_state)
            self._generator_state = None
        self._generator = generator

    def start_bank(self) -> None:
        """For ``bank``: the bank (from the ``bank`` stream) and the first block of offsets."""
        if self.perturbation != "bank":
            return
        _, channels, height, width = self.z.shape
        bank_generator = stream_generator(self.seed, "bank", self.device)
        self._bank = self._normal((1, channels, 2 * height, 2 * width), bank_generator)
        if not self._offset_queue:  # the first block now, not in a step
            self._offset_queue = self._draw_offsets(height * width)

    def _normal(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Standard normal numbers in the layout of ``z`` (channels-last when it is).

        The numbers are drawn in float32 and in the contiguous layout, then converted and laid
        out like ``z``, so a fit draws the same perturbation with or without ``channels_last``
        and in any precision."""
        values = torch.randn(shape, generator=generator, device=self.z.device, dtype=torch.float32)
        values = values.to(self.z.dtype)  # float32 draws in a float64 fit too: the same numbers
        if self.channels_last:
            return values.contiguous(memory_format=torch.channels_last)
        return values

    def perturbed_input(self) -> torch.Tensor:
        """``z + sigma_p * eps`` with fresh ``eps`` from the module's generator; kept as
        ``_step_input`` (SURE's divergence perturbs it again)."""
        self._step_input = self._perturbed()
        return self._step_input

    def _perturbed(self) -> torch.Tensor:
        z = self.z
        if self.sigma_p == 0 or self._generator is None:
            return z
        if self._bank is not None:
            _, _, height, width = z.shape
            offset = self._next_offset(height * width)
            top, left = divmod(offset, width)
            noise = self._bank[..., top : top + height, left : left + width]
        else:
            noise = self._normal(tuple(z.shape), self._generator)
        return z + noise * self.sigma_p

    def _next_offset(self, count: int) -> int:
        """The bank's next window offset in ``[0, count)``: drawn from ``_offsets`` a block of
        :data:`OFFSET_BLOCK` at a time, so a step reads no tensor on the host."""
        if not self._offset_queue:
            self._offset_queue = self._draw_offsets(count)
        return self._offset_queue.pop()

    def _draw_offsets(self, count: int) -> list[int]:
        block = torch.randint(0, count, (OFFSET_BLOCK,), generator=self._offsets)
        return block.tolist()[::-1]  # a CPU tensor: no device to wait for

    def perturbation_state(self) -> dict[str, Any]:
        """The perturbation's part of the checkpoint: the generators' states and the offsets
        drawn and not used yet."""
        state: dict[str, Any] = {}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        state["offsets"] = self._offsets.get_state()
        state["offset_queue"] = list(self._offset_queue)
        return state

    def load_perturbation_state(self, state: dict[str, Any]) -> None:
        """Take the perturbation's part of a checkpoint (:meth:`perturbation_state`)."""
        self._generator_state = state.get("generator")
        if "offsets" in state:
            self._offsets.set_state(state["offsets"])
            self._offset_queue = list(state.get("offset_queue", []))
