"""On-call receivers: PagerDuty Events API v2, Slack, Teams, a generic webhook
and the console.

Each sender turns one stored ``AlertNotification`` into its receiver's own
message and posts it; ``send`` returns when the receiver accepted it and raises
``DeliveryError`` otherwise. Every message says what fired (rule and summary),
how bad (severity), where (labels), value against threshold, since when, and
links to the runbook and the dashboard; a ``resolved`` message closes what the
``firing`` opened (same fingerprint). Every HTTP request carries an
``Idempotency-Key`` header so a receiver can drop redeliveries.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from exporters.config import ReceiverConfig
from exporters.errors import DeliveryError, ExporterConfigError
from exporters.http import post_json
from exporters.models import AlertNotification, NotificationFormatError
from exporters.outbox import OutboxMessage

log = logging.getLogger(__name__)

# PagerDuty accepts only these four; anything else the squads call their
# severities is mapped, unknown ones to "error" so a page is never downgraded
# to a silent "info".
_PAGERDUTY_SEVERITY = {
    "critical": "critical",
    "page": "critical",
    "error": "error",
    "high": "error",
    "warning": "warning",
    "warn": "warning",
    "medium": "warning",
    "info": "info",
    "low": "info",
}
_PAGERDUTY_SUMMARY_LIMIT = 1024


class Sender(Protocol):
    """Delivers the messages of one receiver."""

    name: str

    def send(self, message: OutboxMessage) -> None: ...


def notification_of(message: OutboxMessage) -> AlertNotification:
    payload = message.payload
    if payload.get("type") != "notification":
        raise NotificationFormatError(
            f"outbox message {message.receiver}/{message.seq}: not a notification"
        )
    return AlertNotification.from_json(payload["notification"])


def headline(n: AlertNotification) -> str:
    state = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}
    return f"[{state[n.kind]}] {n.severity.upper()} {n.rule}: {n.summary}"


def value_text(n: AlertNotification) -> str:
    if n.value is None:
        return "no value"
    if n.threshold is None:
        return f"{n.value:.6g}"
    return f"{n.value:.6g} (threshold {n.threshold:.6g})"


def since_text(n: AlertNotification) -> str:
    if n.kind == "resolved" and n.ends_at is not None:
        return f"{_iso(n.starts_at)} until {_iso(n.ends_at)}"
    return _iso(n.starts_at)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _facts(n: AlertNotification) -> list[tuple[str, str]]:
    facts = [
        ("Severity", n.severity),
        ("Where", n.where or "everywhere"),
        ("Value", value_text(n)),
        ("Since", since_text(n)),
        ("Rule", n.rule),
    ]
    if n.annotations.get("description"):
        facts.append(("Details", n.annotations["description"]))
    return facts


def _links(n: AlertNotification) -> list[tuple[str, str]]:
    links = []
    if n.runbook_url:
        links.append(("Runbook", n.runbook_url))
    if n.dashboard_url:
        links.append(("Dashboard", n.dashboard_url))
    return links


class _WebhookSender:
    """Shared plumbing: one URL, JSON bodies, idempotency header."""

    def __init__(self, config: ReceiverConfig, tls: ssl.SSLContext, timeout_s: float):
        if config.url is None:
            raise ExporterConfigError(f"receiver {config.name}: no URL configured")
        self.name = config.name
        self._config = config
        self._url = config.url
        self._tls = tls
        self._timeout_s = timeout_s

    def send(self, message: OutboxMessage) -> None:
        n = notification_of(message)
        headers = {"Idempotency-Key": message.idempotency_key, **self.auth_headers()}
        post_json(
            self._url.reveal(),
            self.body(n, message.idempotency_key),
            receiver=self.name,
            headers=headers,
            tls=self._tls,
            timeout_s=self._timeout_s,
        )

    def auth_headers(self) -> dict[str, str]:
        return {}

    def body(self, n: AlertNotification, idempotency_key: str) -> dict[str, Any]:
        raise NotImplementedError


class PagerDutySender(_WebhookSender):
    """PagerDuty Events API v2: ``trigger`` on firing and repeat, ``resolve`` on
    resolved, with the fingerprint as ``dedup_key`` so repeats fold into the
    open incident and the resolve closes it."""

    def body(self, n: AlertNotification, idempotency_key: str) -> dict[str, Any]:
        routing_key = self._config.routing_key
        if routing_key is None:
            raise ExporterConfigError(
                f"receiver {self.name}: no routing key configured"
            )
        event: dict[str, Any] = {
            "routing_key": routing_key.reveal(),
            "dedup_key": n.fingerprint,
        }
        if n.kind == "resolved":
            event["event_action"] = "resolve"
            return event
        event["event_action"] = "trigger"
        event["payload"] = {
            "summary": headline(n)[:_PAGERDUTY_SUMMARY_LIMIT],
            "source": n.where or "orderpulse",
            "severity": _PAGERDUTY_SEVERITY.get(n.severity.lower(), "error"),
            "timestamp": _iso(n.starts_at),
            "component": "orders",
            "group": n.labels.get("dimension", "all"),
            "class": n.rule,
            "custom_details": {
                "value": n.value,
                "threshold": n.threshold,
                "labels": dict(n.labels),
                "description": n.annotations.get("description", ""),
                "idempotency_key": idempotency_key,
            },
        }
        event["links"] = [{"href": url, "text": text} for text, url in _links(n)]
        event["client"] = "OrderPulse"
        if n.dashboard_url:
            event["client_url"] = n.dashboard_url
        return event


class SlackSender(_WebhookSender):
    """Slack incoming webhook: a fallback ``text`` plus Block Kit blocks."""

    def body(self, n: AlertNotification, idempotency_key: str) -> dict[str, Any]:
        facts = "\n".join(f"*{k}:* {v}" for k, v in _facts(n))
        links = " | ".join(f"<{url}|{text}>" for text, url in _links(n))
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": headline(n)[:150]},
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": facts}},
        ]
        if links:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": links}}
            )
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": (
                            f"fingerprint `{n.fingerprint}` · key `{idempotency_key}`"
                        ),
                    }
                ],
            }
        )
        return {"text": f"{headline(n)} - {value_text(n)}", "blocks": blocks}


class TeamsSender(_WebhookSender):
    """Microsoft Teams workflow webhook ("When a Teams webhook request is
    received"): a message whose attachment is an Adaptive Card."""

    def body(self, n: AlertNotification, idempotency_key: str) -> dict[str, Any]:
        color = "Good" if n.kind == "resolved" else "Attention"
        card: dict[str, Any] = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [
                {
                    "type": "TextBlock",
                    "text": headline(n),
                    "weight": "Bolder",
                    "size": "Medium",
                    "color": color,
                    "wrap": True,
                },
                {
                    "type": "FactSet",
                    "facts": [{"title": k, "value": v} for k, v in _facts(n)],
                },
                {
                    "type": "TextBlock",
                    "text": f"fingerprint {n.fingerprint} · key {idempotency_key}",
                    "isSubtle": True,
                    "size": "Small",
                    "wrap": True,
                },
            ],
            "actions": [
                {"type": "Action.OpenUrl", "title": text, "url": url}
                for text, url in _links(n)
            ],
        }
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": card,
                }
            ],
        }


class GenericWebhookSender(_WebhookSender):
    """Any JSON endpoint: the notification itself plus readable fields."""

    def auth_headers(self) -> dict[str, str]:
        token = self._config.token
        return {"Authorization": f"Bearer {token.reveal()}"} if token else {}

    def body(self, n: AlertNotification, idempotency_key: str) -> dict[str, Any]:
        body = n.to_json()
        body["headline"] = headline(n)
        body["links"] = {text.lower(): url for text, url in _links(n)}
        return body


class ConsoleSender:
    """The local default: a readable line on the console and one JSON line per
    notification in ``<data_dir>/exports/notifications.jsonl``."""

    def __init__(self, name: str, exports_dir: Path, stream: TextIO | None = None):
        self.name = name
        self._path = exports_dir / "notifications.jsonl"
        self._stream = stream
        self._lock = threading.Lock()
        exports_dir.mkdir(parents=True, exist_ok=True)

    def send(self, message: OutboxMessage) -> None:
        n = notification_of(message)
        where = n.where or "everywhere"
        line = f"{headline(n)} | {where} | {value_text(n)} | since {since_text(n)}"
        if n.runbook_url:
            line += f" | runbook {n.runbook_url}"
        record = {"receiver": self.name, **n.to_json()}
        with self._lock:
            try:
                with self._path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record, sort_keys=True) + "\n")
            except OSError as exc:
                raise DeliveryError(
                    f"receiver {self.name}: cannot append to {self._path}: {exc}",
                    retryable=True,
                ) from exc
            print(line, file=self._stream or sys.stdout, flush=True)


def build_sender(
    config: ReceiverConfig,
    *,
    tls: ssl.SSLContext,
    timeout_s: float,
    exports_dir: Path,
    stream: TextIO | None = None,
) -> Sender:
    """The sender for one configured receiver."""
    kinds: Mapping[str, type[_WebhookSender]] = {
        "pagerduty": PagerDutySender,
        "slack": SlackSender,
        "teams": TeamsSender,
        "webhook": GenericWebhookSender,
    }
    if config.type == "console":
        return ConsoleSender(config.name, exports_dir, stream)
    return kinds[config.type](config, tls, timeout_s)
