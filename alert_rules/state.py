"""Persisting the engine state: a Delta table, or memory for unit tests.

The state is a small document (alerts, undelivered notifications, the recent
window history) flattened into rows ``(section, key, payload)``. Both stores go
through the same serialization, so a unit test on the in-memory store exercises
what production writes.

Crash safety: the Delta store overwrites the table in one commit; a reader sees
either the previous or the new state, never a mix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from alert_rules.alerts import AlertState, Notification
from alert_rules.errors import StateFormatError, StateStoreError
from alert_rules.samples import KpiSample

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_DATETIME_COLUMNS = ("window_start", "window_end", "updated_at")


@dataclass
class EngineSnapshot:
    """Everything the engine needs to resume after a restart."""

    alerts: list[AlertState] = field(default_factory=list)
    outbox: list[Notification] = field(default_factory=list)
    history: list[KpiSample] = field(default_factory=list)
    saved_at: datetime | None = None


StateRow = dict[str, str]


def snapshot_to_rows(snapshot: EngineSnapshot) -> list[StateRow]:
    """Flatten ``snapshot`` into ``section``/``key``/``payload`` string rows."""
    saved_at = snapshot.saved_at.isoformat() if snapshot.saved_at else ""
    meta = {"version": STATE_VERSION, "saved_at": saved_at}
    rows = [{"section": "meta", "key": "meta", "payload": json.dumps(meta)}]
    for alert in snapshot.alerts:
        payload = json.dumps(alert.to_json(), sort_keys=True)
        rows.append({"section": "alert", "key": alert.fingerprint, "payload": payload})
    for note in snapshot.outbox:
        payload = json.dumps(note.to_json(), sort_keys=True)
        rows.append(
            {"section": "outbox", "key": note.idempotency_key, "payload": payload}
        )
    for sample in snapshot.history:
        document = sample.to_dict()
        for name in _DATETIME_COLUMNS:
            document[name] = document[name].isoformat()
        key = "|".join(
            (
                sample.grain,
                sample.dimension,
                sample.dimension_value,
                document["window_start"],
            )
        )
        rows.append({"section": "window", "key": key, "payload": json.dumps(document)})
    return rows


def rows_to_snapshot(rows: list[StateRow]) -> EngineSnapshot:
    """Inverse of :func:`snapshot_to_rows`; raise StateFormatError on a bad document."""
    snapshot = EngineSnapshot()
    try:
        for row in rows:
            payload: dict[str, Any] = json.loads(row["payload"])
            section = row["section"]
            if section == "meta":
                if payload.get("version") != STATE_VERSION:
                    raise StateFormatError(
                        f"engine state version {payload.get('version')!r} is not "
                        f"{STATE_VERSION}; delete the state table to start afresh"
                    )
                saved = payload.get("saved_at")
                snapshot.saved_at = datetime.fromisoformat(saved) if saved else None
            elif section == "alert":
                snapshot.alerts.append(AlertState.from_json(payload))
            elif section == "outbox":
                snapshot.outbox.append(Notification.from_json(payload))
            elif section == "window":
                for name in _DATETIME_COLUMNS:
                    payload[name] = datetime.fromisoformat(payload[name])
                snapshot.history.append(KpiSample(**payload))
    except (KeyError, TypeError, ValueError) as bad:
        raise StateFormatError(f"engine state row is malformed: {bad}") from None
    return snapshot


class StateStore(Protocol):
    """Where the engine keeps its snapshot between runs."""

    def load(self) -> EngineSnapshot | None:
        """The last saved snapshot, or None when nothing was saved yet."""

    def save(self, snapshot: EngineSnapshot) -> None:
        """Replace the saved snapshot atomically."""


class InMemoryStateStore:
    """A store for unit tests; it keeps the serialized rows, not live objects."""

    def __init__(self) -> None:
        self.rows: list[StateRow] | None = None
        self.saves = 0

    def load(self) -> EngineSnapshot | None:
        """The last saved snapshot, decoded from its rows."""
        return None if self.rows is None else rows_to_snapshot(self.rows)

    def save(self, snapshot: EngineSnapshot) -> None:
        """Serialize ``snapshot`` and keep the rows."""
        self.rows = [dict(row) for row in snapshot_to_rows(snapshot)]
        self.saves += 1


class DeltaStateStore:
    """The engine state as a small Delta table (``<data_dir>/gold/alert_state``).

    Each save overwrites the table in one Delta commit; old versions remain
    readable for forensics until vacuumed.
    """

    def __init__(self, table_path: Path) -> None:
        self.table_path = table_path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> DeltaStateStore:
        """The store at the conventional place in a local data directory."""
        return cls(data_dir / "gold" / "alert_state")

    def load(self) -> EngineSnapshot | None:
        """Read the current version; None when the table does not exist yet."""
        try:
            table = DeltaTable(str(self.table_path))
        except TableNotFoundError:
            return None
        except OSError as failure:
            raise StateStoreError(
                f"cannot open alert state table {self.table_path}: {failure}"
            ) from failure
        rows = table.to_pyarrow_table().to_pylist()
        return rows_to_snapshot([{k: str(v) for k, v in row.items()} for row in rows])

    def save(self, snapshot: EngineSnapshot) -> None:
        """Overwrite the table with ``snapshot`` in one commit."""
        rows = snapshot_to_rows(snapshot)
        schema = pa.schema(
            [("section", pa.string()), ("key", pa.string()), ("payload", pa.string())]
        )
        table = pa.Table.from_pylist(rows, schema=schema)
        try:
            write_deltalake(str(self.table_path), table, mode="overwrite")
        except OSError as failure:
            raise StateStoreError(
                f"cannot write alert state table {self.table_path}: {failure}"
            ) from failure
        logger.debug("alert_state_saved path=%s rows=%d", self.table_path, len(rows))
