"""``dip completion``: a shell completion script built from the parsers ``dip`` uses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dip_lightning.cli import COMMANDS, main
from dip_lightning.completion import completion_script


@pytest.fixture(scope="module")
def bash_script() -> str:
    return completion_script("bash")


def _complete(script: Path, words: list[str]) -> list[str]:
    """What bash offers after ``words`` (the last one is being typed)."""
    array = " ".join(f"'{w}'" for w in words)
    command = (
        f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; "
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; _shtab_dip; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_options_and_choices(bash_script: str, tmp_path: Path) -> None:
    script = tmp_path / "dip.bash"
    script.write_text(bash_script)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert _complete(script, ["dip", "re"]) == ["restore"]
    assert set(_complete(script, ["dip", ""])) == set(COMMANDS)  # every command of dip --help
    assert _complete(script, ["dip", "restore", "--task", ""]) == [
        "denoise", "jpeg", "inpaint", "super-resolution", "flash"
    ]  # fmt: skip
    assert _complete(script, ["dip", "fit", "--trainer.max_s"]) == ["--trainer.max_steps"]
    assert "--model.init_args.lr" in _complete(script, ["dip", "fit", "--model.init_args.l"])
    assert _complete(script, ["dip", "search", "--stopping", ""]) == ["end", "best"]
    (tmp_path / "photo.png").write_bytes(b"")
    assert str(tmp_path / "photo.png") in _complete(script, ["dip", "restore", f"{tmp_path}/ph"])
    (tmp_path / "last.ckpt").write_bytes(b"")
    offered = _complete(script, ["dip", "predict", "--ckpt_path", f"{tmp_path}/la"])
    assert str(tmp_path / "last.ckpt") in offered


@pytest.mark.parametrize("shell", ["zsh", "tcsh"])
def test_other_shells_get_a_script(shell: str) -> None:
    script = completion_script(shell)
    assert "restore" in script and "super-resolution" in script
    assert "trainer.max_steps" in script
    if shell == "zsh":  # zsh shows each command's line of dip --help beside it
        assert f"restore:'{COMMANDS['restore']}'" in script


def test_an_unknown_shell_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["completion", "fish"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: no completion for shell 'fish'; use one of bash, zsh, tcsh\n"
