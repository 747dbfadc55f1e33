"""``dip search``: real Optuna studies on a tiny image, through the same ``dip`` entry point.

Every fit is a 3-level SkipNet with 8 channels on a 24x24 image for at most 20 steps. The
PostgreSQL test needs ``DIP_TEST_POSTGRES_URL`` (``.ci/postgres.sh`` starts a server and prints
it) and is skipped without it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from conftest import CONFIGS, REPO, smooth_image, write_png

from dip_lightning.cli import main
from dip_lightning.degradations.mask import Mask
from dip_lightning.search.cli import parse_spec
from dip_lightning.search.objective import Objective, build_cli, trial_args
from dip_lightning.search.runner import FINISHED, create_study, make_storage
from dip_lightning.tasks import DIPModule

TINY_FIT = {
    "model.init_args.net.init_args.channels_down": 8,
    "model.init_args.net.init_args.channels_up": 8,
    "model.init_args.net.init_args.channels_skip": 2,
    "model.init_args.net.init_args.levels": 3,
    "model.init_args.input_depth": 4,
    "model.init_args.image_every_n_steps": 10,
    "trainer.max_steps": 20,
    "trainer.log_every_n_steps": 5,
}
SPACE = {
    "model.init_args.lr": {"type": "float", "low": 0.003, "high": 0.05, "log": True},
    "model.init_args.sigma_p": {"type": "float", "low": 0.0, "high": 0.05},
    "trainer.max_steps": {"type": "int", "low": 10, "high": 20, "step": 5},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_spec(tmp_path: Path, overrides: dict[str, Any] | None = None, **fields: Any) -> Path:
    """A study spec on a 24x24 image, stored beside the test's other files."""
    image = write_png(tmp_path / "tiny.png", smooth_image(24, 24))
    spec: dict[str, Any] = {
        "base_config": str(CONFIGS / "denoise.yaml"),
        # the image with the base config's noise simulated on it (the clean image is known)
        "overrides": {
            "data.image": str(image),
            "data.noise_sigma": 25,
            **TINY_FIT,
            **(overrides or {}),
        },
        "space": SPACE,
        "n_trials": 4,
        "seed": 0,
        "pruner_options": {"n_startup_trials": 2},
        "log_dir": str(tmp_path / "runs"),
        "threads": 1,
    }
    spec.update(fields)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def test_a_study_leaves_trials_artifacts_and_a_best_yaml_that_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path)
    main(["search", "--config", str(spec), "--study-name", "tiny"])
    out, err = capsys.readouterr()
    for number in range(1, 5):  # one progress bar per trial, ended with its outcome
        assert f"trial {number}/4" in err
    assert "(best step" in err or "pruned at step" in err
    study_dir = tmp_path / "runs" / "tiny"
    storage = f"sqlite:///{study_dir / 'study.db'}"
    study = load(storage, "tiny")
    trials = finished(study)
    assert len(trials) == 4
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in complete:
        run = study_dir / f"trial_{trial.number}"
        assert (run / "config.yaml").is_file() and (run / "restored.png").is_file()
        assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
        assert not (run / "checkpoints").exists()
        assert (study_dir / "artifacts" / trial.user_attrs["restored_artifact"]).is_file()
        steps = trial.user_attrs["steps"]
        assert steps == trial.params["trainer.max_steps"]
        assert 1 <= trial.user_attrs["best_step"] <= steps
        # intermediate values at the global step, every log_every_n_steps and at the end
        assert sorted(trial.intermediate_values) == list(range(5, steps + 1, 5))
        assert trial.value == pytest.approx(trial.user_attrs["psnr"])
    assert "| trial | value | best step | steps |" in out
    assert f"optuna-dashboard {storage}" in out
    assert f"tensorboard --logdir {study_dir}" in out

    best = study_dir / "best.yaml"
    config = yaml.safe_load(best.read_text())
    assert "logger" not in config["trainer"]
    assert config["trainer"]["max_steps"] == study.best_trial.params["trainer.max_steps"]
    assert config["model"]["init_args"]["lr"] == study.best_trial.params["model.init_args.lr"]
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(best), "--trainer.enable_progress_bar", "false"])
    metrics = json.loads((tmp_path / "lightning_logs/version_0/metrics.json").read_text())
    assert metrics["psnr"] == pytest.approx(study.best_value, abs=1e-3)


def test_a_search_key_that_does_not_exist_fails_in_one_line_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = {**SPACE, "model.init_args.learning_rate": {"type": "float", "low": 0.1, "high": 1}}
    spec = write_spec(tmp_path, space=space)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--config", str(spec)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: search space key model.init_args.learning_rate")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--space", '{"model.init_args.lr": {"type": "float", "low": 0.1, "high": 1000}}',
         "search space at its high end: model.lr = 1000.0 is out of range"),
        ("--space", '{"model.init_args.lr": {"type": "uniform", "low": 0.1, "high": 1}}',
         "search space model.init_args.lr: type 'uniform' is unknown"),
        ("--overrides", '{"data.noise_sigma": 0}', "objective psnr needs a clean reference"),
        ("--sampler", "annealing", 'Parser key "sampler"'),
        ("--worker", None, "no study 'spec' in"),
    ],
)  # fmt: skip
def test_bad_specs_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str | None, message: str
) -> None:
    spec = write_spec(tmp_path)
    args = ["search", "--config", str(spec), option] + ([value] if value is not None else [])
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_options_come_from_the_spec_and_the_command_line(tmp_path: Path) -> None:
    spec_file = write_spec(tmp_path, objective="heldout")
    spec = parse_spec(["--config", str(spec_file), "--n-trials", "7", "--study-name", "s"])
    assert (spec.n_trials, spec.study_name, spec.direction) == (7, "s", "minimize")
    assert spec.storage == f"sqlite:///{tmp_path / 'runs' / 's' / 'study.db'}"
    assert "--trainer.max_steps=20" in spec.overrides
    args = trial_args(spec, {"model.init_args.lr": 0.02}, number=3)
    assert args[-2:] == ["--model.init_args.holdout_fraction=0.05", "--model.init_args.lr=0.02"]
    journal = parse_spec(["--config", str(spec_file), "--storage", str(tmp_path / "s.log")])
    assert isinstance(make_storage(journal), optuna.storages.JournalStorage)


def test_print_config_and_help_behave_like_dip_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--config", str(spec), "--n_trials", "9", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["n_trials"] == 9 and printed["space"] == SPACE
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "--n_trials N_TRIALS, --n-trials N_TRIALS" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["denoise", "denoise_heldout", "inpaint", "super_resolution"])
def test_the_shipped_specs_fit_their_base_configs(name: str, tmp_path: Path) -> None:
    """Every key of each spec in search/ exists in its base config (checked without a fit)."""
    from dip_lightning.search.objective import validate_spec

    path = REPO / "search" / f"{name}.yaml"
    base = yaml.safe_load(path.read_text())["base_config"]
    if not (REPO / base).is_file():
        pytest.skip(f"{base} is not in this checkout yet")
    validate_spec(parse_spec(["--config", str(path), "--log_dir", str(tmp_path)]))


def test_pruning_reports_at_global_steps_and_stops_the_fit(tmp_path: Path) -> None:
    spec = parse_spec(["--config", str(write_spec(tmp_path)), "--n_trials", "1"])
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1000.0)
    )
    study.enqueue_trial({"trainer.max_steps": 20})
    study.optimize(Objective(spec), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [5]  # the first report, at global step 5
    assert trial.user_attrs["steps"] == 5


def test_a_trial_is_not_pruned_at_its_last_step(tmp_path: Path) -> None:
    """The last report comes when every step has run: the trial completes with its value."""
    spec_path = write_spec(tmp_path, {"trainer.log_every_n_steps": 10})
    spec = parse_spec(["--config", str(spec_path), "--n_trials", "1"])
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1000.0)
    )
    study.enqueue_trial({"trainer.max_steps": 10})
    study.optimize(Objective(spec), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert list(trial.intermediate_values) == [10]
    assert trial.user_attrs["steps"] == 10


def test_stopping_best_keeps_each_trials_best_step_and_best_yaml_stops_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stopping: best a trial's value is the best PSNR it passes through, the pruner sees
    the best so far (never falling), and best.yaml ends the fit at the best trial's best step,
    which gives that trial's image again."""
    space = {k: v for k, v in SPACE.items() if k != "trainer.max_steps"}
    # lr 0.05 on a noisy 24x24 image: the PSNR peaks, then falls as the noise is fitted
    overrides = {"trainer.max_steps": 40, "trainer.log_every_n_steps": 2}
    spec = write_spec(tmp_path, overrides, space=space, stopping="best", pruner="none")
    main(["search", "--config", str(spec), "--study_name", "peak"])
    study_dir = tmp_path / "runs" / "peak"
    study = load(f"sqlite:///{study_dir / 'study.db'}", "peak")
    assert study.user_attrs["stopping"] == "best"
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        reported = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        assert reported == sorted(reported)  # best so far
        assert trial.value >= reported[-1] - 1e-6
        metrics = json.loads((study_dir / f"trial_{trial.number}" / "metrics.json").read_text())
        assert trial.user_attrs["best_step"] == metrics["selected_step"] == metrics["peak_step"]
        assert trial.value == pytest.approx(metrics["peak_psnr"], abs=1e-3)
        assert trial.value == pytest.approx(metrics["psnr"], abs=1e-3)  # restored.png
        assert trial.user_attrs["steps"] == 40
    best = study_dir / "best.yaml"
    config = yaml.safe_load(best.read_text())
    assert config["trainer"]["max_steps"] == study.best_trial.user_attrs["best_step"]
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(best), "--trainer.enable_progress_bar", "false"])
    metrics = json.loads((tmp_path / "lightning_logs/version_0/metrics.json").read_text())
    assert metrics["psnr"] == pytest.approx(study.best_value, abs=1e-3)


def test_stopping_best_with_the_heldout_objective_keeps_the_lowest_heldout_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = {k: v for k, v in SPACE.items() if k != "trainer.max_steps"}
    spec = write_spec(
        tmp_path, space=space, stopping="best", objective="heldout", pruner="none", n_trials=2
    )
    main(["search", "--config", str(spec), "--study_name", "blindbest", "--quiet"])
    out, err = capsys.readouterr()
    assert "trial 1/2" not in err and "Trial 0 finished" not in err  # --quiet
    assert "| trial | value | best step | steps |" in out  # the summary still comes
    study = load(f"sqlite:///{tmp_path / 'runs' / 'blindbest' / 'study.db'}", "blindbest")
    for trial in study.trials:
        reported = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        assert reported == sorted(reported, reverse=True)
        assert trial.value <= reported[-1] + 1e-9
        assert trial.value == trial.user_attrs["best_value"] == trial.user_attrs["heldout_mse"]
        assert 1 <= trial.user_attrs["best_step"] <= 20


def test_the_data_term_ignores_held_out_pixels(tmp_path: Path) -> None:
    image = write_png(tmp_path / "tiny.png", smooth_image(24, 20))
    args = [f"--{k}={v}" for k, v in TINY_FIT.items()]
    cli = build_cli(
        ["--config", str(CONFIGS / "denoise.yaml"), *args, "--data.image", str(image),
         "--model.init_args.holdout_fraction=0.1", "--trainer.logger=false"]
    )  # fmt: skip
    module = cli.model
    assert isinstance(module, DIPModule) and module.holdout_keep is not None
    held = module.holdout_keep == 0
    assert int(held.sum()) == round(0.1 * 24 * 20)
    assert module.degradation is not None
    x = torch.rand(1, 3, 24, 20, requires_grad=True)
    module.fitted_data_term(module.degradation(x)).backward()
    assert x.grad is not None
    grad = x.grad.abs().sum(dim=1, keepdim=True)
    assert torch.all(grad[held] == 0)
    assert torch.all(grad[~held] > 0)


class _MaskedDIP(DIPModule):
    """A task whose operator hides the left half of the image."""

    task_name = "masked"

    def build_degradation(self, data: Any) -> Mask:
        mask = torch.ones(24, 20)
        mask[:, :10] = 0
        return Mask(mask)


def test_held_out_pixels_are_drawn_among_the_observed_ones(tmp_path: Path) -> None:
    from dip_lightning.data import SingleImageDataModule
    from dip_lightning.networks import SkipNet

    image = write_png(tmp_path / "tiny.png", smooth_image(24, 20))
    module = _MaskedDIP(
        net=lambda i, o: SkipNet(i, o, channels_down=4, channels_up=4, channels_skip=2, levels=2),
        input_depth=2,
        holdout_fraction=0.25,
    )
    module.attach(SingleImageDataModule(image=str(image)))
    assert module.holdout_keep is not None
    held = module.holdout_keep[0, 0] == 0
    assert int(held.sum()) == 24 * 10 // 4  # a quarter of the 240 observed pixels
    assert not held[:, :10].any()


def test_the_heldout_objective_scores_a_fit_without_a_reference(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, {"data.noise_sigma": 0}, objective="heldout", n_trials=2, pruner="none"
    )
    main(["search", "--config", str(spec), "--study_name", "blind"])
    study = load(f"sqlite:///{tmp_path / 'runs' / 'blind' / 'study.db'}", "blind")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value is not None and math.isfinite(trial.value) and trial.value > 0
        assert 1 <= trial.user_attrs["best_step"] <= trial.user_attrs["steps"]
        assert trial.user_attrs["best_value"] <= trial.value
        assert "psnr" not in trial.user_attrs
    best = yaml.safe_load((tmp_path / "runs" / "blind" / "best.yaml").read_text())
    assert best["model"]["init_args"]["holdout_fraction"] == 0.05


def _worker_env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }


def _search_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dip_lightning", "search", *args, "--threads", "1"]


@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["KILL", "TERM", "INT"]
)
def test_a_killed_workers_trial_runs_again_and_every_trial_finishes_once(
    tmp_path: Path, signum: int
) -> None:
    # trials long enough (100 steps) that the signal lands inside a fit, as a user's would
    space = {**SPACE, "trainer.max_steps": {"type": "int", "low": 100, "high": 100}}
    spec_file = write_spec(
        tmp_path,
        {"trainer.log_every_n_steps": 10},
        n_trials=2,
        heartbeat_interval=1,
        grace_period=2,
        pruner="none",
        space=space,
    )
    args = ["--config", str(spec_file), "--study_name", "killed"]
    spec = parse_spec(args)
    create_study(spec)
    worker = subprocess.Popen(
        _search_command(*args, "--worker"), cwd=tmp_path, env=_worker_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        killed = None
        while killed is None and time.monotonic() < deadline and worker.poll() is None:
            for trial in load(spec.storage, "killed").get_trials(deepcopy=False):
                if trial.state == optuna.trial.TrialState.RUNNING and trial.intermediate_values:
                    killed = trial
            time.sleep(0.05)
        assert killed is not None, "the worker never got into a trial"
        worker.send_signal(signum)
        code = worker.wait(timeout=60)
        assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 130)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    main(["search", *args])  # after SIGKILL: waits out the grace period, then runs the retry

    study = load(spec.storage, "killed")
    states = {t.number: t.state for t in study.trials}
    done = finished(study)
    assert len(done) == 2
    origins = [t.system_attrs.get("failed_trial", t.number) for t in done]
    assert len(set(origins)) == 2  # each requested trial finished exactly once
    if states[killed.number] == optuna.trial.TrialState.COMPLETE:
        # Ctrl-C or SIGTERM came during the last step: the trial finished, the worker stopped
        assert signum != signal.SIGKILL
        return
    assert states[killed.number] == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in done if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params


def _postgres_url() -> str:
    url = os.environ.get("DIP_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("DIP_TEST_POSTGRES_URL is not set (start a server with .ci/postgres.sh)")
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        pytest.skip(f"PostgreSQL at DIP_TEST_POSTGRES_URL is unreachable: {exc}".splitlines()[0])
    return url


def test_two_worker_processes_share_one_postgresql_study(tmp_path: Path) -> None:
    url = _postgres_url()
    name = f"dip-test-{uuid.uuid4().hex[:8]}"
    spec_file = write_spec(tmp_path, n_trials=5, storage=url, study_name=name)
    try:
        main(["search", "--config", str(spec_file), "--n-workers", "2"])
        study = load(url, name)
        done = finished(study)
        assert len(done) == 5  # never more: the workers stop at exactly n_trials
        assert len({t.number for t in done}) == 5
        workers = {t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}
        assert len(workers) == 2
        assert (tmp_path / "runs" / name / "best.yaml").is_file()
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=url)
