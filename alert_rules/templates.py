"""Safe annotation templates: ``{{ field }}`` and ``{{ field | filter }}``, no more.

A template is parsed once when its rule file loads, so an unknown field or filter
is a load error with its position, not a surprise at 3 a.m. Rendering substitutes
values; no expression language, attribute access or code execution exists.

Fields: ``value``, ``threshold``, ``baseline``, ``change_percent``, ``rule``,
``severity``, ``kpi``, ``grain``, ``active_since``, ``labels.<name>``.
Filters: ``percent`` (0.125 -> 12.5%), ``round`` (two decimals), ``int``,
``upper``, ``lower``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FIELDS = frozenset(
    {
        "value",
        "threshold",
        "baseline",
        "change_percent",
        "rule",
        "severity",
        "kpi",
        "grain",
        "active_since",
    }
)

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_FIELD = re.compile(r"^(labels\.[A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][A-Za-z0-9_]*)$")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _percent(value: object) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number * 100:.1f}%"


def _round(value: object) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.2f}"


def _int(value: object) -> str:
    number = _number(value)
    return "n/a" if number is None else str(round(number))


FILTERS: dict[str, Callable[[object], str]] = {
    "percent": _percent,
    "round": _round,
    "int": _int,
    "upper": lambda value: _plain(value).upper(),
    "lower": lambda value: _plain(value).lower(),
}


def _plain(value: object) -> str:
    if value is None:
        return "n/a"
    number = _number(value)
    if number is not None and not isinstance(value, int):
        return f"{number:.4g}"
    return str(value)


class TemplateSyntaxError(ValueError):
    """A template is malformed; ``offset`` is the character index of the problem."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class _Placeholder:
    start: int
    end: int
    field: str
    filters: tuple[str, ...]


@dataclass(frozen=True)
class Template:
    """A parsed annotation template; build it with :func:`parse_template`."""

    source: str
    placeholders: tuple[_Placeholder, ...]

    def render(self, context: Mapping[str, object], labels: Mapping[str, str]) -> str:
        """Substitute every placeholder; a missing label renders as an empty string."""
        pieces: list[str] = []
        cursor = 0
        for placeholder in self.placeholders:
            pieces.append(self.source[cursor : placeholder.start])
            pieces.append(_render_one(placeholder, context, labels))
            cursor = placeholder.end
        pieces.append(self.source[cursor:])
        return "".join(pieces)


def _render_one(
    placeholder: _Placeholder, context: Mapping[str, object], labels: Mapping[str, str]
) -> str:
    if placeholder.field.startswith("labels."):
        value: object = labels.get(placeholder.field.removeprefix("labels."), "")
    else:
        value = context.get(placeholder.field)
    if not placeholder.filters:
        return _plain(value)
    text: object = value
    for name in placeholder.filters:
        text = FILTERS[name](text)
    return str(text)


def parse_template(source: str) -> Template:
    """Parse ``source``; raise :class:`TemplateSyntaxError` naming the bad part."""
    placeholders: list[_Placeholder] = []
    for match in _PLACEHOLDER.finditer(source):
        parts = [part.strip() for part in match.group(1).split("|")]
        field, filters = parts[0], tuple(parts[1:])
        if not _FIELD.match(field):
            raise TemplateSyntaxError(
                f"template placeholder {match.group(0)!r} must name a field "
                f"(one of {', '.join(sorted(FIELDS))} or labels.<name>)",
                match.start(),
            )
        if not field.startswith("labels.") and field not in FIELDS:
            raise TemplateSyntaxError(
                f"unknown template field {field!r}; known fields: "
                f"{', '.join(sorted(FIELDS))}, labels.<name>",
                match.start(),
            )
        for name in filters:
            if name not in FILTERS:
                raise TemplateSyntaxError(
                    f"unknown template filter {name!r}; known filters: "
                    f"{', '.join(sorted(FILTERS))}",
                    match.start(),
                )
        placeholders.append(_Placeholder(match.start(), match.end(), field, filters))
    leftover = _PLACEHOLDER.sub("", source)
    for token in ("{{", "}}"):
        if token in leftover:
            raise TemplateSyntaxError(
                f"unbalanced {token!r} in template", source.find(token)
            )
    return Template(source, tuple(placeholders))
