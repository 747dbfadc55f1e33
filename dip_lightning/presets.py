"""Built-in presets: the YAML files of ``configs/``, shipped in the wheel as package data.

``dip fit --config denoise`` (a bare name) resolves to the built-in ``denoise.yaml``; a path
to a file still works as usual. ``dip presets`` lists the names.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

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
        elif arg == "--config":
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
