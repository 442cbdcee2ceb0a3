"""`orderpulse run` on the embedded source, end to end, and a restart."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from streaming.run import RunOptions, run
from streaming.tables import TableLayout

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark


def test_the_demo_runs_shows_progress_and_resumes(
    spark: SparkSession, tmp_path: Path
) -> None:
    options = RunOptions(
        data_dir=tmp_path,
        duration_s=25,
        orders_per_minute=60,
        backfill_minutes=12,
        incidents=("payment_gateway_outage:credit_card@-10+6*0.8",),
        default_incidents=False,
        trigger_seconds=2,
        files_per_trigger=12,
    )
    first = io.StringIO()
    assert run(options, spark, out=first) == 0

    printed = first.getvalue()
    assert "Back-filling 12 minutes of history first." in printed
    assert "Injected incident: payment_gateway_outage (credit_card)" in printed
    assert "batch    0 |" in printed
    assert "Where to look:" in printed
    layout = TableLayout(tmp_path)
    bronze = layout.read(spark, "bronze.order_events").count()
    assert bronze > 500
    assert layout.read(spark, "gold.order_kpis").count() > 0
    # The back-filled outage pages on-call (on the console, with no receivers set).
    assert "[FIRING] CRITICAL PaymentFailuresByMethod" in printed
    exported = (tmp_path / "exports" / "notifications.jsonl").read_text().splitlines()
    assert any(json.loads(line)["kind"] == "firing" for line in exported)

    second = io.StringIO()
    assert run(options, spark, out=second) == 0
    assert "Resuming on an existing data directory" in second.getvalue()
    assert layout.read(spark, "bronze.order_events").count() > bronze
    health = layout.read(spark, "gold.pipeline_health").orderBy("batch_id").collect()
    assert [row["batch_id"] for row in health] == list(range(len(health)))
