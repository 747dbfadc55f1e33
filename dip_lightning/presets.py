"""Built-in presets: the YAML files of ``configs/``, shipped in the wheel as package data.

``dip fit --config denoise`` (a bare name) resolves to the built-in ``denoise.yaml``; a path
to a file still works as usual. ``dip presets`` lists the names.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml

#: Where the presets live in a source checkout (an editable install reads them from here).
SOURCE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def presets_root() -> Path:
    """The folder of the presets: ``dip_lightning/presets`` in a wheel, ``configs/`` in a
    source checkout."""
    packaged = Path(str(resources.files("dip_lightning") / "presets"))
    if packaged.is_dir():
        return packaged
    return SOURCE_CONFIGS


def list_presets() -> dict[str, Path]:
    """Every preset by name (``denoise``, ``paper/denoise``, ...), sorted."""
    root = presets_root()
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).with_suffix("").as_posix(): path
        for path in sorted(root.rglob("*.yaml"))
    }


def describe(path: Path) -> str:
    """The first line of a preset's leading comment: its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.lstrip("#").strip():
            return line.lstrip("#").strip()
        if line.strip() and not line.startswith("#"):
            break
    return ""


def resolve_config(value: str) -> str:
    """``value`` itself when it names an existing file, else the built-in preset of that name
    (with or without ``.yaml``), else ``value`` unchanged (the parser then reports it)."""
    if Path(value).exists():
        return value
    name = value[:-5] if value.endswith(".yaml") else value
    name = name.removeprefix("configs/")
    preset = list_presets().get(name)
    return str(preset) if preset is not None else value


def resolve_config_args(args: list[str]) -> list[str]:
    """Replace every ``--config NAME`` / ``--config=NAME`` in ``args`` by its preset path."""
    out: list[str] = []
    expect = False
    for arg in args:
        if expect:
            out.append(resolve_config(arg))
            expect = False
        elif arg in ("--config", "-c"):
            out.append(arg)
            expect = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


def print_presets() -> None:
    """``dip presets``: one line per preset, its name and what it does."""
    presets = list_presets()
    width = max((len(name) for name in presets), default=0)
    for name, path in presets.items():
        print(f"{name:<{width}}  {describe(path)}")


def _load_mapping(text_or_path: str) -> dict[object, object]:
    """The mapping in a YAML file, or in a YAML/JSON text; empty when there is none (the parser
    then reports what is wrong with it)."""
    text = text_or_path
    try:
        if Path(text_or_path).is_file():
            text = Path(text_or_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):  # not a readable file: a text, or bad
        pass
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return content if isinstance(content, dict) else {}


def _data_keys(config: dict[object, object], subcommand: str | None) -> list[str]:
    """The ``data`` options that a config's content sets (``data:`` at the top, or under the
    subcommand's key in a config given before the subcommand)."""
    if "data" not in config and subcommand and isinstance(config.get(subcommand), dict):
        config = config[subcommand]  # type: ignore[assignment]
    data = config.get("data")
    if isinstance(data, str):
        data = _load_mapping(data)
    return [f"data.{key}" for key in data] if isinstance(data, dict) else []


def option_sources(
    args: Sequence[str], subcommand: str | None = None
) -> dict[str, tuple[int, str]]:
    """For each ``data.*`` option (and ``batch.images``) that ``args`` give, the source that
    gives it last: its level and where it is. The parser applies them in order: each
    ``--config`` file is one level and the command-line options after it the next, so a later
    level replaces an earlier one, and the options of one level were given together.

    >>> option_sources(["--data.image", "a.png", "--data.seed=1"])
    {'data.image': (0, 'on the command line'), 'data.seed': (0, 'on the command line')}
    """
    levels: dict[str, tuple[int, str]] = {}
    level = 0
    index = 0
    while index < len(args):
        name, eq, value = args[index].partition("=")
        takes_value = (name.startswith("--") or name == "-c") and not eq
        if takes_value and index + 1 < len(args):
            value = args[index + 1]
        if name in ("--config", "-c"):
            level += 1
            for key in _data_keys(_load_mapping(value), subcommand):
                levels[key] = (level, f"in {value}")
            level += 1
        elif name == "--data":
            for key in _data_keys({"data": _load_mapping(value)}, subcommand):
                levels[key] = (level, "on the command line")
        elif name.startswith("--data.") or name.rstrip("+") == "--batch.images":
            levels[name[2:].rstrip("+")] = (level, "on the command line")
        else:
            takes_value = False
        index += 2 if takes_value else 1
    return levels
