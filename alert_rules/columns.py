"""Recent windows of the watched series as numpy arrays, and columnar pre-judging.

The engine judges a rule level on every series it watches at every call. Most
of those verdicts are "not breaching, no alert": nothing to do. This module
finds them for all series of a rule at once, with a few array operations, so
the exact per-series judging in :mod:`alert_rules.conditions` runs only on the
series that may breach or that have a live alert.

The pre-judging is *conservative*: it may flag a series that turns out not to
breach (the exact judge then decides), but it never clears one that breaches.
Comparisons therefore allow a small tolerance, so floating-point differences
between array and scalar arithmetic (summation order, for instance) can only
send a borderline series to the exact judge. That keeps the semantics of
:mod:`alert_rules.conditions` exactly, whatever the data.

Storage: per (grain, dimension), a ring of ``size`` windows per series
(position = window index modulo ``size``), holding the KPIs the rules read. A
ring entry is valid for the range ``[final - back, final + AHEAD]`` of the
current call; a series with a window newer than that range (far-future event
time) is always sent to the exact judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

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
_NEVER = np.iinfo(np.int64).max // 4  # oldest window of a series with none
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


def reads(rule: Rule) -> tuple[tuple[str, ...], int]:
    """The KPIs a pre-judged rule reads and how many windows before the final one."""
    condition = rule.condition
    if isinstance(condition, ThresholdCondition):
        return (condition.kpi, condition.volume_kpi), 0
    if isinstance(condition, ChangeCondition):
        return (condition.kpi,), condition.trailing_windows
    if isinstance(condition, AbsenceCondition):
        return (condition.kpi,), 0
    return (), 0


@dataclass
class View:
    """One kind's arrays at one call: KPI values of the readable windows.

    ``values[k, slot, position]`` is KPI ``k`` of the window at ``position``
    (missing windows read as :func:`missing_value`); ``present`` says which
    windows have a row; ``beyond`` flags series with windows past the range.
    """

    final: int
    size: int
    kpis: dict[str, int]
    values: Floats
    present: Flags
    beyond: Flags
    oldest: Ints
    # The newest window of any series (bounds the open windows worth reading).
    top: int

    def position(self, window: int) -> int:
        """Ring position of window index ``window``."""
        return window % self.size


@dataclass
class KindColumns:
    """The ring of one (grain, dimension): every watched series of it."""

    step_seconds: int
    kpis: tuple[str, ...]
    size: int
    slots: dict[str, int] = field(default_factory=dict)
    starts: Ints = field(init=False)
    values: Floats = field(init=False)
    newest: Ints = field(init=False)
    oldest: Ints = field(init=False)
    fill: Floats = field(init=False)
    kpi_index: dict[str, int] = field(init=False)
    _view: View | None = field(init=False, default=None)
    _view_final: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.kpi_index = {kpi: k for k, kpi in enumerate(self.kpis)}
        self.fill = np.array([missing_value(k) for k in self.kpis], dtype=np.float64)
        self._allocate(8)

    def _allocate(self, capacity: int) -> None:
        # Growing doubles the capacity: every old row is copied.
        used = capacity // 2 if len(self.slots) else 0
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

    def slot(self, value: str) -> int:
        """The array row of series ``value`` (a new one the first time)."""
        found = self.slots.get(value)
        if found is not None:
            return found
        found = self.slots[value] = len(self.slots)
        if found >= self.newest.shape[0]:
            self._allocate(self.newest.shape[0] * 2)
        return found

    def write(self, rows: dict[tuple[int, int], tuple[float, ...]]) -> None:
        """Store rows by (slot, window index); older windows never replace newer."""
        self._view_final = None
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

    def set_oldest(self, value: str, oldest: int | None) -> None:
        """Mirror the history's oldest window of a series (None: it is gone)."""
        found = self.slots.get(value)
        if found is None:
            return
        self._view_final = None
        if oldest is None:
            self.starts[found] = _NONE
            self.newest[found] = _NONE
            self.oldest[found] = _NEVER
        else:
            self.oldest[found] = oldest

    def view(self, final: int) -> View:
        """The readable windows for a call whose newest final window is ``final``."""
        if self._view is not None and self._view_final == final:
            return self._view
        used = len(self.slots)
        low = final + AHEAD - self.size + 1
        expected = low + (np.arange(self.size, dtype=np.int64) - low) % self.size
        starts = self.starts[:used]
        oldest = self.oldest[:used]
        present = (starts == expected) & (expected >= oldest[:, None])
        values = np.where(
            present[None], self.values[:, :used], self.fill[:, None, None]
        )
        beyond = self.newest[:used] > final + AHEAD
        top = int(self.newest[:used].max()) if used else final
        self._view = View(
            final, self.size, self.kpi_index, values, present, beyond, oldest, top
        )
        self._view_final = final
        return self._view


class SeriesColumns:
    """The rings of every (grain, dimension) some pre-judged rule reads."""

    def __init__(self, rules: list[Rule]) -> None:
        wanted: dict[tuple[str, str], dict[str, None]] = {}
        back: dict[tuple[str, str], int] = {}
        for rule in rules:
            if not vectorised(rule):
                continue
            kind = (rule.grain, rule.scope.dimension)
            kpis, windows = reads(rule)
            wanted.setdefault(kind, {}).update(dict.fromkeys(kpis, None))
            back[kind] = max(back.get(kind, 0), windows)
        self.kinds: dict[tuple[str, str], KindColumns] = {}
        for kind, names in wanted.items():
            size = 16
            while size < back[kind] + AHEAD + 1:
                size *= 2
            step = int(GRAINS[kind[0]].total_seconds())
            self.kinds[kind] = KindColumns(step, tuple(names), size)
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

    def add(self, samples: list[KpiSample]) -> None:
        """Store the rows the history accepted (in the order it accepted them)."""
        batches: dict[tuple[str, str], dict[tuple[int, int], tuple[float, ...]]] = {}
        for sample in samples:
            columns = self.kinds.get((sample.grain, sample.dimension))
            if columns is None:
                continue
            slot = columns.slot(sample.dimension_value)
            window = self.index(sample.window_start, columns.step_seconds)
            if window is None:
                # An unaligned window cannot be placed in the ring: judge the
                # series exactly from now on.
                columns.newest[slot] = _NEVER
                continue
            row = tuple(
                np.nan if (v := sample.kpi(kpi)) is None else v for kpi in columns.kpis
            )
            rows = batches.setdefault((sample.grain, sample.dimension), {})
            rows[(slot, window)] = row
        for kind, rows in batches.items():
            self.kinds[kind].write(rows)

    def set_oldest(
        self, kind: tuple[str, str], value: str, oldest: datetime | None
    ) -> None:
        """Mirror the history after pruning (``oldest`` None: the series is gone)."""
        columns = self.kinds.get(kind)
        if columns is None:
            return
        index = None if oldest is None else self.index(oldest, columns.step_seconds)
        if oldest is not None and index is None:
            columns.newest[columns.slot(value)] = _NEVER
            return
        columns.set_oldest(value, index)

    def final_index(self, rule: Rule, final: datetime) -> int:
        """Window index of ``final`` (a window boundary by construction)."""
        step = int(GRAINS[rule.grain].total_seconds())
        return int((final - _EPOCH).total_seconds()) // step


def breach_candidates(rule: Rule, view: View, rows: Ints, triggers: Floats) -> Flags:
    """Which (level, series) may breach: ``[levels, series]`` flags.

    ``rows`` are the array rows of the rule's series (in the rule's order),
    ``triggers`` the level triggers. False means the exact judge would find no
    breach at this call; True means it must be asked.
    """
    condition = rule.condition
    if isinstance(condition, ThresholdCondition):
        flags = _threshold(rule, condition, view, rows, triggers)
    elif isinstance(condition, ChangeCondition):
        flags = _change(condition, view, rows, triggers)
    elif isinstance(condition, AbsenceCondition):
        position = view.position(view.final)
        value = view.values[view.kpis[condition.kpi], rows, position]
        silent = (value == 0.0) | ~view.present[rows, position]
        flags = np.broadcast_to(silent, (len(triggers), len(rows)))
    else:
        flags = np.ones((len(triggers), len(rows)), dtype=np.bool_)
    return flags | view.beyond[rows]


def _slack(triggers: Floats) -> Floats:
    return (_RELATIVE_TOLERANCE * (1.0 + np.abs(triggers)))[:, None]


def _threshold(
    rule: Rule,
    condition: ThresholdCondition,
    view: View,
    rows: Ints,
    triggers: Floats,
) -> Flags:
    # The candidate is the final window or an open one whose volume guard
    # passes: when none of those breaches, the candidate does not either.
    last = view.final
    if rule.judge_open_windows:
        last = max(view.final, min(view.final + AHEAD, view.top))
    values = view.values[view.kpis[condition.kpi]]
    volumes = view.values[view.kpis[condition.volume_kpi]]
    floor = condition.min_volume - tolerance(condition.min_volume)
    if condition.direction is Direction.ABOVE:
        limits = (triggers[:, None] - _slack(triggers))[:, :, None]
    else:
        limits = (triggers[:, None] + _slack(triggers))[:, :, None]
    cells = rows[:, None], _positions(view, view.final, last)
    value = values[cells][None]
    guarded = ~(volumes[cells] < floor)[None]
    if condition.direction is Direction.ABOVE:
        breach = value > limits
    else:
        breach = value < limits
    flags: Flags = (breach & guarded).any(axis=2)
    return flags


def _positions(view: View, first: int, last: int) -> Ints:
    """Ring positions of windows ``first`` to ``last`` (inclusive), as a row."""
    return np.arange(first, last + 1, dtype=np.int64)[None, :] % view.size


def _change(
    condition: ChangeCondition, view: View, rows: Ints, triggers: Floats
) -> Flags:
    final = view.final
    trailing = condition.trailing_windows
    values = view.values[view.kpis[condition.kpi]]
    value = values[rows, view.position(final)]
    before = values[rows[:, None], _positions(view, final - trailing, final - 1)]
    counted = (~np.isnan(before)).sum(axis=1)
    enough = (counted * 2 >= trailing) & (view.oldest[rows] <= final - trailing)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = np.nansum(before, axis=1) / counted
        base = tolerance(condition.min_baseline)
        judged = enough & (reference >= condition.min_baseline - base)
        tiny = judged & (reference <= base)
        change = (value - reference) / reference
    if condition.direction is Direction.BELOW:
        breach = change[None, :] <= (triggers[:, None] + _slack(triggers))
    else:
        breach = change[None, :] >= (triggers[:, None] - _slack(triggers))
    flags: Flags = (breach & judged[None, :]) | tiny[None, :]
    return flags
