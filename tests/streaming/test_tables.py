"""Table layout: where the Delta tables live."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from streaming.tables import SCHEMAS, TableLayout

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_uc_names_follow_the_layer_and_table() -> None:
    layout = TableLayout(Path("/data"), catalog="prod", schema="orders")
    assert layout.uc_name("silver.quarantine") == "prod.orders.silver_quarantine"
    assert TableLayout(Path("/data")).uc_name("silver.quarantine") is None


@pytest.mark.spark
def test_a_relative_data_dir_works(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    layout = TableLayout(Path("data"))
    assert layout.path("gold.order_kpis") == str(tmp_path / "data/gold/order_kpis")
    layout.ensure(spark)
    for table in SCHEMAS:
        assert layout.read(spark, table).count() == 0
