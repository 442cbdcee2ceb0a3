"""Durations as the squad writes them: ``30s``, ``5m``, ``1h30m``, ``1d``, ``1w``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"^(?:\d+[smhdw])+$")


def parse_duration(text: str) -> timedelta:
    """Parse ``text``; raise ValueError with an example of the expected form."""
    compact = text.strip()
    if not _WHOLE.match(compact):
        raise ValueError(
            f"bad duration {text!r}: write a number and a unit (s, m, h, d, w), "
            "e.g. 10m or 1h30m"
        )
    seconds = sum(int(number) * _UNITS[unit] for number, unit in _PART.findall(compact))
    return timedelta(seconds=seconds)


def format_duration(span: timedelta) -> str:
    """The shortest ``1h30m``-style text for ``span`` (``0s`` for zero)."""
    seconds = int(span.total_seconds())
    if seconds == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
