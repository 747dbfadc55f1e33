"""How ``dip fit`` makes the observation from options given at several levels (presets, later
configs, the command line), and the one line that says what it simulated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, REPO, smooth_image, write_png

from dip_lightning.cli import DIPCLI, main
from dip_lightning.data.datamodule import SingleImageDataModule, settle_observation
from dip_lightning.errors import ConfigError

SMALL = [
    "--model.init_args.net.init_args.channels_down=8",
    "--model.init_args.net.init_args.channels_up=8",
    "--model.init_args.net.init_args.levels=2",
    "--model.init_args.input_depth=4",
    "--trainer.max_steps=2",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A 23x29 (HxW) RGB photo of the user's."""
    return write_png(tmp_path / "photo.png", smooth_image(23, 29, seed=3))


@pytest.fixture
def holes(tmp_path: Path) -> Path:
    """A mask for ``photo``: white = known, a black block missing."""
    mask = np.full((23, 29), 255, dtype=np.uint8)
    mask[5:12, 8:20] = 0
    return write_png(tmp_path / "holes.png", mask)


def fit(
    root: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[list[str], dict[str, float]]:
    """``dip fit ARGS`` with a small network: the lines it logs and its ``metrics.json``."""
    main(["fit", *args, *SMALL, f"--trainer.default_root_dir={root}"])
    err = capsys.readouterr().err
    metrics = json.loads((root / "metrics.json").read_text())
    return err.splitlines(), metrics


def observation_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("observation:", "simulated the obs"))]


def built_data(*args: str) -> SingleImageDataModule:
    """The data module that ``dip fit ARGS`` builds (parsed and instantiated, not run)."""
    cli = DIPCLI(args=[*args, *SMALL], run=False)
    assert isinstance(cli.datamodule, SingleImageDataModule)
    return cli.datamodule


def error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, *SMALL])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def run_dip(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dip_lightning", "fit", *args, *SMALL,
         f"--trainer.default_root_dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


# ------------------------------------------------------------- a preset and the user's image


def test_the_quick_start_simulates_noise_on_the_embedded_sample(tmp_path: Path) -> None:
    result = run_dip(tmp_path, "--config", "configs/denoise.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert observation_lines(lines) == [
        "simulated the observation: Gaussian noise sigma 25 on the embedded sample (seed 0)"
    ]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["input_psnr"] < 30  # scored against the clean sample, the noise included


def test_a_users_image_is_the_observation_as_given(tmp_path: Path, photo: Path) -> None:
    result = run_dip(tmp_path, "--config", "configs/denoise.yaml", "--data.image", str(photo))
    assert result.returncode == 0, result.stderr[-2000:]
    assert observation_lines(result.stderr.splitlines()) == [
        f"observation: {photo} as given (no simulation; --data.simulate true to add Gaussian "
        "noise sigma 25)"
    ]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "input_psnr" not in metrics  # no clean image: nothing to score against
    data = built_data("--config", str(CONFIGS / "denoise.yaml"), "--data.image", str(photo))
    assert not data.simulate and data.noise_sigma == 0


def test_simulate_true_adds_the_presets_noise_to_a_users_image(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(CONFIGS / "denoise.yaml"), "--data.image", str(photo)]
    lines, metrics = fit(tmp_path, capsys, *args, "--data.simulate", "true")
    assert observation_lines(lines) == [
        f"simulated the observation: Gaussian noise sigma 25 on {photo} (seed 0)"
    ]
    assert metrics["input_psnr"] < 25


def test_a_noise_level_given_with_the_image_simulates_it(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(CONFIGS / "denoise.yaml"), "--data.image", str(photo)]
    lines, _ = fit(tmp_path, capsys, *args, "--data.noise_sigma", "10")
    assert observation_lines(lines) == [
        f"simulated the observation: Gaussian noise sigma 10 on {photo} (seed 0)"
    ]


def test_the_jpeg_preset_takes_a_users_jpeg_as_given(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(CONFIGS / "jpeg.yaml"), "--data.image", str(photo)]
    lines, _ = fit(tmp_path, capsys, *args)
    assert observation_lines(lines) == [
        f"observation: {photo} as given (no simulation; --data.simulate true to add JPEG quality 5)"
    ]


# ------------------------------------------------------------------------ masks and ratios


def test_a_users_mask_replaces_the_presets_random_pixels(
    tmp_path: Path, photo: Path, holes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(CONFIGS / "inpaint.yaml"), "--data.image", str(photo)]
    args += ["--data.mask", str(holes)]
    lines, metrics = fit(tmp_path, capsys, *args)
    assert observation_lines(lines) == [
        f"observation: {photo} as given, the pixels missing that {holes} marks (no simulation)"
    ]
    assert metrics["height"] == 23 and metrics["width"] == 29
    data = built_data(*args)
    assert data.missing_ratio == 0 and data.mask is not None and not data.simulate
    known = float(data.mask.mean())
    assert known == pytest.approx(1 - 7 * 12 / (23 * 29))  # the file's mask, not a random half


def test_a_users_image_without_a_mask_says_how_to_drop_the_presets_pixels(
    photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(CONFIGS / "inpaint.yaml"), "--data.image", str(photo)]
    line = error_line(args, capsys)
    assert line.startswith("error: inpainting needs the missing pixels: give data.mask")
    assert line.endswith("applies to an image given after it with data.simulate true)")
    data = built_data(*args, "--data.simulate", "true")
    assert data.simulate and data.missing_ratio == 0.5


def test_a_mask_in_a_later_config_replaces_a_random_mask(
    tmp_path: Path, holes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    later = tmp_path / "mask.yaml"
    later.write_text(f"data:\n  image: {holes.parent / 'photo.png'}\n  mask: {holes}\n")
    write_png(holes.parent / "photo.png", smooth_image(23, 29, seed=3))
    data = built_data("--config", str(CONFIGS / "inpaint.yaml"), "--config", str(later))
    assert data.missing_ratio == 0 and data.mask_path == holes


def test_a_ratio_on_the_command_line_replaces_a_presets_mask(
    tmp_path: Path, photo: Path, holes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "preset.yaml"  # the shape of the paper's inpainting presets
    preset.write_text(
        "model: InpaintingDIP\n"
        f"data:\n  image: {photo}\n  mask: {holes}\n  simulate: true\n  seed: 0\n"
    )
    lines, metrics = fit(tmp_path, capsys, "--config", str(preset), "--data.missing_ratio", "0.25")
    assert observation_lines(lines) == [
        f"simulated the observation: 25% of the pixels missing at random on {photo} (seed 0)"
    ]
    assert "input_psnr" in metrics  # the clean image is known: the preset's image


@pytest.mark.parametrize("where", ["command line", "one config"])
def test_a_mask_and_a_ratio_given_together_name_the_option_to_drop(
    tmp_path: Path,
    photo: Path,
    holes: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    together = ["--data.mask", str(holes), "--data.missing_ratio", "0.3"]
    if where == "command line":
        args = ["--config", str(CONFIGS / "inpaint.yaml"), "--data.image", str(photo), *together]
        place = "on the command line"
    else:
        config = tmp_path / "both.yaml"
        config.write_text(f"data:\n  image: {photo}\n  mask: {holes}\n  missing_ratio: 0.3\n")
        args = ["--model", "InpaintingDIP", "--config", str(config)]
        place = f"in {config}"
    assert error_line(args, capsys) == (
        f"error: data.mask and data.missing_ratio both define the missing pixels (both {place}); "
        "drop data.missing_ratio to use the mask file, or data.mask to drop pixels at random"
    )


# -------------------------------------------------------------------- scale and simulation


def test_a_users_image_with_the_super_resolution_preset_is_the_low_resolution_input(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(CONFIGS / "super_resolution.yaml"), "--data.image", str(photo)]
    lines, metrics = fit(tmp_path, capsys, *args)
    assert observation_lines(lines) == [
        f"observation: {photo} as given, enlarged 4x (no simulation; --data.simulate true to "
        "add 4x downsampling)"
    ]
    assert (metrics["height"], metrics["width"]) == (4 * 23, 4 * 29)


def test_a_scale_with_simulate_on_the_command_line_downsamples_the_users_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = write_png(tmp_path / "big.png", smooth_image(34, 42))
    args = ["--config", str(CONFIGS / "super_resolution.yaml"), "--data.image", str(big)]
    lines, metrics = fit(tmp_path, capsys, *args, "--data.scale", "2", "--data.simulate", "true")
    assert observation_lines(lines) == [
        f"simulated the observation: 2x downsampling on {big} (seed 0)"
    ]
    assert (metrics["height"], metrics["width"]) == (34, 42)


def test_a_clean_reference_replaces_the_presets_simulation(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = write_png(tmp_path / "big.png", smooth_image(46, 58))
    args = ["--config", str(CONFIGS / "super_resolution.yaml"), "--data.clean", str(big)]
    data = built_data(*args, "--data.image", str(photo), "--data.scale", "2")
    assert not data.simulate and data.clean is not None


def test_simulate_false_on_the_command_line_replaces_the_presets_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(CONFIGS / "denoise.yaml"), "--data.simulate", "false"]
    lines, metrics = fit(tmp_path, capsys, *args)
    assert observation_lines(lines) == ["observation: the embedded sample as given (no simulation)"]
    assert "input_psnr" not in metrics


def test_noise_on_the_command_line_replaces_a_configs_simulate_false(tmp_path: Path) -> None:
    config = tmp_path / "real.yaml"
    config.write_text("data:\n  simulate: false\n")
    data = built_data("--config", str(config), "--data.noise_sigma", "15")
    assert data.simulate and data.noise_sigma == 15


# -------------------------------------------------------------------- the rule on its own


def test_settle_observation_keeps_the_later_of_two_rivals() -> None:
    options = {"image": None, "mask": "m.png", "missing_ratio": 0.5, "per_channel_mask": True}
    mask_later = {
        "data.mask": (2, ""),
        "data.missing_ratio": (1, ""),
        "data.per_channel_mask": (1, ""),
    }
    settled, aside = settle_observation(options, mask_later)
    assert settled["mask"] == "m.png" and settled["missing_ratio"] == 0
    assert settled["per_channel_mask"] is False and aside == []
    ratio_later = {"data.mask": (1, ""), "data.missing_ratio": (2, "")}
    settled, _ = settle_observation(options, ratio_later)
    assert settled["mask"] is None and settled["missing_ratio"] == 0.5


def test_the_python_api_refuses_a_mask_and_a_ratio_naming_the_one_to_drop(holes: Path) -> None:
    with pytest.raises(ConfigError, match=r"drop data\.missing_ratio to use the mask file"):
        SingleImageDataModule(image=str(holes), mask=str(holes), missing_ratio=0.5)
    assert torch.is_tensor(SingleImageDataModule(image=str(holes), mask=str(holes)).mask)


def test_print_config_shows_the_observation_a_fit_makes(
    tmp_path: Path, photo: Path, holes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(CONFIGS / "inpaint.yaml"), "--data.image", str(photo)]
    args += ["--data.mask", str(holes)]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["mask"] == str(holes) and printed["data"]["missing_ratio"] == 0
    saved = tmp_path / "printed.yaml"  # run again from what was printed: the same data
    saved.write_text(yaml.safe_dump({"data": printed["data"]}))
    again = built_data("--model", "InpaintingDIP", "--config", str(saved))
    assert again.mask_path == holes and again.missing_ratio == 0 and not again.simulate
