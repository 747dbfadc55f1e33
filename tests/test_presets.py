from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIGS

from dip_lightning import __version__
from dip_lightning.cli import main
from dip_lightning.presets import list_presets, resolve_config, resolve_config_args


def test_every_config_is_a_preset() -> None:
    presets = list_presets()
    assert {"denoise", "paper/denoise"} <= presets.keys()
    assert len(presets) == len(list(CONFIGS.rglob("*.yaml")))


def test_bare_names_resolve_and_paths_stay(tmp_path: Path) -> None:
    assert resolve_config("denoise") == str(list_presets()["denoise"])
    assert resolve_config("paper/denoise.yaml") == str(list_presets()["paper/denoise"])
    own = tmp_path / "denoise"
    own.write_text("trainer: {}\n")
    assert resolve_config(str(own)) == str(own)
    assert resolve_config("no-such-preset") == "no-such-preset"
    args = resolve_config_args(["fit", "--config", "denoise", "--config=paper/denoise"])
    assert args[2].endswith("denoise.yaml") and args[3].startswith("--config=/")


def test_version_and_presets_commands(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"dip-lightning {__version__}"
    main(["presets"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(list_presets())
    assert all(len(line.split(None, 1)) == 2 for line in lines), lines
