"""``dip restore``: end to end on tiny images for each task, several inputs, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_image, write_png
from PIL import Image

from dip_lightning.cli import main
from dip_lightning.restore import plan

#: a tiny network and a short fit, so each restore takes seconds
FAST = ["--max-steps", "12", "--patience", "4", "--quiet"]


@pytest.fixture(autouse=True)
def tiny_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the real presets with a network small enough for the tests."""
    import dip_lightning.restore as restore

    original = restore.fit_arguments

    def small(cfg, job, run_dir):  # type: ignore[no-untyped-def]
        return [
            *original(cfg, job, run_dir),
            "--model.init_args.net.init_args.channels_down=8",
            "--model.init_args.net.init_args.channels_up=8",
            "--model.init_args.net.init_args.channels_skip=2",
            "--model.init_args.net.init_args.levels=2",
            "--model.init_args.net.init_args.upsample_mode=bilinear",
            "--trainer.callbacks.min_steps=2",
        ]

    monkeypatch.setattr(restore, "fit_arguments", small)


def noisy(path: Path, height: int = 23, width: int = 29, channels: int = 3) -> Path:
    image = smooth_image(height, width, channels).astype(np.float64)
    rng = np.random.default_rng(0)
    noisy_image = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
    return write_png(path, noisy_image)


def run(args: list[str]) -> int:
    try:
        main(["restore", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("task", ["denoise", "jpeg"])
def test_restore_keeps_size_mode_and_writes_metrics(tmp_path: Path, task: str) -> None:
    source = noisy(tmp_path / "in.png", channels=1)
    out, metrics = tmp_path / "out.png", tmp_path / "m.json"
    assert run([str(source), "-o", str(out), "--task", task, "--metrics", str(metrics), *FAST]) == 0
    with Image.open(out) as image:
        assert image.size == (29, 23) and image.mode == "L"
    values = json.loads(metrics.read_text())
    assert 1 <= values["selected_step"] <= values["steps"] <= 12
    assert values["stopping"] == "heldout" and values["output"] == str(out)
    assert "psnr" not in values  # no reference given


def test_restore_with_a_clean_reference_reports_psnr(tmp_path: Path) -> None:
    source = noisy(tmp_path / "in.png")
    clean = write_png(tmp_path / "clean.png", smooth_image(23, 29, 3))
    out, metrics = tmp_path / "out.png", tmp_path / "m.json"
    args = [str(source), "-o", str(out), "--clean", str(clean), "--metrics", str(metrics)]
    assert (
        run([*args, "--criterion", "ema-variance", "--seed", "3", *FAST, "--max-steps", "30"]) == 0
    )
    values = json.loads(metrics.read_text())
    assert values["stopping"] == "ema_variance"
    assert values["psnr"] > 0 and values["input_psnr"] > 0
    assert values["criteria"]["ema_variance"]["selected_step"] == values["selected_step"]


def test_restore_inpaints_through_a_mask(tmp_path: Path) -> None:
    source = write_png(tmp_path / "in.png", smooth_image(23, 29, 3))
    rows, cols = np.indices((23, 29)) // 3
    mask = write_png(tmp_path / "mask.png", np.where((rows + cols) % 2, 255, 0).astype(np.uint8))
    out = tmp_path / "out.png"
    assert run([str(source), "-o", str(out), "--task", "inpaint", "--mask", str(mask), *FAST]) == 0
    with Image.open(out) as image:
        assert image.size == (29, 23)


def test_restore_super_resolves_by_the_scale(tmp_path: Path) -> None:
    source = write_png(tmp_path / "in.png", smooth_image(9, 11, 3))
    out = tmp_path / "out.png"
    args = [str(source), "-o", str(out), "--task", "super-resolution", "--scale", "2", *FAST]
    assert run(args) == 0
    with Image.open(out) as image:
        assert image.size == (22, 18)


def test_restore_with_a_flash_guide(tmp_path: Path) -> None:
    source = noisy(tmp_path / "noflash.png")
    flash = write_png(tmp_path / "flash.png", smooth_image(23, 29, 3, seed=4))
    out = tmp_path / "out.png"
    assert run([str(source), "-o", str(out), "--task", "flash", "--flash", str(flash), *FAST]) == 0
    assert out.is_file()


def test_several_inputs_and_a_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    noisy(folder / "a.png")
    noisy(folder / "b.png", 17, 19)
    (folder / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "restored"
    code = run([str(folder), "-o", str(out), *FAST])
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    with Image.open(out / "b.png") as image:
        assert image.size == (19, 17)
    err = capsys.readouterr().err.strip().splitlines()
    assert any("broken.png" in line and line.startswith("error:") for line in err)
    assert err[-1] == "error: 1 of 3 inputs failed"
    assert "Traceback" not in "\n".join(err)


def test_outputs_are_named_after_inputs(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "cat.png", tmp_path / "y" / "cat.jpg"
    jobs = plan([str(a), str(b), str(tmp_path / "dog.tif")], str(tmp_path / "out"))
    assert [j.output.name for j in jobs] == ["cat_png.png", "cat_jpg.png", "dog.png"]
    assert plan([str(a)], str(tmp_path / "one.tif"))[0].output.name == "one.tif"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{in}", "-o", "{in}"], "is an input"),
        (["{in}", "-o", "{existing}"], "--overwrite"),
        (["{in}", "-o", "{dir}/out.xyz"], "unsupported extension"),
        (["{dir}/missing.png", "-o", "{dir}/o.png"], "no such file"),
        (["{in}", "-o", "{dir}/o.png", "--task", "inpaint"], "needs --mask"),
        (["{in}", "-o", "{dir}/o.png", "--task", "flash"], "needs --flash"),
        (["{in}", "-o", "{dir}/o.png", "--scale", "2"], "--scale is for"),
        (["{in}", "-o", "{dir}/o.png", "--task", "blur"], "task"),
        (["{in}", "-o", "{dir}/o.png", "--max-steps", "0"], "max-steps"),
        (["{in}", "-o", "{dir}/o.png", "--patience", "-3"], "patience"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    source = noisy(tmp_path / "in.png")
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"keep me")
    values = {"in": str(source), "existing": str(existing), "dir": str(tmp_path)}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run(FAST + [a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert existing.read_bytes() == b"keep me"


def test_overwrite_replaces_an_existing_output(tmp_path: Path) -> None:
    source = noisy(tmp_path / "in.png")
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    assert run([str(source), "-o", str(out), "--overwrite", *FAST]) == 0
    with Image.open(out) as image:
        assert image.size == (29, 23)


def _fit_arguments(tmp_path: Path, task: str, extra: list[str]) -> list[str]:
    """``dip restore``'s fit arguments for a small image (``MASK`` in ``extra``: a mask file)."""
    from dip_lightning.restore import fit_arguments, parse

    image = noisy(tmp_path / "in.png")
    mask = write_png(tmp_path / "mask.png", np.full((23, 29), 255, dtype=np.uint8))
    extra = [str(mask) if e == "MASK" else e for e in extra]
    cfg = parse([str(image), "-o", str(tmp_path / "out.png"), "--task", task, *extra])
    return fit_arguments(cfg, plan(cfg.inputs, cfg.output)[0], tmp_path / "run")


@pytest.mark.parametrize(
    ("task", "extra", "expected"),
    [
        ("denoise", [], 200),
        ("inpaint", ["--mask", "MASK"], None),  # the variance criterion, its own patience
        ("inpaint", ["--mask", "MASK", "--criterion", "heldout"], 1000),
        ("super-resolution", ["--scale", "2"], 1000),
        ("denoise", ["--patience", "50"], 50),
        ("denoise", ["--criterion", "variance"], None),
    ],
)
def test_the_patience_follows_the_task_unless_given(
    tmp_path: Path, task: str, extra: list[str], expected: int | None
) -> None:
    """Held-out stopping waits longer where the fit keeps improving slowly (no noise to fit)."""
    args = _fit_arguments(tmp_path, task, extra)
    patience = [a.split("=", 1)[1] for a in args if a.startswith("--trainer.callbacks.patience=")]
    assert patience == ([] if expected is None else [str(expected)])


@pytest.mark.parametrize(
    ("task", "extra", "callback"),
    [
        ("denoise", [], "HeldoutStopping"),
        ("inpaint", ["--mask", "MASK"], "WindowedVariance"),
        ("inpaint", ["--mask", "MASK", "--criterion", "heldout"], "HeldoutStopping"),
    ],
)
def test_the_criterion_follows_the_task_unless_given(
    tmp_path: Path, task: str, extra: list[str], callback: str
) -> None:
    args = _fit_arguments(tmp_path, task, extra)
    added = [a for a in args if a.startswith("--trainer.callbacks+=")]
    assert added == [f"--trainer.callbacks+=dip_lightning.callbacks.{callback}"]
    holdout = "--model.init_args.holdout_fraction=0.05"
    assert (holdout in args) == (callback == "HeldoutStopping")
