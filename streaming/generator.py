"""Realistic, deterministic order traffic with injectable incidents and bad messages.

The generator simulates order lifecycles: an order is created, its payment is approved
or fails, then it is shipped and delivered or cancelled. Arrivals follow a Poisson
process whose rate follows the Brazilian day (quiet at dawn, peaks at lunch and in the
evening). Regions, channels and payment methods follow plausible national proportions.

Determinism: for a given :class:`TrafficConfig` the same messages come out whatever the
sizes of the steps passed to :meth:`OrderTrafficGenerator.advance`. Arrivals are drawn
from one sequential stream, and each order draws its lifecycle from its own random
stream seeded by (seed, order number), so chunking never changes a draw.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

from streaming.events import (
    CHANNELS,
    PAYMENT_METHODS,
    LineItem,
    OrderEvent,
    encode,
)

BRAZIL_TIME = timezone(timedelta(hours=-3), "BRT")

REGION_WEIGHTS: dict[str, float] = {
    "SP": 33.0, "RJ": 11.0, "MG": 10.0, "RS": 6.0, "PR": 6.0, "BA": 5.0, "SC": 4.0,
    "DF": 3.0, "GO": 3.0, "PE": 3.0, "CE": 3.0, "ES": 2.0, "PA": 2.0, "MT": 1.5,
    "MS": 1.2, "AM": 1.2, "MA": 1.0, "RN": 0.8, "PB": 0.8, "AL": 0.6, "PI": 0.5,
    "SE": 0.5, "RO": 0.4, "TO": 0.3, "AC": 0.15, "AP": 0.1, "RR": 0.1,
}  # fmt: skip
CHANNEL_WEIGHTS = {"app": 45.0, "web": 35.0, "marketplace": 15.0, "store": 5.0}
PAYMENT_WEIGHTS = {
    "pix": 40.0,
    "credit_card": 38.0,
    "boleto": 9.0,
    "debit_card": 8.0,
    "voucher": 5.0,
}
# Median seconds from order creation to payment approval, per method.
APPROVAL_MEDIAN_S = {
    "pix": 4.0,
    "credit_card": 2.5,
    "debit_card": 3.0,
    "boleto": 90.0,
    "voucher": 1.0,
}
BASE_FAILURE_RATE = {
    "pix": 0.015,
    "credit_card": 0.04,
    "debit_card": 0.03,
    "boleto": 0.02,
    "voucher": 0.01,
}
# Relative order rate by hour of the day in Brazil time; 1.0 is the evening peak.
HOURLY_SHAPE = (
    0.30, 0.18, 0.10, 0.07, 0.06, 0.08, 0.15, 0.30, 0.45, 0.58, 0.66, 0.74,
    0.85, 0.80, 0.70, 0.68, 0.70, 0.75, 0.82, 0.92, 1.00, 0.96, 0.78, 0.50,
)  # fmt: skip

IncidentKind = Literal[
    "payment_gateway_outage",
    "region_outage",
    "cancellation_surge",
    "approval_latency_creep",
]
BadKind = Literal[
    "malformed_json",
    "invalid_type",
    "missing_field",
    "invalid_enum",
    "negative_amount",
    "invalid_timestamp",
]
BAD_KINDS: tuple[BadKind, ...] = (
    "malformed_json",
    "invalid_type",
    "missing_field",
    "invalid_enum",
    "negative_amount",
    "invalid_timestamp",
)
MessageKind = Literal["valid", "duplicate", "late", "bad"]


@dataclass(frozen=True)
class Incident:
    """Something going wrong for a while, applied to orders created in [start, end).

    ``target`` is the payment method (gateway outage) or region (region outage);
    ``intensity`` is the failure rate during an outage, the cancellation rate during a
    surge, or the latency multiplier reached at the end of a latency creep.
    """

    kind: IncidentKind
    start: datetime
    duration: timedelta
    target: str | None = None
    intensity: float | None = None

    @property
    def end(self) -> datetime:
        return self.start + self.duration

    def active_at(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def progress_at(self, moment: datetime) -> float:
        return (moment - self.start) / self.duration


@dataclass(frozen=True)
class TrafficConfig:
    """What traffic to generate. All times are timezone-aware.

    ``orders_per_minute`` is the rate at the evening peak; the rest of the day follows
    :data:`HOURLY_SHAPE` unless ``seasonality`` is off. The ``*_share`` values are the
    fraction of messages, added on top of the valid ones, that are bad, duplicated
    (a retried send of the same message) or late (held back by ``late_by``).
    """

    start: datetime
    seed: int = 7
    orders_per_minute: float = 600.0
    seasonality: bool = True
    incidents: tuple[Incident, ...] = ()
    bad_share: float = 0.0
    duplicate_share: float = 0.0
    late_share: float = 0.0
    late_by: timedelta = timedelta(minutes=15)
    send_delay: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("TrafficConfig.start needs a timezone")
        if self.orders_per_minute <= 0:
            raise ValueError(
                f"orders_per_minute must be positive, got {self.orders_per_minute}"
            )
        for name in ("bad_share", "duplicate_share", "late_share"):
            share = getattr(self, name)
            if not 0.0 <= share < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {share}")


@dataclass(frozen=True, order=True)
class GeneratedMessage:
    """One message as it would be sent, with what the generator meant by it.

    ``kind`` and ``defect`` are ground truth for tests; they are not on the wire.
    """

    sent_at: datetime
    sequence: int
    key: bytes = field(compare=False)
    value: bytes = field(compare=False)
    kind: MessageKind = field(compare=False, default="valid")
    defect: BadKind | None = field(compare=False, default=None)
    event: OrderEvent | None = field(compare=False, default=None)


def rate_multiplier(moment: datetime) -> float:
    """The daily shape at ``moment``, interpolated between hours (Brazil time)."""
    local = moment.astimezone(BRAZIL_TIME)
    hour = local.hour + local.minute / 60 + local.second / 3600
    low = int(hour) % 24
    high = (low + 1) % 24
    fraction = hour - int(hour)
    return HOURLY_SHAPE[low] * (1 - fraction) + HOURLY_SHAPE[high] * fraction


def _stable_seed(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(tuple(weights), weights=tuple(weights.values()))[0]


class OrderTrafficGenerator:
    """Produces order messages in send-time order, step by step.

    Call :meth:`advance` with increasing times; each call returns the messages sent up
    to that time that were not returned before.
    """

    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self._arrivals = random.Random(_stable_seed(config.seed, "arrivals"))
        self._defects = random.Random(_stable_seed(config.seed, "defects"))
        self._peak_rate_per_s = config.orders_per_minute / 60.0
        self._next_arrival = config.start
        self._order_number = 0
        self._sequence = 0
        self._pending: list[GeneratedMessage] = []
        self._clock = config.start
        # Order ids and draws depend on the start as well as the seed, so a restarted
        # demo (same seed, later start) never reuses the ids of an earlier run.
        self._run_tag = f"{config.seed}-{int(config.start.timestamp()):x}"
        self._draw_next_arrival()

    @property
    def clock(self) -> datetime:
        """The time up to which messages have been released."""
        return self._clock

    def advance(self, until: datetime) -> list[GeneratedMessage]:
        """Messages with ``sent_at`` in (previous call, ``until``], in send order."""
        if until < self._clock:
            raise ValueError(f"cannot go back in time: {until} < {self._clock}")
        while self._next_arrival <= until:
            self._create_order(self._next_arrival)
            self._draw_next_arrival()
        released: list[GeneratedMessage] = []
        while self._pending and self._pending[0].sent_at <= until:
            released.append(heapq.heappop(self._pending))
        self._clock = until
        return released

    def run(self, until: datetime, step: timedelta) -> Iterator[list[GeneratedMessage]]:
        """Advance by ``step`` up to ``until``, yielding each step's messages."""
        moment = self._clock
        while moment < until:
            moment = min(moment + step, until)
            yield self.advance(moment)

    def _draw_next_arrival(self) -> None:
        # Thinning: draw at the peak rate, keep with probability rate(t)/peak.
        moment = self._next_arrival
        while True:
            moment += timedelta(
                seconds=self._arrivals.expovariate(self._peak_rate_per_s)
            )
            keep = rate_multiplier(moment) if self.config.seasonality else 1.0
            if self._arrivals.random() < keep:
                self._next_arrival = moment
                return

    def _active(self, kind: IncidentKind, moment: datetime) -> list[Incident]:
        return [
            i for i in self.config.incidents if i.kind == kind and i.active_at(moment)
        ]

    def _create_order(self, created_at: datetime) -> None:
        self._order_number += 1
        number = self._order_number
        rng = random.Random(_stable_seed(self.config.seed, self._run_tag, number))
        region = _pick(rng, REGION_WEIGHTS)
        if any(i.target == region for i in self._active("region_outage", created_at)):
            return
        order = _OrderDraft(
            order_id=f"ord-{self._run_tag}-{number:09d}",
            customer_id=f"cus-{rng.randrange(1, 400_000):06d}",
            region=region,
            channel=_pick(rng, CHANNEL_WEIGHTS),
            payment_method=_pick(rng, PAYMENT_WEIGHTS),
        )
        items = _draw_items(rng)
        amount = sum((i.unit_price * i.quantity for i in items), Decimal("0"))
        self._emit(
            order.event(rng, "order_created", created_at, amount=amount, items=items)
        )
        self._lifecycle(rng, order, created_at, amount)

    def _lifecycle(
        self,
        rng: random.Random,
        order: _OrderDraft,
        created_at: datetime,
        amount: Decimal,
    ) -> None:
        method = order.payment_method
        failure_rate = BASE_FAILURE_RATE[method]
        for outage in self._active("payment_gateway_outage", created_at):
            if outage.target in (None, method):
                failure_rate = outage.intensity if outage.intensity is not None else 0.6
        latency = rng.lognormvariate(math.log(APPROVAL_MEDIAN_S[method]), 0.5)
        for creep in self._active("approval_latency_creep", created_at):
            peak = creep.intensity if creep.intensity is not None else 8.0
            latency *= 1 + (peak - 1) * creep.progress_at(created_at)
        paid_at = created_at + timedelta(seconds=latency)
        if rng.random() < failure_rate:
            self._emit(
                order.event(
                    rng, "payment_failed", paid_at, amount=amount, reason="declined"
                )
            )
            if rng.random() < 0.6:
                cancelled_at = paid_at + timedelta(seconds=rng.uniform(30, 300))
                self._emit(
                    order.event(
                        rng, "order_cancelled", cancelled_at, reason="payment_failed"
                    )
                )
            return
        self._emit(order.event(rng, "payment_approved", paid_at, amount=amount))
        cancel_rate, cancel_within = 0.02, (120.0, 900.0)
        for surge in self._active("cancellation_surge", created_at):
            cancel_rate = surge.intensity if surge.intensity is not None else 0.3
            cancel_within = (30.0, 150.0)
        if rng.random() < cancel_rate:
            cancelled_at = paid_at + timedelta(seconds=rng.uniform(*cancel_within))
            self._emit(
                order.event(
                    rng, "order_cancelled", cancelled_at, reason="customer_request"
                )
            )
            return
        shipped_at = paid_at + timedelta(minutes=rng.uniform(20, 90))
        self._emit(order.event(rng, "order_shipped", shipped_at))
        delivered_at = shipped_at + timedelta(hours=rng.uniform(2, 8))
        self._emit(order.event(rng, "order_delivered", delivered_at))

    def _emit(self, event: OrderEvent) -> None:
        defects = self._defects
        sent_at = event.occurred_at + self.config.send_delay * defects.random()
        kind: MessageKind = "valid"
        if defects.random() < self.config.late_share:
            kind, sent_at = "late", event.occurred_at + self.config.late_by
        self._push(sent_at, encode(event), event, kind)
        if defects.random() < self.config.duplicate_share:
            retry_at = sent_at + timedelta(seconds=defects.uniform(0.5, 20))
            self._push(retry_at, encode(event), event, "duplicate")
        if defects.random() < self.config.bad_share:
            defect = defects.choice(BAD_KINDS)
            body = corrupt(event, defect, defects)
            self._push(sent_at, body, None, "bad", defect)

    def _push(
        self,
        sent_at: datetime,
        value: bytes,
        event: OrderEvent | None,
        kind: MessageKind,
        defect: BadKind | None = None,
    ) -> None:
        self._sequence += 1
        key = event.order_id.encode() if event else f"bad-{self._sequence}".encode()
        message = GeneratedMessage(
            sent_at=sent_at,
            sequence=self._sequence,
            key=key,
            value=value,
            kind=kind,
            defect=defect,
            event=event,
        )
        heapq.heappush(self._pending, message)


@dataclass(frozen=True)
class _OrderDraft:
    order_id: str
    customer_id: str
    region: str
    channel: str
    payment_method: str

    def event(
        self,
        rng: random.Random,
        event_type: str,
        occurred_at: datetime,
        *,
        amount: Decimal | None = None,
        items: Sequence[LineItem] = (),
        reason: str | None = None,
    ) -> OrderEvent:
        return OrderEvent(
            event_id=f"evt-{rng.getrandbits(64):016x}",
            event_type=event_type,
            # Milliseconds, as on the wire, so the object equals what is sent.
            occurred_at=occurred_at.astimezone(BRAZIL_TIME).replace(
                microsecond=occurred_at.microsecond // 1000 * 1000
            ),
            order_id=self.order_id,
            channel=self.channel,
            region=self.region,
            customer_id=self.customer_id,
            payment_method=self.payment_method,
            amount=amount,
            currency="BRL" if amount is not None else None,
            items=tuple(items),
            reason=reason,
        )


def _draw_items(rng: random.Random) -> tuple[LineItem, ...]:
    count = min(1 + int(rng.expovariate(0.9)), 8)
    return tuple(
        LineItem(
            sku=f"SKU-{rng.randrange(1, 5000):05d}",
            quantity=1 + int(rng.expovariate(1.5)),
            unit_price=Decimal(str(round(rng.lognormvariate(math.log(80), 0.9), 2))),
        )
        for _ in range(count)
    )


def corrupt(event: OrderEvent, defect: BadKind, rng: random.Random) -> bytes:
    """A broken variant of ``event``, as a buggy or hostile sender would produce it.

    Bad copies carry a fresh event id so they never collide with the good original.
    """
    body: dict[str, Any] = event.to_dict()
    body["event_id"] = f"bad-{rng.getrandbits(64):016x}"
    if defect == "malformed_json":
        text = encode(body)
        return text[: rng.randrange(5, max(6, len(text) - 1))]
    if defect == "invalid_type":
        field_name = rng.choice(("amount", "schema_version"))
        body[field_name] = "twelve" if field_name == "amount" else "v1"
    elif defect == "missing_field":
        del body[
            rng.choice(("event_id", "event_type", "occurred_at", "order_id", "region"))
        ]
    elif defect == "invalid_enum":
        body[rng.choice(("channel", "event_type"))] = "fax"
    elif defect == "negative_amount":
        body["amount"] = -abs(float(event.amount or Decimal("10.00")))
    elif defect == "invalid_timestamp":
        body["occurred_at"] = rng.choice(
            ("yesterday", "2026-13-45T99:00:00", "1700000000")
        )
    return encode(body)


def default_incidents(now: datetime) -> tuple[Incident, ...]:
    """The demo's incidents: one in the back-filled past, one just after start."""
    return (
        Incident(
            kind="payment_gateway_outage",
            start=now - timedelta(minutes=22),
            duration=timedelta(minutes=8),
            target="credit_card",
            intensity=0.55,
        ),
        Incident(
            kind="cancellation_surge",
            start=now + timedelta(minutes=1),
            duration=timedelta(minutes=4),
            intensity=0.3,
        ),
    )


def parse_incident(spec: str, now: datetime) -> Incident:
    """``kind[:target]@start_offset_min+duration_min[*intensity]``, offsets from now.

    Example: ``payment_gateway_outage:pix@-10+5*0.7``.
    """
    try:
        head, timing = spec.split("@", 1)
        kind, _, target = head.partition(":")
        timing, _, intensity = timing.partition("*")
        offset, duration = timing.rsplit("+", 1)
        incident = Incident(
            kind=kind,  # type: ignore[arg-type]
            start=now + timedelta(minutes=float(offset)),
            duration=timedelta(minutes=float(duration)),
            target=target or None,
            intensity=float(intensity) if intensity else None,
        )
    except ValueError as error:
        raise ValueError(
            f"incident {spec!r}: expected "
            "kind[:target]@offset_min+duration_min[*intensity]"
        ) from error
    if incident.kind not in (
        "payment_gateway_outage",
        "region_outage",
        "cancellation_surge",
        "approval_latency_creep",
    ):
        raise ValueError(f"incident {spec!r}: unknown kind {kind!r}")
    return incident


__all__ = [
    "BAD_KINDS",
    "CHANNELS",
    "PAYMENT_METHODS",
    "GeneratedMessage",
    "Incident",
    "OrderTrafficGenerator",
    "TrafficConfig",
    "default_incidents",
    "parse_incident",
    "rate_multiplier",
]
