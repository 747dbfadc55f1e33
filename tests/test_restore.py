"""``dip restore``: end to end on tiny images for each task, several inputs, bad inputs."""

from __future__ import annotations

import json
import re
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


def file_psnr(path: Path, reference: Path) -> float:
    """PSNR in dB of two 8-bit image files."""
    with Image.open(path) as a, Image.open(reference) as b:
        error = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean(error**2)))


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
    fit = ["--criterion", "ema-variance", "--seed", "3", *FAST, "--max-steps", "150"]
    assert run([*args, *fit, "--patience", "40"]) == 0
    values = json.loads(metrics.read_text())
    assert values["stopping"] == "ema_variance"
    # the reported values are those of the files, and the restored image gains over the input
    assert values["psnr"] == pytest.approx(file_psnr(out, clean), abs=0.1)
    assert values["input_psnr"] == pytest.approx(file_psnr(source, clean), abs=0.01)
    # 0.5 to 3.9 dB over model seeds 0-5 with this tiny network and a patience of 40 steps
    assert values["psnr"] > values["input_psnr"] + 0.3
    assert values["criteria"]["ema_variance"]["selected_step"] == values["selected_step"]


def test_restore_inpaints_through_a_mask(tmp_path: Path) -> None:
    clean = smooth_image(23, 29, 3)
    rows, cols = np.indices((23, 29)) // 3
    known = (rows + cols) % 2 == 1
    mask = write_png(tmp_path / "mask.png", np.where(known, 255, 0).astype(np.uint8))
    source = write_png(tmp_path / "in.png", np.where(known[..., None], clean, 0).astype(np.uint8))
    out = tmp_path / "out.png"
    assert run([str(source), "-o", str(out), "--task", "inpaint", "--mask", str(mask), *FAST]) == 0
    with Image.open(out) as image:
        assert image.size == (29, 23)
        restored = np.asarray(image, dtype=np.float64)
    # the holes are filled far closer to the hidden pixels than the black of the input
    error = np.abs(restored - clean)[~known].mean()
    assert error < 0.4 * np.abs(np.asarray(clean, dtype=np.float64))[~known].mean(), error


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
    fit = [*FAST, "--max-steps", "200", "--patience", "60"]
    assert run([str(source), "-o", str(out), "--task", "flash", "--flash", str(flash), *fit]) == 0
    clean = tmp_path / "clean.png"
    write_png(clean, smooth_image(23, 29, 3))
    assert file_psnr(out, clean) > file_psnr(source, clean) + 3


def test_an_ensemble_is_the_mean_of_separately_seeded_runs(tmp_path: Path) -> None:
    """``--ensemble 2 --seed 3`` writes the mean of what ``--seed 3`` and ``--seed 4`` write
    (rounded to 8 bits), and reports each member and the PSNR of the mean."""
    source = noisy(tmp_path / "in.png")
    clean = write_png(tmp_path / "clean.png", smooth_image(23, 29, 3))
    members = []
    for seed in ("3", "4"):
        out = tmp_path / f"seed{seed}.png"
        assert run([str(source), "-o", str(out), "--seed", seed, *FAST]) == 0
        members.append(np.asarray(Image.open(out), dtype=np.float64))
    assert not np.array_equal(members[0], members[1])  # the seeds differ
    out, metrics = tmp_path / "mean.png", tmp_path / "m.json"
    ensemble = ["--ensemble", "2", "--seed", "3", "--clean", str(clean), "--metrics", str(metrics)]
    assert run([str(source), "-o", str(out), *ensemble, *FAST]) == 0
    written = np.asarray(Image.open(out), dtype=np.float64)
    total = members[0] + members[1]
    assert np.abs(written - total / 2).max() <= 0.5  # the mean, rounded
    even = total % 2 == 0
    assert np.array_equal(written[even], total[even] / 2)
    values = json.loads(metrics.read_text())
    assert values["ensemble"] == 2 and [m["seed"] for m in values["members"]] == [3, 4]
    assert values["steps"] == sum(m["steps"] for m in values["members"])
    assert values["psnr"] == pytest.approx(file_psnr(out, clean), abs=0.01)
    assert not list(tmp_path.glob("**/dip-restore-*"))
    # the Python API takes the same option
    from dip_lightning.restore import restore_image

    api = tmp_path / "api.png"
    restore_image(source, api, ensemble=2, seed=3, max_steps=12, patience=4, progress=False)
    assert api.read_bytes() == out.read_bytes()


def test_several_inputs_and_a_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    noisy(folder / "a.png")
    noisy(folder / "b.png", 17, 19)
    (folder / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "restored"
    code = run([str(folder), "-o", str(out), *FAST])
    assert code == 2
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    with Image.open(out / "b.png") as image:
        assert image.size == (19, 17)
    err = capsys.readouterr().err.strip().splitlines()
    assert any("broken.png" in line and line.startswith("error:") for line in err)
    assert err[-2:] == [
        f"2 restored, 0 skipped, 1 failed of 3 inputs; manifest {out / 'manifest.json'}",
        "error: 1 of 3 inputs failed",
    ]
    assert "Traceback" not in "\n".join(err)
    entries = json.loads((out / "manifest.json").read_text())["inputs"]
    statuses = {Path(entry["output"]).name: entry["status"] for entry in entries}
    assert statuses["a.png"] == statuses["b.png"] == "restored"
    assert statuses["broken.png"].startswith(f"failed: cannot read image: {folder / 'broken.png'}")


def test_outputs_are_named_after_inputs(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "cat.png", tmp_path / "y" / "cat.jpg"
    jobs = plan([str(a), str(b), str(tmp_path / "dog.tif")], str(tmp_path / "out"))
    assert [j.output.name for j in jobs] == ["cat_png.png", "cat_jpg.png", "dog.png"]
    assert plan([str(a)], str(tmp_path / "one.tif"))[0].output.name == "one.tif"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{in}", "-o", "{in}"], "the output {in} is an input; choose another output path"),
        (
            ["{in}", "-o", "{existing}"],
            "{existing} exists and is not a restored image of {in} (not an image); pass "
            "--overwrite to replace it",
        ),
        (["{in}", "-o", "{dir}/out.xyz"], "unsupported extension"),
        (
            ["{dir}/missing.png", "-o", "{dir}/o.png"],
            "image not found: {dir}/missing.png; check the path",
        ),
        (["{in}", "-o", "{dir}/o.png", "--task", "inpaint"], "needs --mask"),
        (["{in}", "-o", "{dir}/o.png", "--task", "flash"], "needs --flash"),
        (["{in}", "-o", "{dir}/o.png", "--scale", "2"], "--scale is for"),
        (["{in}", "-o", "{dir}/o.png", "--task", "blur"], "task"),
        (["{in}", "-o", "{dir}/o.png", "--max-steps", "0"], "max-steps"),
        (["{in}", "-o", "{dir}/o.png", "--patience", "-3"], "patience"),
        (["{in}", "-o", "{dir}/o.png", "--ensemble", "0"], "--ensemble 0 is out of range"),
        (
            ["{in}", "-o", "{dir}/o.png", "--ensemble", "2", "--resume", "{existing}"],
            "--ensemble fits one input at a time, from the start; leave out --resume",
        ),
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
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert message.format(**values) in err, err
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
    added = [a for a in args if a.startswith("--trainer.callbacks+=") and "progress" not in a]
    assert added == [f"--trainer.callbacks+=dip_lightning.callbacks.{callback}"]
    holdout = "--model.init_args.holdout_fraction=0.05"
    assert (holdout in args) == (callback == "HeldoutStopping")


# ------------------------------------------------------------------ the progress bar


def test_the_bar_counts_to_where_the_criterion_stops_not_to_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its total (so its ETA) is the step at which the criterion stops if nothing better comes,
    and it shows the best step and the patience left; the fit ends long before --max-steps."""
    import dip_lightning.restore as restore

    tiny = restore.fit_arguments
    monkeypatch.setattr(
        restore,
        "fit_arguments",
        lambda *a: [*tiny(*a), "--trainer.log_every_n_steps=2"],
    )
    source = noisy(tmp_path / "in.png")
    out, metrics_path = tmp_path / "out.png", tmp_path / "m.json"
    cap = 400
    args = [str(source), "-o", str(out), "--metrics", str(metrics_path), "--patience", "6"]
    assert run([*args, "--max-steps", str(cap)]) == 0
    metrics = json.loads(metrics_path.read_text())
    steps, selected = metrics["steps"], metrics["selected_step"]
    assert metrics["criteria"]["heldout"]["would_stop_step"] is not None and steps < cap
    bars = [line for line in capsys.readouterr().out.replace("\r", "\n").splitlines() if line]
    totals = [int(m.group(1)) for m in map(re.compile(r"\d+/(\d+) \[").search, bars) if m]
    assert bars and totals and max(totals) < cap  # never the step cap
    assert all(line.startswith("restoring:") for line in bars)
    # min_steps 2, patience 6: before a step is scored the best can be step 3 at the soonest,
    # so the fit can end at step 9, at the first step the patience is checked: 10 (every 2)
    assert totals[0] == 10
    assert "best -, patience 6" in next(line for line in bars if "best" in line)
    assert f"{steps}/{steps} [" in bars[-1] and f"best {selected}, patience 0" in bars[-1]


def test_the_outlook_of_one_fit_and_of_a_batch() -> None:
    """The bar's numbers: the projected end (at the criterion's check steps, at most the cap),
    the best step and the patience left, and for a batch the last image to stop."""
    from types import SimpleNamespace

    import torch

    from dip_lightning.callbacks import HeldoutStopping, WindowedVariance
    from dip_lightning.callbacks.progress import outlook

    def criterion(kind: type, best: int, every: int, **kwargs: int) -> HeldoutStopping:
        made = kind(check_every_n_steps=every, **kwargs)
        made.best_step = torch.tensor(best)
        made.read_best_step = best  # as read on the host at the last log step
        return made

    a = criterion(HeldoutStopping, 412, 25, patience=200)
    trainer = SimpleNamespace(callbacks=[a], global_step=500, max_steps=3000)
    seen = outlook(trainer)  # type: ignore[arg-type]
    assert seen is not None
    assert (seen.end, seen.best_step, seen.patience_left(500)) == (625, 412, 112)
    assert seen.describe(500) == "best 412, patience 112"
    assert seen.describe(550) == "best 412, patience 62"  # counts down between reads
    trainer.max_steps = 600
    assert outlook(trainer).end == 600  # type: ignore[arg-type, union-attr]
    none_yet = criterion(WindowedVariance, 0, 1, patience=1000, min_steps=100)
    trainer = SimpleNamespace(callbacks=[none_yet], global_step=40, max_steps=3000)
    assert outlook(trainer).end == 1101  # type: ignore[arg-type, union-attr]
    assert outlook(trainer).describe(40) == "best -, patience 1000"  # type: ignore[arg-type, union-attr]

    done = criterion(HeldoutStopping, 300, 1, patience=200)
    done.would_stop_step = 500
    running = criterion(HeldoutStopping, 450, 1, patience=200)
    members = [SimpleNamespace(callbacks=[done]), SimpleNamespace(callbacks=[running])]
    batched = SimpleNamespace(trainers=members)
    trainer = SimpleNamespace(callbacks=[batched], global_step=520, max_steps=3000)
    seen = outlook(trainer)  # type: ignore[arg-type]
    assert seen is not None and seen.end == 650
    assert seen.describe(520) == "stopped 1 of 2, patience 130"
    assert outlook(SimpleNamespace(callbacks=[], global_step=0, max_steps=10)) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------ options read as parsed


def test_the_scale_is_the_parsed_value_not_text_in_the_command_line(tmp_path: Path) -> None:
    """A file name holding "--scale" is no --scale; a scale from --config is one."""
    from dip_lightning.errors import ConfigError
    from dip_lightning.restore import fit_arguments, parse

    source = noisy(tmp_path / "x--scale2.png")
    out = str(tmp_path / "out.png")
    cfg = parse([str(source), "-o", out])
    assert cfg.task == "denoise" and cfg.scale is None
    config = tmp_path / "options.yaml"
    config.write_text("task: denoise\nscale: 2\n")
    with pytest.raises(ConfigError, match=r"^--scale is for --task super-resolution, not denoise$"):
        parse(["--config", str(config), str(source), "-o", out])
    config.write_text("task: super-resolution\nscale: 2\n")
    cfg = parse(["--config", str(config), str(source), "-o", out])
    assert "--data.scale=2" in fit_arguments(cfg, plan(cfg.inputs, cfg.output)[0], tmp_path)
    cfg = parse([str(source), "-o", out, "--task", "super-resolution"])
    assert "--data.scale=4" in fit_arguments(cfg, plan(cfg.inputs, cfg.output)[0], tmp_path)


def _jpeg(path: Path, height: int, width: int, orientation: int | None = None) -> Path:
    """A JPEG stored ``height`` x ``width``, with an EXIF orientation tag when given."""
    image = Image.fromarray(smooth_image(height, width))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)
    return path


def test_inputs_are_batched_by_their_size_after_exif_rotation(tmp_path: Path) -> None:
    """A JPEG turned by its EXIF orientation is fitted turned, so it goes with the images of
    its turned size, and the batch of the others is not failed by it."""
    from dip_lightning.restore import batches

    folder = tmp_path / "photos"
    folder.mkdir()
    _jpeg(folder / "a.jpg", 13, 17)
    _jpeg(folder / "b.jpg", 17, 13, orientation=6)  # shown 13 high, 17 wide, as a.jpg
    _jpeg(folder / "c.jpg", 13, 17, orientation=8)  # shown 17 high, 13 wide
    jobs = plan([str(folder)], str(tmp_path / "out"))
    grouped = [[job.input.name for job in batch] for batch in batches(jobs, 2)]
    assert grouped == [["a.jpg", "b.jpg"], ["c.jpg"]]
    out = tmp_path / "out"
    assert run([str(folder), "-o", str(out), "--batch-size", "2", *FAST]) == 0
    sizes = {}
    for name in ("a", "b", "c"):
        with Image.open(out / f"{name}.png") as image:
            sizes[name] = image.size
    assert sizes == {"a": (17, 13), "b": (17, 13), "c": (13, 17)}


def test_a_pool_of_workers_takes_the_largest_inputs_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--workers``, the inputs go out largest first (input order among equals, an
    unreadable one last), so the shortest fits are left for the end of the folder; one
    worker keeps the input order."""
    from dip_lightning import restore_parallel
    from dip_lightning.restore import largest_first

    folder = tmp_path / "scans"
    folder.mkdir()
    for name, (height, width) in {"a": (9, 7), "b": (15, 11), "c": (9, 7), "d": (11, 13)}.items():
        write_png(folder / f"{name}.png", smooth_image(height, width))
    (folder / "e.png").write_bytes(b"not an image")
    jobs = plan([str(folder)], str(tmp_path / "out"))
    ordered = [[job.input.name for job in group] for group in largest_first([[j] for j in jobs])]
    assert ordered == [["b.png"], ["d.png"], ["a.png"], ["c.png"], ["e.png"]]

    handed_out: list[list[str]] = []

    def record(cfg, batches, *args, **kwargs):  # type: ignore[no-untyped-def]
        handed_out.extend([job.input.name for job in batch] for batch in batches)

    monkeypatch.setattr(restore_parallel, "run_workers", record)
    run([str(folder), "-o", str(tmp_path / "out"), "--workers", "2", *FAST])
    assert handed_out == ordered


# ------------------------------------------------------------------ what a user reads


def test_a_mask_that_is_not_black_and_white_is_thresholded_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_png(tmp_path / "in.png", smooth_image(23, 29, 3))
    rows, cols = np.indices((23, 29)) // 4
    mask = np.where((rows + cols) % 2, 255, 0).astype(np.uint8)
    mask[mask == 255] = np.where(np.arange((mask == 255).sum()) % 3 == 0, 250, 255)
    mask[:2, :] = np.where(mask[:2, :] == 0, 4, mask[:2, :])  # near black, near white
    path = write_png(tmp_path / "holes.png", mask)
    not_binary = int(((mask != 0) & (mask != 255)).sum())
    assert not_binary > 0
    out = tmp_path / "out.png"
    assert run([str(source), "-o", str(out), "--task", "inpaint", "--mask", str(path), *FAST]) == 0
    err = capsys.readouterr().err.splitlines()
    assert (
        f"warning: mask {path} is not black and white: {not_binary} of its {23 * 29} pixels "
        "are neither 0 nor 1; thresholded at 0.5 (0.5 and above: known)"
    ) in err
    write_png(path, np.where((rows + cols) % 2, 255, 0).astype(np.uint8))
    assert (
        run(
            [
                str(source),
                "-o",
                str(out),
                "--task",
                "inpaint",
                "--mask",
                str(path),
                "--overwrite",
                *FAST,
            ]
        )
        == 0
    )
    assert "not black and white" not in capsys.readouterr().err


def test_the_help_says_each_default_in_words_a_person_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import yaml

    from dip_lightning.presets import list_presets
    from dip_lightning.restore import RESTORE_PRESETS

    with pytest.raises(SystemExit) as exit_info:
        main(["restore", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    presets = list_presets()
    caps = {
        preset: {
            task: yaml.safe_load(presets[name].read_text())["trainer"]["max_steps"]
            for task, name in tasks.items()
        }
        for preset, tasks in RESTORE_PRESETS.items()
    }
    fast, paper = caps["fast"], caps["paper"]
    assert (
        "--max_steps MAX_STEPS, --max-steps MAX_STEPS At most this many steps, in case the "
        "criterion has not stopped the fit before (default: the preset's cap; "
        f"fast: {fast['denoise']}, flash {fast['flash']}; paper: {paper['denoise']}, "
        f"jpeg {paper['jpeg']}, inpaint {paper['inpaint']}, super-resolution "
        f"{paper['super-resolution']}, flash {paper['flash']}). (type: int | null)"
    ) in text
    assert "--device {auto,cpu,cuda} Where to fit: cuda (a GPU), cpu, or auto" in text
    assert "--scale SCALE super-resolution: the factor, 2, 4 or 8 (default: 4). (type:" in text
    for markup in ("%%", "``", ":func:", ":class:", ":mod:"):
        assert markup not in text


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("flags", [{"avx2"}, {"avx512f", "avx512_bf16"}])
def test_precision_auto_follows_the_hardware_and_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flags: set[str],
) -> None:
    """``--precision auto`` asks the hardware (here a CPU with the given flags) and prints one
    line with its choice; without it the preset's precision is kept."""
    import logging

    import dip_lightning.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda *args: frozenset(flags))
    expected = "bf16-mixed" if "avx512_bf16" in flags else "32-true"
    with caplog.at_level(logging.INFO, logger="dip_lightning"):
        args = _fit_arguments(tmp_path, "denoise", ["--precision", "auto", "--device", "cpu"])
    assert [a for a in args if a.startswith("--trainer.precision=")] == [
        f"--trainer.precision={expected}"
    ]
    assert [r.getMessage() for r in caplog.records if "precision" in r.getMessage()] == [
        str(precision.cpu_choice(frozenset(flags)))
    ]
    plain = _fit_arguments(tmp_path, "denoise", ["--device", "cpu"])
    assert not [a for a in plain if a.startswith("--trainer.precision=")]


def test_a_missing_image_gets_the_same_line_from_fit_and_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "holiday.png"
    lines = []
    for args in (
        ["fit", "--config", "denoise", "--data.image", str(missing)],
        ["restore", str(missing), "-o", str(tmp_path / "out.png")],
    ):
        try:
            main(args)
        except SystemExit as exc:
            assert exc.code == 2
        lines.append(capsys.readouterr().err.strip())
    assert lines == [f"error: image not found: {missing}; check the path"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []
