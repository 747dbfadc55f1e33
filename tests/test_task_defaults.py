"""Each task's own defaults, however it is chosen, and the one learning rate a config shows."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import smooth_image, write_png

import dip_lightning.tasks
from dip_lightning.cli import DIPCLI, main
from dip_lightning.tasks import DIPModule

#: every task a config can choose: the concrete DIPModule subclasses the package exports
TASKS = sorted(
    (
        cls
        for cls in vars(dip_lightning.tasks).values()
        if isinstance(cls, type) and issubclass(cls, DIPModule) and cls is not DIPModule
    ),
    key=lambda cls: cls.__name__,
)


def signature_defaults(cls: type) -> dict[str, Any]:
    """The documented default of every plain (number, text, flag) argument of ``cls``: its own
    signature's, else the nearest base class's (a task passes the rest on by ``**kwargs``)."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        if not (isinstance(klass, type) and issubclass(klass, DIPModule)):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            plain = isinstance(param.default, (int, float, str, bool, type(None)))
            if param.default is not inspect.Parameter.empty and plain:
                defaults.setdefault(name, param.default)
    return defaults


def printed_model(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``dip fit ARGS --print_config``: the printed model's class path and init_args."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    return {"class_path": model["class_path"], **model["init_args"]}


def check_defaults(cls: type, printed: dict[str, Any]) -> None:
    assert printed["class_path"] == f"dip_lightning.tasks.{cls.__name__}"
    expected = signature_defaults(cls)
    assert {"lr", "input_depth", "sigma_p", "ema_decay"} <= set(expected)
    shown = {name: printed[name] for name in expected}
    assert shown == pytest.approx(expected)


def test_the_tasks_have_defaults_of_their_own() -> None:
    """The checks below can tell the tasks apart: their defaults differ from the default task's."""
    default = signature_defaults(dip_lightning.tasks.DenoisingDIP)
    for cls in TASKS:
        if cls is not dip_lightning.tasks.DenoisingDIP:
            assert signature_defaults(cls) != default, cls


@pytest.mark.parametrize("cls", TASKS, ids=lambda cls: cls.__name__)
def test_a_task_chosen_on_the_command_line_has_its_own_defaults(
    cls: type, capsys: pytest.CaptureFixture[str]
) -> None:
    check_defaults(cls, printed_model(["--model", f"dip_lightning.tasks.{cls.__name__}"], capsys))
    check_defaults(cls, printed_model([f"--model={cls.__name__}"], capsys))


@pytest.mark.parametrize("cls", TASKS, ids=lambda cls: cls.__name__)
def test_a_task_chosen_in_a_config_has_its_own_defaults(
    cls: type, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model:\n  class_path: dip_lightning.tasks.{cls.__name__}\n")
    check_defaults(cls, printed_model(["--config", str(spec)], capsys))
    bare = tmp_path / "bare.yaml"  # a preset naming the task and nothing else
    bare.write_text(f"model: {cls.__name__}\n")
    check_defaults(cls, printed_model(["--config", str(bare)], capsys))


def test_options_given_with_a_task_apply_on_top_of_its_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cls = dip_lightning.tasks.FlashNoFlashDIP
    printed = printed_model(["--model.sigma_p", "0.2", "--model", cls.__name__], capsys)
    expected = {**signature_defaults(cls), "sigma_p": 0.2}
    assert {name: printed[name] for name in expected} == pytest.approx(expected)


def test_without_a_task_the_default_task_has_its_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    check_defaults(dip_lightning.tasks.DenoisingDIP, printed_model([], capsys))


def _find(tree: object, key: str, path: str = "") -> list[str]:
    """The paths of every ``key`` in a nested mapping/list."""
    found: list[str] = []
    if isinstance(tree, dict):
        for name, value in tree.items():
            where = f"{path}.{name}" if path else str(name)
            if name == key:
                found.append(where)
            found += _find(value, key, where)
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += _find(value, key, f"{path}[{index}]")
    return found


def test_the_saved_config_shows_one_learning_rate(tmp_path: Path) -> None:
    image = write_png(tmp_path / "x.png", smooth_image(11, 13))
    root = tmp_path / "run"
    main(
        [
            "fit",
            f"--data.image={image}",
            "--model.lr=0.02",
            "--model.net.init_args.channels_down=4",
            "--model.net.init_args.channels_up=4",
            "--model.net.init_args.levels=2",
            "--model.input_depth=2",
            "--trainer.max_steps=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}",
        ]
    )
    saved = yaml.safe_load((root / "config.yaml").read_text())
    assert _find(saved, "lr") == ["model.init_args.lr"]
    assert saved["model"]["init_args"]["lr"] == 0.02
    assert saved["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.Adam"


def test_the_optimizer_runs_at_the_models_learning_rate(capsys: pytest.CaptureFixture[str]) -> None:
    cli = DIPCLI(
        args=[
            "--model=SuperResolutionDIP",
            "--data.scale=2",
            "--model.optimizer=torch.optim.SGD",
            "--model.optimizer.momentum=0.5",
            "--model.net.init_args.channels_down=4",
            "--model.net.init_args.channels_up=4",
            "--model.net.init_args.levels=2",
            "--trainer.logger=false",
        ],
        run=False,
    )
    assert isinstance(cli.model, DIPModule)
    net = torch.nn.Linear(2, 2)
    optimizer = cli.model.build_optimizer(net)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == signature_defaults(type(cli.model))["lr"]
    assert optimizer.defaults["momentum"] == 0.5
