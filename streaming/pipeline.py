"""The micro-batch that carries raw messages through Bronze, Silver and Gold.

One streaming query reads the source and hands each micro-batch to
:meth:`OrderPipeline.process_batch`, which writes every layer in order:

1. Bronze: append every message as received (nothing dropped).
2. Silver: classify; append rejects to the quarantine; insert first-seen events by
   ``event_id`` (a MERGE bounded by ``dedup_horizon``).
3. Gold: recompute the KPIs of the windows the batch touched and upsert them; mark
   windows final once the watermark has passed them.
4. Health: one row per batch with its counts, duration and watermark.

Every write carries the batch id as a Delta transaction version (``txnAppId`` /
``txnVersion``), so a batch replayed after a crash skips what it already wrote. Gold is
recomputed from Silver, so re-running it is harmless too. Counting invariant, per batch:
``bronze_rows = silver_rows + quarantined_rows + duplicates_dropped``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F
from pyspark.sql.window import Window

from streaming.gold import affected_windows, compute_kpis
from streaming.silver import (
    ValidationSettings,
    classify,
    quarantine_rows,
    silver_candidates,
)
from streaming.tables import TableLayout

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PipelineSettings:
    """Event-time behaviour of the job.

    ``allowed_lateness``: how far behind the newest event the watermark trails; a window
    is final once the watermark passes its end. ``dedup_horizon``: how far back a
    repeated ``event_id`` is recognised. ``latency_horizon``: the longest creation to
    approval time that is correlated (bounds the join).
    """

    app_id: str = "orderpulse"
    allowed_lateness: timedelta = timedelta(minutes=2)
    dedup_horizon: timedelta = timedelta(hours=24)
    latency_horizon: timedelta = timedelta(hours=2)
    validation: ValidationSettings = field(default_factory=ValidationSettings)


@dataclass(frozen=True)
class BatchReport:
    """What one micro-batch did; also the ``gold.pipeline_health`` row."""

    batch_id: int
    batch_started_at: datetime
    batch_duration_s: float
    input_rows: int
    silver_rows: int
    quarantined_rows: int
    duplicates_dropped: int
    late_events: int
    gold_rows_upserted: int
    max_event_time: datetime | None
    watermark: datetime | None
    changed_kpis: tuple[dict[str, Any], ...] = ()
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def watermark_delay_s(self) -> float | None:
        if self.watermark is None:
            return None
        return (self.batch_started_at - self.watermark).total_seconds()

    def health_record(self) -> dict[str, Any]:
        duration = max(self.batch_duration_s, 1e-6)
        return {
            "batch_id": self.batch_id,
            "batch_started_at": self.batch_started_at,
            "batch_duration_s": self.batch_duration_s,
            "input_rows": self.input_rows,
            "input_rows_per_s": self.input_rows / duration,
            "bronze_rows": self.input_rows,
            "silver_rows": self.silver_rows,
            "quarantined_rows": self.quarantined_rows,
            "duplicates_dropped": self.duplicates_dropped,
            "late_events": self.late_events,
            "gold_rows_upserted": self.gold_rows_upserted,
            "max_event_time": self.max_event_time,
            "watermark": self.watermark,
            "watermark_delay_s": self.watermark_delay_s,
        }


BatchListener = Callable[[BatchReport], None]


class OrderPipeline:
    """Writes micro-batches of raw messages into the Delta layers.

    ``raw`` frames have a binary ``payload`` column and the source coordinates of
    :data:`streaming.tables.SOURCE_COORDINATES`. ``listeners`` are called after each
    batch is fully written (the alert engine and exporters hook in there).
    """

    def __init__(
        self,
        spark: SparkSession,
        layout: TableLayout,
        settings: PipelineSettings | None = None,
        clock: Clock = wall_clock,
        listeners: tuple[BatchListener, ...] = (),
    ) -> None:
        self.spark = spark
        self.layout = layout
        self.settings = settings or PipelineSettings()
        self.clock = clock
        self.listeners = listeners
        layout.ensure(spark)
        self._last_batch_id, self._watermark = self._recorded_progress(None)

    @property
    def watermark(self) -> datetime | None:
        return self._watermark

    @property
    def last_batch_id(self) -> int | None:
        return self._last_batch_id

    def start(
        self,
        raw_stream: DataFrame,
        trigger_seconds: float = 5.0,
        available_now: bool = False,
        query_name: str = "orderpulse",
    ) -> StreamingQuery:
        """Start the streaming query; it resumes from its checkpoint if there is one."""
        writer = (
            raw_stream.writeStream.queryName(query_name)
            .foreachBatch(self._on_micro_batch)
            .option("checkpointLocation", str(self.layout.checkpoint_dir / query_name))
        )
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{trigger_seconds} seconds")
        return writer.start()

    def _on_micro_batch(self, raw: DataFrame, batch_id: int) -> None:
        self.process_batch(raw, batch_id)

    def process_batch(self, raw: DataFrame, batch_id: int) -> BatchReport:
        started = time.monotonic()
        started_at = self.clock()
        if self._last_batch_id is None or batch_id != self._last_batch_id + 1:
            # A replay after a crash, or the first batch of this process: take the
            # watermark as it stood after the previous batch, not the latest in memory.
            _, self._watermark = self._recorded_progress(batch_id)
        watermark_before = self._watermark

        bronze = (
            raw.withColumn("ingested_at", F.lit(started_at).cast("timestamp"))
            .withColumn("batch_id", F.lit(batch_id).cast("long"))
            .persist()
        )
        try:
            report = self._write_layers(bronze, batch_id, started_at, watermark_before)
        finally:
            bronze.unpersist()
        report = _with_duration(report, time.monotonic() - started)
        self._write_health(report)
        self._last_batch_id, self._watermark = batch_id, report.watermark
        log.info(
            "batch=%d input=%d silver=%d quarantined=%d duplicates=%d late=%d "
            "gold_rows=%d watermark=%s duration_s=%.2f",
            batch_id,
            report.input_rows,
            report.silver_rows,
            report.quarantined_rows,
            report.duplicates_dropped,
            report.late_events,
            report.gold_rows_upserted,
            report.watermark.isoformat() if report.watermark else "-",
            report.batch_duration_s,
        )
        for listener in self.listeners:
            listener(report)
        return report

    def _write_layers(
        self,
        bronze: DataFrame,
        batch_id: int,
        started_at: datetime,
        watermark_before: datetime | None,
    ) -> BatchReport:
        input_rows = bronze.count()
        self._append(
            bronze.select(*self._columns("bronze.order_events")),
            "bronze.order_events",
            batch_id,
        )

        classified = classify(bronze, self.settings.validation).persist()
        try:
            rejected = quarantine_rows(classified)
            self._append(rejected, "silver.quarantine", batch_id)
            reasons = {
                row["reason_code"]: row["count"]
                for row in rejected.groupBy("reason_code").count().collect()
            }
            candidates = silver_candidates(classified).persist()
        finally:
            classified.unpersist()
        try:
            return self._write_silver_and_gold(
                candidates, batch_id, started_at, watermark_before, input_rows, reasons
            )
        finally:
            candidates.unpersist()

    def _write_silver_and_gold(
        self,
        candidates: DataFrame,
        batch_id: int,
        started_at: datetime,
        watermark_before: datetime | None,
        input_rows: int,
        reasons: dict[str, int],
    ) -> BatchReport:
        first_seen = Window.partitionBy("event_id").orderBy(
            "source_partition", "source_offset", "source_file", "source_line"
        )
        unique = (
            candidates.withColumn("_rank", F.row_number().over(first_seen))
            .where(F.col("_rank") == 1)
            .drop("_rank")
            .withColumn(
                "watermark_at_arrival", F.lit(watermark_before).cast("timestamp")
            )
            .select(*self._columns("silver.order_events"))
            .persist()
        )
        try:
            stats = unique.agg(
                F.count(F.lit(1)).alias("rows"),
                F.min("occurred_at").alias("earliest"),
                F.max("occurred_at").alias("latest"),
            ).first()
            assert stats is not None
            valid_rows = candidates.count()
            if stats["rows"]:
                self._merge_silver(unique, batch_id, stats["earliest"])
            silver_rows = self._silver_rows_of(batch_id)
            watermark = _advance(
                watermark_before, stats["latest"], self.settings.allowed_lateness
            )
            changed, late = self._update_gold(
                unique, batch_id, watermark, stats["rows"] > 0
            )
        finally:
            unique.unpersist()
        return BatchReport(
            batch_id=batch_id,
            batch_started_at=started_at,
            batch_duration_s=0.0,
            input_rows=input_rows,
            silver_rows=silver_rows,
            quarantined_rows=sum(reasons.values()),
            duplicates_dropped=valid_rows - silver_rows,
            late_events=late,
            gold_rows_upserted=len(changed),
            max_event_time=_as_utc(stats["latest"]),
            watermark=watermark,
            changed_kpis=tuple(changed),
            quarantine_reasons=reasons,
        )

    def _merge_silver(
        self, unique: DataFrame, batch_id: int, earliest: datetime
    ) -> None:
        horizon_date = (_utc(earliest) - self.settings.dedup_horizon).date()
        silver = self.layout.delta_table(self.spark, "silver.order_events")
        with self._transaction("silver.order_events", batch_id):
            (
                silver.alias("t")
                .merge(
                    unique.alias("s"),
                    "t.event_id = s.event_id AND "
                    f"t.event_date >= DATE'{horizon_date.isoformat()}'",
                )
                .whenNotMatchedInsertAll()
                .execute()
            )

    def _silver_rows_of(self, batch_id: int) -> int:
        silver = self.layout.read(self.spark, "silver.order_events")
        return silver.where(F.col("batch_id") == batch_id).count()

    def _update_gold(
        self,
        unique: DataFrame,
        batch_id: int,
        watermark: datetime | None,
        has_events: bool,
    ) -> tuple[list[dict[str, Any]], int]:
        """Upsert the touched windows, finalize passed ones; return changed rows and
        the number of late events in the batch (late for their 1-minute window)."""
        now = self.clock()
        changed: list[dict[str, Any]] = []
        late = 0
        gold = self.layout.delta_table(self.spark, "gold.order_kpis")
        if has_events:
            silver = self.layout.read(self.spark, "silver.order_events")
            windows = affected_windows(
                unique, silver, self.settings.latency_horizon
            ).persist()
            try:
                bounds = windows.agg(F.min("window_start"), F.max("window_end")).first()
                assert bounds is not None
                kpis = compute_kpis(
                    silver,
                    windows,
                    (_as_utc(bounds[0]), _as_utc(bounds[1])),  # type: ignore[arg-type]
                    watermark,
                    now,
                    self.settings.latency_horizon,
                ).persist()
            finally:
                windows.unpersist()
            try:
                with self._transaction("gold.order_kpis", batch_id):
                    (
                        gold.alias("t")
                        .merge(
                            kpis.alias("s"),
                            "t.grain = s.grain AND t.window_start = s.window_start "
                            "AND t.dimension = s.dimension "
                            "AND t.dimension_value = s.dimension_value",
                        )
                        .whenMatchedUpdateAll()
                        .whenNotMatchedInsertAll()
                        .execute()
                    )
                changed = [utc_row(row.asDict()) for row in kpis.collect()]
            finally:
                kpis.unpersist()
            late = int(
                unique.where(
                    F.col("watermark_at_arrival").isNotNull()
                    & (
                        F.timestamp_seconds(
                            F.floor(F.unix_seconds("occurred_at") / 60) * 60 + 60
                        )
                        <= F.col("watermark_at_arrival")
                    )
                ).count()
            )
        if watermark is not None:
            changed.extend(self._finalize(gold, watermark, now, changed))
        return changed, late

    def _finalize(
        self,
        gold: Any,
        watermark: datetime,
        now: datetime,
        already: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Mark open windows that the watermark has passed as final; return them."""
        condition = (~F.col("is_final")) & (F.col("window_end") <= F.lit(watermark))
        closing = self.layout.read(self.spark, "gold.order_kpis").where(condition)
        rows = [utc_row(row.asDict()) for row in closing.collect()]
        if not rows:
            return []
        gold.update(
            condition,
            {"is_final": F.lit(True), "updated_at": F.lit(now).cast("timestamp")},
        )
        seen = {_kpi_key(row) for row in already}
        finalized = []
        for row in rows:
            if _kpi_key(row) not in seen:
                finalized.append({**row, "is_final": True, "updated_at": now})
        return finalized

    def _write_health(self, report: BatchReport) -> None:
        frame = self.spark.createDataFrame(
            [report.health_record()], schema=self._schema("gold.pipeline_health")
        )
        self._append(frame, "gold.pipeline_health", report.batch_id)

    def _recorded_progress(
        self, before_batch: int | None
    ) -> tuple[int | None, datetime | None]:
        """(batch id, watermark) of the last recorded batch, or of the last one before
        ``before_batch``."""
        health = self.layout.read(self.spark, "gold.pipeline_health")
        if before_batch is not None:
            health = health.where(F.col("batch_id") < before_batch)
        row = (
            health.orderBy(F.col("batch_id").desc())
            .select("batch_id", "watermark")
            .first()
        )
        if row is None:
            return None, None
        return row["batch_id"], _as_utc(row["watermark"])

    def _append(self, frame: DataFrame, table: str, batch_id: int) -> None:
        writer = (
            frame.write.format("delta")
            .mode("append")
            .option("txnAppId", f"{self.settings.app_id}:{table}")
            .option("txnVersion", batch_id)
        )
        name = self.layout.uc_name(table)
        if name:
            writer.saveAsTable(name)
        else:
            writer.save(self.layout.path(table))

    @contextmanager
    def _transaction(self, table: str, batch_id: int) -> Iterator[None]:
        """Make the MERGE/UPDATE inside idempotent for this batch (Delta skips a
        transaction version it has already committed for the app id)."""
        conf = self.spark.conf
        conf.set(
            "spark.databricks.delta.write.txnAppId", f"{self.settings.app_id}:{table}"
        )
        conf.set("spark.databricks.delta.write.txnVersion", str(batch_id))
        try:
            yield
        finally:
            conf.unset("spark.databricks.delta.write.txnAppId")
            conf.unset("spark.databricks.delta.write.txnVersion")

    def _schema(self, table: str) -> Any:
        from streaming.tables import SCHEMAS

        return SCHEMAS[table]

    def _columns(self, table: str) -> list[str]:
        return [f.name for f in self._schema(table).fields]


def _advance(
    watermark: datetime | None, latest_event: datetime | None, lateness: timedelta
) -> datetime | None:
    if latest_event is None:
        return watermark
    candidate = _utc(latest_event) - lateness
    if watermark is None or candidate > watermark:
        return candidate
    return watermark


def _utc(moment: datetime) -> datetime:
    """PySpark returns timestamps as naive datetimes in the Python process's local time
    zone; ``astimezone`` reads a naive value as local time, so this holds anywhere."""
    return moment.astimezone(UTC)


def _as_utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else _utc(moment)


def utc_row(row: dict[str, Any]) -> dict[str, Any]:
    """A collected row with its timestamps made timezone-aware UTC."""
    return {
        key: _as_utc(value) if isinstance(value, datetime) else value
        for key, value in row.items()
    }


def _kpi_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["grain"], row["window_start"], row["dimension"], row["dimension_value"])


def _with_duration(report: BatchReport, seconds: float) -> BatchReport:
    from dataclasses import replace

    return replace(report, batch_duration_s=seconds)
