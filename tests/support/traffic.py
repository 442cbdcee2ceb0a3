"""Small helpers to feed generated traffic through the real pipeline in tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming.generator import GeneratedMessage, OrderTrafficGenerator, TrafficConfig
from streaming.pipeline import OrderPipeline, PipelineSettings
from streaming.sources import LandingWriter, landing_stream
from streaming.tables import KPI_COLUMNS, TableLayout

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def land_traffic(
    landing_dir: Path,
    config: TrafficConfig,
    until: datetime,
    file_every: timedelta = timedelta(minutes=1),
) -> list[GeneratedMessage]:
    """Generate traffic up to ``until`` into landing files, one per ``file_every``."""
    generator = OrderTrafficGenerator(config)
    writer = LandingWriter(landing_dir)
    sent: list[GeneratedMessage] = []
    for messages in generator.run(until, file_every):
        writer.write(message.value for message in messages)
        sent.extend(messages)
    return sent


def drain(
    spark: SparkSession,
    layout: TableLayout,
    files_per_batch: int,
    settings: PipelineSettings | None = None,
) -> OrderPipeline:
    """Run the streaming query until the landing folder is fully processed."""
    pipeline = OrderPipeline(spark, layout, settings)
    stream = landing_stream(
        spark, layout.landing_dir, max_files_per_trigger=files_per_batch
    )
    query = pipeline.start(stream, available_now=True)
    query.awaitTermination()
    if query.exception() is not None:
        raise AssertionError(f"streaming query failed: {query.exception()}")
    return pipeline


def gold_by_key(
    spark: SparkSession, layout: TableLayout
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Gold KPI columns keyed by (grain, window_start UTC, dimension, value)."""
    from datetime import UTC

    rows = layout.read(spark, "gold.order_kpis").collect()
    return {
        (
            row["grain"],
            row["window_start"].astimezone(UTC),
            row["dimension"],
            row["dimension_value"],
        ): {name: row[name] for name in (*KPI_COLUMNS, "is_final")}
        for row in rows
    }
