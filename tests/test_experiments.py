"""Every seed experiment at the tiny size: it runs its fits and writes its CSV and PNG; the
experiments are found from the modules of the package."""

from __future__ import annotations

import csv
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import smooth_image, write_png
from PIL import Image

import dip_lightning.experiments as experiments_package
from dip_lightning.cli import main
from dip_lightning.errors import ConfigError
from dip_lightning.experiments import (
    EXPERIMENTS,
    NORMAL_SCALE_MATCHED,
    SIZES,
    discover,
    fitting_targets,
    parser,
    run_experiment,
    sensitivity_grid,
)
from dip_lightning.presets import list_presets


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


EXPECTED_ROWS = {  # rows at the tiny size: one per run (per step for the fitting curves)
    "fitting_curves": 4,  # steps
    "mask_ratio": 2,
    "skip_ablation": 8,
    "sensitivity": 10,
    "structural_feedback": 4,
}


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_writes_its_csv_and_plot(name: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "a.png", smooth_image(40, 44))
    out = tmp_path / name
    written = run_experiment(name, out=out, size="tiny", images=images, steps=4)
    csv_path, *plots = written
    assert csv_path == out / f"{name}.csv" and csv_path.is_file()
    assert plots and all(p.suffix == ".png" and p.is_file() for p in plots)
    for plot in plots:
        with Image.open(plot) as image:
            assert image.width > 300 and image.height > 200
    rows = read_csv(csv_path)
    if name == "spectral_bias":
        assert {row["variant"] for row in rows} == {
            "baseline",
            "lipschitz_1.6",
            "gaussian_upsampling",
        }
        assert "clean_band_4" in rows[0] and "target_band_0" in rows[0]
    else:
        assert len(rows) == EXPECTED_ROWS[name]
    if name == "structural_feedback":
        assert [row["feedback"] for row in rows] == [
            "none",
            "observed_ssim",
            "temporal_ssim",
            "edge",
        ]
        assert all(float(row["peak_psnr"]) > 0 for row in rows)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert all((out / "runs" / r / "metrics.json").is_file() for r in runs)


@pytest.mark.parametrize("name", ["skip_ablation", "structural_feedback"])
def test_the_gpu_size_builds_and_runs_its_networks(name: str, tmp_path: Path) -> None:
    # the GPU variant's networks (128 channels, the UNet at feature scale 4) for one step, on a
    # small image (crops are at most the image's size) so that it runs here on the CPU
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "a.png", smooth_image(40, 44))
    out = tmp_path / name
    run_experiment(name, out=out, size="gpu", image=images / "a.png", images=images, steps=1)
    rows = read_csv(out / f"{name}.csv")
    assert rows and all(float(row["peak_psnr"]) > 0 for row in rows)
    nets = [
        yaml.safe_load(path.read_text())["model"]["init_args"]["net"]
        for path in (out / "runs").glob("*/config.yaml")
    ]
    assert nets
    for net in nets:
        if net["class_path"].endswith("UNet"):
            assert net["init_args"]["feature_scale"] == 4
        else:
            assert net["init_args"]["channels_down"] == net["init_args"]["channels_up"] == 128


def test_the_dip_command_runs_an_experiment(tmp_path: Path) -> None:
    main(["experiment", "mask_ratio", "--size", "tiny", "--steps", "2", "--out", str(tmp_path)])
    assert len(read_csv(tmp_path / "mask_ratio.csv")) == 2
    assert (tmp_path / "mask_ratio.png").is_file()


def test_sensitivity_fits_each_setting_with_several_seeds(tmp_path: Path) -> None:
    run_experiment("sensitivity", out=tmp_path, size="tiny", steps=2, seeds=2)
    rows = read_csv(tmp_path / "sensitivity.csv")
    assert len(rows) == 20
    by_seed = {seed: [r for r in rows if r["seed"] == seed] for seed in ("0", "1")}
    assert [(r["parameter"], r["value"]) for r in by_seed["0"]] == [
        (r["parameter"], r["value"]) for r in by_seed["1"]
    ]
    # the seed changes the network and z, so the results differ
    assert [r["peak_psnr"] for r in by_seed["0"]] != [r["peak_psnr"] for r in by_seed["1"]]
    config = yaml.safe_load((tmp_path / "runs" / "lr_0.001_seed1" / "config.yaml").read_text())
    assert config["model"]["init_args"]["seed"] == 1
    # the input types are compared at the standard deviation of the paper's uniform input
    types = dict(sensitivity_grid(SIZES["cpu"])["input_type"])
    assert types["normal"] == [
        "--model.init_args.input_type=normal",
        "--model.init_args.input_scale=0.0288675",
    ]
    uniform = torch.rand(10**6, generator=torch.Generator().manual_seed(0)) * 0.1
    assert uniform.std().item() == pytest.approx(NORMAL_SCALE_MATCHED, rel=0.01)
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        run_experiment("sensitivity", out=tmp_path, size="tiny", seeds=0)


def test_a_rerun_reuses_the_finished_runs(tmp_path: Path) -> None:
    run_experiment("spectral_bias", out=tmp_path, size="tiny", steps=2)
    records = sorted((tmp_path / "runs").glob("*/experiment_run.json"))
    assert len(records) == 3
    stamps = [p.stat().st_mtime_ns for p in records]
    first = (tmp_path / "spectral_bias.csv").read_text()
    (records[0].parent / "experiment_run.json").unlink()  # as if interrupted in that run
    run_experiment("spectral_bias", out=tmp_path, size="tiny", steps=2)
    assert [p.stat().st_mtime_ns for p in records[1:]] == stamps[1:]  # reused
    assert records[0].is_file()  # run again
    assert (tmp_path / "spectral_bias.csv").read_text() == first  # deterministic


def test_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown experiment"):
        run_experiment("nope", out=tmp_path)
    with pytest.raises(ConfigError, match="unknown size"):
        run_experiment("mask_ratio", out=tmp_path, size="huge")
    with pytest.raises(ConfigError, match="no images"):
        run_experiment("structural_feedback", out=tmp_path, size="tiny", images=tmp_path / "x")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'dip-lightning\[plots\]'"):
        run_experiment("mask_ratio", out=tmp_path, size="tiny")
    assert not (tmp_path / "runs").exists()  # failed before any fit


def test_fitting_targets_are_seeded_and_keep_the_pixels() -> None:
    image = torch.rand(3, 8, 9, generator=torch.Generator().manual_seed(0))
    a, b = fitting_targets(image), fitting_targets(image)
    assert all(torch.equal(a[k], b[k]) for k in a)
    flat = image.reshape(3, -1)
    shuffled = a["shuffled"].reshape(3, -1)
    assert torch.equal(flat.sort(dim=1).values, shuffled.sort(dim=1).values)
    assert not torch.equal(flat, shuffled)


def test_a_fault_in_the_code_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a user's mistake becomes a one-line error; a bug is not disguised as one."""
    import dip_lightning.cli as cli

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a fault of the code")

    monkeypatch.setattr(cli, "DIPCLI", broken)
    with pytest.raises(RuntimeError, match="a fault of the code"):
        main(["experiment", "mask_ratio", "--size", "tiny", "--steps", "2", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--out", "{file}/out"],
            "error: cannot write {file}/out: Not a directory; check the path",
        ),
        (
            ["--image", "{file}"],
            "error: cannot read image: {file}: not a recognised image file; check that it is a "
            "valid, complete image file (PNG, JPEG, TIFF, ...)",
        ),
    ],
)
def test_a_path_the_user_gave_that_fails_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    file = tmp_path / "file.png"
    file.write_bytes(b"not an image")
    args = [a.format(file=file) for a in option]
    out = ["--out", str(tmp_path / "out")] if option[0] != "--out" else []
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "mask_ratio", "--size", "tiny", "--steps", "2", *out, *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == message.format(file=file) + "\n"


def test_every_experiment_is_a_module_with_its_config_and_steps() -> None:
    assert list(EXPERIMENTS) == [
        "fitting_curves",
        "spectral_bias",
        "mask_ratio",
        "skip_ablation",
        "sensitivity",
        "structural_feedback",
    ]
    presets = list_presets()
    for name, experiment in EXPERIMENTS.items():
        module = sys.modules[f"dip_lightning.experiments.{name}"]
        assert module.EXPERIMENT is experiment
        assert any(
            p == f"experiments/{name}" or p.startswith(f"experiments/{name}_") for p in presets
        )
        assert set(experiment.steps) == set(SIZES)
        assert experiment.description and "\n" not in experiment.description


NEW_EXPERIMENT = """
    from dip_lightning.experiments.runner import (
        Experiment, prepared_image, run_fit, skip_net_args, summary_row, write_csv,
    )

    def ratio_pair(ctx):
        image = prepared_image(ctx)
        rows = []
        for ratio in (0.2, 0.7):
            args = ["--data.image", str(image), f"--data.missing_ratio={ratio}"]
            result = run_fit(ctx, "mask_ratio", f"r{ratio}", args + skip_net_args(ctx.size))
            rows.append({"ratio": ratio, **summary_row(result)})
        return [write_csv(ctx.out / "ratio_pair.csv", rows)]

    EXPERIMENT = Experiment(
        name="ratio_pair",
        description="two mask ratios",
        run=ratio_pair,
        steps={"tiny": 3, "cpu": 10, "gpu": 10},
    )
"""


@pytest.fixture
def extra_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder whose modules count as modules of dip_lightning.experiments."""
    folder = tmp_path / "extra"
    folder.mkdir()
    monkeypatch.setattr(
        experiments_package, "__path__", [*experiments_package.__path__, str(folder)]
    )
    discover.cache_clear()
    yield folder
    discover.cache_clear()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name.startswith("dip_lightning.experiments.") and file and Path(file).parent == folder:
            del sys.modules[name]
            vars(experiments_package).pop(name.rsplit(".", 1)[1], None)


def test_a_new_experiment_is_one_module(extra_modules: Path, tmp_path: Path) -> None:
    (extra_modules / "ratio_pair.py").write_text(textwrap.dedent(NEW_EXPERIMENT))
    (extra_modules / "plot_helpers.py").write_text("WIDTH = 3\n")  # not an experiment
    found = discover()
    assert list(found) == [*EXPERIMENTS, "ratio_pair"]  # after the ordered ones
    assert "ratio_pair: two mask ratios" in parser().format_help().replace("\n", " ")
    (csv_path,) = run_experiment("ratio_pair", out=tmp_path / "out", size="tiny")
    rows = read_csv(csv_path)
    assert [row["ratio"] for row in rows] == ["0.2", "0.7"]
    assert all(row["peak_step"] in ("1", "2", "3") for row in rows)  # the tiny size's 3 steps


def test_an_experiment_module_must_name_its_experiment_after_itself(extra_modules: Path) -> None:
    (extra_modules / "misnamed.py").write_text(
        textwrap.dedent(NEW_EXPERIMENT).replace('name="ratio_pair"', 'name="other"')
    )
    with pytest.raises(TypeError, match=r"misnamed\.EXPERIMENT must be an Experiment named"):
        discover()
