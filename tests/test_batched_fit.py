"""Batched fitting through ``dip fit --batch.*`` and ``dip restore --batch-size``: each image's
result equals its separate fit, each keeps its own state, stops and outputs by itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, smooth_image, write_png
from PIL import Image

from dip_lightning.callbacks import PeakPSNR
from dip_lightning.cli import DIPCLI, main
from dip_lightning.restore import Job, batches
from dip_lightning.tasks.batched import BatchedCallbacks, BatchedDIP, batch_names

#: a tiny network in float64, and a guard that fires now and then at this learning rate
TINY = [
    "--config",
    str(CONFIGS / "denoise.yaml"),
    "--data.simulate=true",  # the config's noise on each clean test image
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.precision=64-true",
    "--model.init_args.net.init_args.channels_down=8",
    "--model.init_args.net.init_args.channels_up=8",
    "--model.init_args.net.init_args.channels_skip=2",
    "--model.init_args.net.init_args.levels=2",
    "--model.init_args.lr=0.3",
    "--model.init_args.guard_drop_db=0.5",
    "--model.init_args.max_recoveries=null",
]


def images(tmp_path: Path, count: int, height: int = 19, width: int = 25) -> list[Path]:
    return [
        write_png(tmp_path / f"im{i}.png", smooth_image(height, width, seed=i))
        for i in range(count)
    ]


def fit(args: list[str], root: Path) -> DIPCLI:
    cli = DIPCLI(args=[*TINY, *args, f"--trainer.default_root_dir={root}"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


def test_a_batched_fit_equals_the_separate_fits(tmp_path: Path) -> None:
    paths = images(tmp_path, 2)
    # a rolled-back step restores the moments too, so at lr 0.3 a network whose guard fired
    # keeps diverging: at 0.1 and 0.2 dB the guard fires now and then, on some networks only
    steps = [
        "--trainer.max_steps=25",
        "--model.init_args.lr=0.1",
        "--model.init_args.guard_drop_db=0.2",
    ]
    batch = [f"--batch.images={json.dumps([str(p) for p in paths])}", "--batch.seeds=2", *steps]
    batched = fit(batch, tmp_path / "batched").model
    assert isinstance(batched, BatchedDIP)
    assert batched.names == ["im0_seed0", "im0_seed1", "im1_seed0", "im1_seed1"]
    members = batched.dip_members()
    separate = [
        fit([f"--data.image={path}", f"--model.init_args.seed={seed}", *steps], tmp_path / "one")
        for path in paths
        for seed in (0, 1)
    ]
    assert batched.grouped is not None
    for index, (member, single) in enumerate(zip(members, separate, strict=True)):
        # the last output and the parameters after 25 steps (the average is mostly step 1's)
        assert member.last_output.dtype == torch.float64
        torch.testing.assert_close(member.last_output, single.model.last_output, rtol=0, atol=1e-9)
        own = single.model.net.state_dict()
        for key, value in batched.grouped.state_dict_of(index).items():
            torch.testing.assert_close(value, own[key], rtol=0, atol=1e-8, msg=key)
        expected = single.model.restored_batch()
        torch.testing.assert_close(member.restored_batch(), expected, rtol=0, atol=1e-9)
        assert int(member.recoveries) == int(single.model.recoveries)
        assert int(member.peak_step) == int(single.model.peak_step)
    # the guard rolled back some network's steps, and only that network's
    assert sum(int(m.recoveries) for m in members) > 0
    assert len({int(m.recoveries) for m in members}) > 1
    # the networks differ: the seeds and the images give four different outputs
    outputs = [m.restored_batch() for m in members]
    assert all(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_a_halted_image_keeps_its_network_and_output(tmp_path: Path) -> None:
    paths = images(tmp_path, 2)
    args = [f"--batch.images={json.dumps([str(p) for p in paths])}", "--trainer.max_steps=6"]
    cli = DIPCLI(args=[*TINY, *args, f"--trainer.default_root_dir={tmp_path}"], run=False)
    model = cli.model
    assert isinstance(model, BatchedDIP) and model.grouped is not None
    before = {name: p.detach().clone() for name, p in model.grouped.named_parameters()}
    model.dip_members()[0].halted = True
    cli.trainer.fit(model, cli.datamodule)
    first, second = model.dip_members()
    assert torch.count_nonzero(first.last_output) == 0  # no output ever taken in
    for name, param in model.grouped.named_parameters():
        rows = param.shape[0] // 2
        assert torch.equal(param[:rows], before[name][:rows]), name
    alone = fit([f"--data.image={paths[1]}", "--trainer.max_steps=6"], tmp_path / "one")
    torch.testing.assert_close(
        second.restored_batch(), alone.model.restored_batch(), atol=1e-9, rtol=0
    )


def test_dip_fit_writes_each_image_and_a_summary(tmp_path: Path) -> None:
    paths = images(tmp_path, 2)
    args = [
        *TINY,
        "--trainer.precision=32-true",
        f"--batch.images={json.dumps([str(p) for p in paths])}",
        "--trainer.max_steps=4",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    main(["fit", *args])
    run = tmp_path / "run"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["batch"] == 2 and summary["steps"] == 4
    assert set(summary["images"]) == {"im0", "im1"}
    for name in ("im0", "im1"):
        metrics = json.loads((run / name / "metrics.json").read_text())
        assert metrics["image"] == name and metrics["steps"] == 4
        assert metrics["parameters"] == summary["images"][name]["parameters"] > 0
        with Image.open(run / name / "restored.png") as image:
            assert image.size == (25, 19) and image.mode == "RGB"
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_a_resumed_batched_fit_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    paths = images(tmp_path, 2)
    # float32: a float64 resume rounds through float32 once (about 3e-8), batched or not
    batch = [f"--batch.images={json.dumps([str(p) for p in paths])}", "--trainer.precision=32-true"]
    straight = fit([*batch, "--trainer.max_steps=10"], tmp_path / "straight").model
    half = fit([*batch, "--trainer.max_steps=5"], tmp_path / "half")
    checkpoint = tmp_path / "half.ckpt"
    half.trainer.save_checkpoint(checkpoint)
    cli = DIPCLI(
        args=[*TINY, *batch, "--trainer.max_steps=10", f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=checkpoint)
    assert isinstance(cli.model, BatchedDIP) and isinstance(straight, BatchedDIP)
    for resumed, uninterrupted in zip(cli.model.dip_members(), straight.dip_members(), strict=True):
        assert torch.equal(resumed.restored_batch(), uninterrupted.restored_batch())
        assert int(resumed.recoveries) == int(uninterrupted.recoveries)


def test_each_image_stops_by_its_own_criterion(tmp_path: Path) -> None:
    paths = images(tmp_path, 2)
    args = [
        f"--batch.images={json.dumps([str(p) for p in paths])}",
        "--trainer.max_steps=40",
        "--trainer.callbacks+=dip_lightning.callbacks.PeakPSNR",
        "--trainer.callbacks.patience=3",
        "--trainer.callbacks.min_steps=0",
        "--trainer.log_every_n_steps=1",  # read at every step: an image stops when it runs out
        "--model.init_args.lr=0.1",  # the guard fires now and then without holding a fit back
        "--model.init_args.guard_drop_db=0.2",
    ]
    cli = fit(args, tmp_path)
    driver = next(c for c in cli.trainer.callbacks if isinstance(c, BatchedCallbacks))
    stops = []
    for member_trainer, member in zip(driver.trainers, cli.model.dip_members(), strict=True):
        criterion = member_trainer.callbacks[1]
        assert isinstance(criterion, PeakPSNR)
        stop = criterion.would_stop_step
        assert member.halted == (stop is not None)
        selection = criterion.selection()
        assert selection is not None
        metrics = json.loads((tmp_path / member_trainer.name / "metrics.json").read_text())
        assert metrics["selected_step"] == selection[1] == int(member.peak_step)
        assert metrics["criteria"]["psnr"]["would_stop_step"] == stop
        stops.append(stop or 40)
    # one image stopped early and the other went on: the fit ends when the last one stops
    assert min(stops) < max(stops) and cli.trainer.global_step == max(stops)


def test_images_of_different_sizes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write_png(tmp_path / "small.png", smooth_image(19, 25))
    large = write_png(tmp_path / "large.png", smooth_image(21, 25))
    with pytest.raises(SystemExit) as exc:
        main(["fit", *TINY, f"--batch.images={json.dumps([str(small), str(large)])}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "one size" in err and "separate batches" in err


def test_sure_is_refused_in_a_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(p) for p in images(tmp_path, 2)]
    sure = [
        "--model.init_args.loss=sure",
        "--model.init_args.input_type=observation",
        "--model.init_args.input_depth=3",
    ]
    with pytest.raises(SystemExit) as exc:
        main(["fit", *TINY, *sure, f"--batch.images={json.dumps(paths)}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.loss sure" in err and "one at a time" in err


def test_restore_batches_inputs_of_one_size(tmp_path: Path) -> None:
    paths = [*images(tmp_path, 3), write_png(tmp_path / "other.png", smooth_image(21, 25))]
    groups = batches([Job(p, tmp_path / "out" / p.name) for p in paths], 2)
    assert [[job.input.name for job in group] for group in groups] == [
        ["im0.png", "im1.png"],
        ["im2.png"],
        ["other.png"],
    ]


def test_dip_restore_with_a_batch_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dip_lightning.restore as restore

    original = restore.fit_arguments
    tiny = [a for a in TINY[2:] if "net.init_args" in a]
    monkeypatch.setattr(restore, "fit_arguments", lambda *a: [*original(*a), *tiny])
    noisy = []
    rng = np.random.default_rng(0)
    for i in range(3):
        image = smooth_image(19, 23, seed=i).astype(np.float64) + rng.normal(0, 25, (19, 23, 3))
        noisy.append(write_png(tmp_path / f"n{i}.png", np.clip(image, 0, 255).astype(np.uint8)))
    out, metrics = tmp_path / "out", tmp_path / "m.json"
    options = ["--batch-size", "2", "--max-steps", "8", "--patience", "3", "--quiet"]
    main(["restore", *map(str, noisy), "-o", f"{out}/", *options, "--metrics", str(metrics)])
    results = json.loads(metrics.read_text())
    assert [results[str(p)].get("batch") for p in noisy] == [2, 2, None]
    for path in noisy:
        assert results[str(path)]["steps"] == 8
        with Image.open(out / path.name) as image:
            assert image.size == (23, 19)


def test_batch_names() -> None:
    assert batch_names(["a/x.png", "y.png"], 1) == ["x", "y"]
    assert batch_names(["x.png", "x.jpg"], 2) == [
        "x_1_seed0",
        "x_1_seed1",
        "x_2_seed0",
        "x_2_seed1",
    ]
