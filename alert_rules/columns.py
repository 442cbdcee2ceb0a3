"""Recent windows of the watched series as numpy arrays, and columnar pre-judging.

The engine judges a rule level on every series it watches at every call. Most
of those verdicts are "not breaching, no alert": nothing to do. This module
finds them for every rule level on every series of a grain at once, with a
fixed handful of array operations per rule kind (threshold, trailing change,
absence), so the exact per-series judging in :mod:`alert_rules.conditions`
runs only on the (level, series) pairs that may breach or that have a live
alert.

The pre-judging is *conservative*: it may flag a pair that turns out not to
breach (the exact judge then decides), but it never clears one that breaches.
Comparisons therefore allow a small tolerance, so floating-point differences
between array and scalar arithmetic (summation order, for instance) can only
send a borderline pair to the exact judge. That keeps the semantics of
:mod:`alert_rules.conditions` exactly, whatever the data.

Storage: per grain, one ring of ``size`` windows per series of any dimension
(position = window index modulo ``size``), holding the KPIs the rules of that
grain read. A ring entry is valid for the range ``[final + AHEAD - size + 1,
final + AHEAD]`` of the current call and only while the history still holds
its window (pruned windows are wiped from the ring); a series with a window
newer than that range (far-future event time) is always sent to the exact
judge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from alert_rules.model import (
    AbsenceCondition,
    ChangeCondition,
    Direction,
    Rule,
    ThresholdCondition,
)
from alert_rules.samples import GRAINS, KPIS, KpiKind, KpiSample

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]

# How many windows after the newest final one a rule may judge from the arrays
# (open windows); later windows send the series to the exact judge.
AHEAD = 3
_NONE = np.iinfo(np.int64).min // 4  # an empty ring entry
_NEVER = np.iinfo(np.int64).max // 4  # newest window of a series judged exactly
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RELATIVE_TOLERANCE = 1e-9


def tolerance(level: float) -> float:
    """Slack that sends a borderline comparison with ``level`` to the exact judge."""
    return _RELATIVE_TOLERANCE * (1.0 + abs(level))


def missing_value(kpi: str) -> float:
    """What a missing window reads as (mirrors ``SeriesJudge.value``): 0 or NaN."""
    return 0.0 if KPIS[kpi].kind is KpiKind.COUNT or kpi == "gmv" else np.nan


def vectorised(rule: Rule) -> bool:
    """Whether ``rule`` is pre-judged from the arrays (others are judged exactly)."""
    condition = rule.condition
    if isinstance(condition, ThresholdCondition | AbsenceCondition):
        return True
    if isinstance(condition, ChangeCondition):
        return condition.offset is None and not rule.judge_open_windows
    return False


# A rule with fewer (level, series) pairs than this is judged exactly on every
# pair: a pair's exact verdict on an unchanged final window is one memo lookup,
# cheaper than the fixed cost of the numpy calls of a columnar pass.
PREJUDGE_FROM_PAIRS = 5


def prejudged(rule: Rule, series: int) -> bool:
    """Whether ``rule`` on ``series`` series is pre-judged (else judged exactly)."""
    return vectorised(rule) and series * len(rule.levels) >= PREJUDGE_FROM_PAIRS


def reads(rule: Rule) -> tuple[tuple[str, ...], int]:
    """The KPIs a pre-judged rule reads and how many windows before the final one.

    An absence rule reads twice its expected-volume span: a silence run up to
    ``expect_windows`` long still has its whole reference span in the ring.
    """
    condition = rule.condition
    if isinstance(condition, ThresholdCondition):
        return (condition.kpi, condition.volume_kpi), 0
    if isinstance(condition, ChangeCondition):
        return (condition.kpi,), condition.trailing_windows
    if isinstance(condition, AbsenceCondition):
        return (condition.kpi,), 2 * condition.expect_windows
    return (), 0


def _reader(kpis: tuple[str, ...]) -> Callable[[KpiSample], tuple[Any, ...]]:
    """Reads ``kpis`` of a sample in one attribute fetch (as ``KpiSample.kpi``).

    Values are ints, floats or None (no value); ``payments_attempted`` is the
    one derived KPI.
    """
    derived = "payments_attempted"
    fields = [kpi for kpi in kpis if kpi != derived]
    if derived not in kpis:
        fetch = attrgetter(*fields)
        if len(fields) == 1:
            return lambda sample: (fetch(sample),)
        return fetch
    fetch = attrgetter(*fields, "payments_approved", "payments_failed")
    where = tuple(fields.index(kpi) if kpi != derived else -1 for kpi in kpis)

    def read(sample: KpiSample) -> tuple[Any, ...]:
        got = fetch(sample)
        attempted = got[-2] + got[-1]
        return tuple(attempted if at < 0 else got[at] for at in where)

    return read


class GrainRing:
    """The ring of one grain: every watched series of every dimension of it."""

    def __init__(self, step_seconds: int, kpis: tuple[str, ...], size: int) -> None:
        self.step_seconds = step_seconds
        self.kpis = kpis
        self.size = size
        self.kpi_index = {kpi: k for k, kpi in enumerate(kpis)}
        self.fill = np.array([missing_value(k) for k in kpis], dtype=np.float64)
        self.read = _reader(kpis)
        self.slots: dict[tuple[str, str], int] = {}
        # An upper bound of every series' newest window (skips the far-future
        # check when nothing can be past the readable range).
        self.top = _NONE
        self.starts: Ints = np.empty((0, size), dtype=np.int64)
        self.values: Floats = np.empty((len(kpis), 0, size), dtype=np.float64)
        self.newest: Ints = np.empty(0, dtype=np.int64)
        self.oldest: Ints = np.empty(0, dtype=np.int64)
        self._allocate(8)

    def _allocate(self, capacity: int) -> None:
        # Growing doubles the capacity: every old row is copied.
        used = len(self.slots)
        starts = np.full((capacity, self.size), _NONE, dtype=np.int64)
        values = np.zeros((len(self.kpis), capacity, self.size), dtype=np.float64)
        newest = np.full(capacity, _NONE, dtype=np.int64)
        oldest = np.full(capacity, _NEVER, dtype=np.int64)
        if used:
            starts[:used] = self.starts[:used]
            values[:, :used] = self.values[:, :used]
            newest[:used] = self.newest[:used]
            oldest[:used] = self.oldest[:used]
        self.starts, self.values = starts, values
        self.newest, self.oldest = newest, oldest

    def slot(self, dimension: str, value: str) -> int:
        """The array row of series ``dimension=value`` (a new one the first time)."""
        found = self.slots.get((dimension, value))
        if found is not None:
            return found
        found = len(self.slots)
        if found >= self.newest.shape[0]:
            self._allocate(self.newest.shape[0] * 2)
        self.slots[(dimension, value)] = found
        return found

    def write(self, rows: dict[tuple[int, int], tuple[float, ...]]) -> None:
        """Store rows by (slot, window index); older windows never replace newer."""
        keys = np.array(list(rows), dtype=np.int64).reshape(-1, 2)
        slots, windows = keys[:, 0], keys[:, 1]
        positions = windows % self.size
        newer = windows >= self.starts[slots, positions]
        kept_slots, kept_positions = slots[newer], positions[newer]
        self.starts[kept_slots, kept_positions] = windows[newer]
        table = np.array(list(rows.values()), dtype=np.float64)
        self.values[:, kept_slots, kept_positions] = table[newer].T
        np.maximum.at(self.newest, slots, windows)
        np.minimum.at(self.oldest, slots, windows)
        self.top = max(self.top, int(windows.max()))

    def judge_exactly(self, slot: int) -> None:
        """Send series ``slot`` to the exact judge from now on."""
        self.newest[slot] = _NEVER
        self.top = _NEVER

    def set_oldest(self, slot: int, oldest: int | None) -> None:
        """Mirror the history's oldest window of a series (None: it is gone).

        Ring entries of windows the history dropped are wiped, so an entry is
        valid exactly when its window index matches.
        """
        if oldest is None:
            self.starts[slot] = _NONE
            self.newest[slot] = _NONE
            self.oldest[slot] = _NEVER
            return
        row = self.starts[slot]
        row[row < oldest] = _NONE
        self.oldest[slot] = oldest


class SeriesColumns:
    """The rings of every grain some pre-judged rule reads."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        wanted: dict[str, dict[str, None]] = {}
        back: dict[str, int] = {}
        self.dimensions: set[tuple[str, str]] = set()
        for rule in rules:
            if not vectorised(rule):
                continue
            kpis, windows = reads(rule)
            wanted.setdefault(rule.grain, {}).update(dict.fromkeys(kpis, None))
            back[rule.grain] = max(back.get(rule.grain, 0), windows)
            self.dimensions.add((rule.grain, rule.scope.dimension))
        self.rings: dict[str, GrainRing] = {}
        for grain, names in wanted.items():
            size = 16
            while size < back[grain] + AHEAD + 1:
                size *= 2
            step = int(GRAINS[grain].total_seconds())
            self.rings[grain] = GrainRing(step, tuple(names), size)
        self._indices: dict[tuple[datetime, int], int | None] = {}

    def index(self, start: datetime, step_seconds: int) -> int | None:
        """Window index of ``start`` (None when not on a window boundary)."""
        known = self._indices.get((start, step_seconds), -1)
        if known != -1:
            return known
        seconds = (start - _EPOCH).total_seconds()
        whole = int(seconds) // step_seconds
        found = whole if whole * step_seconds == seconds else None
        if len(self._indices) > 4096:
            self._indices.clear()
        self._indices[(start, step_seconds)] = found
        return found

    def slot(self, grain: str, dimension: str, value: str) -> int:
        """The array row of a series in its grain's ring."""
        return self.rings[grain].slot(dimension, value)

    def add(self, samples: list[KpiSample]) -> None:
        """Store the rows the history accepted (in the order it accepted them)."""
        batches: dict[str, dict[tuple[int, int], tuple[float, ...]]] = {}
        dimensions = self.dimensions
        for sample in samples:
            grain = sample.grain
            if (grain, sample.dimension) not in dimensions:
                continue
            ring = self.rings[grain]
            slot = ring.slot(sample.dimension, sample.dimension_value)
            window = self.index(sample.window_start, ring.step_seconds)
            if window is None:
                # An unaligned window cannot be placed in the ring: judge the
                # series exactly from now on.
                ring.judge_exactly(slot)
                continue
            # None (no value) becomes NaN when the batch is written. A KPI
            # that really is NaN can only be a float KPI (counts are integers,
            # and volume and absence KPIs are counts): the exact judge finds
            # no breach on a window or a trailing span holding one, so reading
            # it as "no value" clears nothing that breaches.
            row = ring.read(sample)
            batches.setdefault(grain, {})[(slot, window)] = row
        for grain, rows in batches.items():
            self.rings[grain].write(rows)

    def set_oldest(
        self, kind: tuple[str, str], value: str, oldest: datetime | None
    ) -> None:
        """Mirror the history after pruning (``oldest`` None: the series is gone)."""
        grain, dimension = kind
        ring = self.rings.get(grain)
        if ring is None or kind not in self.dimensions:
            return
        slot = ring.slots.get((dimension, value))
        if slot is None:
            return
        index = None if oldest is None else self.index(oldest, ring.step_seconds)
        if oldest is not None and index is None:
            ring.judge_exactly(slot)
            return
        ring.set_oldest(slot, index)


def final_index(grain: str, final: datetime) -> int:
    """Window index of ``final`` (a window boundary by construction)."""
    step = int(GRAINS[grain].total_seconds())
    return int((final - _EPOCH).total_seconds()) // step


# (rule name, series position, level position) of one pre-judged pair.
Owner = tuple[str, int, int]


class _Group:
    """Every (rule level, series) pair of one rule kind on one grain.

    The pairs are laid out flat, so one pass of array operations judges them
    all whatever the number of rules; ``owners[i]`` names pair ``i``.
    """

    def __init__(self, ring: GrainRing, pairs: list[tuple[Rule, int, int, int]]):
        self.ring = ring
        self.owners: list[Owner] = [(r.name, s, lv) for r, s, lv, _ in pairs]
        self.rows = np.array([row for *_, row in pairs], dtype=np.int64)

    def flags(self, final: int) -> Flags:
        """Which pairs may breach when the newest final window is ``final``."""
        raise NotImplementedError


class _Thresholds(_Group):
    """Threshold levels: any readable candidate window over the level."""

    def __init__(self, ring: GrainRing, pairs: list[tuple[Rule, int, int, int]]):
        super().__init__(ring, pairs)
        kpi, volume, limit, sign, floor, always = [], [], [], [], [], []
        for rule, _series, level, _row in pairs:
            condition = rule.condition
            assert isinstance(condition, ThresholdCondition)
            trigger = rule.levels[level].trigger
            above = condition.direction is Direction.ABOVE
            # sign * value > sign * trigger - slack, for either direction.
            side = 1.0 if above else -1.0
            kpi.append(ring.kpi_index[condition.kpi])
            volume.append(ring.kpi_index[condition.volume_kpi])
            sign.append(side)
            # Open windows are candidates only for rules that judge them: the
            # others compare their open windows with an unreachable limit.
            closed = np.inf if not rule.judge_open_windows else 0.0
            limit.append(
                [side * trigger - tolerance(trigger)]
                + [side * trigger - tolerance(trigger) + closed] * AHEAD
            )
            floor.append(condition.min_volume - tolerance(condition.min_volume))
            # A missing window reads as volume 0: with no volume guard it may
            # still be judged, so such pairs always go to the exact judge.
            always.append(condition.min_volume <= tolerance(condition.min_volume))
        self.kpi = np.array(kpi, dtype=np.int64)[:, None]
        self.volume = np.array(volume, dtype=np.int64)[:, None]
        self.series = self.rows[:, None]
        # Value and volume KPIs, read in one gather: [2, pairs, 1].
        self.read = np.stack([self.kpi, self.volume])
        self._final: int | None = None
        self._windows = np.zeros(AHEAD + 1, dtype=np.int64)
        self._positions = np.zeros(AHEAD + 1, dtype=np.int64)
        self.sign = np.array(sign, dtype=np.float64)[:, None]
        self.limit = np.array(limit, dtype=np.float64).reshape(len(pairs), -1)
        self.floor = np.array(floor, dtype=np.float64)[:, None]
        self.always = np.array(always, dtype=np.bool_)
        self.any_always = bool(self.always.any())

    def flags(self, final: int) -> Flags:
        # KPIs without a value are NaN: no comparison holds. (A NaN volume is
        # no volume for the exact judge, and pairs without a volume guard are
        # in ``always``.)
        ring = self.ring
        if self._final != final:
            self._windows = final + np.arange(AHEAD + 1, dtype=np.int64)
            self._positions = self._windows % ring.size
            self._final = final
        rows, positions = self.series, self._positions
        present = ring.starts[rows, positions] == self._windows
        value, volume = ring.values[self.read, rows, positions]
        hit = present & (value * self.sign > self.limit) & (volume >= self.floor)
        found: Flags = np.asarray(hit.any(axis=1))
        if self.any_always:
            found |= self.always
        return found


class _Changes(_Group):
    """Trailing-mean change levels judged on the final window."""

    def __init__(self, ring: GrainRing, pairs: list[tuple[Rule, int, int, int]]):
        super().__init__(ring, pairs)
        self.back = max(_trailing(rule) for rule, *_ in pairs)
        kpi, trailing, floor, base, sign, limit, fill, padding = (
            [], [], [], [], [], [], [], []
        )  # fmt: skip
        for rule, _series, level, _row in pairs:
            condition = rule.condition
            assert isinstance(condition, ChangeCondition)
            trigger = rule.levels[level].trigger
            side = -1.0 if condition.direction is Direction.BELOW else 1.0
            kpi.append(ring.kpi_index[condition.kpi])
            windows = condition.trailing_windows
            trailing.append(windows)
            slack = tolerance(condition.min_baseline)
            floor.append(condition.min_baseline - slack)
            base.append(slack)
            sign.append(side)
            limit.append(side * trigger - tolerance(trigger))
            missing = missing_value(condition.kpi)
            fill.append(missing)
            # Windows before the rule's own trailing span read as "no value".
            padding.append([np.nan] * (self.back - windows) + [missing] * (windows + 1))
        self.kpi = np.array(kpi, dtype=np.int64)
        self.trailing = np.array(trailing, dtype=np.int64)
        # The exact judge wants half the trailing windows with a value.
        self.needed = (self.trailing + 1) // 2
        self.floor = np.array(floor, dtype=np.float64)
        self.base = np.array(base, dtype=np.float64)
        self.sign = np.array(sign, dtype=np.float64)
        self.limit = np.array(limit, dtype=np.float64)
        # The block read per call: the trailing span, then the final window;
        # cells outside a rule's span expect window -1, which no row has.
        self.padding = np.array(padding, dtype=np.float64).reshape(len(pairs), -1)
        columns = range(-self.back, 1)
        self.offsets = np.array(
            [[j if j >= -n else _NONE for j in columns] for n in trailing],
            dtype=np.int64,
        ).reshape(len(pairs), -1)
        self.cells = self.kpi[:, None], self.rows[:, None]
        self._final: int | None = None
        self._windows = self.offsets
        self._positions = np.zeros(self.back + 1, dtype=np.int64)
        self._horizon = np.zeros(len(pairs), dtype=np.int64)

    def flags(self, final: int) -> Flags:
        ring = self.ring
        if self._final != final:
            self._windows = np.where(self.offsets == _NONE, -1, self.offsets + final)
            self._positions = (final - self.back + np.arange(self.back + 1)) % ring.size
            self._horizon = final - self.trailing
            self._final = final
        kpi, series = self.cells
        readable = ring.starts[series, self._positions] == self._windows
        block = np.where(
            readable, ring.values[kpi, series, self._positions], self.padding
        )
        before, value = block[:, :-1], block[:, -1]
        known = ~np.isnan(before)
        counted = known.sum(axis=1)
        reference = np.where(known, before, 0.0).sum(axis=1) / np.maximum(counted, 1)
        judged = (
            (counted >= self.needed)
            & (ring.oldest[self.rows] <= self._horizon)
            & (reference >= self.floor)
        )
        tiny = reference <= self.base
        # With a clearly positive reference, change >= limit reads
        # value - reference >= limit * reference (no division).
        breach = (value - reference) * self.sign >= self.limit * reference
        found: Flags = judged & (breach | tiny)
        return found


class _Absences(_Group):
    """Absence levels: a silent final window in a normally busy series.

    Exact rule: the silent run ending at the final window starts after the
    newest non-silent window, and the ``expect_windows`` before the run must
    average ``min_expected``. When a non-silent window is at most ``depth -
    expect_windows`` windows old (depth = windows readable before the final
    one), that reference span lies inside the ring, and its sum is at most
    the sum of the positive values of every readable window: when even that
    is below the minimum, the pair cannot breach.
    """

    def __init__(self, ring: GrainRing, pairs: list[tuple[Rule, int, int, int]]):
        super().__init__(ring, pairs)
        # One group per expect_windows: the recent span is the same for all.
        spans = {_expected(rule) for rule, *_ in pairs}
        assert len(spans) == 1
        self.recent = ring.size - AHEAD - 1 - spans.pop()
        kpi, limit = [], []
        for rule, *_ in pairs:
            condition = rule.condition
            assert isinstance(condition, AbsenceCondition)
            kpi.append(ring.kpi_index[condition.kpi])
            needed = condition.expect_windows * condition.min_expected
            limit.append(needed - tolerance(needed))
        self.kpi = np.array(kpi, dtype=np.int64)
        self.limit = np.array(limit, dtype=np.float64)
        self._final: int | None = None
        self._position = 0
        self._windows = np.zeros(ring.size, dtype=np.int64)
        self._weights = np.zeros((ring.size, 2), dtype=np.float64)

    def _layout(self, final: int) -> None:
        # The window at each ring position, and two weight columns: windows
        # at most `recent` old, and every window at or before the final one;
        # the same for every call of one final window.
        if self._final == final:
            return
        size = self.ring.size
        low = final + AHEAD - size + 1
        self._windows = low + (np.arange(size, dtype=np.int64) - low) % size
        ages = final - self._windows
        recent = (ages >= 0) & (ages <= self.recent)
        self._weights = np.stack([recent, ages >= 0], axis=1).astype(np.float64)
        self._position = final % size
        self._final = final

    def flags(self, final: int) -> Flags:
        self._layout(final)
        ring, rows, kpi, at = self.ring, self.rows, self.kpi, self._position
        # A window is silent when it is missing, zero or has no value (NaN):
        # only pairs whose final window is silent can breach.
        last = ring.values[kpi, rows, at]
        silent: Flags = (ring.starts[rows, at] != final) | ~(np.abs(last) > 0.0)
        if not silent.any():
            return silent
        picked = np.flatnonzero(silent)
        rows, kpi = rows[picked], kpi[picked]
        readable = np.where(
            ring.starts[rows] == self._windows, ring.values[kpi, rows], 0.0
        )
        # fmax drops NaN (no value) and negative values: column 0 is positive
        # when a recent window has orders (a negative count, also not silent
        # for the exact judge, only makes the pair a suspect), column 1 is an
        # upper bound of the sum of any span of readable windows.
        sums = np.fmax(readable, 0.0) @ self._weights
        quiet = (sums[:, 0] > 0.0) & (sums[:, 1] < self.limit[picked])
        silent[picked] = ~quiet
        return silent


def _expected(rule: Rule) -> int:
    condition = rule.condition
    return condition.expect_windows if isinstance(condition, AbsenceCondition) else 0


def _trailing(rule: Rule) -> int:
    condition = rule.condition
    assert isinstance(condition, ChangeCondition)
    return condition.trailing_windows


class PreJudge:
    """Columnar pre-judging of every pre-judged rule level on every series.

    Built once per layout (rules and series); :meth:`run` judges them all for
    one call. ``plans`` gives, per rule, the ring rows of its series in the
    order the engine holds them.
    """

    def __init__(
        self, columns: SeriesColumns, plans: Sequence[tuple[Rule, Sequence[int]]]
    ) -> None:
        grouped: dict[
            tuple[str, type[_Group], int], list[tuple[Rule, int, int, int]]
        ] = {}
        for rule, rows in plans:
            if not vectorised(rule):
                continue
            condition = rule.condition
            kind: type[_Group]
            if isinstance(condition, ThresholdCondition):
                kind = _Thresholds
            elif isinstance(condition, ChangeCondition):
                kind = _Changes
            else:
                kind = _Absences
            pairs = grouped.setdefault((rule.grain, kind, _expected(rule)), [])
            for series, row in enumerate(rows):
                pairs.extend(
                    (rule, series, level, row) for level in range(len(rule.levels))
                )
        self.groups: list[tuple[str, _Group]] = [
            (grain, kind(columns.rings[grain], pairs))
            for (grain, kind, _), pairs in grouped.items()
            if pairs
        ]

    def run(self, finals: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
        """(series, level) pairs that may breach, by rule; absent rules: none.

        ``finals`` holds the newest final window index of each grain.
        """
        found: dict[str, list[tuple[int, int]]] = {}
        for grain, group in self.groups:
            final = finals[grain]
            flags = group.flags(final)
            ring = group.ring
            if ring.top > final + AHEAD:
                # Series with windows past the readable range: exact judge.
                flags = flags | (ring.newest[group.rows] > final + AHEAD)
            for pair in np.flatnonzero(flags).tolist():
                rule, series, level = group.owners[pair]
                found.setdefault(rule, []).append((series, level))
        return found
