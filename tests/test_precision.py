"""``precision auto``: bf16-mixed where the hardware does bf16 fast, 32-true elsewhere, on
made-up CPUs and GPUs (every branch on any machine) and on this one."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from dip_lightning import precision
from dip_lightning.precision import (
    auto_precision,
    choose_precision,
    cpu_choice,
    cpu_flags,
    cuda_choice,
    no_cuda_reason,
    parse_cpu_flags,
)

#: the start of a flags line of real CPUs, as /proc/cpuinfo lists them
SKYLAKE_X = "fpu sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl"
COOPER_LAKE = f"{SKYLAKE_X} avx512_vnni avx512_bf16"
SAPPHIRE_RAPIDS = f"{COOPER_LAKE} amx_bf16 amx_tile amx_int8"
ZEN3 = "fpu sse2 avx avx2 fma"
#: AVX512-BF16 without AMX (Zen 4) and AMX without the AVX512-BF16 flag (a masked VM)
ZEN4 = f"{ZEN3} avx512f avx512bw avx512_bf16"
AMX_ONLY = f"{SKYLAKE_X} amx_bf16 amx_tile"


def cpuinfo(flags: str, processors: int = 2) -> str:
    block = "processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Some CPU\nflags\t\t: {f}\n"
    return "\n".join(block.format(i=i, f=flags) for i in range(processors))


@pytest.mark.parametrize(
    ("flags", "expected", "named"),
    [
        (SAPPHIRE_RAPIDS, "bf16-mixed", "AMX and AVX512-BF16"),
        (COOPER_LAKE, "bf16-mixed", "AVX512-BF16"),
        (ZEN4, "bf16-mixed", "AVX512-BF16"),
        (AMX_ONLY, "bf16-mixed", "AMX"),
        (SKYLAKE_X, "32-true", "neither AVX512-BF16 nor AMX"),
        (ZEN3, "32-true", "neither AVX512-BF16 nor AMX"),
    ],
)
def test_a_cpu_gets_bf16_with_avx512_bf16_or_amx(flags: str, expected: str, named: str) -> None:
    choice = cpu_choice(parse_cpu_flags(cpuinfo(flags)))
    assert choice.precision == expected
    assert str(choice) == f"precision auto: {expected} (this CPU has {named})"


def test_a_cpu_of_unknown_features_gets_fp32() -> None:
    assert cpu_choice(None).precision == "32-true"
    assert "unknown" in cpu_choice(None).reason
    assert parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") is None
    assert parse_cpu_flags("") is None


@pytest.mark.parametrize(
    ("capability", "supported", "expected"),
    [
        ((9, 0), True, "bf16-mixed"),  # H100
        ((8, 9), True, "bf16-mixed"),  # L4, RTX 4090
        ((8, 0), True, "bf16-mixed"),  # A100
        ((7, 5), True, "32-true"),  # T4: torch emulates bf16
        ((7, 0), True, "32-true"),  # V100
        ((9, 0), False, "32-true"),  # a build without bf16
    ],
)
def test_a_gpu_gets_bf16_from_compute_capability_8(
    capability: tuple[int, int], supported: bool, expected: str
) -> None:
    choice = cuda_choice(capability, supported, "Some GPU")
    assert choice.precision == expected
    assert "Some GPU" in choice.reason
    if supported:
        assert f"compute capability {capability[0]}.{capability[1]}" in choice.reason


def test_the_cpu_flags_come_from_proc_cpuinfo_then_from_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo(SAPPHIRE_RAPIDS))
    assert {"amx_bf16", "avx512_bf16", "avx512f"} <= cpu_flags(info)  # type: ignore[operator]
    # no /proc/cpuinfo (macOS, Windows) or no flags line in it: torch's probe answers
    monkeypatch.setattr(precision, "torch_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert cpu_flags(tmp_path / "missing") == {"avx512_bf16"}
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert cpu_flags(info) == {"avx512_bf16"}


def test_torchs_cpu_probe_maps_to_the_linux_flag_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert precision.torch_cpu_flags() == {"avx512_bf16"}
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_choice(precision.torch_cpu_flags()).precision == "bf16-mixed"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # an older torch
    assert precision.torch_cpu_flags() is None


def test_choose_precision_reads_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: parse_cpu_flags(cpuinfo(COOPER_LAKE)))
    assert auto_precision("cpu") == "bf16-mixed"
    assert auto_precision(torch.device("cpu")) == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_flags", lambda: parse_cpu_flags(cpuinfo(ZEN3)))
    assert str(choose_precision("cpu")) == (
        "precision auto: 32-true (this CPU has neither AVX512-BF16 nor AMX)"
    )


def test_this_machines_cpu_is_read_from_its_flags() -> None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    line = next((x for x in text.splitlines() if x.startswith("flags")), None)
    if line is None:
        pytest.skip("no flags line in /proc/cpuinfo")
    fast = {"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split())
    assert auto_precision("cpu") == ("bf16-mixed" if fast else "32-true")


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A CUDA device as torch.cuda reports it, whose answers a test sets."""
    gpu: dict[str, object] = {"capability": (9, 0), "bf16": True, "name": "NVIDIA H100 80GB HBM3"}
    asked: list[int] = []

    def capability(index: int) -> tuple[int, int]:
        asked.append(index)
        return gpu["capability"]  # type: ignore[return-value]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu["bf16"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: gpu["name"])
    gpu["asked"] = asked
    return gpu


@pytest.mark.parametrize("device", ["cuda", "gpu", "auto", "cuda:1", torch.device("cuda", 1)])
def test_a_cuda_device_is_asked_for_its_capability(
    fake_gpu: dict[str, object], monkeypatch: pytest.MonkeyPatch, device: str | torch.device
) -> None:
    # the CPU would say bf16: the GPU's answer must be the one used
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    choice = choose_precision(device)
    assert choice == cuda_choice((9, 0), True, "NVIDIA H100 80GB HBM3")
    assert fake_gpu["asked"] == [1 if "1" in str(device) else 0]
    fake_gpu["capability"] = (7, 0)
    fake_gpu["name"] = "Tesla V100"
    assert auto_precision(device) == "32-true"
    assert "compute capability 7.0" in choose_precision(device).reason


def test_without_cuda_the_gpu_choice_is_fp32_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    reason = no_cuda_reason()
    assert reason == f"no CUDA device (torch {torch.__version__}, CUDA build: 12.4)"
    assert choose_precision("cuda") == precision.PrecisionChoice("32-true", reason)
    # "auto" falls back to the CPU, as Lightning's accelerator does
    if not torch.backends.mps.is_available():
        assert choose_precision("auto") == cpu_choice({"amx_bf16"})
    assert choose_precision("mps").precision == "32-true"
