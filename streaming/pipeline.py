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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F
from pyspark.sql.window import Window

from streaming.gold import affected_windows, compute_kpis, kpi_inputs
from streaming.silver import (
    ValidationSettings,
    classify,
    quarantine_rows,
    silver_candidates,
)
from streaming.tables import SCHEMAS, TableLayout

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
KPI_KEY = ("grain", "window_start", "dimension", "dimension_value")
"""The columns that identify a ``gold.order_kpis`` row."""


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
        self.phase_seconds: dict[str, float] = {}
        """Wall time of each step of the last batch (``bronze``, ``silver``, ...), for
        benchmarks and DEBUG logs; filled before the listeners are called."""
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
        self.phase_seconds = {}
        if self._last_batch_id is None or batch_id != self._last_batch_id + 1:
            # A replay after a crash, or the first batch of this process: take the
            # watermark as it stood after the previous batch, not the latest in memory.
            with self._phase("progress"):
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
        report = replace(report, batch_duration_s=time.monotonic() - started)
        with self._phase("health"):
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
        log.debug(
            "batch=%d phases %s",
            batch_id,
            " ".join(f"{k}={v:.2f}" for k, v in self.phase_seconds.items()),
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
        with self._phase("bronze"):
            self._append(
                bronze.select(*self._columns("bronze.order_events")),
                "bronze.order_events",
                batch_id,
            )
        with _cached(classify(bronze, self.settings.validation)) as classified:
            with self._phase("quarantine"):
                self._append(quarantine_rows(classified), "silver.quarantine", batch_id)
                outcomes = _classification_outcomes(classified)
            candidates = silver_candidates(classified)
            with _cached(_first_seen(candidates, watermark_before)) as unique:
                return self._write_silver_and_gold(
                    unique, batch_id, started_at, watermark_before, outcomes
                )

    def _write_silver_and_gold(
        self,
        unique: DataFrame,
        batch_id: int,
        started_at: datetime,
        watermark_before: datetime | None,
        outcomes: _Outcomes,
    ) -> BatchReport:
        with self._phase("dedup"):
            stats = _batch_stats(unique)
        silver_rows = 0
        if stats.rows:
            with self._phase("silver"):
                silver_rows = self._insert_silver(unique, batch_id, stats.earliest)
        watermark = _advance(
            watermark_before, stats.latest, self.settings.allowed_lateness
        )
        changed = self._update_gold(unique, batch_id, stats, watermark)
        return BatchReport(
            batch_id=batch_id,
            batch_started_at=started_at,
            batch_duration_s=0.0,
            input_rows=outcomes.input_rows,
            silver_rows=silver_rows,
            quarantined_rows=sum(outcomes.reasons.values()),
            duplicates_dropped=outcomes.valid_rows - silver_rows,
            late_events=stats.late,
            gold_rows_upserted=len(changed),
            max_event_time=_as_utc(stats.latest),
            watermark=watermark,
            changed_kpis=tuple(changed),
            quarantine_reasons=outcomes.reasons,
        )

    def _insert_silver(
        self, unique: DataFrame, batch_id: int, earliest: datetime | None
    ) -> int:
        """Append the batch's events whose ``event_id`` Silver does not hold yet
        (looking back ``dedup_horizon`` from the earliest of them); return how many.

        Silver rows written by this same batch id are left out of the look-up: they
        exist only when the batch is replayed after a crash, and then the append is
        skipped by its transaction version while the count comes out as it did the
        first time.
        """
        assert earliest is not None
        horizon_date = (_utc(earliest) - self.settings.dedup_horizon).date()
        known = (
            self.layout.read(self.spark, "silver.order_events")
            .where(
                (F.col("event_date") >= F.lit(horizon_date))
                & (F.col("batch_id") != batch_id)
            )
            .select("event_id")
        )
        first_seen = unique.join(known, "event_id", "left_anti")
        with _cached(first_seen) as first_seen:
            inserted = first_seen.count()
            if inserted:
                self._append(
                    first_seen.select(*self._columns("silver.order_events")),
                    "silver.order_events",
                    batch_id,
                )
        return inserted

    def _update_gold(
        self,
        unique: DataFrame,
        batch_id: int,
        stats: _BatchStats,
        watermark: datetime | None,
    ) -> list[dict[str, Any]]:
        """Recompute the windows the batch touched and finalize the open ones the
        watermark has passed, in one Gold MERGE; return the rows written."""
        now = self.clock()
        changed: list[dict[str, Any]] = []
        upserts: list[DataFrame] = []
        with ExitStack() as cached:
            if stats.rows:
                with self._phase("gold_kpis"):
                    kpis = self._recomputed_kpis(cached, unique, stats, watermark, now)
                    changed = [utc_row(row.asDict()) for row in kpis.collect()]
                upserts.append(kpis)
            if watermark is not None:
                with self._phase("gold_finalize"):
                    closing = cached.enter_context(
                        _cached(self._closing(watermark, upserts))
                    )
                    rows = [utc_row(row.asDict()) for row in closing.collect()]
                if rows:
                    changed.extend(
                        {**row, "is_final": True, "updated_at": now} for row in rows
                    )
                    upserts.append(
                        closing.withColumn("is_final", F.lit(True)).withColumn(
                            "updated_at", F.lit(now).cast("timestamp")
                        )
                    )
            if upserts:
                with self._phase("gold_merge"):
                    self._merge_gold(upserts, batch_id)
        return changed

    def _recomputed_kpis(
        self,
        cached: ExitStack,
        unique: DataFrame,
        stats: _BatchStats,
        watermark: datetime | None,
        now: datetime,
    ) -> DataFrame:
        """KPI rows of every window the batch touched, from one read of Silver;
        the frames it persists stay cached until ``cached`` closes."""
        assert stats.earliest is not None
        assert stats.latest is not None
        horizon = self.settings.latency_horizon
        silver = self.layout.read(self.spark, "silver.order_events")
        inputs = cached.enter_context(
            _cached(
                kpi_inputs(silver, _utc(stats.earliest), _utc(stats.latest), horizon)
            )
        )
        windows = cached.enter_context(
            _cached(affected_windows(unique, inputs, horizon))
        )
        with self._phase("gold_windows"):
            bounds = windows.agg(F.min("window_start"), F.max("window_end")).first()
        assert bounds is not None
        kpis = compute_kpis(
            inputs,
            windows,
            (_utc(bounds[0]), _utc(bounds[1])),
            watermark,
            now,
            horizon,
        )
        return cached.enter_context(_cached(kpis))

    def _closing(self, watermark: datetime, upserts: list[DataFrame]) -> DataFrame:
        """Open Gold windows that the watermark has passed, other than those being
        recomputed (which carry their own ``is_final``)."""
        closing = self.layout.read(self.spark, "gold.order_kpis").where(
            (~F.col("is_final")) & (F.col("window_end") <= F.lit(watermark))
        )
        for recomputed in upserts:
            closing = closing.join(
                recomputed.select(*KPI_KEY), list(KPI_KEY), "left_anti"
            )
        return closing.select(*self._columns("gold.order_kpis"))

    def _merge_gold(self, upserts: list[DataFrame], batch_id: int) -> None:
        source = upserts[0]
        for more in upserts[1:]:
            source = source.unionByName(more)
        gold = self.layout.delta_table(self.spark, "gold.order_kpis")
        with self._transaction("gold.order_kpis", batch_id):
            (
                gold.alias("t")
                .merge(
                    source.alias("s"),
                    " AND ".join(f"t.{key} = s.{key}" for key in KPI_KEY),
                )
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )

    def _write_health(self, report: BatchReport) -> None:
        frame = self.spark.createDataFrame(
            [report.health_record()], schema=SCHEMAS["gold.pipeline_health"]
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
    def _phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``phase_seconds[name]``."""
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + elapsed

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

    def _columns(self, table: str) -> list[str]:
        return [f.name for f in SCHEMAS[table].fields]


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


@contextmanager
def _cached(frame: DataFrame) -> Iterator[DataFrame]:
    """``frame`` persisted for the duration of the block."""
    frame = frame.persist()
    try:
        yield frame
    finally:
        frame.unpersist()


@dataclass(frozen=True)
class _Outcomes:
    """How a batch's messages were classified."""

    input_rows: int
    valid_rows: int
    reasons: dict[str, int]


def _classification_outcomes(classified: DataFrame) -> _Outcomes:
    """Message, valid-message and per-reason counts, in one Spark job."""
    counts = {
        row["reason_code"]: row["count"]
        for row in classified.groupBy(F.col("rejection.code").alias("reason_code"))
        .count()
        .collect()
    }
    valid_rows = counts.pop(None, 0)
    return _Outcomes(
        input_rows=valid_rows + sum(counts.values()),
        valid_rows=valid_rows,
        reasons=counts,
    )


def _first_seen(candidates: DataFrame, watermark: datetime | None) -> DataFrame:
    """One row per ``event_id``: the first in source order, in the Silver shape."""
    from streaming.tables import SILVER_SCHEMA

    order = Window.partitionBy("event_id").orderBy(
        "source_partition", "source_offset", "source_file", "source_line"
    )
    return (
        candidates.withColumn("_rank", F.row_number().over(order))
        .where(F.col("_rank") == 1)
        .drop("_rank")
        .withColumn("watermark_at_arrival", F.lit(watermark).cast("timestamp"))
        .select(*SILVER_SCHEMA.fieldNames())
    )


@dataclass(frozen=True)
class _BatchStats:
    """The batch's first-seen events: how many, their time span, how many late."""

    rows: int
    earliest: datetime | None
    latest: datetime | None
    late: int


def _batch_stats(unique: DataFrame) -> _BatchStats:
    """One aggregate over the batch's events. An event is late when the watermark
    at its arrival had already passed the end of its 1-minute window."""
    minute_end = F.timestamp_seconds(
        F.floor(F.unix_seconds("occurred_at") / 60) * 60 + 60
    )
    late = F.col("watermark_at_arrival").isNotNull() & (
        minute_end <= F.col("watermark_at_arrival")
    )
    row = unique.agg(
        F.count(F.lit(1)).alias("rows"),
        F.min("occurred_at").alias("earliest"),
        F.max("occurred_at").alias("latest"),
        F.count(F.when(late, True)).alias("late"),
    ).first()
    assert row is not None
    return _BatchStats(row["rows"], row["earliest"], row["latest"], int(row["late"]))
