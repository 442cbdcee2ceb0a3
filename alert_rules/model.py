"""Typed, frozen models of rules, routing, inhibition and silences.

These are built only by :mod:`alert_rules.loader`, which has already checked
every constraint; the engine trusts them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from alert_rules.templates import Template

SEVERITIES = ("critical", "warning", "info")


class Direction(Enum):
    """Which side of a level is bad."""

    ABOVE = "above"
    BELOW = "below"


@dataclass(frozen=True)
class Level:
    """One severity of a rule: it fires past ``trigger`` and resolves past ``recovery``.

    For ``above`` rules the alert holds while value > trigger and resolves once
    value <= recovery (recovery <= trigger); mirrored for ``below``.
    """

    severity: str
    trigger: float
    recovery: float


@dataclass(frozen=True)
class Scope:
    """Which Gold series a rule watches: one alert per value of ``dimension``."""

    dimension: str
    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()

    def admits(self, value: str) -> bool:
        """True when alerts should be evaluated for dimension value ``value``."""
        if value in self.exclude:
            return False
        return self.include is None or value in self.include


@dataclass(frozen=True)
class ThresholdCondition:
    """KPI above/below fixed levels, with an optional volume guard."""

    kpi: str
    direction: Direction
    min_volume: float
    volume_kpi: str


@dataclass(frozen=True)
class ChangeCondition:
    """KPI changed by a percentage against a baseline.

    ``trailing_windows`` > 0: the mean of that many windows before the breach;
    otherwise ``offset``: the same window one ``offset`` earlier (1d or 7d).
    Levels hold fractions (0.3 = 30 %).
    """

    kpi: str
    direction: Direction
    trailing_windows: int
    offset: timedelta | None
    min_baseline: float


@dataclass(frozen=True)
class AnomalyCondition:
    """KPI deviates from its rolling mean by a number of standard deviations."""

    kpi: str
    direction: Direction | None  # None: either side
    rolling_windows: int
    min_volume: float
    volume_kpi: str
    min_delta: float


DEFAULT_FRESH_WITHIN = timedelta(minutes=10)


@dataclass(frozen=True)
class AbsenceCondition:
    """No ``kpi`` (a count) in a series for ``hold_for``, when it is normally busy.

    The rule judges only while the pipeline is *fresh*: its watermark is within
    ``fresh_within`` of the wall clock. A pipeline catching up on a back-log has
    no recent windows yet, and their absence says nothing about the business.
    """

    kpi: str
    expect_windows: int
    min_expected: float
    fresh_within: timedelta = DEFAULT_FRESH_WITHIN


@dataclass(frozen=True)
class StalledCondition:
    """The pipeline makes no progress.

    Stalled means no micro-batch completed for ``max_batch_age``, or batches
    complete but the watermark has not moved forward for ``max_watermark_stall``
    of wall-clock time (the job runs, event time is stuck). A watermark far
    behind the wall clock that keeps advancing is catching up, not stalled.
    """

    max_batch_age: timedelta
    max_watermark_stall: timedelta


Condition = (
    ThresholdCondition
    | ChangeCondition
    | AnomalyCondition
    | AbsenceCondition
    | StalledCondition
)


@dataclass(frozen=True)
class Rule:
    """One alert rule, as written by the squad and validated by the loader."""

    name: str
    kind: str
    condition: Condition
    grain: str
    scope: Scope
    levels: tuple[Level, ...]
    hold_for: timedelta
    judge_open_windows: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, Template]
    file: str
    line: int
    column: int
    digest: str

    @property
    def kpi(self) -> str | None:
        """The KPI the rule watches (None for pipeline rules)."""
        return getattr(self.condition, "kpi", None)


class MatchOp(Enum):
    """How a matcher compares a label."""

    EQUALS = "equals"
    NOT = "not"
    IN = "in"
    NOT_IN = "not_in"
    MATCHES = "matches"


@dataclass(frozen=True)
class Matcher:
    """A test on one label; a missing label is the empty string."""

    label: str
    op: MatchOp
    values: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when ``labels`` satisfies this matcher."""
        value = labels.get(self.label, "")
        if self.op is MatchOp.EQUALS or self.op is MatchOp.IN:
            return value in self.values
        if self.op is MatchOp.NOT or self.op is MatchOp.NOT_IN:
            return value not in self.values
        assert self.pattern is not None
        return self.pattern.fullmatch(value) is not None


def match_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    """True when every matcher accepts ``labels`` (an empty tuple matches all)."""
    return all(matcher.matches(labels) for matcher in matchers)


@dataclass(frozen=True)
class Route:
    """Alerts matching ``matchers`` go to ``receivers``, repeated every interval."""

    matchers: tuple[Matcher, ...]
    receivers: tuple[str, ...]
    repeat_interval: timedelta
    continue_matching: bool = False


@dataclass(frozen=True)
class InhibitRule:
    """A firing ``source`` alert mutes ``target`` alerts with equal ``equal`` labels."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True)
class Silence:
    """Mute notifications of matching alerts between two wall-clock instants."""

    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    reason: str
    author: str
    file: str
    line: int

    def active(self, now: datetime, labels: Mapping[str, str]) -> bool:
        """True when this silence mutes ``labels`` at wall-clock ``now``."""
        return self.starts_at <= now < self.ends_at and match_all(self.matchers, labels)


DEFAULT_REPEAT = timedelta(hours=4)


@dataclass(frozen=True)
class Routing:
    """Receivers by route; the first matching route wins unless it says continue."""

    receivers: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    default: Route = field(
        default_factory=lambda: Route((), (), DEFAULT_REPEAT, continue_matching=False)
    )

    def route(self, labels: Mapping[str, str]) -> tuple[tuple[str, ...], timedelta]:
        """Receivers for ``labels`` and the shortest repeat interval among matches."""
        receivers: list[str] = []
        intervals: list[timedelta] = []
        for route in self.routes:
            if match_all(route.matchers, labels):
                receivers.extend(r for r in route.receivers if r not in receivers)
                intervals.append(route.repeat_interval)
                if not route.continue_matching:
                    break
        if not intervals:
            return self.default.receivers, self.default.repeat_interval
        return tuple(receivers), min(intervals)


@dataclass(frozen=True)
class RuleSet:
    """Everything loaded from a set of rule files."""

    rules: tuple[Rule, ...] = ()
    routing: Routing = field(default_factory=Routing)
    inhibit: tuple[InhibitRule, ...] = ()
    silences: tuple[Silence, ...] = ()

    def rule(self, name: str) -> Rule:
        """The rule called ``name``; KeyError when there is none."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)
