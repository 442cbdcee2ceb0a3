"""Where the Delta tables live and what they hold.

Locally every table is a folder under one data directory (``bronze/order_events``, ...).
On Databricks the same tables are Unity Catalog tables named
``<catalog>.<schema>.<layer>_<name>``; :class:`TableLayout` hides the difference from
the rest of the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _schema(*fields: tuple[str, DataType, bool]) -> StructType:
    return StructType(
        [StructField(name, kind, nullable) for name, kind, nullable in fields]
    )


SOURCE_COORDINATES = (
    ("source", StringType(), False),
    ("source_topic", StringType(), True),
    ("source_partition", IntegerType(), True),
    ("source_offset", LongType(), True),
    ("source_timestamp", TimestampType(), True),
    ("source_key", BinaryType(), True),
    ("source_file", StringType(), True),
    ("source_line", IntegerType(), True),
)

SOURCE_COLUMNS = tuple(name for name, _, _ in SOURCE_COORDINATES)

BRONZE_SCHEMA = _schema(
    ("payload", BinaryType(), True),
    *SOURCE_COORDINATES,
    ("ingested_at", TimestampType(), False),
    ("batch_id", LongType(), False),
)

LINE_ITEM = StructType(
    [
        StructField("sku", StringType(), True),
        StructField("quantity", LongType(), True),
        StructField("unit_price", DecimalType(18, 2), True),
    ]
)

SILVER_SCHEMA = _schema(
    ("event_id", StringType(), False),
    ("event_type", StringType(), False),
    ("occurred_at", TimestampType(), False),
    ("event_date", DateType(), False),
    ("order_id", StringType(), False),
    ("channel", StringType(), False),
    ("region", StringType(), False),
    ("schema_version", IntegerType(), False),
    ("customer_id", StringType(), True),
    ("payment_method", StringType(), True),
    ("amount", DecimalType(18, 2), True),
    ("currency", StringType(), False),
    ("items", ArrayType(LINE_ITEM), True),
    ("reason", StringType(), True),
    ("watermark_at_arrival", TimestampType(), True),
    ("source", StringType(), False),
    ("source_topic", StringType(), True),
    ("source_partition", IntegerType(), True),
    ("source_offset", LongType(), True),
    ("source_file", StringType(), True),
    ("source_line", IntegerType(), True),
    ("ingested_at", TimestampType(), False),
    ("batch_id", LongType(), False),
)

QUARANTINE_SCHEMA = _schema(
    ("payload", BinaryType(), True),
    ("payload_text", StringType(), True),
    ("reason_code", StringType(), False),
    ("reason_detail", StringType(), False),
    *SOURCE_COORDINATES,
    ("ingested_at", TimestampType(), False),
    ("batch_id", LongType(), False),
)

KPI_COLUMNS = (
    "orders_created",
    "orders_cancelled",
    "payments_approved",
    "payments_failed",
    "gmv",
    "avg_ticket",
    "cancellation_rate",
    "payment_failure_rate",
    "approval_latency_p50_s",
    "approval_latency_p95_s",
    "distinct_customers",
    "late_events",
)

GOLD_KPI_SCHEMA = _schema(
    ("window_start", TimestampType(), False),
    ("window_end", TimestampType(), False),
    ("grain", StringType(), False),
    ("dimension", StringType(), False),
    ("dimension_value", StringType(), False),
    ("orders_created", LongType(), False),
    ("orders_cancelled", LongType(), False),
    ("payments_approved", LongType(), False),
    ("payments_failed", LongType(), False),
    ("gmv", DoubleType(), False),
    ("avg_ticket", DoubleType(), True),
    ("cancellation_rate", DoubleType(), True),
    ("payment_failure_rate", DoubleType(), True),
    ("approval_latency_p50_s", DoubleType(), True),
    ("approval_latency_p95_s", DoubleType(), True),
    ("distinct_customers", LongType(), False),
    ("late_events", LongType(), False),
    ("is_final", BooleanType(), False),
    ("updated_at", TimestampType(), False),
)

GOLD_ALERTS_SCHEMA = _schema(
    ("alert_id", StringType(), False),
    ("rule", StringType(), False),
    ("severity", StringType(), False),
    ("fingerprint", StringType(), False),
    ("labels", MapType(StringType(), StringType()), False),
    ("state", StringType(), False),
    ("value", DoubleType(), True),
    ("threshold", DoubleType(), True),
    ("active_since", TimestampType(), False),
    ("fired_at", TimestampType(), True),
    ("resolved_at", TimestampType(), True),
    ("evaluated_at", TimestampType(), False),
    ("annotations", MapType(StringType(), StringType()), False),
    ("receivers", ArrayType(StringType()), False),
    ("recorded_at", TimestampType(), False),
)

PIPELINE_HEALTH_SCHEMA = _schema(
    ("batch_id", LongType(), False),
    ("batch_started_at", TimestampType(), False),
    ("batch_duration_s", DoubleType(), False),
    ("input_rows", LongType(), False),
    ("input_rows_per_s", DoubleType(), False),
    ("bronze_rows", LongType(), False),
    ("silver_rows", LongType(), False),
    ("quarantined_rows", LongType(), False),
    ("duplicates_dropped", LongType(), False),
    ("late_events", LongType(), False),
    ("gold_rows_upserted", LongType(), False),
    ("max_event_time", TimestampType(), True),
    ("watermark", TimestampType(), True),
    ("watermark_delay_s", DoubleType(), True),
)

SCHEMAS: dict[str, StructType] = {
    "bronze.order_events": BRONZE_SCHEMA,
    "silver.order_events": SILVER_SCHEMA,
    "silver.quarantine": QUARANTINE_SCHEMA,
    "gold.order_kpis": GOLD_KPI_SCHEMA,
    "gold.alerts": GOLD_ALERTS_SCHEMA,
    "gold.pipeline_health": PIPELINE_HEALTH_SCHEMA,
}
PARTITIONS: dict[str, tuple[str, ...]] = {"silver.order_events": ("event_date",)}


@dataclass(frozen=True)
class TableLayout:
    """Maps logical table names (``silver.quarantine``) to storage.

    With ``catalog`` and ``schema`` set, tables are Unity Catalog tables
    ``catalog.schema.silver_quarantine``; otherwise they are folders under ``data_dir``.
    Checkpoints and the landing folder always live under ``data_dir`` (a Unity Catalog
    volume path on Databricks).
    """

    data_dir: Path
    catalog: str | None = None
    schema: str | None = None

    def __post_init__(self) -> None:
        # Delta reads a relative table location as a table name, so the data
        # directory is made absolute once, here.
        object.__setattr__(self, "data_dir", Path(self.data_dir).absolute())

    def path(self, table: str) -> str:
        layer, name = table.split(".", 1)
        return str(self.data_dir / layer / name)

    def uc_name(self, table: str) -> str | None:
        if not (self.catalog and self.schema):
            return None
        return f"{self.catalog}.{self.schema}.{table.replace('.', '_')}"

    @property
    def checkpoint_dir(self) -> Path:
        return self.data_dir / "_checkpoints"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    def read(self, spark: SparkSession, table: str) -> DataFrame:
        name = self.uc_name(table)
        if name:
            return spark.read.table(name)
        return spark.read.format("delta").load(self.path(table))

    def delta_table(self, spark: SparkSession, table: str):  # type: ignore[no-untyped-def]
        from delta.tables import DeltaTable

        name = self.uc_name(table)
        if name:
            return DeltaTable.forName(spark, name)
        return DeltaTable.forPath(spark, self.path(table))

    def ensure(self, spark: SparkSession) -> None:
        """Create every table that does not exist yet, empty, with its schema."""
        from delta.tables import DeltaTable

        for table, schema in SCHEMAS.items():
            builder = DeltaTable.createIfNotExists(spark).addColumns(schema)
            name = self.uc_name(table)
            builder = (
                builder.tableName(name) if name else builder.location(self.path(table))
            )
            partitions = PARTITIONS.get(table)
            if partitions:
                builder = builder.partitionedBy(*partitions)
            builder.execute()
