"""The memory guard: the estimate against the peak of real fits, and a fit refused in one line
when it cannot fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, smooth_image, write_png

import dip_lightning.memory as memory
from dip_lightning.cli import DIPCLI, main
from dip_lightning.errors import ConfigError
from dip_lightning.networks import SkipNet
from dip_lightning.networks.blocks import Concat

MiB = 2**20


def paper_net() -> SkipNet:
    return SkipNet(32, 3, channels_down=128, channels_up=128, channels_skip=4)


def test_activations_count_every_leaf_output_on_the_meta_device() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 5, 3, padding=1), torch.nn.ReLU())
    convolutions, others = memory.activation_elements(net, torch.zeros(1, 2, 7, 9))
    assert (convolutions, others) == (5 * 7 * 9, 5 * 7 * 9)
    assert all(p.device.type == "cpu" for p in net.parameters())  # the network is untouched


def test_activations_count_the_concatenations_once() -> None:
    # Concat makes a new tensor of 2 + 3 channels; the Sequential around it passes its last
    # child's output on (not counted again)
    net = torch.nn.Sequential(
        Concat(1, torch.nn.Conv2d(2, 2, 1), torch.nn.Conv2d(2, 3, 1)), torch.nn.Identity()
    )
    convolutions, others = memory.activation_elements(net, torch.zeros(1, 2, 7, 9))
    assert convolutions == (2 + 3) * 7 * 9
    assert others == (2 + 3) * 7 * 9 + (2 + 3) * 7 * 9  # the concatenation, the Identity


def test_the_estimate_grows_with_the_size_and_shrinks_with_bf16() -> None:
    net = paper_net()
    small = memory.estimate_fit_memory(net, torch.empty(1, 32, 128, 128))
    large = memory.estimate_fit_memory(net, torch.empty(1, 32, 256, 256))
    half = memory.estimate_fit_memory(net, torch.empty(1, 32, 256, 256), "bf16-mixed")
    assert large.activations == pytest.approx(4 * small.activations, rel=0.01)
    assert half.activations < large.activations
    bytes_ = 4 * sum(p.numel() for p in net.parameters())
    assert small.parameters == 7 * bytes_  # weights, gradients, Adam's moments, the guard's copies
    unguarded = memory.estimate_fit_memory(net, torch.empty(1, 32, 128, 128), guard=False)
    assert unguarded.parameters == 4 * bytes_


def test_the_state_beside_the_network_is_counted(tmp_path: Path) -> None:
    from dip_lightning.callbacks import ExponentialVariance, WindowedVariance
    from dip_lightning.data import SingleImageDataModule
    from dip_lightning.tasks import DenoisingDIP

    image = write_png(tmp_path / "x.png", smooth_image(21, 19))
    small = partial(SkipNet, channels_down=8, channels_up=8, channels_skip=2, levels=3)
    fresh = DenoisingDIP(net=small, input_depth=6)
    bank = DenoisingDIP(net=small, input_depth=6, perturbation="bank")
    for module in (fresh, bank):
        module.attach(SingleImageDataModule(image=str(image), noise_sigma=25))
    z = 6 * 24 * 24 * 4  # padded to multiples of 8
    output = 3 * 21 * 19 * 4
    buffers = sum(b.numel() * b.element_size() for b in fresh.buffers(recurse=False))
    assert buffers >= z + 4 * output  # z, observation, clean, average, last output
    assert memory.fit_state_bytes([fresh]) == buffers + 2 * z  # a perturbation and z + it
    assert memory.fit_state_bytes([fresh], saved=True) == buffers
    assert memory.fit_state_bytes([bank]) == buffers + 6 * z  # and the bank, 4 times z
    criteria = [WindowedVariance(window=7), ExponentialVariance()]
    with_criteria = memory.fit_state_bytes([fresh], criteria)
    assert with_criteria == buffers + 2 * z + (1 + 7 + 4 + 1 + 2) * output  # sums in float64
    assert memory.fit_state_bytes(
        [fresh, bank], criteria
    ) == with_criteria + memory.fit_state_bytes([bank], criteria)


# ------------------------------------------------------------------ against measured peaks

#: Runs fits in one fresh process and prints, for each, the estimate of ``dip fit`` and the
#: peak resident memory of the fit over the resident memory before it: the kernel's high-water
#: mark is reset before each fit (``/proc/self/clear_refs``), after freed memory went back to
#: the system (``malloc_trim``). The first fit loads what Lightning imports lazily.
MEASURE = textwrap.dedent(
    """
    import ctypes, gc, json, sys
    import dip_lightning.memory as memory
    from dip_lightning.cli import main

    def status(key):
        with open("/proc/self/status") as handle:
            return next(int(l.split()[1]) * 1024 for l in handle if l.startswith(key))

    estimates = []
    estimate = memory.estimate_fit_memory
    def spy(*args, **kwargs):
        estimates.append(estimate(*args, **kwargs))
        return estimates[-1]

    memory.estimate_fit_memory = spy
    libc = ctypes.CDLL("libc.so.6")
    results = []
    for args in json.loads(sys.argv[1]):
        gc.collect()
        libc.malloc_trim(0)
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        main(["fit", *args])
        e = estimates[-1]
        results.append({"peak": status("VmHWM") - before, "fit": e.total - e.runtime,
                        "activations": e.activations, "state": e.state})
    print(json.dumps(results))
    """
)


def _net(channels: int, levels: int, skip: int = 4) -> list[str]:
    prefix = "--model.init_args.net.init_args."
    return [
        f"{prefix}channels_down={channels}",
        f"{prefix}channels_up={channels}",
        f"{prefix}channels_skip={skip}",
        f"{prefix}levels={levels}",
    ]


def _fits(directory: Path) -> dict[str, list[str]]:
    """Fits of networks, sizes and settings other than those the constants were fitted to
    (the paper's network on square images), each large enough that its peak is not noise."""

    def image(height: int, width: int, seed: int = 0) -> str:
        return str(
            write_png(
                directory / f"{height}x{width}_{seed}.png", smooth_image(height, width, seed=seed)
            )
        )

    return {
        "warm-up": [f"--data.image={image(24, 20)}", *_net(4, 2)],
        # a window of 120 outputs of 3 x 160 x 144 (33 MB), filled by 122 steps
        "variance window": [
            f"--data.image={image(160, 144)}",
            *_net(16, 3),
            "--model.init_args.input_depth=16",
            "--trainer.callbacks+=dip_lightning.callbacks.WindowedVariance",
            "--trainer.callbacks.window=120",
            "--trainer.callbacks.min_steps=0",
            "--trainer.max_steps=122",
        ],
        # activations and concatenations of a narrower, shallower network than the paper's
        "skip network": [f"--data.image={image(200, 168)}", *_net(48, 4)],
        # a noise bank of 4 x 64 x 200 x 168 floats (34 MB)
        "noise bank": [
            f"--data.image={image(200, 168)}",
            *_net(16, 3),
            "--model.init_args.input_depth=64",
            "--model.init_args.perturbation=bank",
        ],
        # three networks fitted as one
        "batched": [
            f"--batch.images={json.dumps([image(120, 136, seed) for seed in range(3)])}",
            *_net(32, 4),
        ],
    }


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure each fit's peak")
    directory = tmp_path_factory.mktemp("memory")
    common = [
        "--config=denoise",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=3",
    ]
    fits = _fits(directory)
    warm_up = fits.pop("warm-up")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    results = []
    for i, args in enumerate(fits.values()):
        # each fit in a process of its own (after the warm-up), so that no earlier fit's freed
        # memory, kept by the allocator, hides part of its peak
        arguments = [
            [*common, *options, f"--trainer.default_root_dir={directory / f'{i}{j}'}"]
            for j, options in enumerate([warm_up, args])
        ]
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, json.dumps(arguments)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1])[-1])
    return dict(zip(fits, results, strict=True))


#: bytes that an estimate without the buffer under test would miss
MISSED = {
    "skip network": 0,
    "noise bank": 4 * 64 * 200 * 168 * 4,
    "variance window": 2 * 120 * 3 * 160 * 144 * 4,  # held, and in the checkpoint
    "batched": 0,
}


@pytest.mark.parametrize("name", list(MISSED))
def test_the_estimate_matches_the_measured_peak(
    measured: dict[str, dict[str, Any]], name: str
) -> None:
    result = measured[name]
    peak, estimate = result["peak"], result["fit"]
    assert result["activations"] > 50 * MiB or result["state"] > 20 * MiB  # not noise
    assert 0.8 * estimate < peak < 1.25 * estimate, (peak / MiB, estimate / MiB)
    # an estimate that left the buffer out would be farther from the measured peak
    if MISSED[name]:
        without = estimate - MISSED[name]
        assert abs(peak - estimate) < abs(peak - without), (peak / MiB, estimate / MiB)


def test_a_batched_fit_counts_every_network(measured: dict[str, dict[str, Any]]) -> None:
    # one network's share would be a third of the measured peak
    assert measured["batched"]["activations"] > 0.5 * measured["batched"]["peak"]


# ------------------------------------------------------------------ refusing a fit


def test_a_fit_that_cannot_fit_is_refused_with_the_fixes() -> None:
    with pytest.raises(ConfigError) as info:
        memory.check_fit_memory(
            paper_net(), torch.empty(1, 32, 512, 512), "32-true", False, (500, 510), 2**30
        )
    message = str(info.value)
    assert "510x500" in message and "1.00 GiB available" in message
    assert "bf16-mixed" in message and "\n" not in message


def test_the_cli_refuses_before_writing_anything(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = write_png(tmp_path / "image.png", smooth_image(150, 134))
    root = tmp_path / "r"
    args = [f"--data.image={image}", f"--trainer.default_root_dir={root}"]
    cli = DIPCLI(args=[*args, "--trainer.accelerator=cpu"], run=False)
    model = cli.model
    callbacks = list(cli.trainer.callbacks)
    expected = memory.estimate_fit_memory(model.net, model.z, modules=[model], callbacks=callbacks)
    fit_part = expected.total - memory.RUNTIME_BYTES
    assert fit_part > 100 * MiB
    # more than the runtime needs, less than the fit: refused only because of the fit's part
    available = memory.RUNTIME_BYTES + fit_part // 2
    monkeypatch.setattr(memory, "available_memory", lambda on_gpu: available)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--trainer.accelerator=cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: this fit needs about {expected} at 134x150 in 32-true"), err
    assert f"but the host has {memory.gib(available)} available" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
