"""Replay Gold history through a rule set to see how often each rule would fire.

The replay walks event time one minute at a time, hands every window to the
engine as a final row when it ends, and lets the watermark follow event time,
so a rule behaves as it would have live on complete data. Nothing is notified
and no state is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from alert_rules.engine import Engine
from alert_rules.errors import AlertRulesError
from alert_rules.model import RuleSet
from alert_rules.samples import KpiSample, PipelineStatus
from alert_rules.state import InMemoryStateStore

_STEP = timedelta(minutes=1)


class GoldHistoryError(AlertRulesError):
    """The Gold KPI table cannot be read for a backtest."""

    retryable = False


@dataclass(frozen=True)
class Episode:
    """One time an alert fired: when, for how long, on which labels."""

    rule: str
    severity: str
    labels: dict[str, str]
    fired_at: datetime
    resolved_at: datetime | None

    @property
    def duration(self) -> timedelta | None:
        """How long it fired (None when still firing at the end of history)."""
        return None if self.resolved_at is None else self.resolved_at - self.fired_at


@dataclass
class BacktestReport:
    """Episodes per rule over the replayed span."""

    start: datetime | None = None
    end: datetime | None = None
    windows: int = 0
    episodes: dict[str, list[Episode]] = field(default_factory=dict)


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def read_gold(data_dir: Path) -> list[KpiSample]:
    """Every row of ``<data_dir>/gold/order_kpis`` as samples."""
    path = data_dir / "gold" / "order_kpis"
    try:
        table = DeltaTable(str(path)).to_pyarrow_table()
    except TableNotFoundError:
        raise GoldHistoryError(
            f"no Gold KPI table at {path}; run the pipeline first or pass --data-dir"
        ) from None
    return [KpiSample.from_dict(row) for row in table.to_pylist()]


def backtest(
    rules: RuleSet,
    samples: Iterable[KpiSample],
    since: datetime | None = None,
    until: datetime | None = None,
) -> BacktestReport:
    """Replay ``samples`` (windows in [since, until)) through ``rules``."""
    by_end: dict[datetime, list[KpiSample]] = {}
    for sample in samples:
        if since is not None and sample.window_start < since:
            continue
        if until is not None and sample.window_end > until:
            continue
        by_end.setdefault(sample.window_end, []).append(sample)
    report = BacktestReport()
    if not by_end:
        return report
    report.start, report.end = min(by_end), max(by_end)
    report.windows = sum(len(rows) for rows in by_end.values())
    clock = _Clock(report.start)
    engine = Engine(rules, InMemoryStateStore(), clock)
    open_episodes: dict[str, Episode] = {}
    moment = report.start
    while moment <= report.end:
        clock.now = moment
        status = PipelineStatus(moment, moment, moment)
        result = engine.evaluate(by_end.get(moment, []), status)
        for transition in result.transitions:
            if transition.state == "firing" and transition.fired_at is not None:
                open_episodes[transition.fingerprint] = Episode(
                    transition.rule,
                    transition.severity,
                    dict(transition.labels),
                    transition.fired_at,
                    None,
                )
            elif transition.state == "resolved" and transition.fired_at is not None:
                episode = open_episodes.pop(transition.fingerprint, None)
                if episode is not None:
                    _record(report, episode, transition.resolved_at)
        moment += _STEP
    for episode in open_episodes.values():
        _record(report, episode, None)
    return report


def _record(report: BacktestReport, episode: Episode, ended: datetime | None) -> None:
    finished = Episode(
        episode.rule, episode.severity, episode.labels, episode.fired_at, ended
    )
    report.episodes.setdefault(episode.rule, []).append(finished)


def format_report(rules: RuleSet, report: BacktestReport) -> list[str]:
    """Human-readable lines: per rule, fire count, total time firing, and when."""
    if report.start is None:
        return ["no Gold windows in the selected span"]
    lines = [
        f"replayed {report.windows} Gold rows from {report.start.isoformat()} "
        f"to {report.end.isoformat() if report.end else '?'}",
        f"{'rule':32} {'fired':>5} {'firing total':>13}  episodes",
    ]
    for rule in rules.rules:
        episodes = report.episodes.get(rule.name, [])
        total = sum(
            (e.duration for e in episodes if e.duration is not None), timedelta(0)
        )
        lines.append(f"{rule.name:32} {len(episodes):>5} {_span(total):>13}")
        for episode in episodes:
            scope = ",".join(
                f"{k}={v}"
                for k, v in sorted(episode.labels.items())
                if k not in ("alertname", "team", "category")
            )
            ended = (
                episode.resolved_at.isoformat()
                if episode.resolved_at
                else "still firing"
            )
            lines.append(f"    {episode.fired_at.isoformat()} -> {ended}  {scope}")
    return lines


def _span(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"
