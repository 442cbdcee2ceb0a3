"""A durable outbox of messages waiting for their receivers, as plain files.

Layout under the root (``<data_dir>/outbox``)::

    pending/<receiver>/<seq>.json   waiting to be delivered, oldest first
    parked/<receiver>/<seq>.json    gave up; an operator replays or drops it
    state/<receiver>.json           the receiver's backoff (consecutive failures)
    tmp/                            half-written files; never read

Every write is "write a temporary file, fsync, rename", so a crash leaves either
the old file or the new one, never a torn one; this works on local disks and on
Databricks volumes. A message leaves ``pending`` only after its receiver
accepted it, so a crash between sending and acknowledging sends it again, with
the same idempotency key. Sequence numbers are zero-padded, so file name order
is enqueue order, and reading the head of a queue holds only ``limit`` names in
memory however long the queue has grown.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from exporters.errors import OutboxError
from exporters.models import parse_utc

log = logging.getLogger(__name__)

RECEIVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SEQ_WIDTH = 20
_SEQ_FILE = re.compile(r"^(\d{20})\.json$")


@dataclass(frozen=True)
class OutboxMessage:
    """One message for one receiver, as stored.

    ``payload`` is JSON-ready and owned by whoever enqueued it; the outbox only
    stores it. ``attempts`` counts failed deliveries so far.
    """

    receiver: str
    seq: int
    idempotency_key: str
    fingerprint: str | None
    payload: Mapping[str, Any]
    enqueued_at: datetime
    attempts: int = 0
    last_error: str | None = None
    parked_at: datetime | None = None
    park_reason: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.seq:0{_SEQ_WIDTH}d}.json"

    def to_json(self) -> dict[str, Any]:
        return {
            "receiver": self.receiver,
            "seq": self.seq,
            "idempotency_key": self.idempotency_key,
            "fingerprint": self.fingerprint,
            "payload": self.payload,
            "enqueued_at": self.enqueued_at.isoformat(),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "parked_at": self.parked_at.isoformat() if self.parked_at else None,
            "park_reason": self.park_reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutboxMessage:
        parked_at = data.get("parked_at")
        return cls(
            receiver=str(data["receiver"]),
            seq=int(data["seq"]),
            idempotency_key=str(data["idempotency_key"]),
            fingerprint=data.get("fingerprint"),
            payload=data["payload"],
            enqueued_at=parse_utc(str(data["enqueued_at"])),
            attempts=int(data.get("attempts", 0)),
            last_error=data.get("last_error"),
            parked_at=parse_utc(str(parked_at)) if parked_at else None,
            park_reason=data.get("park_reason"),
        )


@dataclass(frozen=True)
class ReceiverState:
    """A receiver's backoff: how many deliveries failed in a row, and until when
    the dispatcher leaves it alone."""

    consecutive_failures: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "consecutive_failures": self.consecutive_failures,
            "next_attempt_at": (
                self.next_attempt_at.isoformat() if self.next_attempt_at else None
            ),
            "last_error": self.last_error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReceiverState:
        moment = data.get("next_attempt_at")
        return cls(
            consecutive_failures=int(data.get("consecutive_failures", 0)),
            next_attempt_at=parse_utc(str(moment)) if moment else None,
            last_error=data.get("last_error"),
        )


@dataclass(frozen=True)
class QueueCounts:
    receiver: str
    pending: int
    parked: int
    oldest_pending_at: datetime | None


class Outbox:
    """The message queues of every receiver, under one root directory.

    Safe to use from the thread that enqueues and the thread that delivers at
    the same time; one process owns a root at a time.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        try:
            for sub in ("pending", "parked", "state", "tmp"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(
                f"outbox {root}: cannot create directories: {exc}"
            ) from exc
        self._next_seq = self._highest_seq() + 1

    # -- writing -----------------------------------------------------------------

    def enqueue(
        self,
        receiver: str,
        *,
        idempotency_key: str,
        fingerprint: str | None,
        payload: Mapping[str, Any],
        now: datetime,
    ) -> OutboxMessage:
        """Store a message durably; when this returns the message survives a
        crash and will be delivered or parked."""
        _check_receiver_name(receiver)
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
        message = OutboxMessage(
            receiver=receiver,
            seq=seq,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            payload=payload,
            enqueued_at=now,
        )
        self._write(self._queue_dir("pending", receiver) / message.file_name, message)
        return message

    def acknowledge(self, message: OutboxMessage) -> None:
        """The receiver accepted ``message``: forget it."""
        path = self._queue_dir("pending", message.receiver) / message.file_name
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise OutboxError(
                f"outbox {path}: cannot remove delivered message: {exc}"
            ) from exc
        _fsync_dir(path.parent)

    def record_failure(self, message: OutboxMessage, error: str) -> OutboxMessage:
        """Count one more failed attempt on a pending message."""
        failed = replace(message, attempts=message.attempts + 1, last_error=error)
        path = self._queue_dir("pending", message.receiver) / message.file_name
        self._write(path, failed)
        return failed

    def replace_payload(
        self, message: OutboxMessage, payload: Mapping[str, Any]
    ) -> OutboxMessage:
        """Keep only part of a message (what a receiver has not yet accepted)."""
        narrowed = replace(message, payload=payload)
        path = self._queue_dir("pending", message.receiver) / message.file_name
        self._write(path, narrowed)
        return narrowed

    def park(self, message: OutboxMessage, reason: str, now: datetime) -> OutboxMessage:
        """Move a pending message aside for an operator; it is not retried."""
        parked = replace(message, parked_at=now, park_reason=reason)
        pending = self._queue_dir("pending", message.receiver) / message.file_name
        # Rewrite in place first, then rename: each step is atomic, and a crash
        # between them leaves a pending message that is simply tried again.
        self._write(pending, parked)
        target = self._queue_dir("parked", message.receiver) / message.file_name
        try:
            os.replace(pending, target)
        except OSError as exc:
            raise OutboxError(f"outbox {pending}: cannot park message: {exc}") from exc
        _fsync_dir(target.parent)
        _fsync_dir(pending.parent)
        return parked

    def replay(self, receiver: str | None = None, seq: int | None = None) -> int:
        """Move parked messages back to pending, attempts reset, keeping their
        sequence numbers so they keep their place in order. Returns how many."""
        moved = 0
        for message in self.parked(receiver):
            if seq is not None and message.seq != seq:
                continue
            revived = replace(
                message, attempts=0, last_error=None, parked_at=None, park_reason=None
            )
            parked_path = (
                self._queue_dir("parked", message.receiver) / message.file_name
            )
            self._write(parked_path, revived)
            target = self._queue_dir("pending", message.receiver) / message.file_name
            os.replace(parked_path, target)
            _fsync_dir(target.parent)
            moved += 1
        return moved

    def drop(self, receiver: str, seq: int) -> bool:
        """Delete one parked message for good. Returns whether it existed."""
        path = self._queue_dir("parked", receiver) / f"{seq:0{_SEQ_WIDTH}d}.json"
        if not path.exists():
            return False
        path.unlink()
        _fsync_dir(path.parent)
        return True

    def save_state(self, receiver: str, state: ReceiverState) -> None:
        _check_receiver_name(receiver)
        self._write_json(self.root / "state" / f"{receiver}.json", state.to_json())

    # -- reading -----------------------------------------------------------------

    def head(self, receiver: str, limit: int) -> list[OutboxMessage]:
        """The oldest ``limit`` pending messages of ``receiver``, oldest first."""
        folder = self._queue_dir("pending", receiver)
        names = heapq.nsmallest(limit, _seq_names(folder))
        return [m for m in (self._read_message(folder / n) for n in names) if m]

    def receivers(self) -> list[str]:
        """Every receiver with a queue (pending or parked), sorted."""
        names: set[str] = set()
        for sub in ("pending", "parked"):
            names.update(p.name for p in (self.root / sub).iterdir() if p.is_dir())
        return sorted(names)

    def parked(self, receiver: str | None = None) -> Iterator[OutboxMessage]:
        """Parked messages, per receiver in sequence order."""
        for name in [receiver] if receiver else self.receivers():
            folder = self._queue_dir("parked", name)
            for file_name in sorted(_seq_names(folder)):
                message = self._read_message(folder / file_name)
                if message:
                    yield message

    def parked_fingerprints(self, receiver: str) -> set[str]:
        return {m.fingerprint for m in self.parked(receiver) if m.fingerprint}

    def load_state(self, receiver: str) -> ReceiverState:
        path = self.root / "state" / f"{receiver}.json"
        try:
            return ReceiverState.from_json(json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            return ReceiverState()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("outbox_state_unreadable path=%s error=%r", path, exc)
            return ReceiverState()

    def counts(self) -> list[QueueCounts]:
        result = []
        for name in self.receivers():
            pending_dir = self._queue_dir("pending", name)
            oldest_name = min(_seq_names(pending_dir), default=None)
            oldest = (
                self._read_message(pending_dir / oldest_name) if oldest_name else None
            )
            result.append(
                QueueCounts(
                    receiver=name,
                    pending=sum(1 for _ in _seq_names(pending_dir)),
                    parked=sum(1 for _ in _seq_names(self._queue_dir("parked", name))),
                    oldest_pending_at=oldest.enqueued_at if oldest else None,
                )
            )
        return result

    def pending_count(self) -> int:
        return sum(c.pending for c in self.counts())

    # -- files -------------------------------------------------------------------

    def _queue_dir(self, kind: str, receiver: str) -> Path:
        folder = self.root / kind / receiver
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _write(self, path: Path, message: OutboxMessage) -> None:
        self._write_json(path, message.to_json())

    def _write_json(self, path: Path, data: Mapping[str, Any]) -> None:
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.tmp"
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                json.dump(data, handle, separators=(",", ":"), allow_nan=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except (OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise OutboxError(f"outbox {path}: cannot write: {exc}") from exc
        _fsync_dir(path.parent)

    def _read_message(self, path: Path) -> OutboxMessage | None:
        try:
            return OutboxMessage.from_json(json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            # Delivered (or parked) by the other thread between list and read.
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OutboxError(f"outbox {path}: unreadable message: {exc!r}") from exc

    def _highest_seq(self) -> int:
        highest = 0
        for kind in ("pending", "parked"):
            for folder in (self.root / kind).iterdir():
                if folder.is_dir():
                    highest = max(highest, max(map(int, _seq_stems(folder)), default=0))
        return highest


def _check_receiver_name(receiver: str) -> None:
    if not RECEIVER_NAME.match(receiver):
        raise OutboxError(
            f"receiver name {receiver!r} must be lower-case letters, digits, '-' "
            "or '_' (it names a folder of the outbox)"
        )


def _seq_names(folder: Path) -> Iterator[str]:
    with os.scandir(folder) as entries:
        for entry in entries:
            if _SEQ_FILE.match(entry.name):
                yield entry.name


def _seq_stems(folder: Path) -> Iterator[str]:
    return (name[:_SEQ_WIDTH] for name in _seq_names(folder))


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX file systems; some (FUSE mounts,
    # Windows) refuse to open a directory, where the rename is all we can do.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
