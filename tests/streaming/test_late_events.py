"""Late and out-of-order events: inside the watermark they update the open window;
beyond it they leave the final window's KPIs alone and are counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from streaming.events import OrderEvent, encode
from streaming.pipeline import OrderPipeline
from streaming.tables import TableLayout

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

pytestmark = pytest.mark.spark

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
RAW_SCHEMA = (
    "payload binary, source string, source_topic string, source_partition int, "
    "source_offset long, source_timestamp timestamp, source_key binary, "
    "source_file string, source_line int"
)


def created(number: int, at: datetime) -> OrderEvent:
    return OrderEvent(
        event_id=f"evt-{number}",
        event_type="order_created",
        occurred_at=at,
        order_id=f"ord-{number}",
        channel="web",
        region="RJ",
        customer_id=f"cus-{number}",
        payment_method="pix",
        amount=Decimal("100.00"),
    )


def raw_batch(spark: SparkSession, name: str, events: list[OrderEvent]) -> DataFrame:
    rows = [
        (encode(event), "file", None, None, None, None, None, name, line)
        for line, event in enumerate(events, start=1)
    ]
    return spark.createDataFrame(rows, RAW_SCHEMA)


def kpis(spark: SparkSession, layout: TableLayout) -> dict[tuple[str, datetime], Any]:
    rows = layout.read(spark, "gold.order_kpis").where("dimension = 'all'").collect()
    return {(row["grain"], row["window_start"].astimezone(UTC)): row for row in rows}


def test_late_and_out_of_order_events(spark: SparkSession, tmp_path: Path) -> None:
    layout = TableLayout(tmp_path)
    pipeline = OrderPipeline(spark, layout)
    first = [created(n, T0 + timedelta(seconds=10 + 40 * n)) for n in range(9)]
    pipeline.process_batch(raw_batch(spark, "first", first), 0)
    # The newest event is 12:05:30, so the watermark is 12:03:30: the 1-minute
    # windows up to 12:02-12:03 are final; 12:03-12:04 and the 5-minute window
    # 12:00-12:05 are still open.
    assert pipeline.watermark == T0 + timedelta(minutes=3, seconds=30)
    before = kpis(spark, layout)
    assert before[("1m", T0 + timedelta(minutes=1))]["is_final"]
    assert not before[("1m", T0 + timedelta(minutes=3))]["is_final"]

    in_open_window = created(100, T0 + timedelta(minutes=3, seconds=40))
    behind_watermark = created(101, T0 + timedelta(minutes=1, seconds=20))
    newest = created(102, T0 + timedelta(minutes=6))
    report = pipeline.process_batch(
        raw_batch(spark, "second", [in_open_window, behind_watermark, newest]), 1
    )
    after = kpis(spark, layout)

    open_minute = ("1m", T0 + timedelta(minutes=3))
    assert after[open_minute]["orders_created"] == (
        before[open_minute]["orders_created"] + 1
    )
    final_minute = ("1m", T0 + timedelta(minutes=1))
    assert (
        after[final_minute]["orders_created"]
        == (before[final_minute]["orders_created"])
    )
    assert after[final_minute]["gmv"] == before[final_minute]["gmv"]
    assert after[final_minute]["late_events"] == 1
    assert after[final_minute]["is_final"]
    # The same event is on time for its 5-minute window, which was still open.
    five = ("5m", T0)
    assert after[five]["orders_created"] == before[five]["orders_created"] + 2
    assert after[five]["late_events"] == 0

    assert report.late_events == 1
    # Nothing is lost: the late event is in Silver, flagged by its watermark.
    silver = layout.read(spark, "silver.order_events").where("event_id = 'evt-101'")
    [row] = silver.collect()
    assert row["watermark_at_arrival"].astimezone(UTC) == T0 + timedelta(
        minutes=3, seconds=30
    )
