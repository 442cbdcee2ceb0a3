"""What the streaming job hands to the exporters.

``AlertNotification`` is the exporters' own view of one alert transition that
must reach on-call. The streaming job maps the rule engine's output onto it;
this package knows nothing of the rule engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from exporters.errors import ExporterError

NotificationKind = Literal["firing", "repeat", "resolved"]
NOTIFICATION_KINDS: tuple[NotificationKind, ...] = ("firing", "repeat", "resolved")


class NotificationFormatError(ExporterError):
    """A notification (or its stored form in the outbox) is malformed."""

    retryable = False


@dataclass(frozen=True)
class AlertNotification:
    """One alert transition to deliver to each receiver named in ``receivers``.

    ``idempotency_key`` is unique per transition: a receiver that sees the same
    key twice is seeing a redelivery and may drop it. ``fingerprint`` identifies
    the alert instance across its transitions (PagerDuty's dedup key), so a
    ``resolved`` closes what the ``firing`` with the same fingerprint opened.
    Times are timezone-aware UTC.
    """

    idempotency_key: str
    kind: NotificationKind
    fingerprint: str
    rule: str
    severity: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    value: float | None
    threshold: float | None
    starts_at: datetime
    ends_at: datetime | None
    receivers: tuple[str, ...]
    # Filled by the exporter from configuration, not by the rule engine.
    dashboard_url: str | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            raise NotificationFormatError("notification: idempotency_key is empty")
        if self.kind not in NOTIFICATION_KINDS:
            raise NotificationFormatError(
                f"notification {self.idempotency_key}: kind {self.kind!r} is not one "
                f"of {', '.join(NOTIFICATION_KINDS)}"
            )
        for name in ("starts_at", "ends_at"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise NotificationFormatError(
                    f"notification {self.idempotency_key}: {name} must be "
                    "timezone-aware (UTC)"
                )

    @property
    def summary(self) -> str:
        """The one-line headline: the rule's summary annotation, or the rule."""
        return self.annotations.get("summary") or self.rule

    @property
    def runbook_url(self) -> str | None:
        return self.annotations.get("runbook_url") or None

    @property
    def where(self) -> str:
        """The labels as ``key=value`` pairs, sorted, for humans."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_json`` restores an equal notification."""
        return {
            "idempotency_key": self.idempotency_key,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "severity": self.severity,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "value": _finite_or_none(self.value),
            "threshold": _finite_or_none(self.threshold),
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat() if self.ends_at else None,
            "receivers": list(self.receivers),
            "dashboard_url": self.dashboard_url,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertNotification:
        try:
            return cls(
                idempotency_key=str(data["idempotency_key"]),
                kind=cast(NotificationKind, data["kind"]),
                fingerprint=str(data["fingerprint"]),
                rule=str(data["rule"]),
                severity=str(data["severity"]),
                labels={str(k): str(v) for k, v in data["labels"].items()},
                annotations={str(k): str(v) for k, v in data["annotations"].items()},
                value=_optional_float(data.get("value")),
                threshold=_optional_float(data.get("threshold")),
                starts_at=parse_utc(str(data["starts_at"])),
                ends_at=parse_utc(str(data["ends_at"]))
                if data.get("ends_at")
                else None,
                receivers=tuple(str(r) for r in data["receivers"]),
                dashboard_url=data.get("dashboard_url"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NotificationFormatError(
                f"stored notification is malformed: {exc!r}"
            ) from exc


def parse_utc(text: str) -> datetime:
    """Parse ISO-8601 with an offset and convert it to UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.astimezone(UTC)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN or infinity; a receiver would reject the whole message.
    if value is None or not math.isfinite(value):
        return None
    return value
