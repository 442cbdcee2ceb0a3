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

    def add(self, samples: Iterable[KpiSample]) -> set[SeriesKey]:
        """Store ``samples`` (newer rows replace older ones); return touched keys."""
        touched: set[SeriesKey] = set()
        for sample in samples:
            if (sample.grain, sample.dimension) not in self.wanted:
                continue
            key = (sample.grain, sample.dimension, sample.dimension_value)
            windows = self._series.setdefault(key, {})
            known = windows.get(sample.window_start)
            if known is None or known.updated_at <= sample.updated_at:
                windows[sample.window_start] = sample
                touched.add(key)
        return touched

    def window(self, key: SeriesKey, start: datetime) -> KpiSample | None:
        """The row of series ``key`` for the window starting at ``start``, if any."""
        windows = self._series.get(key)
        return None if windows is None else windows.get(start)

    def windows(self, key: SeriesKey) -> dict[datetime, KpiSample]:
        """All retained windows of ``key`` by start (do not mutate)."""
        return self._series.get(key, {})

    def keys(self, grain: str, dimension: str) -> Iterator[SeriesKey]:
        """Every retained series of ``grain`` and ``dimension``."""
        for key in self._series:
            if key[0] == grain and key[1] == dimension:
                yield key

    def oldest(self, key: SeriesKey) -> datetime | None:
        """Start of the oldest retained window of ``key``."""
        windows = self._series.get(key)
        return min(windows) if windows else None

    def prune(self, now: datetime) -> None:
        """Forget windows older than the retention of their grain before ``now``."""
        for key in list(self._series):
            keep = self.retention.get(key[0])
            windows = self._series[key]
            if keep is None or (key[0], key[1]) not in self.wanted:
                del self._series[key]
                continue
            horizon = now - keep
            for start in [s for s in windows if s < horizon]:
                del windows[start]
            if not windows:
                del self._series[key]

    def samples(self) -> Iterator[KpiSample]:
        """Every retained sample (for persisting the history)."""
        for windows in self._series.values():
            yield from windows.values()
