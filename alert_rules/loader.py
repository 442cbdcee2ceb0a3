"""Load rule, routing and silence files into a validated :class:`RuleSet`.

Every problem is collected (not just the first) with its file, line and column,
so ``orderpulse rules check`` prints them all in one go::

    payments.yaml:14:7: rule "PaymentFailures": 'above' must be a number

A file may hold any of the top-level sections ``rules``, ``routing``, ``inhibit``
and ``silences``. ``routing`` may appear in one file of a set only.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from alert_rules.durations import parse_duration
from alert_rules.errors import RuleFileError, RuleProblem
from alert_rules.model import (
    DEFAULT_FRESH_WITHIN,
    DEFAULT_REPEAT,
    SEVERITIES,
    AbsenceCondition,
    AnomalyCondition,
    ChangeCondition,
    Condition,
    Direction,
    InhibitRule,
    Level,
    Matcher,
    MatchOp,
    Route,
    Routing,
    Rule,
    RuleSet,
    Scope,
    Silence,
    StalledCondition,
    ThresholdCondition,
)
from alert_rules.samples import DIMENSIONS, GRAINS, KPIS, KpiKind, as_utc
from alert_rules.templates import Template, TemplateSyntaxError, parse_template

# Keys that used to exist, with what replaced them, so an old file says what to do.
_RENAMED = {
    "max_watermark_lag": "'max_watermark_stall' (how long the watermark may stand "
    "still) on pipeline_stalled, and 'fresh_within' on absence rules",
}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_LABELS = frozenset({"alertname", "severity", *DIMENSIONS})
_ANNOTATIONS = ("summary", "description", "runbook_url")
_TOP_KEYS = ("rules", "routing", "inhibit", "silences")

_COMMON_KEYS = ("name", "kind", "labels", "annotations", "for")
_SERIES_KEYS = ("grain", "split_by", "include", "exclude", "open_windows")
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "threshold": (
        *_SERIES_KEYS,
        "kpi",
        "above",
        "below",
        "recovery",
        "min_volume",
        "volume_kpi",
    ),
    "change": (
        *_SERIES_KEYS,
        "kpi",
        "drop_percent",
        "rise_percent",
        "recovery_percent",
        "baseline",
        "min_baseline",
    ),
    "anomaly": (
        *_SERIES_KEYS,
        "kpi",
        "deviation",
        "recovery",
        "direction",
        "rolling_windows",
        "min_volume",
        "volume_kpi",
        "min_delta",
    ),
    "absence": (
        "grain",
        "split_by",
        "include",
        "exclude",
        "kpi",
        "severity",
        "expect_windows",
        "min_expected",
        "fresh_within",
    ),
    "pipeline_stalled": ("severity", "max_batch_age", "max_watermark_stall"),
}


@dataclass
class _Entry:
    key: Node
    value: Node


class _Reader:
    """Walks composed YAML nodes, turning them into values and positioned problems."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.rule: str | None = None
        self.problems: list[RuleProblem] = []
        self._constructor = SafeConstructor()

    def error(self, node: Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(
            RuleProblem(self.file, mark.line + 1, mark.column + 1, message, self.rule)
        )

    def plain(self, node: Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def mapping(self, node: Node, what: str) -> dict[str, _Entry] | None:
        if not isinstance(node, MappingNode):
            self.error(node, f"{what} must be a mapping of key: value")
            return None
        entries: dict[str, _Entry] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, f"keys of {what} must be plain names")
                continue
            key = str(key_node.value)
            if key in entries:
                line = entries[key].key.start_mark.line + 1
                self.error(key_node, f"duplicate key {key!r} (first at line {line})")
                continue
            entries[key] = _Entry(key_node, value_node)
        return entries

    def known_keys(
        self, entries: dict[str, _Entry], allowed: Iterable[str], what: str
    ) -> None:
        allowed = tuple(allowed)
        for key, entry in entries.items():
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                if key in _RENAMED:
                    suggestion = f"; it was replaced by {_RENAMED[key]}"
                self.error(entry.key, f"unknown key {key!r} in {what}{suggestion}")

    def required(self, entries: dict[str, _Entry], key: str, node: Node) -> Node | None:
        if key not in entries:
            self.error(node, f"missing required key {key!r}")
            return None
        return entries[key].value

    def string(self, node: Node, what: str) -> str | None:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            self.error(node, f"{what!r} must be a string")
            return None
        return str(node.value)

    def number(self, node: Node, what: str) -> float | None:
        tags = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
        if not isinstance(node, ScalarNode) or node.tag not in tags:
            self.error(node, f"{what!r} must be a number")
            return None
        value = float(self.plain(node))
        if not math.isfinite(value):
            self.error(node, f"{what!r} must be a finite number")
            return None
        return value

    def integer(self, node: Node, what: str, minimum: int) -> int | None:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            self.error(node, f"{what!r} must be a whole number")
            return None
        value = int(self.plain(node))
        if value < minimum:
            self.error(node, f"{what!r} must be at least {minimum}, got {value}")
            return None
        return value

    def duration(self, node: Node, what: str) -> timedelta | None:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            self.error(node, f"{what!r} must be a duration such as 10m or 1h30m")
            return None
        try:
            return parse_duration(str(node.value))
        except ValueError as bad:
            self.error(node, f"{what!r}: {bad}")
            return None

    def choice(self, node: Node, what: str, options: Iterable[str]) -> str | None:
        options = tuple(options)
        value = self.string(node, what)
        if value is None:
            return None
        if value not in options:
            hint = difflib.get_close_matches(value, options, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            self.error(
                node,
                f"{what!r} must be one of {', '.join(options)}, got {value!r}"
                f"{suggestion}",
            )
            return None
        return value

    def strings(self, node: Node, what: str) -> list[tuple[str, Node]] | None:
        if isinstance(node, ScalarNode):
            single = self.string(node, what)
            return None if single is None else [(single, node)]
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what!r} must be a string or a list of strings")
            return None
        values = [(self.string(item, what), item) for item in node.value]
        if any(value is None for value, _ in values):
            return None
        return [(str(value), item) for value, item in values]

    def timestamp(self, node: Node, what: str) -> datetime | None:
        value = self.plain(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                value = None
        if not isinstance(value, datetime) or value.tzinfo is None:
            self.error(
                node,
                f"{what!r} must be an ISO-8601 time with offset, "
                "e.g. 2025-03-01T22:00:00Z",
            )
            return None
        return as_utc(value)


def load_rule_set(paths: Iterable[Path]) -> RuleSet:
    """Load and validate ``paths`` (files, or directories of ``*.yaml``/``*.yml``).

    Raise :class:`RuleFileError` listing every problem when any file is invalid.
    Sub-directories are not searched, so ``rules/tests/`` is not mistaken for rules.
    """
    files = expand_paths(paths)
    problems: list[RuleProblem] = []
    parts = [_load_file(path, problems) for path in files]
    rule_set = _merge(files, parts, problems)
    if problems:
        raise RuleFileError(problems)
    return rule_set


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files named in ``paths``, with directories replaced by their YAML files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            )
        else:
            files.append(path)
    return files


@dataclass
class _FilePart:
    rules: list[Rule]
    routing: tuple[Routing, Node] | None
    inhibit: list[InhibitRule]
    silences: list[Silence]


def _load_file(path: Path, problems: list[RuleProblem]) -> _FilePart:
    part = _FilePart([], None, [], [])
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as failure:
        problems.append(RuleProblem(name, 1, 1, f"cannot read file: {failure}"))
        return part
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as bad:
        mark = bad.problem_mark or bad.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problems.append(RuleProblem(name, line, column, f"invalid YAML: {bad.problem}"))
        return part
    if root is None:
        return part
    reader = _Reader(name)
    entries = reader.mapping(root, "a rule file")
    if entries is not None:
        reader.known_keys(entries, _TOP_KEYS, "a rule file")
        _read_sections(reader, entries, part)
    problems.extend(reader.problems)
    return part


def _read_sections(
    reader: _Reader, entries: dict[str, _Entry], part: _FilePart
) -> None:
    if "rules" in entries:
        node = entries["rules"].value
        if not isinstance(node, SequenceNode):
            reader.error(node, "'rules' must be a list of rules")
        else:
            for rule_node in node.value:
                rule = _read_rule(reader, rule_node)
                reader.rule = None
                if rule is not None:
                    part.rules.append(rule)
    if "routing" in entries:
        routing = _read_routing(reader, entries["routing"].value)
        if routing is not None:
            part.routing = (routing, entries["routing"].key)
    if "inhibit" in entries:
        part.inhibit.extend(_read_inhibit(reader, entries["inhibit"].value))
    if "silences" in entries:
        part.silences.extend(_read_silences(reader, entries["silences"].value))


def _read_rule(reader: _Reader, node: Node) -> Rule | None:
    entries = reader.mapping(node, "a rule")
    if entries is None:
        return None
    name_node = reader.required(entries, "name", node)
    name = reader.string(name_node, "name") if name_node is not None else None
    if name is not None and not _NAME.match(name):
        reader.error(
            name_node or node, f"rule name {name!r} must match {_NAME.pattern}"
        )
    reader.rule = name
    kind_node = reader.required(entries, "kind", node)
    kind = (
        reader.choice(kind_node, "kind", _KIND_KEYS) if kind_node is not None else None
    )
    if kind is None:
        return None
    reader.known_keys(entries, (*_COMMON_KEYS, *_KIND_KEYS[kind]), f"a {kind} rule")
    before = len(reader.problems)
    rule = _build_rule(reader, entries, node, name or "?", kind)
    if len(reader.problems) > before or name is None:
        return None
    return rule


def _build_rule(
    reader: _Reader, entries: dict[str, _Entry], node: Node, name: str, kind: str
) -> Rule | None:
    grain = "1m"
    if kind != "pipeline_stalled":
        grain_node = reader.required(entries, "grain", node)
        grain = (
            reader.choice(grain_node, "grain", GRAINS) if grain_node else None
        ) or ("1m")
    scope = _read_scope(reader, entries)
    hold_for = _read_hold_for(reader, entries, grain)
    labels = _read_labels(reader, entries)
    annotations = _read_annotations(reader, entries, node)
    condition, levels = _read_condition(reader, entries, node, kind)
    if condition is None:
        return None
    open_windows = _read_open_windows(reader, entries, kind, condition)
    digest_source = json.dumps(reader.plain(node), sort_keys=True, default=str)
    return Rule(
        name=name,
        kind=kind,
        condition=condition,
        grain=grain,
        scope=scope,
        levels=levels,
        hold_for=hold_for,
        judge_open_windows=open_windows,
        labels=labels,
        annotations=annotations,
        file=reader.file,
        line=node.start_mark.line + 1,
        column=node.start_mark.column + 1,
        digest=hashlib.sha256(digest_source.encode()).hexdigest()[:16],
    )


def _read_scope(reader: _Reader, entries: dict[str, _Entry]) -> Scope:
    dimension = "all"
    if "split_by" in entries:
        chosen = reader.choice(entries["split_by"].value, "split_by", DIMENSIONS)
        dimension = chosen or "all"
    filters: dict[str, frozenset[str]] = {}
    for key in ("include", "exclude"):
        if key not in entries:
            continue
        if dimension == "all":
            reader.error(
                entries[key].key, f"{key!r} needs 'split_by' to name a dimension"
            )
            continue
        values = reader.strings(entries[key].value, key) or []
        for value, value_node in values:
            if value not in DIMENSIONS[dimension]:
                hint = difflib.get_close_matches(value, DIMENSIONS[dimension], n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                reader.error(
                    value_node,
                    f"{value!r} is not a known {dimension} value{suggestion}",
                )
        filters[key] = frozenset(value for value, _ in values)
    return Scope(dimension, filters.get("include"), filters.get("exclude", frozenset()))


def _read_hold_for(
    reader: _Reader, entries: dict[str, _Entry], grain: str
) -> timedelta:
    if "for" not in entries:
        return timedelta(0)
    node = entries["for"].value
    hold_for = reader.duration(node, "for")
    if hold_for is None:
        return timedelta(0)
    if hold_for % GRAINS[grain]:
        reader.error(
            node,
            f"'for' must be a whole number of {grain} windows",
        )
    return hold_for


def _read_labels(reader: _Reader, entries: dict[str, _Entry]) -> dict[str, str]:
    labels: dict[str, str] = {}
    if "labels" not in entries:
        return labels
    mapping = reader.mapping(entries["labels"].value, "'labels'") or {}
    for key, entry in mapping.items():
        if not _LABEL.match(key):
            reader.error(entry.key, f"label name {key!r} must match {_LABEL.pattern}")
        elif key in _RESERVED_LABELS:
            reader.error(entry.key, f"label {key!r} is set by the engine; remove it")
        value = reader.string(entry.value, f"labels.{key}")
        if value is not None:
            labels[key] = value
    return labels


def _read_annotations(
    reader: _Reader, entries: dict[str, _Entry], node: Node
) -> dict[str, Template]:
    annotations: dict[str, Template] = {}
    annotations_node = reader.required(entries, "annotations", node)
    if annotations_node is None:
        return annotations
    mapping = reader.mapping(annotations_node, "'annotations'")
    if mapping is None:
        return annotations
    reader.known_keys(mapping, _ANNOTATIONS, "'annotations'")
    reader.required(mapping, "summary", annotations_node)
    for key, entry in mapping.items():
        text = reader.string(entry.value, f"annotations.{key}")
        if text is None or key not in _ANNOTATIONS:
            continue
        try:
            annotations[key] = parse_template(text)
        except TemplateSyntaxError as bad:
            reader.error(entry.value, f"annotations.{key}: {bad}")
            continue
        if key == "runbook_url" and not text.startswith(("https://", "http://")):
            reader.error(entry.value, "annotations.runbook_url must be an http(s) link")
    return annotations


def _read_open_windows(
    reader: _Reader, entries: dict[str, _Entry], kind: str, condition: Condition
) -> bool:
    if "open_windows" in entries:
        choice = reader.choice(
            entries["open_windows"].value, "open_windows", ("judge", "skip")
        )
        return choice == "judge"
    # Intensive KPIs (rates, latencies, averages) are meaningful on a filling
    # window once the volume guard passes; counts and sums are not, because a
    # half-full window always looks like a drop.
    if kind not in ("threshold", "anomaly"):
        return False
    kpi = getattr(condition, "kpi", "")
    return KPIS[kpi].kind in (KpiKind.RATIO, KpiKind.SECONDS) or kpi == "avg_ticket"


def _read_condition(
    reader: _Reader, entries: dict[str, _Entry], node: Node, kind: str
) -> tuple[Condition | None, tuple[Level, ...]]:
    if kind == "threshold":
        return _read_threshold(reader, entries, node)
    if kind == "change":
        return _read_change(reader, entries, node)
    if kind == "anomaly":
        return _read_anomaly(reader, entries, node)
    if kind == "absence":
        return _read_absence(reader, entries, node)
    return _read_stalled(reader, entries, node)


def _read_kpi(
    reader: _Reader, entries: dict[str, _Entry], node: Node, key: str = "kpi"
) -> str | None:
    kpi_node = reader.required(entries, key, node)
    return reader.choice(kpi_node, key, KPIS) if kpi_node is not None else None


def _read_levels(
    reader: _Reader, node: Node, what: str
) -> dict[str, tuple[float, Node]]:
    mapping = reader.mapping(node, repr(what))
    if mapping is None:
        return {}
    reader.known_keys(mapping, SEVERITIES, repr(what))
    levels: dict[str, tuple[float, Node]] = {}
    for severity, entry in mapping.items():
        value = reader.number(entry.value, f"{what}.{severity}")
        if value is not None and severity in SEVERITIES:
            levels[severity] = (value, entry.value)
    if not mapping:
        reader.error(node, f"{what!r} needs at least one of {', '.join(SEVERITIES)}")
    return levels


def _ordered_levels(
    reader: _Reader,
    triggers: dict[str, tuple[float, Node]],
    recovery_node: Node | None,
    direction: Direction,
    what: str,
) -> tuple[Level, ...]:
    """Check level ordering and recovery sides; return levels, most severe first."""
    recoveries: dict[str, tuple[float, Node]] = {}
    if recovery_node is not None:
        if isinstance(recovery_node, MappingNode):
            recoveries = _read_levels(reader, recovery_node, "recovery")
            for severity, (_, value_node) in recoveries.items():
                if severity not in triggers:
                    reader.error(value_node, f"recovery for {severity!r} has no level")
        else:
            single = reader.number(recovery_node, "recovery")
            if single is not None:
                recoveries = dict.fromkeys(triggers, (single, recovery_node))
    levels: list[Level] = []
    ranked = [s for s in SEVERITIES if s in triggers]
    for severity in ranked:
        trigger, trigger_node = triggers[severity]
        recovery, recovery_at = recoveries.get(severity, (trigger, trigger_node))
        beyond = (
            recovery > trigger if direction is Direction.ABOVE else recovery < trigger
        )
        if beyond:
            side = "above" if direction is Direction.ABOVE else "below"
            reader.error(
                recovery_at,
                f"recovery {recovery:g} for {severity} must not be {side} its "
                f"level {trigger:g}, or the alert could never resolve",
            )
        levels.append(Level(severity, trigger, recovery))
    for stronger, weaker in itertools.pairwise(levels):
        wrong = (
            stronger.trigger <= weaker.trigger
            if direction is Direction.ABOVE
            else stronger.trigger >= weaker.trigger
        )
        if wrong:
            reader.error(
                triggers[stronger.severity][1],
                f"{what}.{stronger.severity} ({stronger.trigger:g}) must be "
                f"{'higher' if direction is Direction.ABOVE else 'lower'} than "
                f"{what}.{weaker.severity} ({weaker.trigger:g})",
            )
    return tuple(levels)


def _check_kpi_range(
    reader: _Reader,
    kpi: str,
    levels: dict[str, tuple[float, Node]],
    direction: Direction,
) -> None:
    info = KPIS[kpi]
    for severity, (value, node) in levels.items():
        if info.kind is KpiKind.RATIO and not 0 <= value <= 1:
            reader.error(
                node,
                f"{kpi} is a ratio between 0 and 1; {severity} level {value:g} can "
                "never be crossed (write 0.25 for 25%)",
            )
        elif value < 0 or (direction is Direction.BELOW and value == 0):
            reader.error(
                node,
                f"{kpi} is never negative; {severity} level {value:g} "
                f"{direction.value} can never be crossed",
            )
        elif info.kind is KpiKind.RATIO and direction is Direction.ABOVE and value == 1:
            reader.error(
                node, f"{kpi} cannot be above 1; {severity} level can never fire"
            )


def _read_volume(
    reader: _Reader, entries: dict[str, _Entry], kpi: str
) -> tuple[float, str]:
    min_volume = 0.0
    if "min_volume" in entries:
        value = reader.number(entries["min_volume"].value, "min_volume")
        if value is not None and value < 0:
            reader.error(
                entries["min_volume"].value, "'min_volume' must not be negative"
            )
        min_volume = value or 0.0
    volume_kpi = KPIS[kpi].volume_kpi or "orders_created"
    if "volume_kpi" in entries:
        chosen = reader.choice(entries["volume_kpi"].value, "volume_kpi", KPIS)
        if chosen is not None and KPIS[chosen].kind is not KpiKind.COUNT:
            reader.error(
                entries["volume_kpi"].value, "'volume_kpi' must be a count KPI"
            )
        volume_kpi = chosen or volume_kpi
    if KPIS[kpi].kind is KpiKind.RATIO and "min_volume" not in entries:
        reader.error(
            entries["kpi"].key,
            f"{kpi} is a ratio: set 'min_volume' (the fewest {volume_kpi} in a "
            "window worth judging) so a tiny window cannot page",
        )
    return min_volume, volume_kpi


def _read_threshold(
    reader: _Reader, entries: dict[str, _Entry], node: Node
) -> tuple[Condition | None, tuple[Level, ...]]:
    kpi = _read_kpi(reader, entries, node)
    sides = [key for key in ("above", "below") if key in entries]
    if len(sides) != 1:
        reader.error(node, "a threshold rule needs exactly one of 'above' or 'below'")
        return None, ()
    if kpi is None:
        return None, ()
    direction = Direction(sides[0])
    triggers = _read_levels(reader, entries[sides[0]].value, sides[0])
    _check_kpi_range(reader, kpi, triggers, direction)
    recovery = entries["recovery"].value if "recovery" in entries else None
    levels = _ordered_levels(reader, triggers, recovery, direction, sides[0])
    min_volume, volume_kpi = _read_volume(reader, entries, kpi)
    return ThresholdCondition(kpi, direction, min_volume, volume_kpi), levels


def _read_change(
    reader: _Reader, entries: dict[str, _Entry], node: Node
) -> tuple[Condition | None, tuple[Level, ...]]:
    kpi = _read_kpi(reader, entries, node)
    sides = [key for key in ("drop_percent", "rise_percent") if key in entries]
    if len(sides) != 1:
        reader.error(
            node, "a change rule needs exactly one of 'drop_percent' or 'rise_percent'"
        )
        return None, ()
    direction = Direction.BELOW if sides[0] == "drop_percent" else Direction.ABOVE
    triggers = _read_levels(reader, entries[sides[0]].value, sides[0])
    for severity, (value, value_node) in triggers.items():
        limit_ok = 0 < value <= 100 if direction is Direction.BELOW else value > 0
        if not limit_ok:
            reader.error(
                value_node,
                f"{sides[0]}.{severity} must be "
                f"{'between 0 and 100' if direction is Direction.BELOW else 'above 0'}"
                f", got {value:g}",
            )
    recovery = (
        entries["recovery_percent"].value if "recovery_percent" in entries else None
    )
    # Drops are stored as negative fractions so both sides compare the same way.
    sign = -1.0 if direction is Direction.BELOW else 1.0
    fractions = {s: (sign * v / 100, n) for s, (v, n) in triggers.items()}
    recovery_fractions: Node | None = recovery
    levels = _ordered_levels(reader, fractions, None, direction, sides[0])
    if recovery is not None:
        levels = _change_recovery(reader, levels, recovery, sign, direction)
    baseline_node = reader.required(entries, "baseline", node)
    trailing, offset = _read_baseline(reader, baseline_node)
    min_baseline = 0.0
    if "min_baseline" in entries:
        min_baseline = (
            reader.number(entries["min_baseline"].value, "min_baseline") or 0.0
        )
    del recovery_fractions
    if kpi is None:
        return None, ()
    condition = ChangeCondition(kpi, direction, trailing, offset, min_baseline)
    return condition, levels


def _change_recovery(
    reader: _Reader,
    levels: tuple[Level, ...],
    node: Node,
    sign: float,
    direction: Direction,
) -> tuple[Level, ...]:
    value = reader.number(node, "recovery_percent")
    if value is None:
        return levels
    recovery = sign * value / 100
    rebuilt: list[Level] = []
    for level in levels:
        beyond = (
            recovery > level.trigger
            if direction is Direction.ABOVE
            else recovery < level.trigger
        )
        if beyond:
            reader.error(
                node,
                f"recovery_percent {value:g} is past the {level.severity} level; "
                "the alert could never resolve",
            )
        rebuilt.append(Level(level.severity, level.trigger, recovery))
    return tuple(rebuilt)


def _read_baseline(reader: _Reader, node: Node | None) -> tuple[int, timedelta | None]:
    if node is None:
        return 0, None
    mapping = reader.mapping(node, "'baseline'")
    if mapping is None:
        return 0, None
    reader.known_keys(mapping, ("trailing_windows", "same_window"), "'baseline'")
    if len(mapping) != 1:
        reader.error(
            node, "'baseline' needs exactly one of trailing_windows or same_window"
        )
        return 0, None
    if "trailing_windows" in mapping:
        count = reader.integer(mapping["trailing_windows"].value, "trailing_windows", 1)
        return count or 0, None
    if "same_window" in mapping:
        value_node = mapping["same_window"].value
        choice = reader.choice(value_node, "same_window", ("1d", "7d"))
        return 0, None if choice is None else parse_duration(choice)
    return 0, None


def _read_anomaly(
    reader: _Reader, entries: dict[str, _Entry], node: Node
) -> tuple[Condition | None, tuple[Level, ...]]:
    kpi = _read_kpi(reader, entries, node)
    direction: Direction | None = None
    if "direction" in entries:
        chosen = reader.choice(
            entries["direction"].value, "direction", ("above", "below", "both")
        )
        direction = None if chosen in (None, "both") else Direction(chosen)
    deviation_node = reader.required(entries, "deviation", node)
    triggers = (
        _read_levels(reader, deviation_node, "deviation") if deviation_node else {}
    )
    for severity, (value, value_node) in triggers.items():
        if value <= 0:
            reader.error(
                value_node, f"deviation.{severity} must be above 0 standard deviations"
            )
    recovery = entries["recovery"].value if "recovery" in entries else None
    levels = _ordered_levels(reader, triggers, recovery, Direction.ABOVE, "deviation")
    rolling = 30
    if "rolling_windows" in entries:
        rolling = (
            reader.integer(entries["rolling_windows"].value, "rolling_windows", 5) or 30
        )
    min_delta = 0.0
    if "min_delta" in entries:
        min_delta = reader.number(entries["min_delta"].value, "min_delta") or 0.0
    if kpi is None:
        return None, ()
    min_volume, volume_kpi = _read_volume(reader, entries, kpi)
    condition = AnomalyCondition(
        kpi, direction, rolling, min_volume, volume_kpi, min_delta
    )
    return condition, levels


def _read_severity(reader: _Reader, entries: dict[str, _Entry]) -> str:
    if "severity" not in entries:
        return "critical"
    return (
        reader.choice(entries["severity"].value, "severity", SEVERITIES) or "critical"
    )


def _read_absence(
    reader: _Reader, entries: dict[str, _Entry], node: Node
) -> tuple[Condition | None, tuple[Level, ...]]:
    kpi = "orders_created"
    if "kpi" in entries:
        kpi = reader.choice(entries["kpi"].value, "kpi", KPIS) or kpi
        if KPIS[kpi].kind is not KpiKind.COUNT:
            reader.error(entries["kpi"].value, "an absence rule watches a count KPI")
    if "for" not in entries:
        reader.error(node, "an absence rule needs 'for' (how long without data)")
    expect_windows = 30
    if "expect_windows" in entries:
        expect_windows = (
            reader.integer(entries["expect_windows"].value, "expect_windows", 1) or 30
        )
    min_expected = 1.0
    if "min_expected" in entries:
        value = reader.number(entries["min_expected"].value, "min_expected")
        if value is not None and value <= 0:
            reader.error(
                entries["min_expected"].value, "'min_expected' must be above 0"
            )
        min_expected = value or 1.0
    fresh_within = DEFAULT_FRESH_WITHIN
    if "fresh_within" in entries:
        value_node = entries["fresh_within"].value
        fresh = reader.duration(value_node, "fresh_within")
        if fresh is not None and fresh <= timedelta(0):
            reader.error(value_node, "'fresh_within' must be longer than 0s")
        fresh_within = fresh or DEFAULT_FRESH_WITHIN
    severity = _read_severity(reader, entries)
    level = Level(severity, 0.0, 0.0)
    condition = AbsenceCondition(kpi, expect_windows, min_expected, fresh_within)
    return condition, (level,)


def _read_stalled(
    reader: _Reader, entries: dict[str, _Entry], node: Node
) -> tuple[Condition | None, tuple[Level, ...]]:
    ages: dict[str, timedelta] = {}
    for key in ("max_batch_age", "max_watermark_stall"):
        value_node = reader.required(entries, key, node)
        value = reader.duration(value_node, key) if value_node is not None else None
        if value is not None and value <= timedelta(0):
            reader.error(value_node or node, f"{key!r} must be longer than 0s")
        ages[key] = value or timedelta(minutes=5)
    severity = _read_severity(reader, entries)
    condition = StalledCondition(ages["max_batch_age"], ages["max_watermark_stall"])
    return condition, (Level(severity, 0.0, 0.0),)


def _read_matchers(reader: _Reader, node: Node, what: str) -> tuple[Matcher, ...]:
    mapping = reader.mapping(node, repr(what))
    if mapping is None:
        return ()
    matchers: list[Matcher] = []
    for label, entry in mapping.items():
        matcher = _read_matcher(reader, label, entry.value)
        if matcher is not None:
            matchers.append(matcher)
    return tuple(matchers)


def _read_matcher(  # noqa: PLR0911 - one early exit per malformed shape
    reader: _Reader, label: str, node: Node
) -> Matcher | None:
    if isinstance(node, ScalarNode | SequenceNode):
        values = reader.strings(node, label)
        if values is None:
            return None
        op = MatchOp.EQUALS if isinstance(node, ScalarNode) else MatchOp.IN
        return Matcher(label, op, frozenset(v for v, _ in values))
    mapping = reader.mapping(node, f"matcher {label!r}")
    if mapping is None:
        return None
    ops = [op.value for op in MatchOp]
    reader.known_keys(mapping, ops, f"matcher {label!r}")
    if len(mapping) != 1:
        reader.error(node, f"matcher {label!r} needs exactly one of {', '.join(ops)}")
        return None
    op_name, entry = next(iter(mapping.items()))
    if op_name not in ops:
        return None
    op = MatchOp(op_name)
    if op is MatchOp.MATCHES:
        pattern = reader.string(entry.value, f"{label}.matches")
        if pattern is None:
            return None
        try:
            return Matcher(label, op, pattern=re.compile(pattern))
        except re.error as bad:
            reader.error(entry.value, f"bad regular expression for {label!r}: {bad}")
            return None
    values = reader.strings(entry.value, f"{label}.{op_name}") or []
    return Matcher(label, op, frozenset(v for v, _ in values))


def _read_route(reader: _Reader, node: Node, known: set[str]) -> Route | None:
    mapping = reader.mapping(node, "a route")
    if mapping is None:
        return None
    reader.known_keys(
        mapping, ("match", "receivers", "repeat_interval", "continue"), "a route"
    )
    matchers = (
        _read_matchers(reader, mapping["match"].value, "match")
        if "match" in mapping
        else ()
    )
    receivers_node = reader.required(mapping, "receivers", node)
    receivers = reader.strings(receivers_node, "receivers") if receivers_node else None
    for receiver, receiver_node in receivers or []:
        if receiver not in known:
            reader.error(
                receiver_node,
                f"receiver {receiver!r} is not declared in routing.receivers",
            )
    repeat = DEFAULT_REPEAT
    if "repeat_interval" in mapping:
        repeat = (
            reader.duration(mapping["repeat_interval"].value, "repeat_interval")
            or repeat
        )
    proceed = False
    if "continue" in mapping:
        value = reader.plain(mapping["continue"].value)
        if not isinstance(value, bool):
            reader.error(mapping["continue"].value, "'continue' must be true or false")
        proceed = value is True
    names = tuple(r for r, _ in receivers or [])
    return Route(matchers, names, repeat, proceed)


def _read_routing(reader: _Reader, node: Node) -> Routing | None:
    reader.rule = None
    mapping = reader.mapping(node, "'routing'")
    if mapping is None:
        return None
    reader.known_keys(mapping, ("receivers", "routes", "default"), "'routing'")
    receivers_node = reader.required(mapping, "receivers", node)
    receivers = reader.strings(receivers_node, "receivers") if receivers_node else None
    known = {r for r, _ in receivers or []}
    routes: list[Route] = []
    if "routes" in mapping:
        routes_node = mapping["routes"].value
        if not isinstance(routes_node, SequenceNode):
            reader.error(routes_node, "'routes' must be a list of routes")
        else:
            routes = [
                r
                for r in (_read_route(reader, n, known) for n in routes_node.value)
                if r
            ]
    default = Route((), (), DEFAULT_REPEAT)
    if "default" in mapping:
        default = _read_route(reader, mapping["default"].value, known) or default
    return Routing(tuple(sorted(known)), tuple(routes), default)


def _read_inhibit(reader: _Reader, node: Node) -> list[InhibitRule]:
    reader.rule = None
    if not isinstance(node, SequenceNode):
        reader.error(node, "'inhibit' must be a list")
        return []
    rules: list[InhibitRule] = []
    for item in node.value:
        mapping = reader.mapping(item, "an inhibit rule")
        if mapping is None:
            continue
        reader.known_keys(mapping, ("source", "target", "equal"), "an inhibit rule")
        source_node = reader.required(mapping, "source", item)
        target_node = reader.required(mapping, "target", item)
        if source_node is None or target_node is None:
            continue
        source = _read_matchers(reader, source_node, "source")
        target = _read_matchers(reader, target_node, "target")
        equal: list[tuple[str, Node]] = []
        if "equal" in mapping:
            equal = reader.strings(mapping["equal"].value, "equal") or []
        rules.append(InhibitRule(source, target, tuple(e for e, _ in equal)))
    return rules


def _read_silences(reader: _Reader, node: Node) -> list[Silence]:
    reader.rule = None
    if not isinstance(node, SequenceNode):
        reader.error(node, "'silences' must be a list")
        return []
    silences: list[Silence] = []
    for item in node.value:
        mapping = reader.mapping(item, "a silence")
        if mapping is None:
            continue
        keys = ("matchers", "starts_at", "ends_at", "reason", "author")
        reader.known_keys(mapping, keys, "a silence")
        values = {key: reader.required(mapping, key, item) for key in keys}
        if any(value is None for value in values.values()):
            continue
        matchers = _read_matchers(reader, values["matchers"], "matchers")  # type: ignore[arg-type]
        if not matchers:
            reader.error(item, "a silence needs at least one matcher")
        starts = reader.timestamp(values["starts_at"], "starts_at")  # type: ignore[arg-type]
        ends = reader.timestamp(values["ends_at"], "ends_at")  # type: ignore[arg-type]
        reason = reader.string(values["reason"], "reason")  # type: ignore[arg-type]
        author = reader.string(values["author"], "author")  # type: ignore[arg-type]
        if starts and ends and ends <= starts:
            reader.error(values["ends_at"], "'ends_at' must be after 'starts_at'")  # type: ignore[arg-type]
        for text, key in ((reason, "reason"), (author, "author")):
            if text is not None and not text.strip():
                reader.error(values[key], f"{key!r} must not be empty")  # type: ignore[arg-type]
        if starts and ends and reason and author and matchers:
            line = item.start_mark.line + 1
            silences.append(
                Silence(matchers, starts, ends, reason, author, reader.file, line)
            )
    return silences


def _merge(
    files: list[Path], parts: list[_FilePart], problems: list[RuleProblem]
) -> RuleSet:
    seen: dict[str, Rule] = {}
    rules: list[Rule] = []
    routing: Routing | None = None
    routing_file = ""
    for path, part in zip(files, parts, strict=True):
        for rule in part.rules:
            if rule.name in seen:
                first = seen[rule.name]
                problems.append(
                    RuleProblem(
                        rule.file,
                        rule.line,
                        rule.column,
                        "duplicate rule name; first defined at "
                        f"{first.file}:{first.line}",
                        rule.name,
                    )
                )
                continue
            seen[rule.name] = rule
            rules.append(rule)
        if part.routing is not None:
            if routing is not None:
                key = part.routing[1].start_mark
                problems.append(
                    RuleProblem(
                        str(path),
                        key.line + 1,
                        key.column + 1,
                        f"'routing' is already defined in {routing_file}; keep one",
                    )
                )
            else:
                routing, routing_file = part.routing[0], str(path)
    inhibit = tuple(rule for part in parts for rule in part.inhibit)
    silences = tuple(silence for part in parts for silence in part.silences)
    return RuleSet(tuple(rules), routing or Routing(), inhibit, silences)
