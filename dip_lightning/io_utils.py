"""Atomic file writes.

Files are written to a temporary file in the destination directory, flushed to disk and then
moved onto the destination with :func:`os.replace`, so readers never see a half-written file
and an existing file is kept intact if writing fails.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_json(d / "sub" / "m.json", {"psnr": float("nan"), "step": 3})
>>> print((d / "sub" / "m.json").read_text(), end="")
{
  "psnr": null,
  "step": 3
}
>>> sorted(p.name for p in (d / "sub").iterdir())
['m.json']
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "json_safe",
    "temporaries_of",
]

_MAX_NAME_ATTEMPTS = 100


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse to fsync directories
        pass
    finally:
        os.close(fd)


def _create_temp(path: Path) -> Path:
    """Create (exclusively) an empty temporary file next to ``path`` and return its path.

    The name is ``.<stem>.<random>.tmp<suffix>`` so that the original suffix stays at the very
    end (Pillow infers the format from it). The file is created with mode 0o666 minus the umask,
    i.e. the permissions a normal ``open(path, "w")`` would give.
    """
    for _ in range(_MAX_NAME_ATTEMPTS):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - astronomically unlikely
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")  # pragma: no cover


def temporaries_of(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files :func:`atomic_path` may have left next to ``path`` (a process killed
    while it wrote ``path``), by their name ``.<stem>.<8 hex digits>.tmp<suffix>``; only the
    caller knows that no live process is writing ``path`` and they may go.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in (".a.0123abcd.tmp.png", ".a.b.0123abcd.tmp.png", "a.png"):
    ...     _ = (d / name).write_bytes(b"")
    >>> [p.name for p in temporaries_of(d / "a.png")]
    ['.a.0123abcd.tmp.png']
    """
    target = Path(path)
    pattern = re.compile(
        rf"\.{re.escape(target.stem)}\.[0-9a-f]{{8}}\.tmp{re.escape(target.suffix)}"
    )
    try:
        names = sorted(os.listdir(target.parent))
    except OSError:
        return []
    return [target.parent / name for name in names if pattern.fullmatch(name)]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    Parent directories are created. The body writes the complete file to the yielded path
    (which already exists, empty). When the body returns, the file is fsynced and
    :func:`os.replace`-d onto ``path``; if the body raises, the temporary file is removed,
    ``path`` is left untouched and the exception propagates.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "restored.png") as tmp:
    ...     _ = tmp.write_bytes(b"data")
    ...     print(tmp.name.startswith(".restored.") and tmp.name.endswith(".tmp.png"))
    True
    >>> (d / "restored.png").read_bytes()
    b'data'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(target)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8, newlines untranslated) to ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """Return a copy of ``obj`` that :func:`json.dumps` accepts with ``allow_nan=False``.

    Non-finite floats become ``None``; tuples/sets become lists; paths become strings; numpy
    and torch scalars/arrays become Python numbers/lists (via ``.item()``/``.tolist()``).

    >>> json_safe({"a": (1.5, float("inf")), "b": [float("-inf")]})
    {'a': [1.5, None], 'b': [None]}
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {_json_key(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [json_safe(v) for v in items]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):  # numpy arrays/scalars, torch tensors
        return json_safe(tolist())
    item = getattr(obj, "item", None)
    if callable(item):
        return json_safe(item())
    return obj  # let json.dumps raise a TypeError for anything else


def _json_key(key: Any) -> Any:
    if isinstance(key, os.PathLike):
        return os.fspath(key)
    return key


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as JSON (indent 2, key order kept, trailing newline).

    NaN and infinities are written as ``null`` (strict JSON); see :func:`json_safe`.
    """
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False, ensure_ascii=False)
    atomic_write_text(path, text + "\n")
