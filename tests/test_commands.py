"""The ``dip`` command surface: the command list, unknown commands and options, the help of the
Lightning commands, and ``dip validate|test|predict`` on the checkpoint of a fit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, smooth_image, write_png
from PIL import Image
from test_cli import fit_args

from dip_lightning.cli import main

ORDER = [
    "restore",
    "search",
    "experiment",
    "presets",
    "completion",
    "fit",
    "validate",
    "test",
    "predict",
]


def _dip(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dip_lightning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _listed_commands(text: str) -> list[str]:
    block = text.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in block.splitlines()]


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"]], ids=["bare", "--help", "-h"])
def test_dip_lists_every_command_restore_first(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(args) is None
    out = capsys.readouterr().out
    assert out.startswith("usage: dip <command> [options]\n")
    assert _listed_commands(out) == ORDER
    assert "dip <command> --help shows the options of a command." in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_the_console_script_lists_the_commands() -> None:
    result = _dip("--help")
    assert result.returncode == 0, result.stderr
    assert _listed_commands(result.stdout) == ORDER
    assert "fit,validate,test,predict" not in result.stdout


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("restor", "unknown command 'restor'; did you mean 'restore'?"),
        ("presset", "unknown command 'presset'; did you mean 'presets'?"),
        ("fitt", "unknown command 'fitt'; did you mean 'fit'?"),
        ("xyzzy", f"unknown command 'xyzzy'; the commands: {', '.join(ORDER)}"),
    ],
)
def test_an_unknown_command_suggests_the_closest(
    capsys: pytest.CaptureFixture[str], command: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "photo.png"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message} (see dip --help)\n"


def test_an_unknown_command_through_the_console_script() -> None:
    result = _dip("restor", "photo.png")
    assert result.returncode == 2
    assert (
        result.stderr
        == "error: unknown command 'restor'; did you mean 'restore'? (see dip --help)\n"
    )


def test_fit_help_puts_data_and_model_first_in_plain_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dip fit [-c CONFIG] [--data.NAME VALUE]")
    sections = re.findall(r"^(\S[^\n]*):$", out, flags=re.MULTILINE)
    assert sections[:2] == ["usage", "options"] or sections[0] == "options", sections
    names = [s.split(":")[0] for s in sections]
    assert names.index("data") < names.index("model") < names.index("dip fit")
    assert names.index("dip fit") < names.index("trainer") == len(names) - 1
    assert out.index("--data.image") < out.index("--trainer.accelerator")
    for markup in ("``", ":func:", ":class:", ":mod:", "%%", "Literal[", "typing."):
        assert markup not in out, markup
    assert "fit a task to one image from a config" in out
    assert "continuing in its run folder" in out  # --ckpt_path says what resuming does


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--trainer.max_stepz", "3"],
            "unrecognized arguments: --trainer.max_stepz 3; did you mean --trainer.max_steps?",
        ),
        (
            ["--model.init_args.ema_decy", "0.9"],
            """Parser key "model": Option 'ema_decy' is not accepted; """
            "did you mean model.init_args.ema_decay?",
        ),
        (
            ["--model.init_args.perturbation", "fresch"],
            'Parser key "model": Parser key "perturbation": Expected a value in {fresh, bank}. '
            "Got value: fresch; did you mean fresh?",
        ),
    ],
    ids=["option", "model key", "choice"],
)
def test_a_mistyped_option_or_choice_suggests_the_closest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path / "out", "--trainer.max_steps", "2", *extra))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message} (see dip fit --help)\n"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- validate, test, predict


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a tiny fit with held-out pixels and a held-out stopping criterion."""
    root = tmp_path_factory.mktemp("fitted")
    image = write_png(root / "rgb.png", smooth_image(37, 45))
    main(
        fit_args(
            root,
            "--data.image",
            str(image),
            "--data.simulate",
            "true",
            "--trainer.max_steps",
            "40",
            "--model.init_args.holdout_fraction",
            "0.1",
            "--trainer.callbacks+=dip_lightning.callbacks.HeldoutStopping",
            "--trainer.callbacks.patience=1000",
            "--trainer.callbacks.min_steps=5",
        )
    )
    return root / "lightning_logs" / "run"


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_a_checkpoint_command_without_a_checkpoint_says_what_to_give(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", str(REPO / "configs" / "denoise.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: dip {command} needs --ckpt_path: the checkpoint of a fit, e.g. "
        "lightning_logs/version_0/checkpoints/last.ckpt\n"
    )


def test_validate_without_a_checkpoint_through_the_console_script() -> None:
    result = _dip("validate", "--config", "denoise")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: dip validate needs --ckpt_path")


def test_predict_writes_the_image_the_fit_wrote(
    fitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = fitted / "checkpoints" / "last.ckpt"
    metrics = json.loads((fitted / "metrics.json").read_text())
    step = metrics["selected_step"]
    assert 5 < step <= 40
    main(["predict", "--ckpt_path", str(checkpoint)])  # the run's own config.yaml
    out = capsys.readouterr().out
    predicted = fitted / "predicted.png"
    assert out == f"wrote {predicted} (the image of step {step} of {checkpoint} at step 40)\n"
    written = np.array(Image.open(fitted / "restored.png"))
    assert np.array_equal(np.array(Image.open(predicted)), written)

    elsewhere = fitted.parents[1] / "chosen.png"
    main(["predict", "--ckpt_path", str(checkpoint), "-o", str(elsewhere)])
    assert capsys.readouterr().out.startswith(f"wrote {elsewhere} ")
    assert np.array_equal(np.array(Image.open(elsewhere)), written)


def _scores(out: str) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in re.findall(
            r"^  (\S+)\s+(-?[\d.]+(?:e[-+]?\d+)?)$", out, flags=re.MULTILINE
        )
    }


def test_test_reports_the_psnr_and_ssim_of_the_fit(
    fitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = fitted / "checkpoints" / "last.ckpt"
    metrics = json.loads((fitted / "metrics.json").read_text())
    main(["test", "--ckpt_path", str(checkpoint)])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        f"{checkpoint} at step 40 (its image: step {metrics['selected_step']})"
    )
    scores = _scores(out)
    assert scores.keys() == {"test/psnr", "test/ssim", "test/input_psnr"}
    assert scores["test/psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)
    assert scores["test/ssim"] == pytest.approx(metrics["ssim"], abs=1e-4)
    assert scores["test/input_psnr"] == pytest.approx(metrics["input_psnr"], abs=1e-4)


def test_test_takes_the_clean_image_given(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = fitted / "checkpoints" / "last.ckpt"
    restored = fitted / "restored.png"
    main(["test", "--ckpt_path", str(checkpoint), "--data.clean", str(restored)])
    scores = _scores(capsys.readouterr().out)
    assert scores["test/psnr"] > 54  # the restored image against itself, rounded to 8 bits
    assert scores["test/ssim"] == pytest.approx(1.0, abs=1e-3)


def test_validate_reports_the_held_out_score(
    fitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = fitted / "checkpoints" / "last.ckpt"
    metrics = json.loads((fitted / "metrics.json").read_text())
    main(["validate", "--ckpt_path", str(checkpoint)])
    scores = _scores(capsys.readouterr().out)
    assert scores.keys() == {"val/heldout_mse", "val/heldout_psnr"}
    chosen = metrics["criteria"]["heldout"]
    # the criterion's score is the held-out MSE of the image it chose (before clamping to [0, 1])
    assert scores["val/heldout_mse"] == pytest.approx(chosen["score"], rel=0.05)
    assert scores["val/heldout_psnr"] == pytest.approx(
        -10 * np.log10(scores["val/heldout_mse"]), abs=1e-3
    )


def test_a_checkpoint_of_another_network_is_one_line(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = fitted / "checkpoints" / "last.ckpt"
    config = REPO / "configs" / "denoise.yaml"
    saved = (fitted / "config.yaml").read_text()
    image = str(fitted.parents[1] / "rgb.png")
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["fit", "--config", str(config), "--data.image", image, "--ckpt_path", str(checkpoint)]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"error: checkpoint {checkpoint} does not match the configuration ({config}): "
    )
    assert err[0].endswith(f"; give no --config to use its run's own ({fitted / 'config.yaml'})")
    assert (fitted / "config.yaml").read_text() == saved  # the run is left as it was
    assert sorted(p.name for p in fitted.parent.iterdir()) == ["run"]


def test_a_missing_checkpoint_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", "denoise", "--ckpt_path", "nowhere/last.ckpt"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err
        == "error: checkpoint not found: nowhere/last.ckpt; check the path\n"
    )
