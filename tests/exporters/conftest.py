"""Loopback HTTPS receivers for the exporter tests.

``ReceiverServer`` is a real HTTPS server on 127.0.0.1 with a certificate from a
CA made by trustme for the test run. It records every request (path, headers,
body un-gzipped) and can be told to misbehave for the next requests: answer a
status (with headers), drop the connection, or stall past the client timeout.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from azure.core.credentials import AccessToken

from exporters.models import AlertNotification


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fault:
    """What to do instead of succeeding, for one request."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    stall_s: float = 0.0


class ReceiverServer:
    def __init__(self, ca: trustme.CA, success_status: int = 200) -> None:
        self.received: list[Received] = []
        self.faults: deque[Fault] = deque()
        self.down = False
        self.success_status = success_status
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                body = raw
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(raw)
                with server.lock:
                    fault = server.faults.popleft() if server.faults else None
                    if server.down:
                        fault = Fault(status=503)
                if fault and fault.reset:
                    # RST instead of FIN: the client sees "connection reset".
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    return
                if fault and fault.stall_s:
                    time.sleep(fault.stall_s)
                if fault and fault.status:
                    self._answer(fault.status, fault.headers, b'{"error":"injected"}')
                    return
                with server.lock:
                    server.received.append(
                        Received(
                            "POST", self.path, dict(self.headers.items()), raw, body
                        )
                    )
                self._answer(server.success_status, {}, server.answer_body(self.path))

            def _answer(
                self, status: int, headers: dict[str, str], body: bytes
            ) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(body)
                except (ssl.SSLError, OSError):
                    # The client gave up (timeout test): nothing to answer.
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def answer_body(self, path: str) -> bytes:
        if path.startswith("/v2.1/track"):
            return b'{"itemsReceived":1,"itemsAccepted":1,"errors":[]}'
        return b"ok" if self.success_status == 200 else b""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        """Wait until ``count`` requests were recorded (a stalled one lands late)."""
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def fail_next(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class StaticCredential:
    """A TokenCredential that hands out one fixed token: the credential is not
    what these tests are about, the Authorization header it produces is."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[ReceiverServer]:
    srv = ReceiverServer(ca)
    yield srv
    srv.close()


@pytest.fixture
def server_204(ca: trustme.CA) -> Iterator[ReceiverServer]:
    srv = ReceiverServer(ca, success_status=204)
    yield srv
    srv.close()


class FakeClock:
    """Event time for the tests: moves only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


T0 = datetime(2025, 3, 1, 11, 58, tzinfo=UTC)


def notification(
    kind: str = "firing",
    *,
    fingerprint: str = "fp-pay-sp",
    key: str | None = None,
    receivers: tuple[str, ...] = ("oncall",),
    value: float | None = 0.12,
) -> AlertNotification:
    return AlertNotification(
        idempotency_key=key or f"{fingerprint}:{kind}",
        kind=kind,  # type: ignore[arg-type]
        fingerprint=fingerprint,
        rule="PaymentFailureRateHigh",
        severity="critical",
        labels={"dimension": "region", "dimension_value": "SP"},
        annotations={
            "summary": "Payment failures above 5% in SP",
            "description": "payment_failure_rate over 5m",
            "runbook_url": "https://runbooks.example.com/payments",
        },
        value=value,
        threshold=0.05,
        starts_at=T0,
        ends_at=T0 + timedelta(minutes=7) if kind == "resolved" else None,
        receivers=receivers,
    )


def transition_row(state: str = "firing", alert_id: str = "a-1") -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "rule": "PaymentFailureRateHigh",
        "severity": "critical",
        "fingerprint": "fp-pay-sp",
        "labels": {"dimension": "region", "dimension_value": "SP"},
        "state": state,
        "value": 0.12,
        "threshold": 0.05,
        "active_since": T0,
        "fired_at": T0 + timedelta(minutes=1),
        "resolved_at": T0 + timedelta(minutes=7) if state == "resolved" else None,
        "evaluated_at": T0 + timedelta(minutes=1),
        "annotations": {
            "summary": "Payment failures above 5% in SP",
            "runbook_url": "https://runbooks.example.com/payments",
        },
        "receivers": ["oncall"],
    }


def kpi_row(
    minute: int = 0, dimension: str = "all", value: str = "all"
) -> dict[str, Any]:
    start = T0 + timedelta(minutes=minute)
    return {
        "window_start": start,
        "window_end": start + timedelta(minutes=1),
        "grain": "1m",
        "dimension": dimension,
        "dimension_value": value,
        "orders_created": 120,
        "orders_cancelled": 3,
        "payments_approved": 110,
        "payments_failed": 7,
        "gmv": 23456.78,
        "avg_ticket": 195.47,
        "cancellation_rate": 0.025,
        "payment_failure_rate": 0.06,
        "approval_latency_p50_s": 1.5,
        "approval_latency_p95_s": None,
        "distinct_customers": 101,
        "late_events": 2,
        "is_final": True,
        "updated_at": start + timedelta(minutes=2),
    }


def health_record(batch_id: int = 7) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "batch_started_at": T0,
        "batch_duration_s": 2.5,
        "input_rows": 1000,
        "input_rows_per_s": 400.0,
        "bronze_rows": 1000,
        "silver_rows": 980,
        "quarantined_rows": 15,
        "duplicates_dropped": 5,
        "late_events": 3,
        "watermark": T0 - timedelta(minutes=2),
        "watermark_delay_s": 120.0,
    }
