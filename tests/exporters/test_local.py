"""With no Azure configuration the demo still shows everything: readable console
lines and JSON lines files under the data directory."""

from __future__ import annotations

import io
import json
from pathlib import Path

from exporters import build_exporters, load_config
from exporters.cli import main as cli_main
from tests.exporters.conftest import (
    FakeClock,
    health_record,
    kpi_row,
    notification,
    transition_row,
)


def read_jsonl(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_default_writes_files_and_prints_readable_lines(tmp_path: Path) -> None:
    console = io.StringIO()
    config = load_config({})
    assert not config.uses_azure
    hub = build_exporters(config, tmp_path, FakeClock(), console=console)
    hub.publish_alerts(
        [transition_row("firing")], [notification(receivers=("oncall-pagerduty",))]
    )
    hub.publish_kpis([kpi_row(0), kpi_row(0, "region", "SP")])
    hub.publish_health(health_record())
    hub.drain()

    exports = tmp_path / "exports"
    (alert,) = read_jsonl(exports / "alerts.jsonl")
    assert alert["State"] == "firing"
    assert [k["DimensionValue"] for k in read_jsonl(exports / "kpis.jsonl")] == [
        "all",
        "SP",
    ]
    assert read_jsonl(exports / "health.jsonl")[0]["BatchId"] == 7
    (sent,) = read_jsonl(exports / "notifications.jsonl")
    assert sent["idempotency_key"] == "fp-pay-sp:firing"

    lines = console.getvalue().splitlines()
    assert any(
        line.startswith("[FIRING] CRITICAL PaymentFailureRateHigh")
        and "value 0.12" not in line
        and "0.12 (threshold 0.05)" in line
        and "runbook https://runbooks.example.com/payments" in line
        for line in lines
    )
    kpi_lines = [line for line in lines if line.startswith("KPI ")]
    assert kpi_lines == [
        "KPI 1m 2025-03-01T11:58:00.000000Z: orders 120, GMV 23,456.78 BRL, "
        "cancelled 2.5%, payment failures 6.0%, approval p95 -"
    ]


def test_background_thread_delivers_and_close_leaves_nothing_pending(
    tmp_path: Path,
) -> None:
    console = io.StringIO()
    hub = build_exporters(load_config({}), tmp_path, FakeClock(), console=console)
    hub.start(interval_s=0.05)
    hub.publish_alerts([], [notification(receivers=("console",))])
    hub.close()
    assert hub.outbox.pending_count() == 0
    assert "[FIRING]" in console.getvalue()


def test_status_verb_reports_queues(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    hub = build_exporters(load_config({}), tmp_path, FakeClock(), console=io.StringIO())
    hub.publish_alerts([], [notification(receivers=("console",))])
    assert cli_main(["exporters", "--data-dir", str(tmp_path), "status"]) == 0
    out = capsys.readouterr().out
    assert "console" in out
    assert out.splitlines()[1].split()[1] == "1"
