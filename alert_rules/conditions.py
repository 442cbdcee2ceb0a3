"""How each rule kind judges one series at one evaluation.

Vocabulary: the *candidate* window is the newest window a rule may judge: the
newest final window, or (for rules that judge open windows) the newest open
window whose volume guard already passes. A *run* is the sequence of
consecutive breaching windows ending at the candidate; a rule with ``for: 10m``
on 5m windows fires once the run holds two windows.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from alert_rules.history import SeriesKey, WindowHistory, last_final_start
from alert_rules.model import (
    AbsenceCondition,
    AnomalyCondition,
    ChangeCondition,
    Direction,
    Level,
    Rule,
    ThresholdCondition,
)
from alert_rules.samples import GRAINS, KPIS, KpiKind


class Observation(NamedTuple):
    """The verdict for one rule level on one series at one evaluation.

    A named tuple rather than a dataclass: one is built per judged window, and
    tuple construction is several times cheaper on this hot path.
    """

    breaching: bool
    run_start: datetime | None = None
    run_windows: int = 0
    value: float | None = None
    threshold: float | None = None
    reference: float | None = None
    spread: float | None = None


NOT_BREACHING = Observation(False)


def windows_needed(rule: Rule) -> int:
    """How many consecutive breaching windows make the rule fire (at least one)."""
    step = GRAINS[rule.grain]
    return max(1, math.ceil(rule.hold_for / step))


def lookback(rule: Rule) -> timedelta:
    """How much history the rule reads behind its candidate window."""
    step = GRAINS[rule.grain]
    windows = windows_needed(rule) + 2
    condition = rule.condition
    if isinstance(condition, ChangeCondition):
        if condition.offset is not None:
            return condition.offset + step * windows
        windows += condition.trailing_windows
    elif isinstance(condition, AnomalyCondition):
        windows += condition.rolling_windows
    elif isinstance(condition, AbsenceCondition):
        windows += condition.expect_windows + 60
    return step * windows


RunMemo = dict[SeriesKey, dict[tuple[str, str], dict[datetime, Observation]]]


class VerdictMemo:
    """Verdicts of windows already judged, per series, rule and level.

    A window's verdict (breaching, and the run of breaching windows ending at
    it) depends only on that window and earlier ones of the same series, so it
    stays valid until a row at or before it changes: :meth:`forget` drops the
    verdicts from the oldest changed window on. With it, judging a series at an
    evaluation costs one window, not a walk over the whole run.
    """

    def __init__(self) -> None:
        self.runs: RunMemo = {}

    def of(
        self, key: SeriesKey, rule: str, severity: str
    ) -> dict[datetime, Observation]:
        """The verdicts of one rule level on series ``key`` (mutable)."""
        per_series = self.runs.get(key)
        if per_series is None:
            per_series = self.runs[key] = {}
        verdicts = per_series.get((rule, severity))
        if verdicts is None:
            verdicts = per_series[(rule, severity)] = {}
        return verdicts

    def forget(self, key: SeriesKey, since: datetime) -> None:
        """Drop verdicts of ``key`` for windows starting at or after ``since``."""
        for verdicts in self.runs.get(key, {}).values():
            for start in [s for s in verdicts if s >= since]:
                del verdicts[start]

    def trim(self, key: SeriesKey, oldest: datetime | None) -> None:
        """Drop verdicts of windows older than ``oldest`` (all when None)."""
        if oldest is None:
            self.runs.pop(key, None)
            return
        for verdicts in self.runs.get(key, {}).values():
            for start in [s for s in verdicts if s < oldest]:
                del verdicts[start]

    def clear(self) -> None:
        """Forget everything (the rules changed)."""
        self.runs.clear()


class SeriesJudge:
    """Judges rules on series of one :class:`WindowHistory` at an evaluation time."""

    def __init__(
        self,
        history: WindowHistory,
        watermark: datetime,
        memo: VerdictMemo | None = None,
    ) -> None:
        self.history = history
        self.watermark = watermark
        self.memo = memo if memo is not None else VerdictMemo()
        self._finals: dict[str, datetime] = {}

    def final_start(self, grain: str) -> datetime:
        """Start of the newest final window of ``grain`` at this evaluation."""
        found = self._finals.get(grain)
        if found is None:
            found = self._finals[grain] = last_final_start(self.watermark, grain)
        return found

    def value(self, key: SeriesKey, start: datetime, kpi: str) -> float | None:
        """KPI value of a window; a missing row counts as 0 for counts and sums."""
        sample = self.history.window(key, start)
        if sample is not None:
            return sample.kpi(kpi)
        if KPIS[kpi].kind in (KpiKind.COUNT,) or kpi == "gmv":
            return 0.0
        return None

    def candidate(
        self, rule: Rule, key: SeriesKey, guard: tuple[str, float]
    ) -> datetime:
        """Start of the newest window ``rule`` may judge on ``key``."""
        final = self.final_start(rule.grain)
        if not rule.judge_open_windows:
            return final
        windows = self.history.windows(key)
        volume_kpi, min_volume = guard
        for start in sorted((s for s in windows if s > final), reverse=True):
            volume = windows[start].kpi(volume_kpi) or 0.0
            if volume >= min_volume:
                return start
        return final

    def observe(self, rule: Rule, level: Level, key: SeriesKey) -> Observation:
        """Verdict of ``level`` of ``rule`` on series ``key``."""
        condition = rule.condition
        if isinstance(condition, ThresholdCondition):
            guard = (condition.volume_kpi, condition.min_volume)
            return self._walk(rule, level, key, guard)
        if isinstance(condition, AnomalyCondition):
            guard = (condition.volume_kpi, condition.min_volume)
            return self._walk(rule, level, key, guard)
        if isinstance(condition, ChangeCondition):
            return self._walk(rule, level, key, (condition.kpi, 0.0))
        if isinstance(condition, AbsenceCondition):
            return self.final_verdict(rule, level, key)
        return NOT_BREACHING

    def final_verdict(self, rule: Rule, level: Level, key: SeriesKey) -> Observation:
        """Verdict on the newest final window, for rules that judge only those.

        Memoised like :meth:`run_at`: it depends only on windows up to the
        newest final one.
        """
        newest = self.final_start(rule.grain)
        condition = rule.condition
        if not isinstance(condition, AbsenceCondition):
            return self.run_at(rule, level, key, newest)
        verdicts = self.memo.of(key, rule.name, level.severity)
        known = verdicts.get(newest)
        if known is None:
            known = verdicts[newest] = self._absence(rule, condition, key)
        return known

    def _walk(
        self, rule: Rule, level: Level, key: SeriesKey, guard: tuple[str, float]
    ) -> Observation:
        start = self.candidate(rule, key, guard)
        return self.run_at(rule, level, key, start)

    def run_at(
        self, rule: Rule, level: Level, key: SeriesKey, start: datetime
    ) -> Observation:
        """Verdict on the window at ``start`` with the breaching run ending there.

        Uses and fills the memo: only windows not judged before are judged.
        """
        verdicts = self.memo.of(key, rule.name, level.severity)
        known = verdicts.get(start)
        if known is not None:
            return known
        step = GRAINS[rule.grain]
        oldest = self.history.oldest(key) or start
        # Walk back over breaching windows not judged yet, well past `for`, so
        # an alert restored mid-run or first seen late still reports when its
        # condition began; a memoised verdict ends the walk.
        limit = windows_needed(rule) + 60
        fresh: list[tuple[datetime, Observation]] = []
        moment = start
        before: Observation | None = None
        while True:
            verdict = self.judge_window(rule, level, key, moment)
            fresh.append((moment, verdict))
            if not verdict.breaching or moment - step < oldest or len(fresh) > limit:
                break
            before = verdicts.get(moment - step)
            if before is not None:
                break
            moment -= step
        for moment, judged in reversed(fresh):
            verdict = judged
            if judged.breaching:
                if before is not None and before.breaching:
                    run_start, count = before.run_start, before.run_windows + 1
                else:
                    run_start, count = moment, 1
                verdict = judged._replace(run_start=run_start, run_windows=count)
            verdicts[moment] = verdict
            before = verdict
        return verdicts[start]

    def judge_window(
        self, rule: Rule, level: Level, key: SeriesKey, start: datetime
    ) -> Observation:
        """Verdict on the single window starting at ``start``."""
        condition = rule.condition
        if isinstance(condition, ThresholdCondition):
            return self._threshold(condition, level, key, start)
        if isinstance(condition, ChangeCondition):
            reference = self.baseline(rule, condition, key, start)
            return self._change(condition, level, key, start, reference)
        if isinstance(condition, AnomalyCondition):
            stats = self.rolling(rule, condition, key, start)
            return self._anomaly(condition, level, key, start, stats)
        return NOT_BREACHING

    def _guarded(
        self, key: SeriesKey, start: datetime, kpi: str, guard: tuple[str, float]
    ) -> float | None:
        sample = self.history.window(key, start)
        volume_kpi, min_volume = guard
        volume = sample.kpi(volume_kpi) if sample is not None else 0.0
        if (volume or 0.0) < min_volume:
            return None
        return self.value(key, start, kpi)

    def _threshold(
        self,
        condition: ThresholdCondition,
        level: Level,
        key: SeriesKey,
        start: datetime,
    ) -> Observation:
        guard = (condition.volume_kpi, condition.min_volume)
        value = self._guarded(key, start, condition.kpi, guard)
        if value is None:
            return Observation(False, threshold=level.trigger)
        if condition.direction is Direction.ABOVE:
            breaching = value > level.trigger
        else:
            breaching = value < level.trigger
        return Observation(breaching, value=value, threshold=level.trigger)

    def baseline(
        self, rule: Rule, condition: ChangeCondition, key: SeriesKey, start: datetime
    ) -> float | None:
        """The reference a change rule compares the window starting at ``start`` to."""
        step = GRAINS[rule.grain]
        if condition.offset is not None:
            if self.history.window(key, start - condition.offset) is None:
                # No row a day/week ago may just mean the history is younger.
                oldest = self.history.oldest(key)
                if oldest is None or oldest > start - condition.offset:
                    return None
            return self.value(key, start - condition.offset, condition.kpi)
        oldest = self.history.oldest(key)
        if oldest is None or oldest > start - step * condition.trailing_windows:
            return None
        values = [
            self.value(key, start - step * back, condition.kpi)
            for back in range(1, condition.trailing_windows + 1)
        ]
        present = [v for v in values if v is not None]
        if len(present) * 2 < len(values):
            return None
        return sum(present) / len(present)

    def _change(
        self,
        condition: ChangeCondition,
        level: Level,
        key: SeriesKey,
        start: datetime,
        reference: float | None,
    ) -> Observation:
        value = self.value(key, start, condition.kpi)
        if value is None or reference is None or reference <= 0:
            return Observation(False)
        if reference < condition.min_baseline:
            return Observation(False, value=value, reference=reference)
        change = (value - reference) / reference
        threshold = reference * (1 + level.trigger)
        if condition.direction is Direction.BELOW:
            breaching = change <= level.trigger
        else:
            breaching = change >= level.trigger
        return Observation(
            breaching, value=value, threshold=threshold, reference=reference
        )

    def rolling(
        self, rule: Rule, condition: AnomalyCondition, key: SeriesKey, start: datetime
    ) -> tuple[float, float] | None:
        """Mean and standard deviation of the windows before ``start``."""
        step = GRAINS[rule.grain]
        oldest = self.history.oldest(key)
        if oldest is None or oldest > start - step * condition.rolling_windows:
            return None
        values = [
            v
            for back in range(1, condition.rolling_windows + 1)
            if (v := self.value(key, start - step * back, condition.kpi)) is not None
        ]
        if len(values) * 2 < condition.rolling_windows or len(values) < 3:
            return None
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return mean, math.sqrt(variance)

    def _anomaly(
        self,
        condition: AnomalyCondition,
        level: Level,
        key: SeriesKey,
        start: datetime,
        stats: tuple[float, float] | None,
    ) -> Observation:
        guard = (condition.volume_kpi, condition.min_volume)
        value = self._guarded(key, start, condition.kpi, guard)
        if value is None or stats is None:
            return Observation(False)
        mean, spread = stats
        score = anomaly_score(value, mean, spread)
        side = condition.direction
        if abs(value - mean) < condition.min_delta:
            breaching = False
        elif side is Direction.ABOVE:
            breaching = score > level.trigger
        elif side is Direction.BELOW:
            breaching = score < -level.trigger
        else:
            breaching = abs(score) > level.trigger
        sign = -1.0 if side is Direction.BELOW or (side is None and score < 0) else 1.0
        threshold = mean + sign * level.trigger * spread
        return Observation(
            breaching, value=value, threshold=threshold, reference=mean, spread=spread
        )

    def _absence(
        self, rule: Rule, condition: AbsenceCondition, key: SeriesKey
    ) -> Observation:
        """Silence run ending at the newest final window (use final_verdict)."""
        step = GRAINS[rule.grain]
        newest = self.final_start(rule.grain)
        oldest = self.history.oldest(key)
        if oldest is None:
            return NOT_BREACHING
        run_start, count = newest + step, 0
        while run_start - step >= oldest and not self.value(
            key, run_start - step, condition.kpi
        ):
            run_start, count = run_start - step, count + 1
        if count == 0:
            return NOT_BREACHING
        before = [
            self.value(key, run_start - step * back, condition.kpi) or 0.0
            for back in range(1, condition.expect_windows + 1)
        ]
        if run_start - step * condition.expect_windows < oldest:
            return NOT_BREACHING  # too little history to know what is normal
        expected = sum(before) / len(before)
        if expected < condition.min_expected:
            return NOT_BREACHING
        return Observation(
            True, run_start, count, 0.0, condition.min_expected, reference=expected
        )

    def recovered(  # noqa: PLR0911 - one exit per rule kind and side
        self, rule: Rule, level: Level, key: SeriesKey, alert: FiringContext
    ) -> tuple[bool, float | None]:
        """Whether a firing alert has recovered, and the value that decided it."""
        condition = rule.condition
        if isinstance(condition, AbsenceCondition):
            return self._absence_recovered(condition, key, alert.active_since)
        if isinstance(condition, ThresholdCondition):
            guard = (condition.volume_kpi, condition.min_volume)
            start = self.candidate(rule, key, guard)
            value = self._guarded(key, start, condition.kpi, guard)
            if value is None:
                return True, None  # no judgeable data left: nothing to page about
            if condition.direction is Direction.ABOVE:
                return value <= level.recovery, value
            return value >= level.recovery, value
        if isinstance(condition, ChangeCondition):
            return self._change_recovered(rule, condition, level, key, alert)
        if isinstance(condition, AnomalyCondition):
            return self._anomaly_recovered(rule, condition, level, key, alert)
        return True, None

    def _absence_recovered(
        self, condition: AbsenceCondition, key: SeriesKey, active_since: datetime
    ) -> tuple[bool, float | None]:
        windows = self.history.windows(key)
        for start, sample in windows.items():
            count = sample.kpi(condition.kpi) or 0.0
            if start >= active_since and count > 0:
                return True, count
        return False, 0.0

    def _change_recovered(
        self,
        rule: Rule,
        condition: ChangeCondition,
        level: Level,
        key: SeriesKey,
        alert: FiringContext,
    ) -> tuple[bool, float | None]:
        start = self.candidate(rule, key, (condition.kpi, 0.0))
        value = self.value(key, start, condition.kpi)
        if value is None or not alert.reference:
            return True, value
        change = (value - alert.reference) / alert.reference
        if condition.direction is Direction.BELOW:
            return change > level.recovery, value
        return change < level.recovery, value

    def _anomaly_recovered(
        self,
        rule: Rule,
        condition: AnomalyCondition,
        level: Level,
        key: SeriesKey,
        alert: FiringContext,
    ) -> tuple[bool, float | None]:
        guard = (condition.volume_kpi, condition.min_volume)
        start = self.candidate(rule, key, guard)
        value = self._guarded(key, start, condition.kpi, guard)
        if value is None or alert.reference is None or alert.spread is None:
            return True, value
        score = anomaly_score(value, alert.reference, alert.spread)
        if condition.direction is Direction.ABOVE:
            return score <= level.recovery, value
        if condition.direction is Direction.BELOW:
            return score >= -level.recovery, value
        return abs(score) <= level.recovery, value


class FiringContext(Protocol):
    """What recovery checks read from a firing alert."""

    active_since: datetime
    reference: float | None
    spread: float | None


def anomaly_score(value: float, mean: float, spread: float) -> float:
    """Deviation in standard deviations; a flat history gets a small floor.

    A perfectly flat history (spread 0) would turn any change into infinity, so
    the spread is floored at 1 % of the mean (or 1e-9).
    """
    floor = max(abs(mean) * 0.01, 1e-9)
    return (value - mean) / max(spread, floor)
