"""Wires the rule engine and the exporters into the streaming job.

After every micro-batch the Gold rows it changed go to the rule engine; a timer thread
also ticks the engine so that absence and stalled-pipeline rules fire when no data comes
at all. What the engine decides goes, in this order:

1. its transitions to ``gold.alerts`` (a MERGE on ``alert_id``: writing the same
   transition twice after a crash leaves one row);
2. its notifications to the exporters' durable outbox;
3. back to the engine as acknowledged, which persists its state.

A crash between any two steps repeats the earlier ones on restart, never skips one: the
engine keeps unacknowledged notifications in its persisted state and hands them out
again, and their idempotency keys let receivers drop the repeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pyspark.sql import functions as F

from alert_rules.alerts import EvaluationResult, Notification
from alert_rules.cli import default_rules_dir
from alert_rules.engine import Engine
from alert_rules.loader import load_rule_set
from alert_rules.reload import RuleWatcher
from alert_rules.samples import KpiSample, PipelineStatus
from alert_rules.state import DeltaStateStore
from exporters import AlertNotification, ExporterHub, build_exporters
from streaming.pipeline import BatchReport, utc_row
from streaming.tables import SCHEMAS, TableLayout

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
RESUME_LOOKBACK = timedelta(hours=1)


def to_exporter(notification: Notification) -> AlertNotification:
    """The exporters' view of a notification (the packages do not import each other)."""
    return AlertNotification(
        idempotency_key=notification.idempotency_key,
        kind=notification.kind,
        fingerprint=notification.fingerprint,
        rule=notification.rule,
        severity=notification.severity,
        labels=dict(notification.labels),
        annotations=dict(notification.annotations),
        value=notification.value,
        threshold=notification.threshold,
        starts_at=notification.starts_at,
        ends_at=notification.ends_at,
        receivers=tuple(notification.receivers),
    )


class AlertRecorder:
    """Appends alert transitions to ``gold.alerts``, once each by ``alert_id``."""

    def __init__(self, spark: SparkSession, layout: TableLayout, clock: Clock) -> None:
        self.spark = spark
        self.layout = layout
        self.clock = clock

    def record(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        recorded_at = self.clock()
        frame = self.spark.createDataFrame(
            [{**row, "recorded_at": recorded_at} for row in rows],
            schema=SCHEMAS["gold.alerts"],
        )
        alerts = self.layout.delta_table(self.spark, "gold.alerts")
        (
            alerts.alias("t")
            .merge(frame.alias("s"), "t.alert_id = s.alert_id")
            .whenNotMatchedInsertAll()
            .execute()
        )


class AlertingHook:
    """Feeds Gold changes to the engine and its output to ``gold.alerts`` and the
    exporters. ``on_batch`` is a pipeline listener; ``start`` runs the timer."""

    def __init__(
        self,
        engine: Engine,
        recorder: AlertRecorder,
        exporter: ExporterHub,
        clock: Clock,
        tick_seconds: float = 10.0,
    ) -> None:
        self.engine = engine
        self.recorder = recorder
        self.exporter = exporter
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.transitions = 0
        self._lock = threading.Lock()
        self._status: PipelineStatus | None = None
        self._judged_watermark: datetime | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def on_batch(self, report: BatchReport) -> None:
        if report.watermark is None or report.max_event_time is None:
            return
        self._status = PipelineStatus(
            watermark=report.watermark,
            latest_event_time=max(report.max_event_time, self._latest_event_time()),
            last_batch_at=self.clock(),
        )
        with self._lock:
            self._evaluate_in_window_order(report.changed_kpis, self._status)
        self.exporter.publish_kpis(report.changed_kpis)
        self.exporter.publish_health(report.health_record())

    def resume(
        self, recent_kpis: Sequence[dict[str, Any]], status: PipelineStatus
    ) -> None:
        """Re-evaluate the last stretch of Gold after a restart.

        Evaluation is idempotent, so windows the engine already saw change nothing;
        windows written just before a crash that the engine never saw are caught up.
        """
        self._status = status
        with self._lock:
            self._evaluate_in_window_order(recent_kpis, status)

    def _evaluate_in_window_order(
        self, rows: Sequence[dict[str, Any]], status: PipelineStatus
    ) -> None:
        """Evaluate a batch's Gold rows as the engine would have seen them live.

        The engine judges the newest final window of each series. A batch that
        catches up on a back-log (after downtime, or the demo's back-fill) finalizes
        many windows at once, so the rows are replayed window end by window end,
        each step with the watermark at that end, and the open windows last. An
        incident inside the back-log then pages as it would have live.
        """
        # Never move the engine's watermark backwards: rows of windows that were
        # final already (a late event refreshed them) are judged at the old one.
        floor = self._judged_watermark or datetime.min.replace(tzinfo=UTC)
        final_ends = sorted(
            {row["window_end"] for row in rows if row["window_end"] <= status.watermark}
        )
        for end in final_ends:
            step = [
                KpiSample.from_dict(row) for row in rows if row["window_end"] == end
            ]
            watermark = max(end, floor)
            replayed = PipelineStatus(
                watermark=watermark,
                latest_event_time=min(watermark, status.latest_event_time),
                last_batch_at=status.last_batch_at,
            )
            self._handle(self.engine.evaluate(step, replayed))
        still_open = [
            KpiSample.from_dict(row)
            for row in rows
            if row["window_end"] > status.watermark
        ]
        self._handle(self.engine.evaluate(still_open, status))
        self._judged_watermark = status.watermark

    def tick(self) -> None:
        """One timer evaluation (absence, stalled pipeline, repeats, rule reload)."""
        if self._status is None:
            return
        with self._lock:
            self._handle(self.engine.tick(self._status))

    def start(self) -> None:
        self.exporter.start()
        self._timer = threading.Thread(
            target=self._tick_loop, name="alert-timer", daemon=True
        )
        self._timer.start()

    def close(self) -> None:
        self._stop.set()
        if self._timer:
            self._timer.join(timeout=30)
        self.exporter.close()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception:  # the next tick tries again; the batch path still runs
                log.exception("alert_tick_failed")

    def _latest_event_time(self) -> datetime:
        if self._status is None:
            return datetime.min.replace(tzinfo=UTC)
        return self._status.latest_event_time

    def _handle(self, result: EvaluationResult) -> None:
        rows = [transition.to_record() for transition in result.transitions]
        self.recorder.record(rows)
        notifications = [to_exporter(n) for n in result.notifications]
        self.exporter.publish_alerts(rows, notifications)
        self.engine.acknowledge(n.idempotency_key for n in result.notifications)
        self.transitions += len(rows)
        for row in rows:
            log.info(
                "alert_transition rule=%s state=%s fingerprint=%s value=%s "
                "threshold=%s",
                row["rule"],
                row["state"],
                row["fingerprint"],
                row["value"],
                row["threshold"],
            )


def build_alerting(
    spark: SparkSession,
    layout: TableLayout,
    rules_dir: Path | None,
    clock: Clock,
    out: TextIO,
    *,
    start: bool = True,
) -> AlertingHook:
    """The engine with persisted state and hot-reloaded rules, and the exporters."""
    layout.ensure(spark)
    paths = [rules_dir or default_rules_dir()]
    rules = load_rule_set(paths)
    engine = Engine(
        rules,
        DeltaStateStore.in_data_dir(layout.data_dir),
        clock,
        watcher=RuleWatcher(paths),
    )
    exporter = build_exporters(None, layout.data_dir, clock, console=out)
    hook = AlertingHook(engine, AlertRecorder(spark, layout, clock), exporter, clock)
    recent = recent_gold(spark, layout, RESUME_LOOKBACK)
    if recent is not None:
        hook.resume(*recent)
    if start:
        hook.start()
    return hook


def recent_gold(
    spark: SparkSession, layout: TableLayout, lookback: timedelta
) -> tuple[list[dict[str, Any]], PipelineStatus] | None:
    """The Gold rows of the last ``lookback`` of event time and the pipeline status
    recorded by the last batch, or None on a fresh data directory."""
    health = (
        layout.read(spark, "gold.pipeline_health")
        .where(F.col("watermark").isNotNull())
        .orderBy(F.col("batch_id").desc())
        .first()
    )
    if health is None:
        return None
    last = utc_row(health.asDict())
    since = last["max_event_time"] - lookback
    rows = (
        layout.read(spark, "gold.order_kpis")
        .where(F.col("window_end") > F.lit(since))
        .orderBy("window_start")
        .collect()
    )
    status = PipelineStatus(
        watermark=last["watermark"],
        latest_event_time=last["max_event_time"],
        last_batch_at=last["batch_started_at"]
        + timedelta(seconds=last["batch_duration_s"]),
    )
    return [utc_row(row.asDict()) for row in rows], status
