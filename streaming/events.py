"""The order event contract (see DESIGN.md) and its JSON form.

Everything that writes order events -- the traffic generator, the embedded source and
the producer for Kafka and Event Hubs -- goes through :class:`OrderEvent` and
:func:`encode`, so the three paths cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

SCHEMA_VERSION = 1

EVENT_TYPES = (
    "order_created",
    "payment_approved",
    "payment_failed",
    "order_cancelled",
    "order_shipped",
    "order_delivered",
)
CHANNELS = ("app", "web", "store", "marketplace")
PAYMENT_METHODS = ("pix", "credit_card", "debit_card", "boleto", "voucher")
# The 26 states and the Federal District.
REGIONS = (
    "AC", "AL", "AP", "AM", "BA", "CE", "DF", "ES", "GO", "MA", "MT", "MS", "MG", "PA",
    "PB", "PR", "PE", "PI", "RJ", "RN", "RS", "RO", "RR", "SC", "SP", "SE", "TO",
)  # fmt: skip
DEFAULT_CURRENCY = "BRL"


@dataclass(frozen=True)
class LineItem:
    sku: str
    quantity: int
    unit_price: Decimal


@dataclass(frozen=True)
class OrderEvent:
    """One order event as the orders application emits it."""

    event_id: str
    event_type: str
    occurred_at: datetime
    order_id: str
    channel: str
    region: str
    schema_version: int = SCHEMA_VERSION
    customer_id: str | None = None
    payment_method: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    items: tuple[LineItem, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the contract; unset optional fields are left out."""
        body: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": format_timestamp(self.occurred_at),
            "order_id": self.order_id,
            "channel": self.channel,
            "region": self.region,
            "schema_version": self.schema_version,
        }
        optional: dict[str, Any] = {
            "customer_id": self.customer_id,
            "payment_method": self.payment_method,
            "amount": float(self.amount) if self.amount is not None else None,
            "currency": self.currency,
            "reason": self.reason,
        }
        body.update(
            {key: value for key, value in optional.items() if value is not None}
        )
        if self.items:
            body["items"] = [
                {
                    "sku": i.sku,
                    "quantity": i.quantity,
                    "unit_price": float(i.unit_price),
                }
                for i in self.items
            ]
        return body


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 with an explicit offset and millisecond precision.

    The orders application runs on Brazil time, so events carry -03:00; the pipeline
    normalizes to UTC.
    """
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment!r} has no timezone; events need an offset")
    return moment.isoformat(timespec="milliseconds")


def encode(event: OrderEvent | dict[str, Any]) -> bytes:
    """The bytes sent on the wire: compact UTF-8 JSON."""
    body = event.to_dict() if isinstance(event, OrderEvent) else event
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
