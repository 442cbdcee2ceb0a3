"""The three custom log tables, column by column, and the row → record mapping.

These declarations are the single source of truth on the Python side; the data
collection rule and tables in ``infra/azure`` declare the same columns and a
test holds the two together. Column types are the Logs Ingestion stream types
(``string``, ``long``, ``real``, ``boolean``, ``datetime``, ``dynamic``).

Records respect the service limits per field: a string longer than 64 KB (in
UTF-8) is cut, and a ``dynamic`` value whose JSON is longer is replaced by a
``{"truncated": true, "preview": ...}`` object, so one oversized annotation
never costs the whole batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from exporters.errors import ExporterError

ColumnType = Literal["string", "long", "real", "boolean", "datetime", "dynamic"]
FIELD_LIMIT_BYTES = 64 * 1024
# Room for the JSON quoting and escapes the service counts as part of the field.
_STRING_BUDGET = FIELD_LIMIT_BYTES - 1024


class RecordError(ExporterError):
    """A row cannot be turned into a record of its table."""

    retryable = False


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    # Key in the row handed over by the streaming job; None for derived columns.
    source: str | None


@dataclass(frozen=True)
class TableSchema:
    table: str
    stream: str
    time_source: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _c(name: str, type_: ColumnType, source: str | None) -> Column:
    return Column(name, type_, source)


ALERTS = TableSchema(
    table="OrderAlerts_CL",
    stream="Custom-OrderAlerts_CL",
    time_source="evaluated_at",
    columns=(
        _c("TimeGenerated", "datetime", "evaluated_at"),
        _c("AlertId", "string", "alert_id"),
        _c("Rule", "string", "rule"),
        _c("Severity", "string", "severity"),
        _c("Fingerprint", "string", "fingerprint"),
        _c("State", "string", "state"),
        _c("Labels", "dynamic", "labels"),
        _c("Value", "real", "value"),
        _c("Threshold", "real", "threshold"),
        _c("ActiveSince", "datetime", "active_since"),
        _c("FiredAt", "datetime", "fired_at"),
        _c("ResolvedAt", "datetime", "resolved_at"),
        _c("EvaluatedAt", "datetime", "evaluated_at"),
        _c("Summary", "string", None),
        _c("RunbookUrl", "string", None),
        _c("Annotations", "dynamic", "annotations"),
        _c("Receivers", "dynamic", "receivers"),
    ),
)

KPIS = TableSchema(
    table="OrderKpis_CL",
    stream="Custom-OrderKpis_CL",
    time_source="window_start",
    columns=(
        _c("TimeGenerated", "datetime", "window_start"),
        _c("WindowStart", "datetime", "window_start"),
        _c("WindowEnd", "datetime", "window_end"),
        _c("Grain", "string", "grain"),
        _c("Dimension", "string", "dimension"),
        _c("DimensionValue", "string", "dimension_value"),
        _c("OrdersCreated", "long", "orders_created"),
        _c("OrdersCancelled", "long", "orders_cancelled"),
        _c("PaymentsApproved", "long", "payments_approved"),
        _c("PaymentsFailed", "long", "payments_failed"),
        _c("Gmv", "real", "gmv"),
        _c("AvgTicket", "real", "avg_ticket"),
        _c("CancellationRate", "real", "cancellation_rate"),
        _c("PaymentFailureRate", "real", "payment_failure_rate"),
        _c("ApprovalLatencyP50Seconds", "real", "approval_latency_p50_s"),
        _c("ApprovalLatencyP95Seconds", "real", "approval_latency_p95_s"),
        _c("DistinctCustomers", "long", "distinct_customers"),
        _c("LateEvents", "long", "late_events"),
        _c("IsFinal", "boolean", "is_final"),
        _c("UpdatedAt", "datetime", "updated_at"),
    ),
)

HEALTH = TableSchema(
    table="OrderPipelineHealth_CL",
    stream="Custom-OrderPipelineHealth_CL",
    time_source="batch_started_at",
    columns=(
        _c("TimeGenerated", "datetime", "batch_started_at"),
        _c("BatchId", "long", "batch_id"),
        _c("BatchStartedAt", "datetime", "batch_started_at"),
        _c("BatchDurationSeconds", "real", "batch_duration_s"),
        _c("InputRows", "long", "input_rows"),
        _c("InputRowsPerSecond", "real", "input_rows_per_s"),
        _c("BronzeRows", "long", "bronze_rows"),
        _c("SilverRows", "long", "silver_rows"),
        _c("QuarantinedRows", "long", "quarantined_rows"),
        _c("QuarantineRate", "real", None),
        _c("DuplicatesDropped", "long", "duplicates_dropped"),
        _c("LateEvents", "long", "late_events"),
        _c("Watermark", "datetime", "watermark"),
        _c("WatermarkDelaySeconds", "real", "watermark_delay_s"),
    ),
)

SCHEMAS: tuple[TableSchema, ...] = (ALERTS, KPIS, HEALTH)


def quarantine_rate(row: Mapping[str, Any]) -> float | None:
    """Quarantined rows over input rows of one batch; None for an empty batch."""
    total = row.get("input_rows") or 0
    return (row.get("quarantined_rows") or 0) / total if total else None


def _alert_derived(row: Mapping[str, Any], column: str) -> Any:
    annotations = row.get("annotations") or {}
    return annotations.get({"Summary": "summary", "RunbookUrl": "runbook_url"}[column])


_DERIVED: Mapping[str, Callable[[Mapping[str, Any], str], Any]] = {
    "QuarantineRate": lambda row, _: quarantine_rate(row),
    "Summary": _alert_derived,
    "RunbookUrl": _alert_derived,
}


def to_record(schema: TableSchema, row: Mapping[str, Any]) -> dict[str, Any]:
    """One record with exactly the schema's columns, JSON-ready, within limits.

    Raises ``RecordError`` naming the table, column and value when a value has
    the wrong type or the row lacks its time column.
    """
    if row.get(schema.time_source) is None:
        raise RecordError(
            f"{schema.table}: row has no {schema.time_source!r} (needed for "
            "TimeGenerated)"
        )
    record = {}
    for column in schema.columns:
        raw = (
            _DERIVED[column.name](row, column.name)
            if column.source is None
            else row.get(column.source)
        )
        try:
            record[column.name] = _convert(column.type, raw)
        except (TypeError, ValueError) as exc:
            raise RecordError(
                f"{schema.table}.{column.name}: cannot store {raw!r} as {column.type}: "
                f"{exc}"
            ) from exc
    return record


def _convert(kind: ColumnType, value: Any) -> Any:
    if value is None:
        return None
    converters: Mapping[ColumnType, Callable[[Any], Any]] = {
        "string": _string,
        "long": _long,
        "real": _real,
        "boolean": _boolean,
        "datetime": _datetime,
        "dynamic": _dynamic,
    }
    return converters[kind](value)


def _string(value: Any) -> str:
    text = str(value)
    encoded = text.encode("utf-8")
    if len(encoded) <= _STRING_BUDGET:
        return text
    return encoded[:_STRING_BUDGET].decode("utf-8", "ignore")


def _long(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected a whole number")
    return int(value)


def _real(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    number = float(value)
    # JSON cannot carry NaN or infinity; the service would reject the batch.
    return number if math.isfinite(number) else None


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected a boolean")
    return value


def _datetime(value: Any) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError("expected a datetime")
    if value.tzinfo is None:
        raise ValueError("datetime has no time zone (expected UTC)")
    return (
        value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def _dynamic(value: Any) -> Any:
    if isinstance(value, Mapping):
        value = {str(k): v for k, v in value.items()}
    elif isinstance(value, list | tuple):
        value = list(value)
    text = json.dumps(value, default=str, allow_nan=False)
    if len(text.encode("utf-8")) <= _STRING_BUDGET:
        return json.loads(text)
    return {"truncated": True, "preview": _string(text[: _STRING_BUDGET // 4])}
