"""Persisting the engine state incrementally: a Delta table, or memory for tests.

The state is a set of rows ``(section, key, payload)``: one ``meta`` row, one
row per pending or firing ``alert``, one per undelivered ``outbox``
notification and one per retained ``window`` (Gold row) of the history. The
engine hands the store only what changed since its last save
(:class:`StateChanges`: upserted rows and deleted keys), and nothing at all
when nothing changed.

The Delta store appends each change set as one commit (rows carry a sequence
number; a delete is a tombstone row) and reads the state back as the newest row
per key. When the log holds much more than the live state it is compacted: the
live rows are rewritten in one overwrite commit. Every commit is atomic, so a
reader sees the state after some whole save, never half of one.

Both stores go through the same serialization, so a unit test on the in-memory
store exercises what production writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
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

STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1: whole-state overwrites, same row shape
_DATETIME_COLUMNS = ("window_start", "window_end", "updated_at")

StateKey = tuple[str, str]  # section, key


@dataclass
class EngineMeta:
    """Engine facts that are not alerts or windows.

    ``watermark``: the newest watermark the engine has seen.
    ``watermark_advanced_at``: wall-clock time it last moved forward (the
    pipeline-stalled rule measures how long it stood still).
    """

    saved_at: datetime | None = None
    watermark: datetime | None = None
    watermark_advanced_at: datetime | None = None


@dataclass
class EngineSnapshot:
    """Everything the engine needs to resume after a restart."""

    alerts: list[AlertState] = field(default_factory=list)
    outbox: list[Notification] = field(default_factory=list)
    history: list[KpiSample] = field(default_factory=list)
    meta: EngineMeta = field(default_factory=EngineMeta)


@dataclass(frozen=True)
class StateChanges:
    """What changed since the last save: rows to upsert and keys to delete."""

    upserts: tuple[tuple[StateKey, str], ...] = ()
    deletes: tuple[StateKey, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(text: Any) -> datetime | None:
    return None if not text else datetime.fromisoformat(str(text))


def meta_row(meta: EngineMeta) -> tuple[StateKey, str]:
    """The ``meta`` row of ``meta``."""
    document = {
        "version": STATE_VERSION,
        "saved_at": _iso(meta.saved_at) or "",
        "watermark": _iso(meta.watermark),
        "watermark_advanced_at": _iso(meta.watermark_advanced_at),
    }
    return ("meta", "meta"), json.dumps(document)


def alert_row(alert: AlertState) -> tuple[StateKey, str]:
    """The row of one live alert."""
    return ("alert", alert.fingerprint), json.dumps(alert.to_json(), sort_keys=True)


def outbox_row(note: Notification) -> tuple[StateKey, str]:
    """The row of one undelivered notification."""
    payload = json.dumps(note.to_json(), sort_keys=True)
    return ("outbox", note.idempotency_key), payload


def window_key(sample: KpiSample) -> StateKey:
    """The key of a history window: grain|dimension|value|window start."""
    key = "|".join(
        (
            sample.grain,
            sample.dimension,
            sample.dimension_value,
            sample.window_start.isoformat(),
        )
    )
    return "window", key


def window_row(sample: KpiSample) -> tuple[StateKey, str]:
    """The row of one history window."""
    document = sample.to_dict()
    for name in _DATETIME_COLUMNS:
        document[name] = document[name].isoformat()
    return window_key(sample), json.dumps(document)


def snapshot_rows(snapshot: EngineSnapshot) -> list[tuple[StateKey, str]]:
    """Every row of ``snapshot`` (what a fresh or compacted table holds)."""
    rows = [meta_row(snapshot.meta)]
    rows.extend(alert_row(alert) for alert in snapshot.alerts)
    rows.extend(outbox_row(note) for note in snapshot.outbox)
    rows.extend(window_row(sample) for sample in snapshot.history)
    return rows


def rows_to_snapshot(rows: Iterable[tuple[StateKey, str]]) -> EngineSnapshot:
    """Decode live rows; raise StateFormatError on a bad document."""
    snapshot = EngineSnapshot()
    try:
        for (section, _key), text in rows:
            payload: dict[str, Any] = json.loads(text)
            if section == "meta":
                snapshot.meta = _read_meta(payload)
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


def _read_meta(payload: dict[str, Any]) -> EngineMeta:
    version = payload.get("version")
    if version not in _READABLE_VERSIONS:
        raise StateFormatError(
            f"engine state version {version!r} is not one of {_READABLE_VERSIONS}; "
            "delete the state table to start afresh"
        )
    return EngineMeta(
        saved_at=_moment(payload.get("saved_at")),
        watermark=_moment(payload.get("watermark")),
        watermark_advanced_at=_moment(payload.get("watermark_advanced_at")),
    )


class StateStore(Protocol):
    """Where the engine keeps its state between runs."""

    def load(self) -> EngineSnapshot | None:
        """The saved state, or None when nothing was saved yet."""

    def save(self, changes: StateChanges) -> None:
        """Apply ``changes`` atomically (all of them or none)."""


class InMemoryStateStore:
    """A store for unit tests; it keeps the serialized rows, not live objects."""

    def __init__(self) -> None:
        self.rows: dict[StateKey, str] = {}
        self.saves = 0

    def load(self) -> EngineSnapshot | None:
        """The saved state, decoded from its rows."""
        return rows_to_snapshot(self.rows.items()) if self.rows else None

    def save(self, changes: StateChanges) -> None:
        """Apply ``changes`` to the kept rows."""
        for key in changes.deletes:
            self.rows.pop(key, None)
        self.rows.update(changes.upserts)
        self.saves += 1


_SCHEMA = pa.schema(
    [
        ("section", pa.string()),
        ("key", pa.string()),
        ("payload", pa.string()),
        ("seq", pa.int64()),
        ("deleted", pa.bool_()),
    ]
)


class DeltaStateStore:
    """The engine state as a small Delta table (``<data_dir>/gold/alert_state``).

    Saves append; the table is rewritten (compacted) once it holds more than
    ``compact_factor`` times the live rows (and at least ``compact_min`` rows).
    Old versions remain readable for forensics until vacuumed.
    """

    def __init__(
        self, table_path: Path, *, compact_factor: int = 4, compact_min: int = 2000
    ) -> None:
        self.table_path = table_path
        self.compact_factor = compact_factor
        self.compact_min = compact_min
        self._live: dict[StateKey, str] = {}
        self._logged_rows = 0
        self._seq = 0
        self._rewrite = False

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> DeltaStateStore:
        """The store at the conventional place in a local data directory."""
        return cls(data_dir / "gold" / "alert_state")

    def load(self) -> EngineSnapshot | None:
        """Read the newest row per key; None when the table does not exist yet."""
        try:
            table = DeltaTable(str(self.table_path)).to_pyarrow_table()
        except TableNotFoundError:
            return None
        except OSError as failure:
            raise StateStoreError(
                f"cannot open alert state table {self.table_path}: {failure}"
            ) from failure
        rows = table.to_pylist()
        # A version-1 table has no seq/deleted columns: it was one whole state.
        self._rewrite = "seq" not in table.column_names
        rows.sort(key=lambda row: row.get("seq") or 0)
        self._live = {}
        for row in rows:
            key = (str(row["section"]), str(row["key"]))
            if row.get("deleted"):
                self._live.pop(key, None)
            else:
                self._live[key] = str(row["payload"])
        self._logged_rows = len(rows)
        self._seq = max((int(row.get("seq") or 0) for row in rows), default=0)
        return rows_to_snapshot(self._live.items()) if self._live else None

    def save(self, changes: StateChanges) -> None:
        """Append ``changes`` as one commit (or compact the table in one commit)."""
        if not changes:
            return
        for key in changes.deletes:
            self._live.pop(key, None)
        self._live.update(changes.upserts)
        self._seq += 1
        appended = len(changes.upserts) + len(changes.deletes)
        threshold = max(self.compact_min, self.compact_factor * len(self._live))
        if self._rewrite or self._logged_rows + appended > threshold:
            self._write(self._rows(self._live.items(), ()), "overwrite")
            self._logged_rows = len(self._live)
            self._rewrite = False
            logger.info(
                "alert_state_compacted path=%s rows=%d",
                self.table_path,
                len(self._live),
            )
            return
        self._write(self._rows(changes.upserts, changes.deletes), "append")
        self._logged_rows += appended

    def _rows(
        self, upserts: Iterable[tuple[StateKey, str]], deletes: Iterable[StateKey]
    ) -> pa.Table:
        sections, keys, payloads, deleted = [], [], [], []
        for (section, key), payload in upserts:
            sections.append(section)
            keys.append(key)
            payloads.append(payload)
            deleted.append(False)
        for section, key in deletes:
            sections.append(section)
            keys.append(key)
            payloads.append("")
            deleted.append(True)
        seq = [self._seq] * len(sections)
        return pa.table([sections, keys, payloads, seq, deleted], schema=_SCHEMA)

    def _write(self, table: pa.Table, mode: str) -> None:
        try:
            if mode == "overwrite":
                write_deltalake(
                    str(self.table_path),
                    table,
                    mode="overwrite",
                    schema_mode="overwrite",
                )
            else:
                write_deltalake(str(self.table_path), table, mode="append")
        except OSError as failure:
            raise StateStoreError(
                f"cannot write alert state table {self.table_path}: {failure}"
            ) from failure
        logger.debug(
            "alert_state_saved path=%s mode=%s rows=%d",
            self.table_path,
            mode,
            table.num_rows,
        )
