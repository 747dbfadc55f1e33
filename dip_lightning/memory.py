"""Estimate the peak memory of a fit before it starts, and refuse one that cannot fit.

The estimate adds what a step keeps alive at its peak:

* the runtime itself (torch, Lightning, the interpreter): :data:`RUNTIME_BYTES` on the host;
* the parameters with their gradients, Adam's two moments and the divergence guard's copy of
  the last good parameters and moments: 7 copies (4 without the guard);
* the activations the backward pass needs: the output of every leaf module of the network
  (convolutions, normalisations, activations, upsampling) and every new tensor a container
  makes (the concatenations of :class:`~dip_lightning.networks.blocks.Concat`), measured by
  running the network once on PyTorch's ``meta`` device (no memory, no compute) at the padded
  size of the fit, in the precision's element size (2 bytes for the convolutions under
  bf16/fp16 autocast), times :data:`ACTIVATION_FACTOR` for the temporaries of the backward pass;
* the fit's state beside the network (:func:`fit_state_bytes`): per image the input ``z``, the
  observation, the output average, the last output and the other images the module keeps, the
  perturbation drawn every step (or the noise bank of ``perturbation: bank``), and the images
  the stopping criteria keep (the window of :class:`~dip_lightning.callbacks.WindowedVariance`,
  the best output of each criterion);
* the checkpoint: Lightning serialises it in memory before writing it, while the memory of the
  steps' activations is still mapped; its size is the parameters with Adam's moments and the
  saved state above.

Both constants were fitted to the peak resident memory that ``benchmarks/speed.py`` measures for
the paper's denoising network; the README's speed section lists estimate and measurement.
``tests/test_memory.py`` checks the estimate against the peak of real fits of other networks,
sizes and settings.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dip_lightning.errors import ConfigError

#: resident memory of the interpreter with torch and Lightning loaded, before the fit (host)
RUNTIME_BYTES = 420 * 2**20
#: peak activation memory over the sum of the leaf modules' outputs
ACTIVATION_FACTOR = 1.45

_HALF = ("bf16", "16")


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of an estimate, in bytes."""

    runtime: int
    parameters: int
    activations: int
    state: int = 0
    checkpoint: int = 0

    @property
    def total(self) -> int:
        """The peak: what the fit holds throughout, the activations of a step, and the buffer
        of a checkpoint being written (the allocator keeps the activations' memory mapped after
        the step, and the buffer is a fresh mapping)."""
        return self.runtime + self.parameters + self.state + self.activations + self.checkpoint

    def __str__(self) -> str:
        return f"{gib(self.total)} (activations {gib(self.activations)})"


def gib(n: float) -> str:
    """``n`` bytes as GiB with 2 decimals: ``gib(3 * 2**30) == '3.00 GiB'``."""
    return f"{n / 2**30:.2f} GiB"


def activation_elements(net: nn.Module, z: torch.Tensor) -> tuple[int, int]:
    """``(convolution outputs, other outputs)`` in elements, for one forward pass of ``net`` on
    an input shaped like ``z``, measured on the meta device: the output of every leaf module,
    and the output of a container when it is a new tensor (a concatenation), not the output of
    its last child passed on."""
    meta = copy.deepcopy(net).to("meta")
    counts = [0, 0]
    seen: dict[int, torch.Tensor] = {}  # counted outputs, kept alive so that ids stay unique

    def leaf_hook(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            seen[id(output)] = output
            counts[0 if isinstance(module, nn.Conv2d) else 1] += output.numel()

    def container_hook(module: nn.Module, inputs: object, output: object) -> None:
        # runs after its children's hooks: a child's output passed on is already counted
        if isinstance(output, torch.Tensor) and id(output) not in seen:
            seen[id(output)] = output
            counts[1] += output.numel()

    handles = []
    for module in meta.modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(leaf_hook))
        elif module is not meta:
            handles.append(module.register_forward_hook(container_hook))
    try:
        with torch.no_grad():
            meta(torch.empty(z.shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return counts[0], counts[1]


def fit_state_bytes(
    modules: Iterable[nn.Module], callbacks: Sequence[object] = (), *, saved: bool = False
) -> int:
    """Bytes of a fit's state beside the network, for the image modules ``modules`` (one, or
    the members of a batched fit) and the trainer's ``callbacks``: each module's own buffers
    (``z``, the observation, the clean image, the output average, the last output, masks), the
    perturbation of ``z`` drawn every step and its sum with ``z`` (or the noise bank, four times
    ``z``), and for every stopping criterion, per module, its best output and the images it
    keeps (the window of a windowed variance and its two float64 sums, the mean and variance
    of an exponential one).
    ``saved``: only what a checkpoint holds (not the perturbation or the bank)."""
    from dip_lightning.callbacks.stopping import (
        ExponentialVariance,
        StoppingCriterion,
        WindowedVariance,
    )

    criteria = [c for c in callbacks if isinstance(c, StoppingCriterion)]
    total = 0
    for module in modules:
        buffers = dict(module.named_buffers(recurse=False))
        total += sum(b.numel() * b.element_size() for b in buffers.values())
        z = buffers.get("z")
        output = buffers.get("last_output")
        if z is not None and not saved and float(getattr(module, "sigma_p", 0.0)) > 0:
            copies = 2 + (4 if getattr(module, "perturbation", "fresh") == "bank" else 0)
            total += copies * z.numel() * z.element_size()
        if output is None:
            continue
        image = output.numel() * output.element_size()
        for criterion in criteria:
            images = 1  # the best output
            if isinstance(criterion, WindowedVariance):
                images += criterion.window + 4  # and two float64 sums
            elif isinstance(criterion, ExponentialVariance):
                images += 2
            total += images * image
    return total


def estimate_fit_memory(
    net: nn.Module,
    z: torch.Tensor,
    precision: str = "32-true",
    on_gpu: bool = False,
    *,
    modules: Sequence[nn.Module] = (),
    callbacks: Sequence[object] = (),
    guard: bool = True,
) -> MemoryEstimate:
    """The estimated peak memory of a fit of ``net`` on input ``z`` at ``precision``, for the
    image modules ``modules`` (their state, :func:`fit_state_bytes`) and the trainer's
    ``callbacks``, with the divergence guard's copy of the parameters and Adam's moments when
    ``guard``."""
    parameters = sum(p.numel() * p.element_size() for p in net.parameters())
    convolutions, others = activation_elements(net, z)
    half = str(precision).startswith(_HALF)
    activations = (convolutions * (2 if half else 4) + others * 4) * ACTIVATION_FACTOR
    runtime = 0 if on_gpu else RUNTIME_BYTES
    copies = 7 if guard else 4
    state = fit_state_bytes(modules, callbacks)
    # the parameters, Adam's moments (and the guard's copy of both) and the saved state,
    # serialised in memory
    checkpoint = (6 if guard else 3) * parameters + fit_state_bytes(modules, callbacks, saved=True)
    return MemoryEstimate(runtime, copies * parameters, int(activations), state, checkpoint)


def check_fit_memory(
    net: nn.Module,
    z: torch.Tensor,
    precision: str,
    on_gpu: bool,
    size: tuple[int, int],
    available: int | None = None,
    *,
    modules: Sequence[nn.Module] = (),
    callbacks: Sequence[object] = (),
    guard: bool = True,
) -> MemoryEstimate:
    """Raise a one-line :class:`ConfigError` when the fit's estimated peak
    (:func:`estimate_fit_memory`) exceeds the memory available (``available`` bytes, measured
    when ``None``); the estimate otherwise."""
    estimate = estimate_fit_memory(
        net, z, precision, on_gpu, modules=modules, callbacks=callbacks, guard=guard
    )
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


__all__ = [
    "ACTIVATION_FACTOR",
    "RUNTIME_BYTES",
    "MemoryEstimate",
    "available_memory",
    "check_fit_memory",
    "estimate_fit_memory",
    "fit_state_bytes",
]
