"""User-facing error types.

Every error that the command line reports to the user derives from :class:`DIPError`.
The CLI prints ``error: <message>`` and exits with status 2 without a traceback, so
``str(error)`` is always a single line that names the problem and, where possible, the fix.

>>> str(ImageError("mask not found: m.png;\\n check the path"))
'mask not found: m.png; check the path'
>>> isinstance(ConfigError("bad value"), ValueError)
True
"""

from __future__ import annotations

__all__ = ["ConfigError", "DIPError", "ImageError", "one_line"]


def one_line(text: object) -> str:
    """Collapse any whitespace (including newlines) in ``str(text)`` to single spaces.

    >>> one_line("a\\n  b\\tc ")
    'a b c'
    """
    return " ".join(str(text).split())


class DIPError(Exception):
    """Base class of every user-facing error; ``str()`` is always one line."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ImageError(DIPError, ValueError):
    """An image file cannot be read or written (missing, corrupt, unsupported mode, ...)."""


class ConfigError(DIPError, ValueError):
    """An invalid configuration value or combination of options."""
