"""Alerts from the streaming job on real Spark and Delta: one incident, one page, one
resolve, across a restart of the job in the middle of the incident."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from streaming.alerting import AlertingHook, build_alerting
from streaming.generator import Incident, TrafficConfig
from streaming.pipeline import BatchReport, OrderPipeline
from streaming.sources import landing_stream
from streaming.tables import TableLayout
from tests.support.traffic import land_traffic

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

START = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)
OUTAGE = Incident(
    kind="payment_gateway_outage",
    start=START + timedelta(minutes=10),
    duration=timedelta(minutes=8),
    target="credit_card",
    intensity=0.55,
)
TRAFFIC = TrafficConfig(start=START, seed=5, orders_per_minute=100, incidents=(OUTAGE,))


class EventTimeClock:
    """The engine's 'now' follows the newest event seen, as on a caught-up job, so
    the test runs in event time rather than wall time."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def follow(self, report: BatchReport) -> None:
        if report.max_event_time is not None:
            self.now = max(self.now, report.max_event_time + timedelta(seconds=10))


def _run_files(
    spark: SparkSession, layout: TableLayout, clock: EventTimeClock
) -> AlertingHook:
    hook = build_alerting(spark, layout, None, clock, io.StringIO(), start=False)
    pipeline = OrderPipeline(spark, layout, listeners=(clock.follow, hook.on_batch))
    query = pipeline.start(
        landing_stream(spark, layout.landing_dir, max_files_per_trigger=10),
        available_now=True,
    )
    query.awaitTermination()
    assert query.exception() is None
    hook.exporter.drain()
    hook.close()
    return hook


def test_an_incident_pages_once_and_resolves_once_across_a_restart(
    spark: SparkSession, tmp_path: Path
) -> None:
    layout = TableLayout(tmp_path)
    land_traffic(layout.landing_dir, TRAFFIC, START + timedelta(minutes=32))
    files = sorted(layout.landing_dir.glob("part-*.jsonl"))
    later = tmp_path / "later"
    later.mkdir()
    # Stop the job 14 minutes in: the outage started at minute 10 and is still on.
    for path in files[14:]:
        path.rename(later / path.name)
    clock = EventTimeClock()

    _run_files(spark, layout, clock)
    before_restart = _transitions(spark, layout)
    for path in sorted(later.iterdir()):
        path.rename(layout.landing_dir / path.name)
    _run_files(spark, layout, clock)

    # Each severity level is its own alert (fingerprint); on-call is paged by the
    # critical one, whose warning twin is inhibited (recorded, not notified).
    assert len(before_restart) == 2
    assert all(states == {"firing": 1} for states in before_restart.values())
    transitions = _transitions(spark, layout)
    assert len(transitions) == 2
    assert all(
        states == {"firing": 1, "resolved": 1} for states in transitions.values()
    )
    alerts = layout.read(spark, "gold.alerts").collect()
    assert {row["rule"] for row in alerts} == {"PaymentFailuresByMethod"}
    assert {row["labels"]["payment_method"] for row in alerts} == {"credit_card"}
    assert {row["severity"] for row in alerts} == {"warning", "critical"}
    for row in alerts:
        assert OUTAGE.start <= row["active_since"].astimezone(UTC) <= OUTAGE.end
        assert row["annotations"]["runbook_url"].startswith("https://")
    resolved = [row for row in alerts if row["state"] == "resolved"]
    assert all(
        OUTAGE.end
        <= row["resolved_at"].astimezone(UTC)
        <= OUTAGE.end + timedelta(minutes=10)
        for row in resolved
    )

    sent = [
        json.loads(line)
        for line in (layout.data_dir / "exports" / "notifications.jsonl")
        .read_text()
        .splitlines()
    ]
    pages = Counter((n["kind"], n["severity"], n["fingerprint"]) for n in sent)
    critical = next(
        row["fingerprint"] for row in alerts if row["severity"] == "critical"
    )
    assert pages == {
        ("firing", "critical", critical): 1,
        ("resolved", "critical", critical): 1,
    }


def _transitions(spark: SparkSession, layout: TableLayout) -> dict[str, Counter[str]]:
    """Transition counts by state, per alert fingerprint."""
    by_alert: dict[str, Counter[str]] = {}
    for row in layout.read(spark, "gold.alerts").collect():
        by_alert.setdefault(row["fingerprint"], Counter())[row["state"]] += 1
    return by_alert
