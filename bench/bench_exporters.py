"""Exporter throughput against loopback HTTPS servers (a benchmark, not a test).

Prints: records per second through the real Logs Ingestion SDK, notifications
per second through the outbox to a webhook (enqueue with fsync + delivery), and
the time from an alert row handed to ``publish_alerts`` to its delivery by the
background thread (median and p95).

    .venv/bin/python -m bench.bench_exporters
"""

from __future__ import annotations

import io
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import trustme

from exporters import ExporterHub, build_exporters, load_config
from tests.exporters.conftest import (
    ReceiverServer,
    StaticCredential,
    kpi_row,
    notification,
)


def clock() -> datetime:
    return datetime.now(UTC)


def bench_logs(server: ReceiverServer, ca_bundle: Path, data_dir: Path) -> float:
    config = load_config(
        {
            "ORDERPULSE_LOGS_ENDPOINT": server.url,
            "ORDERPULSE_LOGS_DCR_ID": "dcr-bench",
            "ORDERPULSE_EXPORTERS_CA_BUNDLE": str(ca_bundle),
        }
    )
    hub = build_exporters(config, data_dir, clock, credential=StaticCredential("t"))
    rows = [kpi_row(i % 1440, "region", f"S{i % 27}") for i in range(50_000)]
    start = time.perf_counter()
    hub.publish_kpis(rows)
    hub.drain()
    elapsed = time.perf_counter() - start
    return len(rows) / elapsed


def webhook_hub(server: ReceiverServer, ca_bundle: Path, data_dir: Path) -> ExporterHub:
    config = load_config(
        {
            "ORDERPULSE_RECEIVERS": "hook",
            "ORDERPULSE_RECEIVER_HOOK_TYPE": "webhook",
            "ORDERPULSE_RECEIVER_HOOK_URL": f"{server.url}/hook",
            "ORDERPULSE_EXPORTERS_CA_BUNDLE": str(ca_bundle),
        }
    )
    return build_exporters(config, data_dir, clock, console=io.StringIO())


def bench_notifications(
    server: ReceiverServer, ca_bundle: Path, data_dir: Path
) -> tuple[float, float]:
    hub = webhook_hub(server, ca_bundle, data_dir)
    batch = [
        notification(fingerprint=f"fp-{i}", key=f"k-{i}", receivers=("hook",))
        for i in range(1000)
    ]
    start = time.perf_counter()
    hub.publish_alerts([], batch)
    enqueued = time.perf_counter()
    hub.drain()
    done = time.perf_counter()
    return len(batch) / (enqueued - start), len(batch) / (done - start)


def bench_latency(
    server: ReceiverServer, ca_bundle: Path, data_dir: Path
) -> list[float]:
    hub = webhook_hub(server, ca_bundle, data_dir)
    hub.start(interval_s=1.0)
    latencies = []
    for i in range(200):
        before = len(server.received)
        start = time.perf_counter()
        hub.publish_alerts([], [notification(key=f"lat-{i}", receivers=("hook",))])
        while len(server.received) == before:
            time.sleep(0.0002)
        latencies.append(time.perf_counter() - start)
    hub.close()
    return latencies


def main() -> None:
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca_bundle = root / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_bundle))
        logs_server = ReceiverServer(ca, success_status=204)
        hook_server = ReceiverServer(ca)
        try:
            rows_per_s = bench_logs(logs_server, ca_bundle, root / "logs")
            enqueue_per_s, end_to_end_per_s = bench_notifications(
                hook_server, ca_bundle, root / "notify"
            )
            latencies = bench_latency(hook_server, ca_bundle, root / "latency")
        finally:
            logs_server.close()
            hook_server.close()
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(f"logs ingestion (KPI rows, SDK, gzip, HTTPS): {rows_per_s:,.0f} records/s")
    print(f"notifications enqueued (durable, fsync):      {enqueue_per_s:,.0f} /s")
    print(f"notifications enqueued + delivered (webhook): {end_to_end_per_s:,.0f} /s")
    print(
        "alert row -> webhook delivery (background thread): "
        f"median {statistics.median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"
    )
    print(f"threads alive at end: {threading.active_count()}")


if __name__ == "__main__":
    main()
