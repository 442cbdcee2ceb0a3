"""The real ``LogsIngestionClient`` against a loopback HTTPS server that answers
like the Logs Ingestion API: what arrives (stream, columns, values, gzip,
bearer token), chunking within 1 MiB, field limits, and faults."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from exporters import build_exporters, load_config
from exporters.hub import ExporterHub
from exporters.schemas import ALERTS, FIELD_LIMIT_BYTES, HEALTH, KPIS
from tests.exporters.conftest import (
    FakeClock,
    Fault,
    ReceiverServer,
    StaticCredential,
    health_record,
    kpi_row,
    transition_row,
)

DCR = "dcr-0123456789abcdef0123456789abcdef"
TOKEN = "eyJ0eXAi.test-token-do-not-leak.sig"


def logs_hub(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> ExporterHub:
    config = load_config(
        {
            "ORDERPULSE_LOGS_ENDPOINT": server.url,
            "ORDERPULSE_LOGS_DCR_ID": DCR,
            "ORDERPULSE_EXPORTERS_CA_BUNDLE": str(ca_bundle),
            "ORDERPULSE_HTTP_TIMEOUT_S": "2",
        }
    )
    return build_exporters(
        config,
        tmp_path,
        clock,
        credential=StaticCredential(TOKEN),
        console=io.StringIO(),
    )


def rows_for(server: ReceiverServer, stream: str) -> list[dict[str, Any]]:
    path = f"/dataCollectionRules/{DCR}/streams/{stream}?api-version=2023-01-01"
    return [row for r in server.received if r.path == path for row in r.json()]


def test_alerts_kpis_and_health_reach_their_streams_as_declared(
    server_204: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    server = server_204
    hub = logs_hub(server, ca_bundle, tmp_path, clock)
    hub.publish_alerts([transition_row("firing")], [])
    hub.publish_kpis([kpi_row(0), kpi_row(0, "region", "SP")])
    hub.publish_health(health_record())
    hub.drain()

    for request in server.received:
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Content-Type"] == "application/json"
    (alert,) = rows_for(server, ALERTS.stream)
    assert list(alert) == list(ALERTS.column_names)
    assert alert["TimeGenerated"] == "2025-03-01T11:59:00.000000Z"
    assert alert["State"] == "firing"
    assert alert["Value"] == 0.12
    assert alert["ResolvedAt"] is None
    assert alert["Labels"] == {"dimension": "region", "dimension_value": "SP"}
    assert alert["RunbookUrl"] == "https://runbooks.example.com/payments"
    assert alert["Receivers"] == ["oncall"]

    kpis = rows_for(server, KPIS.stream)
    assert [k["DimensionValue"] for k in kpis] == ["all", "SP"]
    assert kpis[0]["OrdersCreated"] == 120
    assert kpis[0]["IsFinal"] is True
    assert kpis[0]["ApprovalLatencyP95Seconds"] is None
    (health,) = rows_for(server, HEALTH.stream)
    assert health["QuarantineRate"] == pytest.approx(0.015)
    assert health["WatermarkDelaySeconds"] == 120.0


def test_large_batches_are_cut_into_gzip_chunks_under_one_mebibyte(
    server_204: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = logs_hub(server_204, ca_bundle, tmp_path, clock)
    rows = [kpi_row(i % 1440, "region", f"R{i:05d}" + "x" * 400) for i in range(4000)]
    hub.publish_kpis(rows)
    hub.drain()

    assert len(server_204.received) > 1
    for request in server_204.received:
        assert len(request.body) <= 1_000_000
    assert len(rows_for(server_204, KPIS.stream)) == 4000


def test_an_oversized_field_is_cut_to_the_field_limit(
    server_204: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = logs_hub(server_204, ca_bundle, tmp_path, clock)
    row = transition_row()
    row["annotations"] = {"summary": "s" * 200_000, "description": "é" * 100_000}
    hub.publish_alerts([row], [])
    hub.drain()

    (alert,) = rows_for(server_204, ALERTS.stream)
    for value in alert.values():
        assert len(json.dumps(value).encode()) <= FIELD_LIMIT_BYTES
    assert alert["Summary"].startswith("sss")
    assert alert["Annotations"]["truncated"] is True


def test_429_without_retry_after_is_retried_by_the_outbox(
    server_204: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = logs_hub(server_204, ca_bundle, tmp_path, clock)
    server_204.fail_next(Fault(status=429))
    hub.publish_alerts([transition_row()], [])

    report = hub.pump()
    assert report.failed == 1
    assert rows_for(server_204, ALERTS.stream) == []  # the SDK did not retry it
    clock.advance(60)
    hub.pump()
    assert len(rows_for(server_204, ALERTS.stream)) == 1


def test_a_failed_chunk_does_not_stop_the_others_and_only_it_is_resent(
    server_204: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = logs_hub(server_204, ca_bundle, tmp_path, clock)
    rows = []
    for i in range(40):
        row = transition_row(alert_id=f"a-{i}")
        row["annotations"] = {"description": f"{i}" + "d" * 60_000}
        rows.append(row)
    server_204.fail_next(Fault(), Fault(status=503, headers={"Retry-After": "30"}))
    hub.publish_alerts(rows, [])

    first = hub.pump()
    assert first.failed == 1
    sent_first = {r["AlertId"] for r in rows_for(server_204, ALERTS.stream)}
    assert 0 < len(sent_first) < 40
    clock.advance(31)
    hub.drain()
    ids = [r["AlertId"] for r in rows_for(server_204, ALERTS.stream)]
    assert sorted(ids) == sorted(f"a-{i}" for i in range(40))
    assert hub.outbox.pending_count() == 0


def test_kpis_are_bounded_while_down_and_never_hold_back_alerts(
    server_204: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = logs_hub(server_204, ca_bundle, tmp_path, clock)
    server_204.down = True
    for minute in range(90):
        hub.publish_kpis([kpi_row(minute, "region", f"S{i}") for i in range(600)])
        hub.pump()
        clock.advance(60)
    buffered = hub._kpis
    assert len(buffered) <= 50_000
    assert buffered.dropped == 90 * 600 - len(buffered)

    server_204.down = False
    hub.publish_alerts([transition_row()], [])
    clock.advance(3600)
    hub.pump()
    assert len(rows_for(server_204, ALERTS.stream)) == 1


def test_the_token_never_appears_in_logs_or_tables(
    server_204: ReceiverServer,
    ca_bundle: Path,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    hub = logs_hub(server_204, ca_bundle, tmp_path, clock)
    server_204.fail_next(Fault(status=401))
    hub.publish_alerts([transition_row()], [])
    hub.publish_kpis([kpi_row()])
    for _ in range(3):
        hub.drain()
        clock.advance(120)
    assert rows_for(server_204, ALERTS.stream)
    stored = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    received = "".join(r.body.decode() for r in server_204.received)
    assert TOKEN not in caplog.text
    assert TOKEN not in stored
    assert TOKEN not in received
