"""OpenTelemetry metrics through ``AzureMonitorMetricExporter`` to a loopback
HTTPS server implementing the Application Insights ``/v2.1/track`` endpoint."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from exporters import build_exporters, load_config
from tests.exporters.conftest import (
    FakeClock,
    ReceiverServer,
    health_record,
    kpi_row,
    transition_row,
)

IKEY = "00000000-1111-2222-3333-444444444444"


@pytest.fixture(autouse=True)
def _quiet_azure_side_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    # Statsbeat would phone Microsoft's endpoints; nothing leaves loopback.
    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")


def envelopes(server: ReceiverServer) -> list[dict[str, Any]]:
    found = []
    for request in server.received:
        if not request.path.startswith("/v2.1/track"):
            continue
        body = request.raw
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        found.extend(json.loads(body))
    return found


def test_kpi_alert_and_health_metrics_reach_the_track_endpoint(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path
) -> None:
    config = load_config(
        {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": (
                f"InstrumentationKey={IKEY};IngestionEndpoint={server.url}/"
            ),
            "ORDERPULSE_EXPORTERS_CA_BUNDLE": str(ca_bundle),
            "ORDERPULSE_METRICS_INTERVAL_S": "3600",
        }
    )
    hub = build_exporters(config, tmp_path, FakeClock(), console=io.StringIO())
    hub.publish_kpis([kpi_row(0), kpi_row(0, "region", "SP")])
    hub.publish_alerts([transition_row("firing"), transition_row("resolved")], [])
    hub.publish_health(health_record())
    assert hub.flush_metrics()

    metrics: dict[tuple[str, str], dict[str, Any]] = {}
    for envelope in envelopes(server):
        assert envelope["iKey"] == IKEY
        data = envelope["data"]
        assert data["baseType"] == "MetricData"
        (point,) = data["baseData"]["metrics"]
        properties = data["baseData"].get("properties", {})
        metrics[(point["name"], json.dumps(properties, sort_keys=True))] = {
            "value": point["value"],
            **properties,
        }
    names = {name for name, _ in metrics}
    assert {
        "orderpulse.orders.created",
        "orderpulse.payments.failure.ratio",
        "orderpulse.alerts.transitions",
        "orderpulse.pipeline.batch.duration",
        "orderpulse.pipeline.watermark.delay",
        "orderpulse.pipeline.quarantine.ratio",
    } <= names
    sp_orders = [
        m
        for (name, _), m in metrics.items()
        if name == "orderpulse.orders.created"
        and m.get("orderpulse.kpi.dimension_value") == "SP"
    ]
    assert sp_orders == [
        {
            "value": 120,
            "orderpulse.kpi.grain": "1m",
            "orderpulse.kpi.dimension": "region",
            "orderpulse.kpi.dimension_value": "SP",
        }
    ]
    transitions = {
        m["orderpulse.alert.state"]: m["value"]
        for (name, _), m in metrics.items()
        if name == "orderpulse.alerts.transitions"
    }
    assert transitions == {"firing": 1, "resolved": 1}
    # The local files are off once Azure is configured.
    assert not (tmp_path / "exports" / "kpis.jsonl").exists()
    hub.close()
