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
KPI_INPUTS = (
    "event_type",
    "occurred_at",
    "order_id",
    "region",
    "channel",
    "payment_method",
    "customer_id",
    "amount",
    "watermark_at_arrival",
)
"""The Silver columns that :func:`affected_windows` and :func:`compute_kpis` read."""


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


def kpi_inputs(
    silver: DataFrame,
    earliest: datetime,
    latest: datetime,
    latency_horizon: timedelta,
) -> DataFrame:
    """The slice of Silver that the KPIs of a batch's windows can depend on.

    ``earliest`` and ``latest`` bound the batch's event times. The windows the batch
    touches (:func:`affected_windows`) start no earlier than ``earliest`` less the
    longest grain and end no later than ``latest`` plus the latency horizon and the
    longest grain; :func:`compute_kpis` reaches back a further latency horizon for
    order creations. Filtering on exactly that range (and the matching ``event_date``
    partitions, a day wider either side so the session time zone cannot matter)
    lets the batch read Silver once and hand the same frame to both functions,
    whose own filters then give the same rows as on the whole table.
    """
    reach = latency_horizon + timedelta(seconds=max(GRAINS.values()))
    low, high = F.lit(earliest - reach), F.lit(latest + reach)
    return silver.where(
        (F.col("event_date") >= F.date_sub(F.to_date(low), 1))
        & (F.col("event_date") <= F.date_add(F.to_date(high), 1))
        & (F.col("occurred_at") >= low)
        & (F.col("occurred_at") <= high)
    ).select(*KPI_INPUTS)


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
    # Keep only the events of the wanted windows before fanning each out to its four
    # dimensions: the range holds every event between the first and last window.
    exploded = (
        events.withColumn("w", F.explode(_grain_windows(F.col("occurred_at"))))
        .select("*", "w.*")
        .join(F.broadcast(windows), ["grain", "window_start", "window_end"])
        .withColumn("d", F.explode(dimension_values))
        .select("*", "d.*")
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

    # Summed as decimals and converted once: a sum of doubles depends on the order
    # rows arrive in, which changes with how Silver's files were written.
    created_amount = F.when(
        on_time & (F.col("event_type") == "order_created"), F.col("amount")
    )
    on_time_latency = F.when(on_time, F.col("approval_latency_s"))
    aggregated = exploded.groupBy(
        "window_start", "window_end", "grain", "dimension", "dimension_value"
    ).agg(
        count_of("order_created").alias("orders_created"),
        count_of("order_cancelled").alias("orders_cancelled"),
        count_of("payment_approved").alias("payments_approved"),
        count_of("payment_failed").alias("payments_failed"),
        F.coalesce(F.sum(created_amount).cast("double"), F.lit(0.0)).alias("gmv"),
        F.percentile(on_time_latency, 0.5).alias("approval_latency_p50_s"),
        F.percentile(on_time_latency, 0.95).alias("approval_latency_p95_s"),
        # size(collect_set) counts the distinct non-null values as count_distinct
        # does, without the row expansion Spark plans for a distinct aggregate next
        # to the percentiles.
        F.size(F.collect_set(F.when(on_time, F.col("customer_id")))).alias(
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
