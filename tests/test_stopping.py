"""Stopping without ground truth: the criteria on synthetic output sequences whose best step is
known, and inside real fits (selection written to metrics.json, exact resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from dip_lightning.callbacks import (
    ExponentialVariance,
    HeldoutStopping,
    StoppingCriterion,
    WindowedVariance,
)
from dip_lightning.cli import main
from dip_lightning.errors import ConfigError


class FakeModule:
    """What a criterion reads of a DIPModule: the raw output, the restored image, the held-out
    error and the divergence flag; and the host read of a log step."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.last_output = torch.zeros(shape)
        self.restored = torch.zeros(shape)
        self._bad = torch.tensor(False)
        self._heldout_mse: torch.Tensor | None = None
        self.holdout_keep: torch.Tensor | None = torch.ones(1)
        self.logged: dict[str, list[float]] = {}
        self.reads: list[tuple[list[torch.Tensor], Any]] = []

    def restored_batch(self) -> torch.Tensor:
        return self.restored

    def read_at_log_step(self, values: list[torch.Tensor], then: Any) -> None:
        self.reads.append((values, then))

    def flush(self) -> None:
        reads, self.reads = self.reads, []
        for values, then in reads:
            then([float(v) for v in values])

    def log_host_values(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.logged.setdefault(name, []).append(value)


def fake_trainer(steps: int) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=0, should_stop=False, log_every_n_steps=10, loggers=[], max_steps=steps
    )


def run_step(
    criterion: StoppingCriterion, trainer: SimpleNamespace, module: FakeModule, index: int
) -> None:
    """Step ``index + 1`` as the fit runs it: the criterion scores the output before the
    optimizer step, the module reads the queued values on the host, the step count moves."""
    trainer.global_step = index
    criterion.on_before_optimizer_step(trainer, module, None)  # type: ignore[arg-type]
    module.flush()
    trainer.global_step = index + 1


def drive(
    criterion: StoppingCriterion, outputs: list[torch.Tensor], scores: list[float] | None = None
) -> tuple[SimpleNamespace, FakeModule, int]:
    """Feed ``outputs`` (and held-out ``scores``) step by step; the trainer, the module and the
    number of steps run before the criterion stopped the fit."""
    module = FakeModule(tuple(outputs[0].shape))
    trainer = fake_trainer(len(outputs))
    criterion.on_fit_start(trainer, module)  # type: ignore[arg-type]
    for index, output in enumerate(outputs):
        module.last_output = output
        module.restored = output + 1.0  # the image kept is the restored one, not the raw one
        if scores is not None:
            module._heldout_mse = torch.tensor(scores[index])
        run_step(criterion, trainer, module, index)
        if trainer.should_stop:
            break
    return trainer, module, trainer.global_step


def u_shaped_outputs(
    steps: int, quiet: range, seed: int = 0, shape: tuple[int, ...] = (1, 3, 7, 9)
) -> list[torch.Tensor]:
    """Outputs that jitter around a fixed image, except on the steps of ``quiet`` (1-based),
    where they are exactly that image: the variance is lowest at the quiet stretch's end."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(shape, generator=generator)
    outputs = []
    for step in range(1, steps + 1):
        distance = 0 if step in quiet else min(abs(step - quiet.start), abs(step - quiet.stop))
        amplitude = 0.0 if step in quiet else 0.05 + distance / steps
        outputs.append(base + amplitude * torch.randn(shape, generator=generator))
    return outputs


def test_windowed_variance_selects_the_end_of_the_quiet_window_and_stops_after_patience() -> None:
    quiet = range(301, 401)  # exactly the window's length: variance 0 only at step 400
    outputs = u_shaped_outputs(900, quiet)
    criterion = WindowedVariance(window=100, patience=250)
    trainer, module, steps = drive(criterion, outputs)
    selection = criterion.selection()
    assert selection is not None
    image, step, score = selection
    assert step == 400 and score == pytest.approx(0.0, abs=1e-12)
    assert steps == 650 and trainer.should_stop and criterion.would_stop_step == 650
    torch.testing.assert_close(image, outputs[399] + 1.0)
    assert "stopping/variance" in module.logged


def test_windowed_variance_equals_the_variance_of_the_last_window() -> None:
    outputs = u_shaped_outputs(40, range(100, 101), seed=3)
    criterion = WindowedVariance(window=7, patience=1000, min_steps=0)
    drive(criterion, outputs)
    stack = torch.stack([o[0] for o in outputs])
    expected = [float(stack[t - 6 : t + 1].var(dim=0, unbiased=False).mean()) for t in range(6, 40)]
    selection = criterion.selection()
    assert selection is not None
    best = min(range(len(expected)), key=expected.__getitem__)
    assert selection[1] == best + 7
    assert selection[2] == pytest.approx(expected[best], rel=1e-5)


def test_windowed_variance_keeps_its_sums_exact_over_many_steps_and_a_resume() -> None:
    """The running float64 sums stay the window's variance after thousands of frames (the
    frames that left are subtracted exactly enough), and a checkpoint without the sums (an
    older one) gives them back from the window."""
    generator = torch.Generator().manual_seed(5)
    outputs = [torch.rand(1, 3, 5, 6, generator=generator) * 0.01 + 0.5 for _ in range(3000)]
    criterion = WindowedVariance(window=9, patience=10_000, min_steps=0)
    module = FakeModule((1, 3, 5, 6))
    trainer = fake_trainer(len(outputs))
    criterion.on_fit_start(trainer, module)  # type: ignore[arg-type]
    scores = []
    for index, output in enumerate(outputs):
        module.last_output = output
        scores.append(criterion.score(module, index + 1))  # type: ignore[arg-type]
    stack = torch.stack([o[0] for o in outputs[-9:]]).double()
    exact = float(stack.var(dim=0, unbiased=False).mean())
    assert float(scores[-1]) == pytest.approx(exact, rel=1e-6)
    state = {k: v.clone() for k, v in criterion.extra_state().items() if k in ("outputs", "count")}
    older = WindowedVariance(window=9, patience=10_000, min_steps=0)
    older.prepare(module)  # type: ignore[arg-type]
    older.load_extra_state(state)
    module.last_output = outputs[0]
    torch.testing.assert_close(
        older.score(module, 3001), criterion.score(module, 3001), rtol=1e-6, atol=0
    )


def test_exponential_variance_follows_its_recursion_and_selects_the_quiet_end() -> None:
    quiet = range(201, 351)
    outputs = u_shaped_outputs(700, quiet, seed=1)
    criterion = ExponentialVariance(alpha=0.1, patience=200)
    _, _, steps = drive(criterion, outputs)
    selection = criterion.selection()
    assert selection is not None
    assert selection[1] == 350  # the variance decays through the whole quiet stretch
    assert steps == 550
    # the recursion, computed independently in float64
    alpha, mean, var = 0.1, outputs[0].double(), torch.zeros_like(outputs[0]).double()
    for x in outputs[1:350]:
        delta = x.double() - mean
        var = (1 - alpha) * (var + alpha * delta.square())
        mean = mean + alpha * delta
    assert selection[2] == pytest.approx(float(var.mean()), rel=1e-4, abs=1e-12)


def test_heldout_stopping_selects_the_minimum_of_the_score() -> None:
    scores = [(s - 420) ** 2 / 1e4 + 0.01 for s in range(1, 1001)]
    outputs = [torch.full((1, 1, 3, 5), float(s)) for s in range(1, 1001)]
    criterion = HeldoutStopping(patience=300)
    _, _, steps = drive(criterion, outputs, scores)
    selection = criterion.selection()
    assert selection is not None and selection[1] == 420 and steps == 720
    torch.testing.assert_close(selection[0], outputs[419] + 1.0)


def test_a_criterion_that_does_not_stop_records_when_it_would_have() -> None:
    scores = [abs(s - 100) / 100 for s in range(1, 601)]
    outputs = [torch.full((1, 1, 2, 2), float(s)) for s in range(1, 601)]
    criterion = HeldoutStopping(patience=50, stop=False)
    trainer, _, steps = drive(criterion, outputs, scores)
    assert steps == 600 and not trainer.should_stop
    assert criterion.would_stop_step == 150
    selection = criterion.selection()
    assert selection is not None and selection[1] == 100  # frozen when the patience ran out


def test_diverged_steps_and_the_first_steps_are_never_selected() -> None:
    scores = [1.0 - s / 1000 for s in range(1, 301)]  # always improving
    outputs = [torch.zeros(1, 1, 2, 2) for _ in range(300)]
    criterion = HeldoutStopping(patience=1000, min_steps=10)
    module = FakeModule((1, 1, 2, 2))
    trainer = fake_trainer(300)
    criterion.on_fit_start(trainer, module)  # type: ignore[arg-type]
    for index in range(300):
        module._heldout_mse = torch.tensor(scores[index])
        module._bad = torch.tensor(index + 1 >= 250)  # diverged from step 250 on
        module.last_output = outputs[index]
        run_step(criterion, trainer, module, index)
    selection = criterion.selection()
    assert selection is not None and selection[1] == 249


@pytest.mark.parametrize(
    "make",
    [
        lambda: WindowedVariance(window=6, patience=1000, min_steps=0),
        lambda: ExponentialVariance(alpha=0.2, patience=1000, min_steps=0),
    ],
)
def test_a_rolled_back_step_enters_no_score(make: Any) -> None:
    """A fit with rolled-back steps (the module keeps its last good output on them) leaves the
    criterion exactly as the fit of its good steps alone does."""
    outputs = u_shaped_outputs(60, range(20, 30), seed=4)
    rolled_back = {5, 6, 17, 31, 32, 33, 47}
    with_bad, without = make(), make()
    modules = [FakeModule(tuple(outputs[0].shape)) for _ in range(2)]
    trainers = [fake_trainer(100), fake_trainer(100)]
    for criterion, trainer, module in zip((with_bad, without), trainers, modules, strict=True):
        criterion.on_fit_start(trainer, module)  # type: ignore[arg-type]
    good_steps = 0
    for index, output in enumerate(outputs):
        bad = index in rolled_back
        module = modules[0]
        module._bad = torch.tensor(bad)
        if not bad:  # a rolled-back step changes neither the output nor the restored image
            module.last_output, module.restored = output, output + 1.0
        run_step(with_bad, trainers[0], module, index)
        if not bad:
            modules[1].last_output, modules[1].restored = output, output + 1.0
            run_step(without, trainers[1], modules[1], good_steps)
            good_steps += 1
    assert int(with_bad._count) == len(outputs) - len(rolled_back)  # the good outputs only
    assert math.isfinite(float(with_bad.best_score))
    for name in ("_outputs", "_mean", "_variance", "_count"):
        if hasattr(with_bad, name):
            assert torch.equal(getattr(with_bad, name), getattr(without, name)), name
    assert torch.equal(with_bad.best_score, without.best_score)
    assert torch.equal(with_bad.best_image, without.best_image)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: WindowedVariance(window=1), "window"),
        (lambda: ExponentialVariance(alpha=1.5), "alpha"),
        (lambda: HeldoutStopping(patience=0), "patience"),
    ],
)
def test_bad_settings_are_one_line_errors(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_heldout_stopping_without_held_out_pixels_says_what_to_set() -> None:
    module = FakeModule((1, 1, 2, 2))
    module.holdout_keep = None
    trainer = fake_trainer(10)
    with pytest.raises(ConfigError, match="holdout_fraction"):
        HeldoutStopping().on_fit_start(trainer, module)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- in a real fit

TINY_NET = [
    "--model.net.class_path=dip_lightning.networks.SkipNet",
    "--model.net.init_args.channels_down=8",
    "--model.net.init_args.channels_up=8",
    "--model.net.init_args.channels_skip=2",
    "--model.net.init_args.levels=2",
]


def _fit(
    tmp_path: Path, image: Path, extra: list[str], name: str, resume: Path | None = None
) -> dict[str, Any]:
    """A fit through ``dip fit``; with ``resume``, the checkpoint's fit resumed with its run's
    ``config.yaml`` (in a new folder). Its ``metrics.json``."""
    if resume is None:
        setup = [
            f"--data.image={image}",
            "--data.noise_sigma=25",
            *TINY_NET,
            "--model.holdout_fraction=0.05",
            "--trainer.callbacks+=dip_lightning.callbacks.HeldoutStopping",
            "--trainer.callbacks.patience=10",
            "--trainer.callbacks.min_steps=5",
            "--trainer.callbacks+=dip_lightning.callbacks.WindowedVariance",
            "--trainer.callbacks.window=10",
            "--trainer.callbacks.min_steps=10",
            "--trainer.callbacks.patience=1000",
            "--trainer.callbacks.stop=false",
            "--trainer.log_every_n_steps=5",
            "--trainer.enable_progress_bar=false",
        ]
    else:
        setup = [f"--config={resume.parent.parent / 'config.yaml'}", f"--ckpt_path={resume}"]
    main(
        [
            "fit",
            *setup,
            f"--trainer.default_root_dir={tmp_path / name}",
            f"--trainer.logger.save_dir={tmp_path / name}",
            *extra,
        ]
    )
    return json.loads(next((tmp_path / name).rglob("metrics.json")).read_text())


def test_a_fit_writes_the_selected_image_and_the_criteria(tmp_path: Path, rgb_png: Path) -> None:
    metrics = _fit(tmp_path, rgb_png, ["--trainer.max_steps=400"], "run")
    criteria = metrics["criteria"]
    assert metrics["stopping"] == "heldout"
    heldout = criteria["heldout"]
    # the patience (10) ran out 10 steps after the selected step; the fit stopped at the first
    # log step (every 5) from there
    assert metrics["selected_step"] == heldout["selected_step"]
    assert heldout["would_stop_step"] == heldout["selected_step"] + 10
    assert metrics["steps"] == math.ceil(heldout["would_stop_step"] / 5) * 5 < 400
    assert metrics["psnr"] == pytest.approx(heldout["psnr"], abs=1e-4)
    assert criteria["variance"]["would_stop_step"] is None
    assert criteria["variance"]["selected_step"] >= 11
    assert math.isfinite(criteria["variance"]["psnr"])


def test_a_stopped_fit_resumes_to_the_same_selection(tmp_path: Path, rgb_png: Path) -> None:
    whole = _fit(tmp_path, rgb_png, ["--trainer.max_steps=30"], "whole")
    _fit(tmp_path, rgb_png, ["--trainer.max_steps=18"], "first")
    checkpoint = next((tmp_path / "first").rglob("last.ckpt"))
    resumed = _fit(tmp_path, rgb_png, ["--trainer.max_steps=30"], "second", resume=checkpoint)
    for key in ("selected_step", "psnr", "steps"):
        assert resumed[key] == whole[key]
    assert resumed["criteria"]["variance"] == whole["criteria"]["variance"]


def test_a_fit_resumed_after_its_criterion_stopped_stops_at_once(
    tmp_path: Path, rgb_png: Path
) -> None:
    first = _fit(tmp_path, rgb_png, ["--trainer.max_steps=400"], "first")
    assert first["steps"] < 400 and first["criteria"]["heldout"]["would_stop_step"] is not None
    checkpoint = next((tmp_path / "first").rglob("last.ckpt"))
    resumed = _fit(tmp_path, rgb_png, ["--trainer.max_steps=400"], "second", resume=checkpoint)
    assert resumed["steps"] == first["steps"]  # not a step more
    for key in ("selected_step", "psnr", "stopping"):
        assert resumed[key] == first[key]
    assert resumed["criteria"] == first["criteria"]
