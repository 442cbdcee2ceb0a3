"""The one facade the streaming job calls.

::

    exporter = build_exporters(load_config(), data_dir, clock)
    exporter.start()                                  # background delivery
    exporter.publish_alerts(transition_rows, notifications)   # durable on return
    exporter.publish_kpis(kpi_rows)                   # batched, best effort
    exporter.publish_health(health_record)            # batched, best effort
    exporter.close()                                  # stop, flush metrics

``publish_alerts`` writes every message to the outbox before returning and
never talks to the network, so a slow receiver cannot slow the job. Delivery
happens in ``pump(now)``: alert messages first, then KPI and health batches, so
those never hold alerts back. ``start()`` runs ``pump`` on a daemon thread,
woken at once by ``publish_alerts`` and otherwise every ``interval_s`` or when
the earliest backoff ends; callers that prefer to drive it (tests, a timer in
the job) call ``pump`` themselves and never ``start``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential

from exporters.config import ExporterConfig, load_config
from exporters.delivery import Dispatcher, PumpReport
from exporters.http import tls_context
from exporters.local import LocalFiles
from exporters.logs_ingestion import (
    AlertRowsSender,
    BufferedStream,
    LogsUploader,
    make_client,
)
from exporters.metrics import MetricsRecorder, azure_metric_exporter
from exporters.models import AlertNotification
from exporters.notifiers import ConsoleSender, Sender, build_sender
from exporters.outbox import Outbox, QueueCounts
from exporters.schemas import ALERTS, HEALTH, KPIS, to_record

log = logging.getLogger(__name__)

CONSOLE = "console"
LOGS_ALERTS_RECEIVER = "azure-logs-alerts"
Clock = Callable[[], datetime]


class ExporterHub:
    """Routes alerts, KPIs and health to every configured destination."""

    def __init__(
        self,
        config: ExporterConfig,
        outbox: Outbox,
        senders: Mapping[str, Sender],
        clock: Clock,
        *,
        local: LocalFiles | None,
        uploader: LogsUploader | None,
        metrics: MetricsRecorder | None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self._senders = dict(senders)
        self._clock = clock
        self._local = local
        self._metrics = metrics
        self._dispatcher = Dispatcher(outbox, senders, config.retry, rng=rng)
        self._streams: list[BufferedStream] = []
        self._alerts_stream: str | None = None
        if uploader is not None and config.logs is not None:
            self._alerts_stream = config.logs.alerts_stream
            self._kpis = BufferedStream(
                config.logs.kpis_stream, uploader, config.retry, rng=rng
            )
            self._health = BufferedStream(
                config.logs.health_stream, uploader, config.retry, rng=rng
            )
            self._streams = [self._kpis, self._health]
        self._pump_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_unrouted: set[str] = set()

    # -- what the job calls --------------------------------------------------------

    def publish_alerts(
        self,
        transition_rows: Sequence[Mapping[str, Any]],
        notifications: Sequence[AlertNotification],
    ) -> None:
        """Store the transitions and notifications durably, then return.

        Each notification is queued once per receiver it names (a name with no
        configuration goes to the console, with a warning, rather than being
        lost). Raises ``RecordError`` before storing anything if a row does not
        fit the alerts table.
        """
        now = self._clock()
        records = [to_record(ALERTS, row) for row in transition_rows]
        if records and self._alerts_stream is not None:
            self.outbox.enqueue(
                LOGS_ALERTS_RECEIVER,
                idempotency_key=_batch_key(records),
                fingerprint=None,
                payload={
                    "type": "log_rows",
                    "stream": self._alerts_stream,
                    "rows": records,
                },
                now=now,
            )
        for notification in notifications:
            self._enqueue_notification(notification, now)
        if self._local is not None:
            self._local.append("alerts", records)
        if self._metrics is not None:
            self._metrics.record_alert_transitions(transition_rows)
        for row in transition_rows:
            log.info(
                "alert_transition rule=%s state=%s fingerprint=%s severity=%s",
                row.get("rule"),
                row.get("state"),
                row.get("fingerprint"),
                row.get("severity"),
            )
        self._wake.set()

    def publish_kpis(self, kpi_rows: Sequence[Mapping[str, Any]]) -> None:
        """Queue KPI rows for the KPI table, metrics and local files; never blocks
        on the network."""
        records = [to_record(KPIS, row) for row in kpi_rows]
        if self._streams:
            self._kpis.add(records)
        if self._metrics is not None:
            self._metrics.record_kpis(kpi_rows)
        if self._local is not None:
            self._local.append("kpis", records)
            self._local.print_kpis(records)

    def publish_health(self, record: Mapping[str, Any]) -> None:
        """Queue one micro-batch's health record (same destinations as KPIs)."""
        row = to_record(HEALTH, record)
        if self._streams:
            self._health.add([row])
        if self._metrics is not None:
            self._metrics.record_health(record)
        if self._local is not None:
            self._local.append("health", [row])

    # -- delivery ------------------------------------------------------------------

    def pump(self, now: datetime | None = None) -> PumpReport:
        """Deliver what is due: alerts first, then KPI and health batches."""
        moment = now or self._clock()
        with self._pump_lock:
            report = self._dispatcher.pump(moment)
            for stream in self._streams:
                stream.flush(moment)
        return report

    def drain(self, max_rounds: int = 1000) -> PumpReport:
        """Pump until nothing more is due now (or ``max_rounds``); for the end of
        a demo run and for tests."""
        report = self.pump()
        for _ in range(max_rounds):
            if not report.more_due:
                break
            report = self.pump()
        return report

    def start(self, interval_s: float = 1.0) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run,
            args=(interval_s,),
            name="orderpulse-exporters",
            daemon=True,
        )
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the delivery thread, try one last pump, flush metrics. Anything
        undelivered stays in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        try:
            self.pump()
        except Exception:
            log.exception("final_pump_failed")
        if self._metrics is not None:
            self._metrics.flush(timeout_s)
            self._metrics.close()

    def flush_metrics(self, timeout_s: float = 10.0) -> bool:
        return self._metrics.flush(timeout_s) if self._metrics else True

    def status(self) -> list[QueueCounts]:
        return self.outbox.counts()

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                report = self.pump()
            except Exception:
                # A broken disk or a bug must not kill delivery for good; the
                # outbox still holds everything, so log and try again later.
                log.exception("pump_failed")
                report = PumpReport()
            if report.more_due:
                continue
            wait = interval_s
            if report.next_due_at is not None:
                wait = min(
                    wait, max(0.0, (report.next_due_at - self._clock()).total_seconds())
                )
            self._wake.wait(wait)
            self._wake.clear()

    def _enqueue_notification(
        self, notification: AlertNotification, now: datetime
    ) -> None:
        stored = replace(notification, dashboard_url=self.config.dashboard_url)
        targets: list[str] = []
        for name in notification.receivers:
            target = name if name in self._senders else CONSOLE
            if target != name and name not in self._warned_unrouted:
                self._warned_unrouted.add(name)
                log.warning(
                    "receiver_not_configured receiver=%s routed_to=console", name
                )
            if target not in targets:
                targets.append(target)
        for target in targets:
            self.outbox.enqueue(
                target,
                idempotency_key=notification.idempotency_key,
                fingerprint=notification.fingerprint,
                payload={"type": "notification", "notification": stored.to_json()},
                now=now,
            )


def build_exporters(
    config: ExporterConfig | None,
    data_dir: Path,
    clock: Clock,
    *,
    credential: TokenCredential | None = None,
    console: TextIO | None = None,
    rng: random.Random | None = None,
) -> ExporterHub:
    """Wire the exporters from configuration (``load_config()`` when None).

    With no Azure configuration the local files are on; a ``console`` receiver
    always exists. ``credential`` defaults to ``DefaultAzureCredential``
    (managed identity, workload identity, or a service principal from
    ``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``).
    """
    config = config or load_config()
    exports_dir = data_dir / "exports"
    tls = tls_context(config.ca_bundle)
    senders: dict[str, Sender] = {
        name: build_sender(
            receiver,
            tls=tls,
            timeout_s=config.http_timeout_s,
            exports_dir=exports_dir,
            stream=console,
        )
        for name, receiver in config.receivers.items()
    }
    senders.setdefault(CONSOLE, ConsoleSender(CONSOLE, exports_dir, console))
    uploader = None
    if config.logs is not None:
        credential = credential or _default_credential()
        client = make_client(
            config.logs,
            credential,
            ca_bundle=config.ca_bundle,
            timeout_s=config.http_timeout_s,
        )
        uploader = LogsUploader(client, config.logs.rule_id)
        senders[LOGS_ALERTS_RECEIVER] = AlertRowsSender(LOGS_ALERTS_RECEIVER, uploader)
    metrics = None
    if config.metrics is not None:
        exporter = azure_metric_exporter(
            config.metrics, credential=credential, ca_bundle=config.ca_bundle
        )
        metrics = MetricsRecorder(exporter, config.metrics.export_interval_s)
    local = None if config.uses_azure else LocalFiles(exports_dir, console)
    return ExporterHub(
        config,
        Outbox(data_dir / "outbox"),
        senders,
        clock,
        local=local,
        uploader=uploader,
        metrics=metrics,
        rng=rng,
    )


def _default_credential() -> TokenCredential:
    credential: TokenCredential = DefaultAzureCredential()
    return credential


def _batch_key(records: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(
            f"{record.get('AlertId')}|{record.get('State')}|{record.get('EvaluatedAt')}\n".encode()
        )
    return "alerts-" + digest.hexdigest()[:32]
