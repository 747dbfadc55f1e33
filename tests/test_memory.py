"""The memory guard: the estimate's parts and a fit refused in one line when it cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dip_lightning.memory as memory
from dip_lightning.cli import main
from dip_lightning.errors import ConfigError
from dip_lightning.networks import SkipNet


def paper_net() -> SkipNet:
    return SkipNet(32, 3, channels_down=128, channels_up=128, channels_skip=4)


def test_activations_count_every_leaf_output_on_the_meta_device() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 5, 3, padding=1), torch.nn.ReLU())
    convolutions, others = memory.activation_elements(net, torch.zeros(1, 2, 7, 9))
    assert (convolutions, others) == (5 * 7 * 9, 5 * 7 * 9)
    assert all(p.device.type == "cpu" for p in net.parameters())  # the network is untouched


def test_the_estimate_grows_with_the_size_and_shrinks_with_bf16() -> None:
    net = paper_net()
    small = memory.estimate_fit_memory(net, torch.empty(1, 32, 128, 128))
    large = memory.estimate_fit_memory(net, torch.empty(1, 32, 256, 256))
    half = memory.estimate_fit_memory(net, torch.empty(1, 32, 256, 256), "bf16-mixed")
    assert large.activations == pytest.approx(4 * small.activations, rel=0.01)
    assert half.activations < large.activations
    assert small.parameters == 4 * 4 * sum(p.numel() for p in net.parameters())
    # the measured peaks of dip fit with this network (README, speed section): 0.64 / 1.14 GiB
    assert small.total / 2**30 == pytest.approx(0.64, rel=0.3)
    assert large.total / 2**30 == pytest.approx(1.14, rel=0.3)


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
    rgb_png: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda on_gpu: 100 * 2**20)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--data.image={rgb_png}", f"--trainer.default_root_dir={tmp_path / 'r'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: this fit needs about") and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [rgb_png.name]
