"""Azure Monitor custom logs through the Logs Ingestion API.

``LogsUploader`` wraps the SDK's ``LogsIngestionClient.upload``: the SDK cuts a
list into gzip chunks of at most 1 MiB; we pass an error callback so one failed
chunk does not stop the others, and turn the failures into ``DeliveryError`` /
``PartialDelivery`` carrying only the rows still owed. The SDK's own retry is
switched off: it would sleep inside the delivery thread on ``Retry-After`` and
it never retries a 429 without one; the outbox retries instead, without
blocking, honouring ``Retry-After``.

Alert transitions go through the durable outbox (``AlertRowsSender``). KPI and
health rows are best-effort: ``BufferedStream`` keeps at most ``max_rows`` in
memory, drops the oldest beyond that (counted), and uploads in batches when the
hub pumps, after the alerts.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)
from azure.monitor.ingestion import LogsIngestionClient, LogsUploadError

from exporters.config import LogsIngestionConfig, RetryPolicy
from exporters.delivery import PartialDelivery, backoff_delay
from exporters.errors import DeliveryError
from exporters.http import RETRYABLE_STATUSES, parse_retry_after
from exporters.outbox import OutboxMessage

log = logging.getLogger(__name__)

# 401/403 usually mean a role assignment that has not propagated yet, which
# takes minutes: worth retrying rather than parking.
_RETRYABLE = RETRYABLE_STATUSES | {401, 403}
# The service takes at most 1 MB per call; keep a margin below it.
CALL_LIMIT_BYTES = 1_000_000 - 16 * 1024


def make_client(
    config: LogsIngestionConfig,
    credential: TokenCredential,
    *,
    ca_bundle: Path | None,
    timeout_s: float,
) -> LogsIngestionClient:
    """The SDK client, retries off, trusting ``ca_bundle`` in addition when set."""
    options: dict[str, Any] = {
        "retry_total": 0,
        "connection_timeout": timeout_s,
        "read_timeout": timeout_s,
    }
    if ca_bundle is not None:
        options["connection_verify"] = str(ca_bundle)
    return LogsIngestionClient(config.endpoint, credential, **options)


class LogsUploader:
    """Uploads records to one data collection rule."""

    def __init__(self, client: LogsIngestionClient, rule_id: str) -> None:
        self._client = client
        self._rule_id = rule_id

    def upload(self, stream: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Send ``records``; raise ``PartialDelivery`` with what is still owed."""
        if not records:
            return
        failures: list[LogsUploadError] = []
        try:
            for batch in split_for_calls(records):
                self._client.upload(
                    rule_id=self._rule_id,
                    stream_name=stream,
                    logs=batch,
                    on_error=failures.append,
                )
        except (ClientAuthenticationError, ServiceRequestError) as exc:
            # Raised before any chunk was sent (token or connection trouble).
            raise DeliveryError(
                f"logs stream {stream}: {type(exc).__name__}: {_first_line(exc)}",
                retryable=True,
            ) from None
        if failures:
            raise self._partial(stream, failures, len(records))

    def _partial(
        self, stream: str, failures: list[LogsUploadError], total: int
    ) -> PartialDelivery:
        remaining = [row for f in failures for row in f.failed_logs]
        first = failures[0].error
        status, retry_after = _status(first)
        retryable = status is None or status in _RETRYABLE
        return PartialDelivery(
            f"logs stream {stream}: {len(remaining)} of {total} records refused "
            f"({type(first).__name__}: {_first_line(first)})",
            remaining={"type": "log_rows", "stream": stream, "rows": remaining},
            retryable=retryable,
            status=status,
            retry_after_s=retry_after,
        )


def split_for_calls(
    records: Sequence[Mapping[str, Any]], limit: int = CALL_LIMIT_BYTES
) -> Iterator[list[MutableMapping[str, Any]]]:
    """Groups of records whose JSON array stays under ``limit`` bytes.

    The SDK sizes its 1 MiB chunks by adding up each record's JSON but then
    sends them as one array, whose ", " separators and brackets it does not
    count; a chunk can end up a little over the limit. Cutting our own groups
    with the separators counted (and a margin) keeps every call within it.
    """
    batch: list[MutableMapping[str, Any]] = []
    size = 2
    for record in records:
        item = dict(record)
        item_size = len(json.dumps(item).encode("utf-8")) + 2
        if batch and size + item_size > limit:
            yield batch
            batch, size = [], 2
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def _status(error: Exception) -> tuple[int | None, float | None]:
    if isinstance(error, HttpResponseError) and error.response is not None:
        headers = getattr(error.response, "headers", {})
        return error.status_code, parse_retry_after(headers.get("Retry-After"))
    # ServiceRequestError / ServiceResponseError: no answer at all (reset,
    # timeout), retryable with no status.
    return None, None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


class AlertRowsSender:
    """The outbox receiver that writes alert transitions to their custom table."""

    def __init__(self, name: str, uploader: LogsUploader) -> None:
        self.name = name
        self._uploader = uploader

    def send(self, message: OutboxMessage) -> None:
        payload = message.payload
        self._uploader.upload(str(payload["stream"]), list(payload["rows"]))


class BufferedStream:
    """A bounded in-memory batch of records for one best-effort stream."""

    def __init__(
        self,
        stream: str,
        uploader: LogsUploader,
        policy: RetryPolicy,
        *,
        max_rows: int = 50_000,
        batch_rows: int = 5_000,
        rng: random.Random | None = None,
    ) -> None:
        self.stream = stream
        self._uploader = uploader
        self._policy = policy
        self._rows: collections.deque[Mapping[str, Any]] = collections.deque()
        self._max_rows = max_rows
        self._batch_rows = batch_rows
        self._rng = rng or random.Random()  # jitter, not secrecy
        self._lock = threading.Lock()
        self._failures = 0
        self._next_attempt_at: datetime | None = None
        self.dropped = 0
        self.uploaded = 0

    def add(self, records: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            self._rows.extend(records)
            self._trim()

    def __len__(self) -> int:
        return len(self._rows)

    def flush(self, now: datetime) -> int:
        """Upload what is buffered unless backing off; returns rows uploaded."""
        if self._next_attempt_at is not None and now < self._next_attempt_at:
            return 0
        sent = 0
        while True:
            with self._lock:
                batch = [
                    self._rows.popleft()
                    for _ in range(min(self._batch_rows, len(self._rows)))
                ]
            if not batch:
                return sent
            try:
                self._uploader.upload(self.stream, batch)
            except DeliveryError as exc:
                self._retry_later(batch, exc, now)
                return sent
            sent += len(batch)
            self.uploaded += len(batch)
            self._failures = 0
            self._next_attempt_at = None

    def _retry_later(
        self, batch: list[Mapping[str, Any]], exc: DeliveryError, now: datetime
    ) -> None:
        owed = batch
        if isinstance(exc, PartialDelivery):
            owed = list(exc.remaining["rows"])  # type: ignore[call-overload]
        if not exc.retryable:
            self.dropped += len(owed)
            log.error(
                "logs_rows_dropped stream=%s rows=%d error=%s",
                self.stream,
                len(owed),
                exc,
            )
            return
        with self._lock:
            self._rows.extendleft(reversed(owed))
            self._trim()
        self._failures += 1
        delay = backoff_delay(
            self._policy, self._failures, exc.retry_after_s, self._rng.uniform
        )
        self._next_attempt_at = now + timedelta(seconds=delay)
        log.warning(
            "logs_upload_failed stream=%s rows=%d retry_in_s=%.1f error=%s",
            self.stream,
            len(owed),
            delay,
            exc,
        )

    def _trim(self) -> None:
        # Oldest first: during an outage the newest KPIs matter most.
        excess = len(self._rows) - self._max_rows
        for _ in range(max(0, excess)):
            self._rows.popleft()
        if excess > 0:
            self.dropped += excess
            log.warning(
                "logs_rows_dropped stream=%s rows=%d reason=buffer_full",
                self.stream,
                excess,
            )
