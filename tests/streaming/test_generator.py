"""The traffic generator: deterministic, realistic, incidents that show."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from streaming.generator import (
    Incident,
    OrderTrafficGenerator,
    TrafficConfig,
    parse_incident,
    rate_multiplier,
)

START = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # 17:00 in Brazil


def events(config: TrafficConfig, minutes: int) -> list[dict[str, object]]:
    generator = OrderTrafficGenerator(config)
    messages = generator.advance(config.start + timedelta(minutes=minutes))
    return [json.loads(m.value) for m in messages if m.kind != "bad"]


def test_same_config_same_messages_whatever_the_step() -> None:
    config = TrafficConfig(start=START, bad_share=0.05, duplicate_share=0.05)
    one = OrderTrafficGenerator(config).advance(START + timedelta(minutes=5))
    stepped = OrderTrafficGenerator(config)
    chunks = list(stepped.run(START + timedelta(minutes=5), timedelta(seconds=7)))
    assert [m.value for m in one] == [m.value for chunk in chunks for m in chunk]
    other_seed = OrderTrafficGenerator(TrafficConfig(start=START, seed=8))
    assert other_seed.advance(START + timedelta(minutes=5))[0].value != one[0].value


def test_messages_come_in_send_order_with_lifecycles() -> None:
    config = TrafficConfig(start=START, orders_per_minute=300)
    messages = OrderTrafficGenerator(config).advance(START + timedelta(minutes=30))
    assert [m.sent_at for m in messages] == sorted(m.sent_at for m in messages)
    # Send order may swap events a second apart (the send delay jitters, as on real
    # hosts); the lifecycle is checked in event time.
    by_order: dict[str, list[tuple[datetime, str]]] = {}
    early: set[str] = set()
    for message in messages:
        event = message.event
        assert event is not None
        by_order.setdefault(event.order_id, []).append(
            (event.occurred_at, event.event_type)
        )
        if event.occurred_at < START + timedelta(minutes=10):
            early.add(event.order_id)
    # Orders created in the first ten minutes have had twenty to be paid.
    for order in early:
        types = [event_type for _, event_type in sorted(by_order[order])]
        assert types[0] == "order_created"
        assert types[1] in ("payment_approved", "payment_failed")


def test_proportions_are_plausible() -> None:
    sent = events(TrafficConfig(start=START, orders_per_minute=600), 20)
    created = [e for e in sent if e["event_type"] == "order_created"]
    regions = Counter(e["region"] for e in created)
    methods = Counter(e["payment_method"] for e in created)
    assert regions.most_common(1)[0][0] == "SP"
    assert 0.28 < regions["SP"] / len(created) < 0.38
    assert 0.35 < methods["pix"] / len(created) < 0.45
    failed = sum(1 for e in sent if e["event_type"] == "payment_failed")
    assert 0.01 < failed / len(created) < 0.06
    assert all(str(e["occurred_at"]).endswith("-03:00") for e in sent)


def test_the_day_has_a_shape() -> None:
    dawn = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)  # 04:00 in Brazil
    evening = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)  # 20:00 in Brazil
    assert rate_multiplier(evening) == pytest.approx(1.0)
    assert rate_multiplier(dawn) < 0.1
    quiet = events(TrafficConfig(start=dawn), 10)
    busy = events(TrafficConfig(start=evening), 10)
    assert len(busy) > 5 * len(quiet)


def test_incidents_change_the_traffic() -> None:
    outage = Incident(
        kind="payment_gateway_outage",
        start=START,
        duration=timedelta(minutes=10),
        target="credit_card",
        intensity=0.6,
    )
    silent = Incident(
        kind="region_outage", start=START, duration=timedelta(minutes=10), target="SP"
    )
    sent = events(TrafficConfig(start=START, incidents=(outage, silent)), 10)
    card = [e for e in sent if e.get("payment_method") == "credit_card"]
    card_failed = sum(1 for e in card if e["event_type"] == "payment_failed")
    card_paid = sum(1 for e in card if e["event_type"] == "payment_approved")
    assert 0.5 < card_failed / (card_failed + card_paid) < 0.7
    assert not any(e["region"] == "SP" for e in sent)


def test_bad_messages_duplicates_and_late_sends() -> None:
    config = TrafficConfig(
        start=START, bad_share=0.1, duplicate_share=0.1, late_share=0.1
    )
    messages = OrderTrafficGenerator(config).advance(START + timedelta(minutes=20))
    kinds = Counter(m.kind for m in messages)
    assert {"valid", "bad", "duplicate", "late"} <= set(kinds)
    assert len({m.defect for m in messages if m.defect}) == 6
    for message in messages:
        if message.kind == "late":
            assert message.event is not None
            assert message.sent_at - message.event.occurred_at == config.late_by


def test_incident_specs_parse_and_fail_clearly() -> None:
    incident = parse_incident("payment_gateway_outage:pix@-10+5*0.7", START)
    assert incident.start == START - timedelta(minutes=10)
    assert incident.duration == timedelta(minutes=5)
    assert (incident.target, incident.intensity) == ("pix", 0.7)
    with pytest.raises(ValueError, match="unknown kind 'meteor'"):
        parse_incident("meteor@0+5", START)
    with pytest.raises(ValueError, match="expected kind"):
        parse_incident("cancellation_surge", START)
