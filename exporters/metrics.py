"""OpenTelemetry metrics: KPI gauges, alert transition counters, pipeline health.

Names follow the OpenTelemetry conventions: lower-case, dot-separated
namespaces, units in the instrument's ``unit`` (UCUM) rather than in the name,
ratios with unit ``1``, counters without a ``_total`` suffix. Attributes use
the ``orderpulse.`` namespace. The meter provider is private to the exporter
(never the global one), so the streaming job's own telemetry set-up is left
alone; in Azure the exporter is ``AzureMonitorMetricExporter`` (the exporter
behind ``azure-monitor-opentelemetry``), which posts to ``/v2.1/track``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from azure.core.credentials import TokenCredential
from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from exporters.config import MetricsConfig
from exporters.schemas import quarantine_rate

# KPI column -> (instrument name, unit, description)
KPI_GAUGES: Mapping[str, tuple[str, str, str]] = {
    "orders_created": (
        "orderpulse.orders.created",
        "{order}",
        "Orders created in the window",
    ),
    "orders_cancelled": (
        "orderpulse.orders.cancelled",
        "{order}",
        "Orders cancelled in the window",
    ),
    "payments_approved": (
        "orderpulse.payments.approved",
        "{payment}",
        "Payments approved in the window",
    ),
    "payments_failed": (
        "orderpulse.payments.failed",
        "{payment}",
        "Payments failed in the window",
    ),
    "gmv": ("orderpulse.orders.gmv", "BRL", "Gross merchandise value of the window"),
    "avg_ticket": ("orderpulse.orders.ticket.average", "BRL", "Average order value"),
    "cancellation_rate": (
        "orderpulse.orders.cancellation.ratio",
        "1",
        "Cancelled over created",
    ),
    "payment_failure_rate": (
        "orderpulse.payments.failure.ratio",
        "1",
        "Failed over attempted payments",
    ),
    "approval_latency_p50_s": (
        "orderpulse.payments.approval.latency.p50",
        "s",
        "Median order-to-approval time",
    ),
    "approval_latency_p95_s": (
        "orderpulse.payments.approval.latency.p95",
        "s",
        "95th percentile order-to-approval time",
    ),
    "distinct_customers": (
        "orderpulse.customers.distinct",
        "{customer}",
        "Distinct customers in the window",
    ),
    "late_events": (
        "orderpulse.events.late",
        "{event}",
        "Events that arrived after their window closed",
    ),
}

HEALTH_GAUGES: Mapping[str, tuple[str, str, str]] = {
    "input_rows_per_s": (
        "orderpulse.pipeline.input.rate",
        "{row}/s",
        "Rows read per second in the batch",
    ),
    "watermark_delay_s": (
        "orderpulse.pipeline.watermark.delay",
        "s",
        "Processing time minus watermark",
    ),
    "quarantine_rate": (
        "orderpulse.pipeline.quarantine.ratio",
        "1",
        "Quarantined over input rows in the batch",
    ),
}

HEALTH_COUNTERS: Mapping[str, tuple[str, str, str]] = {
    "input_rows": ("orderpulse.pipeline.input.rows", "{row}", "Rows read"),
    "quarantined_rows": (
        "orderpulse.pipeline.quarantined.rows",
        "{row}",
        "Rows quarantined",
    ),
    "duplicates_dropped": (
        "orderpulse.pipeline.duplicates.dropped",
        "{row}",
        "Duplicate events dropped",
    ),
}


class MetricsRecorder:
    """Records KPI, alert and pipeline-health metrics into one exporter."""

    def __init__(self, exporter: MetricExporter, export_interval_s: float) -> None:
        reader = PeriodicExportingMetricReader(
            exporter, export_interval_millis=export_interval_s * 1000
        )
        self._provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": "orderpulse"}),
        )
        meter = self._provider.get_meter("orderpulse.exporters")
        self._kpis = {
            key: meter.create_gauge(name, unit=unit, description=text)
            for key, (name, unit, text) in KPI_GAUGES.items()
        }
        self._health_gauges = {
            key: meter.create_gauge(name, unit=unit, description=text)
            for key, (name, unit, text) in HEALTH_GAUGES.items()
        }
        self._health_counters = {
            key: meter.create_counter(name, unit=unit, description=text)
            for key, (name, unit, text) in HEALTH_COUNTERS.items()
        }
        self._batch_duration = meter.create_histogram(
            "orderpulse.pipeline.batch.duration",
            unit="s",
            description="Micro-batch duration",
        )
        self._transitions = meter.create_counter(
            "orderpulse.alerts.transitions",
            unit="{transition}",
            description="Alert transitions by rule, severity and state",
        )

    def record_kpis(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            attributes = {
                "orderpulse.kpi.grain": str(row.get("grain")),
                "orderpulse.kpi.dimension": str(row.get("dimension")),
                "orderpulse.kpi.dimension_value": str(row.get("dimension_value")),
            }
            for key, gauge in self._kpis.items():
                value = row.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    gauge.set(value, attributes)

    def record_alert_transitions(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self._transitions.add(
                1,
                {
                    "orderpulse.alert.rule": str(row.get("rule")),
                    "orderpulse.alert.severity": str(row.get("severity")),
                    "orderpulse.alert.state": str(row.get("state")),
                },
            )

    def record_health(self, record: Mapping[str, Any]) -> None:
        values = dict(record)
        values["quarantine_rate"] = quarantine_rate(record)
        for key, gauge in self._health_gauges.items():
            if values.get(key) is not None:
                gauge.set(float(values[key]))
        for key, counter in self._health_counters.items():
            if values.get(key):
                counter.add(int(values[key]))
        if values.get("batch_duration_s") is not None:
            self._batch_duration.record(float(values["batch_duration_s"]))

    def flush(self, timeout_s: float = 10.0) -> bool:
        return bool(self._provider.force_flush(timeout_millis=int(timeout_s * 1000)))

    def close(self) -> None:
        self._provider.shutdown()


def azure_metric_exporter(
    config: MetricsConfig,
    *,
    credential: TokenCredential | None,
    ca_bundle: Path | None,
) -> MetricExporter:
    """``AzureMonitorMetricExporter`` for the connection string, with no local
    retry storage (metrics are sampled state; the next export supersedes a lost
    one) and no statsbeat."""
    options: dict[str, Any] = {
        "connection_string": config.connection_string.reveal(),
        "disable_offline_storage": True,
    }
    if credential is not None:
        options["credential"] = credential
    if ca_bundle is not None:
        options["connection_verify"] = str(ca_bundle)
    exporter: MetricExporter = AzureMonitorMetricExporter(**options)
    return exporter
