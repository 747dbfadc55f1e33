"""Estimate the peak memory of a fit before it starts, and refuse one that cannot fit.

The estimate adds what a step keeps alive at its peak:

* the runtime itself (torch, Lightning, the interpreter): :data:`RUNTIME_BYTES` on the host;
* the parameters with their gradients and Adam's two moments: 4 copies;
* the activations the backward pass needs: the output of every leaf module of the network
  (convolutions, normalisations, activations, upsampling), measured by running the network once
  on PyTorch's ``meta`` device (no memory, no compute) at the padded size of the fit, in the
  precision's element size (2 bytes for the convolutions under bf16/fp16 autocast),
  times :data:`ACTIVATION_FACTOR` for the temporaries of the backward pass.

Both constants were fitted to the peak resident memory that ``benchmarks/speed.py`` measures for
the paper's denoising network; the README's speed section lists estimate and measurement.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch import nn

from dip_lightning.errors import ConfigError

#: resident memory of the interpreter with torch and Lightning loaded, before the fit (host)
RUNTIME_BYTES = 420 * 2**20
#: peak activation memory over the sum of the leaf modules' outputs
ACTIVATION_FACTOR = 1.6

_HALF = ("bf16", "16")


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of an estimate, in bytes."""

    runtime: int
    parameters: int
    activations: int

    @property
    def total(self) -> int:
        return self.runtime + self.parameters + self.activations

    def __str__(self) -> str:
        return f"{gib(self.total)} (activations {gib(self.activations)})"


def gib(n: float) -> str:
    """``n`` bytes as GiB with 2 decimals: ``gib(3 * 2**30) == '3.00 GiB'``."""
    return f"{n / 2**30:.2f} GiB"


def activation_elements(net: nn.Module, z: torch.Tensor) -> tuple[int, int]:
    """``(convolution outputs, other leaf outputs)`` in elements, for one forward pass of
    ``net`` on an input shaped like ``z``, measured on the meta device."""
    meta = copy.deepcopy(net).to("meta")
    counts = [0, 0]

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            counts[0 if isinstance(module, nn.Conv2d) else 1] += output.numel()

    handles = [m.register_forward_hook(hook) for m in meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty(z.shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return counts[0], counts[1]


def estimate_fit_memory(
    net: nn.Module, z: torch.Tensor, precision: str = "32-true", on_gpu: bool = False
) -> MemoryEstimate:
    """The estimated peak memory of a fit of ``net`` on input ``z`` at ``precision``."""
    parameters = sum(p.numel() * p.element_size() for p in net.parameters())
    convolutions, others = activation_elements(net, z)
    half = str(precision).startswith(_HALF)
    activations = (convolutions * (2 if half else 4) + others * 4) * ACTIVATION_FACTOR
    runtime = 0 if on_gpu else RUNTIME_BYTES
    return MemoryEstimate(runtime, 4 * parameters, int(activations))


def available_memory(on_gpu: bool) -> int | None:
    """Free memory of the GPU, or the host's available memory (Linux ``MemAvailable``, else the
    physical memory); ``None`` when unknown."""
    if on_gpu:
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fit_memory(
    net: nn.Module,
    z: torch.Tensor,
    precision: str,
    on_gpu: bool,
    size: tuple[int, int],
    available: int | None = None,
) -> MemoryEstimate:
    """Raise a one-line :class:`ConfigError` when the fit's estimated peak exceeds the memory
    available (``available`` bytes, measured when ``None``); the estimate otherwise."""
    estimate = estimate_fit_memory(net, z, precision, on_gpu)
    if available is None:
        available = available_memory(on_gpu)
    if available is not None and estimate.total > available:
        where = "GPU" if on_gpu else "host"
        height, width = size
        fixes = ["a smaller image or crop", "fewer channels (model.net.init_args.channels_*)"]
        if not str(precision).startswith(_HALF):
            fixes.insert(0, "--trainer.precision bf16-mixed")
        raise ConfigError(
            f"this fit needs about {estimate} at {width}x{height} in {precision}, but the "
            f"{where} has {gib(available)} available; try {', '.join(fixes)}"
        )
    return estimate


__all__ = [
    "ACTIVATION_FACTOR",
    "RUNTIME_BYTES",
    "MemoryEstimate",
    "available_memory",
    "check_fit_memory",
    "estimate_fit_memory",
]
