"""Gold KPI samples, the pipeline status, and the catalogue of KPI and dimension names.

A :class:`KpiSample` mirrors one row of ``gold.order_kpis``. The streaming job
collects Gold rows as plain dicts and calls :meth:`KpiSample.from_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from alert_rules.errors import SampleError

GRAINS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
}

BRAZIL_STATES: tuple[str, ...] = (
    "AC", "AL", "AP", "AM", "BA", "CE", "DF", "ES", "GO", "MA", "MT", "MS", "MG", "PA",
    "PB", "PR", "PE", "PI", "RJ", "RN", "RS", "RO", "RR", "SC", "SP", "SE", "TO",
)  # fmt: skip

DIMENSIONS: dict[str, tuple[str, ...]] = {
    "all": ("all",),
    "region": BRAZIL_STATES,
    "channel": ("app", "web", "store", "marketplace"),
    "payment_method": (
        "pix",
        "credit_card",
        "debit_card",
        "boleto",
        "voucher",
        "unknown",
    ),
}


class KpiKind(Enum):
    """What a KPI measures; decides which checks a threshold must pass."""

    COUNT = "count"
    AMOUNT = "amount"
    RATIO = "ratio"
    SECONDS = "seconds"


@dataclass(frozen=True)
class KpiInfo:
    """A KPI rules may name: its kind and the count that measures its volume."""

    kind: KpiKind
    volume_kpi: str | None


KPIS: dict[str, KpiInfo] = {
    "orders_created": KpiInfo(KpiKind.COUNT, "orders_created"),
    "orders_cancelled": KpiInfo(KpiKind.COUNT, "orders_cancelled"),
    "payments_approved": KpiInfo(KpiKind.COUNT, "payments_approved"),
    "payments_failed": KpiInfo(KpiKind.COUNT, "payments_failed"),
    # Not a Gold column: payments_approved + payments_failed, the denominator of
    # payment_failure_rate, so a volume guard can name it.
    "payments_attempted": KpiInfo(KpiKind.COUNT, "payments_attempted"),
    "gmv": KpiInfo(KpiKind.AMOUNT, "orders_created"),
    "avg_ticket": KpiInfo(KpiKind.AMOUNT, "orders_created"),
    "cancellation_rate": KpiInfo(KpiKind.RATIO, "orders_created"),
    "payment_failure_rate": KpiInfo(KpiKind.RATIO, "payments_attempted"),
    "approval_latency_p50_s": KpiInfo(KpiKind.SECONDS, "payments_approved"),
    "approval_latency_p95_s": KpiInfo(KpiKind.SECONDS, "payments_approved"),
    "distinct_customers": KpiInfo(KpiKind.COUNT, "distinct_customers"),
    "late_events": KpiInfo(KpiKind.COUNT, "late_events"),
}

_INT_COLUMNS = (
    "orders_created",
    "orders_cancelled",
    "payments_approved",
    "payments_failed",
    "distinct_customers",
    "late_events",
)
_OPTIONAL_FLOAT_COLUMNS = (
    "avg_ticket",
    "cancellation_rate",
    "payment_failure_rate",
    "approval_latency_p50_s",
    "approval_latency_p95_s",
)


def as_utc(moment: datetime) -> datetime:
    """Return ``moment`` as an aware UTC datetime (naive values are taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class KpiSample:
    """One ``gold.order_kpis`` row: a window x grain x dimension value."""

    window_start: datetime
    window_end: datetime
    grain: str
    dimension: str
    dimension_value: str
    orders_created: int
    orders_cancelled: int
    payments_approved: int
    payments_failed: int
    gmv: float
    avg_ticket: float | None
    cancellation_rate: float | None
    payment_failure_rate: float | None
    approval_latency_p50_s: float | None
    approval_latency_p95_s: float | None
    distinct_customers: int
    late_events: int
    is_final: bool
    updated_at: datetime

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> KpiSample:
        """Build a sample from a Gold row dict; raise :class:`SampleError` if invalid.

        Datetimes may be naive (taken as UTC) or aware; counts must be integers.
        """
        try:
            grain = str(row["grain"])
            dimension = str(row["dimension"])
            if grain not in GRAINS:
                raise SampleError(f"Gold row has unknown grain {grain!r}")
            if dimension not in DIMENSIONS:
                raise SampleError(f"Gold row has unknown dimension {dimension!r}")
            counts: dict[str, Any] = {name: int(row[name]) for name in _INT_COLUMNS}
            ratios: dict[str, Any] = {
                name: _optional_float(row.get(name)) for name in _OPTIONAL_FLOAT_COLUMNS
            }
            return cls(
                window_start=as_utc(row["window_start"]),
                window_end=as_utc(row["window_end"]),
                grain=grain,
                dimension=dimension,
                dimension_value=str(row["dimension_value"]),
                gmv=float(row["gmv"] or 0.0),
                is_final=bool(row["is_final"]),
                updated_at=as_utc(row["updated_at"]),
                **counts,
                **ratios,
            )
        except KeyError as missing:
            raise SampleError(f"Gold row is missing column {missing}") from None
        except (TypeError, ValueError, AttributeError) as bad:
            raise SampleError(f"Gold row has a bad value: {bad}") from None

    def to_dict(self) -> dict[str, Any]:
        """The sample as a plain dict with the Gold column names."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def kpi(self, name: str) -> float | None:
        """The value of KPI ``name`` in this window (None when undefined, e.g. 0/0)."""
        if name == "payments_attempted":
            return float(self.payments_approved + self.payments_failed)
        value: float | int | None = getattr(self, name)
        return None if value is None else float(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class PipelineStatus:
    """What the streaming job knows about its own progress at an evaluation.

    ``watermark``: event time; windows ending at or before it are final.
    ``latest_event_time``: the newest event time seen so far.
    ``last_batch_at``: wall-clock time the last micro-batch completed.
    """

    watermark: datetime
    latest_event_time: datetime
    last_batch_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "watermark", as_utc(self.watermark))
        object.__setattr__(self, "latest_event_time", as_utc(self.latest_event_time))
        object.__setattr__(self, "last_batch_at", as_utc(self.last_batch_at))
