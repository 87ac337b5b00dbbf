"""Operator knobs read from ``TOOLKIT_*`` environment variables, each checked when read.

They are read when used, not at import, so a bad value fails the command that needs it
with one line naming the variable, instead of a traceback from an import.
"""

from __future__ import annotations

import math
import os

__all__ = ["SettingError", "count", "seconds"]


class SettingError(ValueError):
    """An environment knob holds a value it cannot have (the message names it)."""


def _raw(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds from ``name``, else ``default``."""
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise SettingError(f"{name}={raw!r}: expected a positive number of seconds, such as 5")
    return value


def count(name: str, default: int) -> int:
    """A whole number of at least 1 from ``name``, else ``default``."""
    raw = _raw(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise SettingError(f"{name}={raw!r}: expected a whole number of at least 1, such as 3")
    return int(raw)
