"""A bounded in-memory history of Gold windows, keyed by series.

A series is one (grain, dimension, dimension value). Open windows are upserted,
so the latest row for a window simply replaces the earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from alert_rules.samples import GRAINS, KpiSample

SeriesKey = tuple[str, str, str]  # grain, dimension, dimension_value

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_to(moment: datetime, step: timedelta) -> datetime:
    """``moment`` rounded down to a multiple of ``step`` since the Unix epoch."""
    return moment - ((moment - _EPOCH) % step)


def last_final_start(watermark: datetime, grain: str) -> datetime:
    """Start of the newest window of ``grain`` that ends at or before ``watermark``."""
    step = GRAINS[grain]
    return floor_to(watermark, step) - step


class WindowHistory:
    """Windows per series, pruned to a retention per grain.

    Only grains and dimensions some rule watches are kept (``wanted``), so an
    engine with three rules does not hold every Gold row of a week.
    """

    def __init__(
        self, retention: dict[str, timedelta], wanted: set[tuple[str, str]]
    ) -> None:
        self.retention = retention
        self.wanted = wanted
        self._series: dict[SeriesKey, dict[datetime, KpiSample]] = {}
        self._oldest: dict[SeriesKey, datetime] = {}
        self._by_kind: dict[tuple[str, str], dict[SeriesKey, None]] = {}
        # Versions let callers cache what they derived from a series: a
        # series' number changes whenever one of its windows is stored or
        # dropped, `layout` whenever a series appears or disappears.
        self._versions: dict[SeriesKey, int] = {}
        self._counter = 0
        self.layout = 0
        # What changed since the engine last persisted (see take_changes).
        self._stored: dict[tuple[SeriesKey, datetime], KpiSample] = {}
        self._dropped: list[KpiSample] = []

    def add(
        self,
        samples: Iterable[KpiSample],
        accepted: list[KpiSample] | None = None,
    ) -> dict[SeriesKey, datetime]:
        """Store ``samples`` (newer rows replace older ones).

        Return the touched series, each with the start of its oldest changed
        window (every verdict from that window on may have changed). An older
        row, or one identical to the row held (a replay), touches nothing.
        The rows stored are appended to ``accepted`` when given, in order.
        """
        touched: dict[SeriesKey, datetime] = {}
        wanted = self.wanted
        for sample in samples:
            if (sample.grain, sample.dimension) not in wanted:
                continue
            key = (sample.grain, sample.dimension, sample.dimension_value)
            windows = self._series.get(key)
            if windows is None:
                windows = self._series[key] = {}
                kind = (sample.grain, sample.dimension)
                self._by_kind.setdefault(kind, {})[key] = None
                self.layout += 1
            start = sample.window_start
            known = windows.get(start)
            if known is not None and (
                known.updated_at > sample.updated_at
                # Equal rows have equal update times: compare whole rows
                # (a replay) only then.
                or (known.updated_at == sample.updated_at and known == sample)
            ):
                continue
            windows[start] = sample
            self._stored[(key, start)] = sample
            if accepted is not None:
                accepted.append(sample)
            oldest = self._oldest.get(key)
            if oldest is None or start < oldest:
                self._oldest[key] = start
            earliest = touched.get(key)
            if earliest is None or start < earliest:
                touched[key] = start
        for key in touched:
            self._counter += 1
            self._versions[key] = self._counter
        return touched

    def version(self, key: SeriesKey) -> int:
        """A number that changes whenever a window of ``key`` is stored or dropped."""
        return self._versions.get(key, 0)

    def window(self, key: SeriesKey, start: datetime) -> KpiSample | None:
        """The row of series ``key`` for the window starting at ``start``, if any."""
        windows = self._series.get(key)
        return None if windows is None else windows.get(start)

    def windows(self, key: SeriesKey) -> dict[datetime, KpiSample]:
        """All retained windows of ``key`` by start (do not mutate)."""
        return self._series.get(key, {})

    def keys(self, grain: str, dimension: str) -> Iterable[SeriesKey]:
        """Every retained series of ``grain`` and ``dimension`` (do not mutate)."""
        return self._by_kind.get((grain, dimension), {}).keys()

    def oldest(self, key: SeriesKey) -> datetime | None:
        """Start of the oldest retained window of ``key``."""
        return self._oldest.get(key)

    def prune(self, now: datetime) -> set[SeriesKey]:
        """Forget windows older than the retention of their grain before ``now``.

        Return the series that lost windows. Cost is proportional to what is
        dropped: windows are only scanned for series whose oldest window is
        past the horizon.
        """
        pruned: set[SeriesKey] = set()
        for key in list(self._series):
            keep = self.retention.get(key[0])
            windows = self._series[key]
            if keep is None or (key[0], key[1]) not in self.wanted:
                self._drop(key, list(windows))
                pruned.add(key)
                continue
            horizon = now - keep
            if self._oldest[key] >= horizon:
                continue
            self._drop(key, [s for s in windows if s < horizon])
            pruned.add(key)
        return pruned

    def _drop(self, key: SeriesKey, starts: list[datetime]) -> None:
        windows = self._series[key]
        for start in starts:
            self._dropped.append(windows.pop(start))
            self._stored.pop((key, start), None)
        self._counter += 1
        self._versions[key] = self._counter
        if windows:
            self._oldest[key] = min(windows)
        else:
            del self._series[key]
            del self._oldest[key]
            del self._by_kind[(key[0], key[1])][key]
            self.layout += 1

    def take_changes(self) -> tuple[list[KpiSample], list[KpiSample]]:
        """Windows stored and windows dropped since the last call (for persisting)."""
        stored, dropped = list(self._stored.values()), self._dropped
        self._stored, self._dropped = {}, []
        return stored, dropped

    def samples(self) -> Iterator[KpiSample]:
        """Every retained sample."""
        for windows in self._series.values():
            yield from windows.values()

    def __len__(self) -> int:
        return sum(len(windows) for windows in self._series.values())
