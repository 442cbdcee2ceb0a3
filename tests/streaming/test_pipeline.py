"""The pipeline on real Spark and Delta: KPIs, reconciliation, idempotency."""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pyspark.sql import functions as F

from streaming.generator import GeneratedMessage, TrafficConfig
from streaming.pipeline import OrderPipeline
from streaming.sources import landing_stream
from streaming.tables import KPI_COLUMNS, TableLayout
from tests.support.kpi_reference import kpi_mismatches, reference_kpis
from tests.support.traffic import drain, gold_by_key, land_traffic

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

START = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)
TRAFFIC = TrafficConfig(
    start=START,
    seed=11,
    orders_per_minute=60,
    bad_share=0.05,
    duplicate_share=0.05,
)
UNTIL = START + timedelta(minutes=8)


class Run:
    def __init__(
        self, layout: TableLayout, sent: list[GeneratedMessage], pipeline: OrderPipeline
    ):
        self.layout = layout
        self.sent = sent
        self.pipeline = pipeline


@pytest.fixture(scope="module")
def run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Run:
    layout = TableLayout(tmp_path_factory.mktemp("pipeline"))
    sent = land_traffic(layout.landing_dir, TRAFFIC, UNTIL)
    pipeline = drain(spark, layout, files_per_batch=3)
    return Run(layout, sent, pipeline)


def test_gold_equals_an_independent_computation(spark: SparkSession, run: Run) -> None:
    expected = reference_kpis(m.event for m in run.sent if m.event is not None)
    gold = gold_by_key(spark, run.layout)

    assert set(gold) == set(expected)
    assert kpi_mismatches(gold, expected) == []
    # Latency percentiles really were exercised, not all None.
    assert sum(1 for kpis in gold.values() if kpis["approval_latency_p95_s"]) > 100


def test_every_message_is_accounted_for(spark: SparkSession, run: Run) -> None:
    layout = run.layout
    bronze = layout.read(spark, "bronze.order_events").count()
    silver = layout.read(spark, "silver.order_events").count()
    quarantine = layout.read(spark, "silver.quarantine")
    health = (
        layout.read(spark, "gold.pipeline_health")
        .agg(F.sum("duplicates_dropped"), F.sum("input_rows"), F.count(F.lit(1)))
        .first()
    )
    assert health is not None
    duplicates, input_rows, batches = health

    assert bronze == len(run.sent) == input_rows
    assert batches == 3
    assert bronze == silver + quarantine.count() + duplicates
    assert duplicates == sum(1 for m in run.sent if m.kind == "duplicate")
    assert silver == len({m.event.event_id for m in run.sent if m.event})


def test_each_defect_is_quarantined_with_its_reason(
    spark: SparkSession, run: Run
) -> None:
    sent_defects = Counter(m.defect for m in run.sent if m.defect)
    reasons = Counter(
        row["reason_code"]
        for row in run.layout.read(spark, "silver.quarantine")
        .select("reason_code")
        .collect()
    )
    # Each defect the generator injects maps to the reason code of the same name.
    assert sent_defects == reasons
    assert set(reasons) == {
        "malformed_json",
        "invalid_type",
        "missing_field",
        "invalid_enum",
        "negative_amount",
        "invalid_timestamp",
    }


def test_bronze_keeps_the_raw_payload_and_its_coordinates(
    spark: SparkSession, run: Run
) -> None:
    rows = run.layout.read(spark, "bronze.order_events").collect()
    payloads = Counter(bytes(row["payload"]) for row in rows)
    assert payloads == Counter(m.value for m in run.sent)
    coordinates = {(row["source_file"], row["source_line"]) for row in rows}
    assert len(coordinates) == len(rows)
    assert all(row["source"] == "file" and row["source_line"] >= 1 for row in rows)


def test_windows_behind_the_watermark_are_final(spark: SparkSession, run: Run) -> None:
    watermark = run.pipeline.watermark
    assert watermark is not None
    rows = (
        run.layout.read(spark, "gold.order_kpis")
        .select("window_end", "is_final")
        .collect()
    )
    for row in rows:
        assert row["is_final"] == (row["window_end"].astimezone(UTC) <= watermark)


def test_tables_are_standard_delta(run: Run) -> None:
    from deltalake import DeltaTable

    for table in ("bronze.order_events", "silver.order_events", "gold.order_kpis"):
        arrow = DeltaTable(run.layout.path(table)).to_pyarrow_table()
        assert arrow.num_rows > 0
    gold = DeltaTable(run.layout.path("gold.order_kpis")).to_pyarrow_table()
    assert set(KPI_COLUMNS) <= set(gold.column_names)


def test_a_replayed_batch_changes_nothing(spark: SparkSession, tmp_path: Path) -> None:
    layout = TableLayout(tmp_path)
    land_traffic(layout.landing_dir, TRAFFIC, START + timedelta(minutes=4))
    raw = landing_stream_static(spark, layout)
    pipeline = OrderPipeline(spark, layout)
    first = pipeline.process_batch(raw, 0)
    before = _snapshot(spark, layout)

    # A crash after the writes but before Spark recorded the batch: Spark runs batch 0
    # again with the same data in a new process.
    replayed = OrderPipeline(spark, layout).process_batch(raw, 0)

    assert _snapshot(spark, layout) == before
    assert replayed.silver_rows == first.silver_rows
    assert replayed.input_rows == first.input_rows


def test_a_crash_midway_through_a_batch_is_repaired_by_the_replay(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = TableLayout(tmp_path)
    land_traffic(layout.landing_dir, TRAFFIC, START + timedelta(minutes=4))
    raw = landing_stream_static(spark, layout)
    pipeline = OrderPipeline(spark, layout)

    def crash(*_: object, **__: object) -> None:
        raise RuntimeError("driver lost before the health row")

    monkeypatch.setattr(pipeline, "_write_health", crash)
    with pytest.raises(RuntimeError):
        pipeline.process_batch(raw, 0)
    monkeypatch.undo()
    OrderPipeline(spark, layout).process_batch(raw, 0)

    bronze = layout.read(spark, "bronze.order_events").count()
    silver = layout.read(spark, "silver.order_events").count()
    quarantined = layout.read(spark, "silver.quarantine").count()
    health = layout.read(spark, "gold.pipeline_health").collect()
    assert len(health) == 1
    assert bronze == raw.count()
    assert bronze == silver + quarantined + health[0]["duplicates_dropped"]


def test_stop_and_restart_gives_the_same_gold_as_one_run(
    spark: SparkSession, run: Run, tmp_path: Path
) -> None:
    layout = TableLayout(tmp_path)
    shutil.copytree(run.layout.landing_dir, layout.landing_dir)
    files = sorted(layout.landing_dir.glob("part-*.jsonl"))
    held_back = tmp_path / "held"
    held_back.mkdir()
    for path in files[4:]:
        path.rename(held_back / path.name)

    drain(spark, layout, files_per_batch=2)
    for path in sorted(held_back.iterdir()):
        path.rename(layout.landing_dir / path.name)
    restarted = drain(spark, layout, files_per_batch=2)

    assert restarted.last_batch_id == 3
    assert gold_by_key(spark, layout) == gold_by_key(spark, run.layout)
    assert layout.read(spark, "silver.order_events").count() == (
        run.layout.read(spark, "silver.order_events").count()
    )


def landing_stream_static(spark: SparkSession, layout: TableLayout) -> Any:
    """The landing folder read once as a batch frame of raw rows (what one micro-batch
    of the stream would hold)."""
    stream = landing_stream(spark, layout.landing_dir)
    query = (
        stream.writeStream.format("memory")
        .queryName("landing_once")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    frame = spark.table("landing_once")
    frame = spark.createDataFrame(frame.collect(), frame.schema)
    spark.catalog.dropTempView("landing_once")
    return frame


def _snapshot(spark: SparkSession, layout: TableLayout) -> dict[str, Any]:
    gold = layout.read(spark, "gold.order_kpis").drop("updated_at")
    return {
        "bronze": layout.read(spark, "bronze.order_events").count(),
        "silver": layout.read(spark, "silver.order_events").count(),
        "quarantine": layout.read(spark, "silver.quarantine").count(),
        "gold": sorted(tuple(row) for row in gold.collect()),
    }
