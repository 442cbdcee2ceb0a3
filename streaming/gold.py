"""Silver events to Gold KPIs over tumbling windows.

Gold is a pure function of Silver: for each window touched by a micro-batch the job
recomputes the window's KPIs from the Silver rows in it and upserts the result. A
replayed batch therefore computes the same rows again, late events inside the allowed
lateness simply refresh the window, and nothing depends on in-memory aggregation state.

Lateness is decided per event and per grain: an event is *late* for a window when the
watermark had already passed that window's end when the event arrived (Silver keeps the
watermark at arrival). Late events do not change a final window's KPIs; they are counted
in its ``late_events`` column.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

GRAINS: Mapping[str, int] = {"1m": 60, "5m": 300}
DIMENSIONS = ("all", "region", "channel", "payment_method")
UNKNOWN = "unknown"


def window_start(moment: Column, seconds: int) -> Column:
    return F.timestamp_seconds(F.floor(F.unix_seconds(moment) / seconds) * seconds)


def _grain_windows(moment: Column) -> Column:
    return F.array(
        *(
            F.struct(
                F.lit(grain).alias("grain"),
                window_start(moment, seconds).alias("window_start"),
                (
                    window_start(moment, seconds)
                    + F.expr(f"INTERVAL {seconds} SECONDS")
                ).alias("window_end"),
            )
            for grain, seconds in GRAINS.items()
        )
    )


def windows_of(events: DataFrame, moment: str = "occurred_at") -> DataFrame:
    """The distinct (grain, window_start, window_end) that the events fall in."""
    return (
        events.select(F.explode(_grain_windows(F.col(moment))).alias("w"))
        .select("w.*")
        .distinct()
    )


def affected_windows(
    batch_events: DataFrame, silver: DataFrame, latency_horizon: timedelta
) -> DataFrame:
    """Windows whose KPIs a batch can change.

    Those the batch's events fall in, plus the windows of already-stored approvals whose
    order creation arrives only now (out of order): their approval latency changes.
    """
    created_now = batch_events.where(F.col("event_type") == "order_created").select(
        "order_id", F.col("occurred_at").alias("created_at")
    )
    horizon = int(latency_horizon.total_seconds())
    approvals = (
        silver.where(F.col("event_type") == "payment_approved")
        .join(created_now, "order_id")
        .where(
            (F.col("occurred_at") >= F.col("created_at"))
            & (
                F.col("occurred_at")
                <= F.col("created_at") + F.expr(f"INTERVAL {horizon} SECONDS")
            )
        )
        .select("occurred_at")
    )
    return windows_of(batch_events).unionByName(windows_of(approvals)).distinct()


def compute_kpis(
    silver: DataFrame,
    windows: DataFrame,
    bounds: tuple[datetime, datetime],
    watermark: datetime | None,
    updated_at: datetime,
    latency_horizon: timedelta,
) -> DataFrame:
    """KPI rows (the ``gold.order_kpis`` shape) for ``windows``.

    ``bounds`` is the [earliest start, latest end) of ``windows``; it limits the Silver
    scan (Delta skips files by ``occurred_at`` statistics).
    """
    low, high = bounds
    horizon = int(latency_horizon.total_seconds())
    in_range = silver.where(
        (F.col("occurred_at") >= low) & (F.col("occurred_at") < high)
    )
    created = (
        silver.where(
            (F.col("event_type") == "order_created")
            & (
                F.col("occurred_at")
                >= F.lit(low) - F.expr(f"INTERVAL {horizon} SECONDS")
            )
            & (F.col("occurred_at") < high)
        )
        .groupBy("order_id")
        .agg(F.min("occurred_at").alias("created_at"))
    )
    latency = (F.unix_micros("occurred_at") - F.unix_micros("created_at")) / 1e6
    events = in_range.join(created, "order_id", "left").withColumn(
        "approval_latency_s",
        F.when(
            (F.col("event_type") == "payment_approved")
            & (latency >= 0)
            & (latency <= horizon),
            latency,
        ),
    )
    dimension_values = F.array(
        F.struct(
            F.lit("all").alias("dimension"), F.lit("all").alias("dimension_value")
        ),
        F.struct(
            F.lit("region").alias("dimension"), F.col("region").alias("dimension_value")
        ),
        F.struct(
            F.lit("channel").alias("dimension"),
            F.col("channel").alias("dimension_value"),
        ),
        F.struct(
            F.lit("payment_method").alias("dimension"),
            F.coalesce(F.col("payment_method"), F.lit(UNKNOWN)).alias(
                "dimension_value"
            ),
        ),
    )
    exploded = (
        events.withColumn("w", F.explode(_grain_windows(F.col("occurred_at"))))
        .withColumn("d", F.explode(dimension_values))
        .select("*", "w.*", "d.*")
        .join(F.broadcast(windows), ["grain", "window_start", "window_end"])
        .withColumn(
            "is_late",
            F.coalesce(
                F.col("window_end") <= F.col("watermark_at_arrival"), F.lit(False)
            ),
        )
    )
    on_time = ~F.col("is_late")

    def count_of(event_type: str) -> Column:
        return F.count(F.when(on_time & (F.col("event_type") == event_type), True))

    created_amount = F.when(
        on_time & (F.col("event_type") == "order_created"),
        F.col("amount").cast("double"),
    )
    on_time_latency = F.when(on_time, F.col("approval_latency_s"))
    aggregated = exploded.groupBy(
        "window_start", "window_end", "grain", "dimension", "dimension_value"
    ).agg(
        count_of("order_created").alias("orders_created"),
        count_of("order_cancelled").alias("orders_cancelled"),
        count_of("payment_approved").alias("payments_approved"),
        count_of("payment_failed").alias("payments_failed"),
        F.coalesce(F.sum(created_amount), F.lit(0.0)).alias("gmv"),
        F.percentile(on_time_latency, 0.5).alias("approval_latency_p50_s"),
        F.percentile(on_time_latency, 0.95).alias("approval_latency_p95_s"),
        F.count_distinct(F.when(on_time, F.col("customer_id"))).alias(
            "distinct_customers"
        ),
        F.count(F.when(F.col("is_late"), True)).alias("late_events"),
    )
    payments = F.col("payments_approved") + F.col("payments_failed")
    final = (
        F.col("window_end") <= F.lit(watermark)
        if watermark is not None
        else F.lit(False)
    )
    return aggregated.select(
        "window_start",
        "window_end",
        "grain",
        "dimension",
        "dimension_value",
        "orders_created",
        "orders_cancelled",
        "payments_approved",
        "payments_failed",
        "gmv",
        _ratio(F.col("gmv"), F.col("orders_created")).alias("avg_ticket"),
        _ratio(F.col("orders_cancelled"), F.col("orders_created")).alias(
            "cancellation_rate"
        ),
        _ratio(F.col("payments_failed"), payments).alias("payment_failure_rate"),
        "approval_latency_p50_s",
        "approval_latency_p95_s",
        "distinct_customers",
        "late_events",
        final.alias("is_final"),
        F.lit(updated_at).cast("timestamp").alias("updated_at"),
    )


def _ratio(numerator: Column, denominator: Column) -> Column:
    return F.when(denominator > 0, numerator.cast("double") / denominator)
