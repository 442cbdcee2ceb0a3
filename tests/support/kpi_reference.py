"""An independent computation of the Gold KPIs in plain Python.

It shares no code with streaming.gold: it works on the generator's OrderEvent objects
(the ground truth of what was sent), deduplicates by event_id, buckets events by window
and computes the KPIs the way DESIGN.md defines them. Tests compare Gold against it.

Percentiles use linear interpolation between closest ranks (the definition of Spark's
exact ``percentile``), so latencies are compared to within float rounding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from streaming.events import OrderEvent

GRAIN_SECONDS = {"1m": 60, "5m": 300}
LATENCY_HORIZON = timedelta(hours=2)

KpiKey = tuple[str, datetime, str, str]


def window_start(moment: datetime, seconds: int) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class _Bucket:
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    gmv: float = 0.0
    latencies: list[float] = field(default_factory=list)
    customers: set[str] = field(default_factory=set)


def reference_kpis(events: Iterable[OrderEvent]) -> dict[KpiKey, dict[str, Any]]:
    unique: dict[str, OrderEvent] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    created_at: dict[str, datetime] = {}
    for event in unique.values():
        if event.event_type == "order_created":
            moment = event.occurred_at.astimezone(UTC)
            if event.order_id not in created_at or moment < created_at[event.order_id]:
                created_at[event.order_id] = moment

    buckets: dict[KpiKey, _Bucket] = defaultdict(_Bucket)
    for event in unique.values():
        moment = event.occurred_at.astimezone(UTC)
        latency = None
        if event.event_type == "payment_approved" and event.order_id in created_at:
            seconds = (moment - created_at[event.order_id]).total_seconds()
            if 0 <= seconds <= LATENCY_HORIZON.total_seconds():
                latency = seconds
        dimensions = (
            ("all", "all"),
            ("region", event.region),
            ("channel", event.channel),
            ("payment_method", event.payment_method or "unknown"),
        )
        for grain, seconds in GRAIN_SECONDS.items():
            start = window_start(moment, seconds)
            for dimension, value in dimensions:
                bucket = buckets[(grain, start, dimension, value)]
                bucket.counts[event.event_type] += 1
                if event.event_type == "order_created" and event.amount is not None:
                    bucket.gmv += float(event.amount)
                if latency is not None:
                    bucket.latencies.append(latency)
                if event.customer_id:
                    bucket.customers.add(event.customer_id)
    return {key: _kpis(bucket) for key, bucket in buckets.items()}


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _kpis(bucket: _Bucket) -> dict[str, Any]:
    created = bucket.counts["order_created"]
    approved = bucket.counts["payment_approved"]
    failed = bucket.counts["payment_failed"]
    cancelled = bucket.counts["order_cancelled"]
    return {
        "orders_created": created,
        "orders_cancelled": cancelled,
        "payments_approved": approved,
        "payments_failed": failed,
        "gmv": bucket.gmv,
        "avg_ticket": _ratio(bucket.gmv, created),
        "cancellation_rate": _ratio(cancelled, created),
        "payment_failure_rate": _ratio(failed, approved + failed),
        "approval_latency_p50_s": percentile(bucket.latencies, 0.5),
        "approval_latency_p95_s": percentile(bucket.latencies, 0.95),
        "distinct_customers": len(bucket.customers),
        "late_events": 0,
    }


def kpi_mismatches(
    gold: dict[Any, dict[str, Any]], expected: dict[KpiKey, dict[str, Any]]
) -> list[tuple[Any, str, Any, Any]]:
    """(key, KPI, Gold value, expected value) for every KPI that differs.

    Floats are compared to 1e-9 relative / 1e-6 absolute: sums are added in another
    order, and percentiles are exact in both computations.
    """
    return [
        (key, name, gold[key][name], value)
        for key, kpis in expected.items()
        for name, value in kpis.items()
        if not _close(gold[key][name], value)
    ]


def _close(actual: Any, expected: Any) -> bool:
    if expected is None or actual is None:
        return actual is expected
    if isinstance(expected, float):
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-6)
    return bool(actual == expected)
