"""Alert lifecycle records: live alert state, transitions and notifications."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

AlertStateName = Literal["pending", "firing", "resolved"]
NotificationKind = Literal["firing", "repeat", "resolved"]


def fingerprint_of(rule: str, labels: Mapping[str, str]) -> str:
    """A stable id of an alert: the rule name and its labels, order-insensitive."""
    canonical = json.dumps([rule, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def stable_id(*parts: object) -> str:
    """A deterministic id from ``parts`` (the same inputs give the same id)."""
    canonical = json.dumps([str(part) for part in parts], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


@dataclass
class AlertState:
    """What the engine remembers about one pending or firing alert.

    ``active_since`` identifies the episode: every id of its transitions and
    notifications derives from fingerprint + active_since, so a replay after a
    crash produces the same ids.
    """

    fingerprint: str
    rule: str
    severity: str
    labels: dict[str, str]
    state: AlertStateName
    active_since: datetime
    rule_digest: str
    fired_at: datetime | None = None
    value: float | None = None
    threshold: float | None = None
    reference: float | None = None
    spread: float | None = None
    notified_receivers: tuple[str, ...] = ()
    last_notified_at: datetime | None = None
    repeats: int = 0
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as ISO strings)."""
        document = asdict(self)
        for name in ("active_since", "fired_at", "last_notified_at"):
            moment = document[name]
            document[name] = None if moment is None else moment.isoformat()
        document["notified_receivers"] = list(self.notified_receivers)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> AlertState:
        """Inverse of :meth:`to_json`."""
        values = dict(document)
        for name in ("active_since", "fired_at", "last_notified_at"):
            moment = values.get(name)
            values[name] = None if moment is None else datetime.fromisoformat(moment)
        values["notified_receivers"] = tuple(values.get("notified_receivers", ()))
        return cls(**values)


@dataclass(frozen=True)
class Transition:
    """One change of an alert's state: one row of ``gold.alerts``."""

    alert_id: str
    rule: str
    severity: str
    fingerprint: str
    labels: Mapping[str, str]
    state: AlertStateName
    value: float | None
    threshold: float | None
    active_since: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    evaluated_at: datetime
    annotations: Mapping[str, str]
    receivers: tuple[str, ...]

    def to_record(self) -> dict[str, Any]:
        """The ``gold.alerts`` row; ``alert_id`` is the key for an idempotent MERGE."""
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "severity": self.severity,
            "fingerprint": self.fingerprint,
            "labels": dict(self.labels),
            "state": self.state,
            "value": self.value,
            "threshold": self.threshold,
            "active_since": self.active_since,
            "fired_at": self.fired_at,
            "resolved_at": self.resolved_at,
            "evaluated_at": self.evaluated_at,
            "annotations": dict(self.annotations),
            "receivers": list(self.receivers),
        }


@dataclass(frozen=True)
class Notification:
    """What the exporters must deliver to ``receivers``.

    ``idempotency_key`` is identical when the same notification is produced
    again after a crash or replay, so a receiver can drop the duplicate.
    """

    kind: NotificationKind
    receivers: tuple[str, ...]
    fingerprint: str
    rule: str
    severity: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    value: float | None
    threshold: float | None
    starts_at: datetime
    ends_at: datetime | None
    idempotency_key: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as ISO strings)."""
        document = asdict(self)
        document["receivers"] = list(self.receivers)
        document["labels"] = dict(self.labels)
        document["annotations"] = dict(self.annotations)
        document["starts_at"] = self.starts_at.isoformat()
        document["ends_at"] = None if self.ends_at is None else self.ends_at.isoformat()
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Notification:
        """Inverse of :meth:`to_json`."""
        values = dict(document)
        values["receivers"] = tuple(values["receivers"])
        values["starts_at"] = datetime.fromisoformat(values["starts_at"])
        ends = values.get("ends_at")
        values["ends_at"] = None if ends is None else datetime.fromisoformat(ends)
        return cls(**values)


@dataclass(frozen=True)
class EvaluationResult:
    """What one ``evaluate`` or ``tick`` produced.

    ``series_evaluated`` counts rule level x series evaluations: one rule level
    (e.g. the critical level of PaymentFailuresByMethod) judged on one series
    (e.g. the 5m payment_method=pix row series) at this call.
    """

    transitions: tuple[Transition, ...] = ()
    notifications: tuple[Notification, ...] = ()
    rules_evaluated: int = 0
    series_evaluated: int = 0
    reload_errors: tuple[str, ...] = field(default=())
    # Seconds spent judging in memory (ingest + rule evaluation), without
    # rendering, routing or persisting: what the evaluation benchmark divides by.
    evaluation_seconds: float = 0.0
