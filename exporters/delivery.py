"""Moves outbox messages to their receivers: retry with backoff and jitter,
``Retry-After`` honoured, park after a bounded number of attempts.

Each receiver's queue is delivered strictly in order, and a failing receiver
backs off as a whole (it is almost always the receiver that is down, not one
message), so per fingerprint a ``firing`` always reaches a receiver before its
``resolved``. A message the receiver will never accept (a 4xx other than
408/425/429) is parked at once and the queue moves on; once a fingerprint has a
parked message, its later messages to that receiver are parked behind it, so
replaying the parked messages keeps their order too.

Nothing here sleeps: ``pump(now)`` does the work that is due at ``now`` and
returns; the caller decides when to call again (see ``hub.ExporterHub``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from exporters.config import RetryPolicy
from exporters.errors import DeliveryError, ExporterError
from exporters.notifiers import Sender
from exporters.outbox import Outbox, OutboxMessage, ReceiverState

log = logging.getLogger(__name__)


class PartialDelivery(DeliveryError):
    """Part of a message was accepted; ``remaining`` is the payload still owed.

    The outbox keeps only ``remaining`` so the accepted part is not sent again.
    """

    def __init__(
        self,
        message: str,
        *,
        remaining: Mapping[str, object],
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(
            message, retryable=retryable, status=status, retry_after_s=retry_after_s
        )
        self.remaining = remaining


@dataclass(frozen=True)
class PumpReport:
    delivered: int = 0
    failed: int = 0
    parked: int = 0
    more_due: bool = False
    next_due_at: datetime | None = None


def backoff_delay(
    policy: RetryPolicy,
    consecutive_failures: int,
    retry_after_s: float | None,
    uniform: Callable[[float, float], float],
) -> float:
    """Seconds to wait after the n-th consecutive failure (n >= 1)."""
    exponent = min(consecutive_failures - 1, 30)
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2.0**exponent)
    delay = ceiling * uniform(1.0 - policy.jitter, 1.0)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, policy.max_retry_after_s))
    return delay


class Dispatcher:
    """Delivers every receiver's queue; one instance per outbox."""

    def __init__(
        self,
        outbox: Outbox,
        senders: Mapping[str, Sender],
        policy: RetryPolicy,
        *,
        rng: random.Random | None = None,
        batch_size: int = 100,
    ) -> None:
        self._outbox = outbox
        self._senders = dict(senders)
        self._policy = policy
        self._rng = rng or random.Random()  # jitter, not secrecy
        self._batch_size = batch_size
        self._states: dict[str, ReceiverState] = {}
        self._parked_fingerprints: dict[str, set[str]] = {}

    def pump(self, now: datetime) -> PumpReport:
        """Deliver what is due at ``now``: up to ``batch_size`` messages per
        receiver, so one long backlog does not starve the others."""
        report = PumpReport()
        # Re-read each pump: an operator may have replayed or dropped parked
        # messages from another process (``orderpulse exporters replay``).
        self._parked_fingerprints.clear()
        for receiver in self._outbox.receivers():
            report = _merge(report, self._pump_receiver(receiver, now))
        return report

    def _state(self, receiver: str) -> ReceiverState:
        if receiver not in self._states:
            self._states[receiver] = self._outbox.load_state(receiver)
        return self._states[receiver]

    def _parked(self, receiver: str) -> set[str]:
        if receiver not in self._parked_fingerprints:
            self._parked_fingerprints[receiver] = self._outbox.parked_fingerprints(
                receiver
            )
        return self._parked_fingerprints[receiver]

    def _pump_receiver(self, receiver: str, now: datetime) -> PumpReport:
        state = self._state(receiver)
        if state.next_attempt_at is not None and state.next_attempt_at > now:
            return PumpReport(next_due_at=state.next_attempt_at)
        messages = self._outbox.head(receiver, self._batch_size)
        delivered = parked = 0
        for message in messages:
            outcome = self._deliver(message, now)
            if outcome == "delivered":
                delivered += 1
            elif outcome == "parked":
                parked += 1
            else:
                # The receiver is backing off: the rest of its queue waits.
                return PumpReport(
                    delivered=delivered,
                    parked=parked + (outcome == "gave_up"),
                    failed=1,
                    next_due_at=self._state(receiver).next_attempt_at,
                )
        if delivered and state.consecutive_failures:
            self._set_state(receiver, ReceiverState())
        full = len(messages) == self._batch_size
        return PumpReport(delivered=delivered, parked=parked, more_due=full)

    def _deliver(self, message: OutboxMessage, now: datetime) -> str:
        receiver = message.receiver
        if message.fingerprint in self._parked(receiver):
            self._park(
                message, "an earlier message for this fingerprint is parked", now
            )
            return "parked"
        sender = self._senders.get(receiver)
        if sender is None:
            self._park(message, f"receiver {receiver} is not configured", now)
            return "parked"
        try:
            sender.send(message)
        except DeliveryError as exc:
            return self._failed(message, exc, now)
        except ExporterError as exc:
            # A message this receiver can never take (malformed, misconfigured).
            self._park(message, str(exc), now)
            return "parked"
        self._outbox.acknowledge(message)
        log.info(
            "delivered receiver=%s seq=%d key=%s attempts=%d",
            receiver,
            message.seq,
            message.idempotency_key,
            message.attempts + 1,
        )
        return "delivered"

    def _failed(self, message: OutboxMessage, exc: DeliveryError, now: datetime) -> str:
        receiver = message.receiver
        if isinstance(exc, PartialDelivery):
            message = self._outbox.replace_payload(message, exc.remaining)
        if not exc.retryable:
            self._park(message, str(exc), now)
            return "parked"
        message = self._outbox.record_failure(message, str(exc))
        failures = self._state(receiver).consecutive_failures + 1
        delay = backoff_delay(
            self._policy, failures, exc.retry_after_s, self._rng.uniform
        )
        next_at = now + timedelta(seconds=delay)
        self._set_state(
            receiver,
            ReceiverState(
                consecutive_failures=failures,
                next_attempt_at=next_at,
                last_error=str(exc),
            ),
        )
        log.warning(
            "delivery_failed receiver=%s seq=%d key=%s attempt=%d retry_in_s=%.1f "
            "error=%s",
            receiver,
            message.seq,
            message.idempotency_key,
            message.attempts,
            delay,
            exc,
        )
        if message.attempts >= self._policy.max_attempts:
            self._park(
                message, f"gave up after {message.attempts} attempts: {exc}", now
            )
            return "gave_up"
        return "failed"

    def _park(self, message: OutboxMessage, reason: str, now: datetime) -> None:
        self._outbox.park(message, reason, now)
        if message.fingerprint:
            self._parked(message.receiver).add(message.fingerprint)
        log.error(
            "parked receiver=%s seq=%d key=%s fingerprint=%s reason=%s",
            message.receiver,
            message.seq,
            message.idempotency_key,
            message.fingerprint,
            reason,
        )

    def _set_state(self, receiver: str, state: ReceiverState) -> None:
        self._states[receiver] = state
        self._outbox.save_state(receiver, state)


def _merge(a: PumpReport, b: PumpReport) -> PumpReport:
    due = [d for d in (a.next_due_at, b.next_due_at) if d is not None]
    return replace(
        a,
        delivered=a.delivered + b.delivered,
        failed=a.failed + b.failed,
        parked=a.parked + b.parked,
        more_due=a.more_due or b.more_due,
        next_due_at=min(due) if due else None,
    )
