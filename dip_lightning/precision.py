"""Choose Lightning's ``trainer.precision`` for the hardware: bf16 autocast where it is fast.

``bf16-mixed`` runs the convolutions in bfloat16 under autocast. It pays where the hardware
multiplies bfloat16 natively: a CPU with AVX512-BF16 or AMX (Cooper Lake, Sapphire Rapids and
later, AMD Zen 4 and later), or a CUDA GPU of compute capability 8.0 or later (Ampere, Hopper).
Elsewhere bfloat16 is emulated, slower than fp32, and ``32-true`` is chosen.

The decisions are pure functions of what the hardware reports (:func:`cpu_choice`,
:func:`cuda_choice`), so every branch can be tested on any machine; :func:`choose_precision`
reads the hardware and calls them.

>>> str(cpu_choice({"fpu", "avx2"}))
'precision auto: 32-true (this CPU has neither AVX512-BF16 nor AMX)'
>>> auto = choose_precision("cpu")
>>> auto.precision in ("bf16-mixed", "32-true")
True
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

#: the x86 feature flags (as Linux names them in ``/proc/cpuinfo``) that make bf16 fast
FAST_BF16_CPU_FLAGS: dict[str, str] = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}
#: the first CUDA compute capability with bf16 tensor cores (Ampere)
BF16_COMPUTE_CAPABILITY = (8, 0)

BF16 = "bf16-mixed"
FP32 = "32-true"


@dataclass(frozen=True)
class PrecisionChoice:
    """A Lightning precision string and the reason it was chosen."""

    precision: str
    reason: str

    def __str__(self) -> str:
        return f"precision auto: {self.precision} ({self.reason})"


def cpu_choice(flags: Collection[str] | None) -> PrecisionChoice:
    """The precision for a CPU with the feature ``flags`` (``None``: unknown).

    >>> print(cpu_choice({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}))
    precision auto: bf16-mixed (this CPU has AMX and AVX512-BF16)
    >>> print(cpu_choice({"avx512f", "avx512_bf16"}))
    precision auto: bf16-mixed (this CPU has AVX512-BF16)
    >>> print(cpu_choice({"avx512f", "avx512bw"}))
    precision auto: 32-true (this CPU has neither AVX512-BF16 nor AMX)
    >>> print(cpu_choice(None))
    precision auto: 32-true (this CPU's features are unknown)
    """
    if flags is None:
        return PrecisionChoice(FP32, "this CPU's features are unknown")
    found = [name for flag, name in FAST_BF16_CPU_FLAGS.items() if flag in flags]
    if found:
        return PrecisionChoice(BF16, f"this CPU has {' and '.join(found)}")
    return PrecisionChoice(FP32, "this CPU has neither AVX512-BF16 nor AMX")


def cuda_choice(
    capability: tuple[int, int], bf16_supported: bool, name: str = "this GPU"
) -> PrecisionChoice:
    """The precision for a CUDA device of compute ``capability`` named ``name``;
    ``bf16_supported`` is what ``torch.cuda.is_bf16_supported()`` says (which is true on older
    GPUs too, where bf16 is emulated).

    >>> print(cuda_choice((9, 0), True, "NVIDIA H100 80GB HBM3"))
    precision auto: bf16-mixed (NVIDIA H100 80GB HBM3 has bf16, compute capability 9.0)
    >>> print(cuda_choice((7, 0), True, "Tesla V100-SXM2-16GB"))
    precision auto: 32-true (Tesla V100-SXM2-16GB is compute capability 7.0; fast bf16 needs 8.0)
    >>> print(cuda_choice((8, 0), False, "A100"))
    precision auto: 32-true (this torch build has no bf16 on A100)
    """
    major, minor = capability
    if not bf16_supported:
        return PrecisionChoice(FP32, f"this torch build has no bf16 on {name}")
    if (major, minor) < BF16_COMPUTE_CAPABILITY:
        need = "{}.{}".format(*BF16_COMPUTE_CAPABILITY)
        return PrecisionChoice(
            FP32, f"{name} is compute capability {major}.{minor}; fast bf16 needs {need}"
        )
    return PrecisionChoice(BF16, f"{name} has bf16, compute capability {major}.{minor}")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The feature flags of the first processor in the text of ``/proc/cpuinfo`` (x86: the
    ``flags`` line); ``None`` when there is no such line.

    >>> sorted(parse_cpu_flags("processor : 0\\nflags\\t\\t: fpu avx2 amx_bf16\\n"))
    ['amx_bf16', 'avx2', 'fpu']
    >>> parse_cpu_flags("processor : 0\\nFeatures : fp asimd\\n") is None
    True
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def torch_cpu_flags() -> frozenset[str] | None:
    """The fast-bf16 flags as torch's own CPU probe (cpuinfo) sees them, for systems without
    ``/proc/cpuinfo``; ``None`` when this torch has no such probe."""
    probes = {
        "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        "amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
    }
    if any(probe is None for probe in probes.values()):
        return None
    try:
        return frozenset(flag for flag, probe in probes.items() if probe and probe())
    except (RuntimeError, AttributeError):
        return None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """This CPU's feature flags: the ``flags`` of ``/proc/cpuinfo`` (Linux), else torch's CPU
    probe; ``None`` when neither answers."""
    try:
        flags = parse_cpu_flags(Path(cpuinfo).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags = None
    return flags if flags is not None else torch_cpu_flags()


def no_cuda_reason() -> str | None:
    """``None`` when a CUDA device is usable; else why not, with torch's version and build.

    >>> reason = no_cuda_reason()
    >>> reason is None or reason.startswith("no CUDA device (torch ")
    True
    """
    if torch.cuda.is_available():
        return None
    build = torch.version.cuda or "no"
    return f"no CUDA device (torch {torch.__version__}, CUDA build: {build})"


def _device_type(device: str | torch.device) -> str:
    """``cpu``, ``cuda`` or another torch device type, for a torch device or a Lightning
    accelerator name (``auto``: CUDA when available, as Lightning chooses)."""
    name = str(device.type if isinstance(device, torch.device) else device).lower()
    name = name.split(":", 1)[0]
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return "cuda" if name == "gpu" else name


def _cuda_index(device: str | torch.device) -> int | None:
    """The device index in ``device`` (``cuda:1``: 1), ``None`` when it names none."""
    if isinstance(device, torch.device):
        return device.index
    name = device.lower()
    return torch.device(name).index if name.startswith("cuda") else None


def choose_precision(device: str | torch.device = "auto") -> PrecisionChoice:
    """The precision for ``device`` (a torch device, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or a
    Lightning accelerator name: ``"gpu"``, ``"auto"``), with the reason."""
    kind = _device_type(device)
    if kind == "cpu":
        return cpu_choice(cpu_flags())
    if kind == "cuda":
        reason = no_cuda_reason()
        if reason is not None:
            return PrecisionChoice(FP32, reason)
        index = _cuda_index(device)
        index = torch.cuda.current_device() if index is None else index
        with torch.cuda.device(index):  # is_bf16_supported asks the current device
            bf16 = torch.cuda.is_bf16_supported()
        return cuda_choice(
            torch.cuda.get_device_capability(index), bf16, torch.cuda.get_device_name(index)
        )
    return PrecisionChoice(FP32, f"bf16 is chosen on CPUs and CUDA GPUs only, not on {kind}")


def auto_precision(device: str | torch.device = "auto") -> str:
    """Lightning's precision string for ``device``: ``"bf16-mixed"`` where the hardware does
    bf16 fast, ``"32-true"`` elsewhere (:func:`choose_precision` says why)."""
    return choose_precision(device).precision


__all__ = [
    "BF16_COMPUTE_CAPABILITY",
    "FAST_BF16_CPU_FLAGS",
    "PrecisionChoice",
    "auto_precision",
    "choose_precision",
    "cpu_choice",
    "cpu_flags",
    "cuda_choice",
    "no_cuda_reason",
    "parse_cpu_flags",
]
