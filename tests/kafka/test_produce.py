"""``orderpulse produce``: both transports, pacing on a fake clock, the command."""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from azure.eventhub import EventDataBatch
from confluent_kafka import Consumer

from streaming.generator import GeneratedMessage, OrderTrafficGenerator, TrafficConfig
from streaming.kafka_config import KafkaSettingsError, KafkaSourceSettings, Secret
from streaming.produce import (
    EventHubsTransport,
    KafkaTransport,
    ProduceError,
    ProduceLimits,
    ProgressBar,
    plan_batches,
    produce,
    register,
)

START = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)
TRAFFIC = TrafficConfig(start=START, seed=5, orders_per_minute=300, bad_share=0.1)
KEY = "c2VjcmV0LWtleS1kby1ub3Qtc2hvdw=="


class FakeTime:
    """Wall time that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


class RecordingTransport:
    """A transport that keeps what it is given (the producer loop is under test)."""

    name = "recording"

    def __init__(self) -> None:
        self.sent: list[GeneratedMessage] = []
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None

    def send(self, messages: list[GeneratedMessage]) -> None:
        self.sent.extend(messages)
        self.delivered += len(messages)

    def flush(self, timeout_s: float) -> None:
        pass

    def close(self) -> None:
        pass


def consume_all(bootstrap: str, topic: str, expected: int) -> list[object]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: list[object] = []
    deadline = time.monotonic() + 60
    try:
        while len(received) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                assert message.error() is None
                received.append(message)
    finally:
        consumer.close()
    return received


# --- the producer loop ---


def test_count_limit_sends_exactly_that_many_in_generator_order() -> None:
    fake = FakeTime()
    transport = RecordingTransport()
    expected = OrderTrafficGenerator(TRAFFIC).advance(START + timedelta(minutes=10))[
        :750
    ]

    summary = produce(
        OrderTrafficGenerator(TRAFFIC),
        transport,
        ProduceLimits(rate=None, count=750),
        clock=lambda: START + timedelta(minutes=10),
        monotonic=fake.monotonic,
        sleep=fake.sleep,
    )

    assert summary.sent == summary.delivered == 750
    assert [m.sequence for m in transport.sent] == [m.sequence for m in expected]
    assert summary.by_kind["bad"] == sum(1 for m in expected if m.kind == "bad") > 0
    assert summary.payload_bytes == sum(len(m.value) for m in expected)


def test_rate_paces_the_sending() -> None:
    fake = FakeTime()

    summary = produce(
        OrderTrafficGenerator(TRAFFIC),
        RecordingTransport(),
        ProduceLimits(rate=100.0, count=1000),
        clock=lambda: START + timedelta(minutes=10),
        monotonic=fake.monotonic,
        sleep=fake.sleep,
    )

    assert summary.sent == 1000
    # 1000 messages at 100/s take 10 s; the first slice may go at once.
    assert 9.8 <= summary.elapsed_s <= 10.01


def test_duration_limit_stops_on_time() -> None:
    fake = FakeTime()

    summary = produce(
        OrderTrafficGenerator(TRAFFIC),
        RecordingTransport(),
        ProduceLimits(rate=50.0, duration=timedelta(seconds=4)),
        clock=lambda: START + timedelta(minutes=30),
        monotonic=fake.monotonic,
        sleep=fake.sleep,
    )

    assert 190 <= summary.sent <= 205
    assert summary.elapsed_s == pytest.approx(4.0, abs=0.15)


def test_never_sends_a_message_before_its_time() -> None:
    fake = FakeTime()
    transport = RecordingTransport()

    def wall_clock() -> datetime:  # event time follows the fake wall time
        return START + timedelta(seconds=fake.now - 1000.0)

    summary = produce(
        OrderTrafficGenerator(TRAFFIC),
        transport,
        ProduceLimits(rate=None, duration=timedelta(seconds=20)),
        clock=wall_clock,
        monotonic=fake.monotonic,
        sleep=fake.sleep,
    )

    assert summary.sent > 0
    assert all(m.sent_at <= START + timedelta(seconds=20.1) for m in transport.sent)


def test_progress_bar_reaches_full_and_summary_names_the_counts() -> None:
    fake = FakeTime()
    stream = io.StringIO()
    bar = ProgressBar(stream, total=300, seconds=None, monotonic=fake.monotonic)

    summary = produce(
        OrderTrafficGenerator(TRAFFIC),
        RecordingTransport(),
        ProduceLimits(rate=30.0, count=300),
        clock=lambda: START + timedelta(minutes=10),
        monotonic=fake.monotonic,
        sleep=fake.sleep,
        progress=bar,
    )

    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert lines[-1].startswith("[" + "#" * 30 + "] 100% sent=300")
    assert "sent=300 delivered=300 failed=0" in summary.render()


def test_limits_are_validated() -> None:
    with pytest.raises(KafkaSettingsError, match="--count or --duration"):
        ProduceLimits(rate=10.0)
    with pytest.raises(KafkaSettingsError, match="--rate"):
        ProduceLimits(rate=0.0, count=1)


# --- Kafka transport against the real broker ---


@pytest.mark.kafka
def test_kafka_transport_keys_by_order_and_keeps_each_orders_events_in_order(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    settings = KafkaSourceSettings(bootstrap_servers=kafka_bootstrap, topic=kafka_topic)
    transport = KafkaTransport(settings)
    summary = produce(
        OrderTrafficGenerator(TRAFFIC),
        transport,
        ProduceLimits(rate=None, count=1200),
        clock=lambda: START + timedelta(minutes=30),
        keep_messages=True,
    )
    transport.close()

    received = consume_all(kafka_bootstrap, kafka_topic, 1200)

    assert summary.delivered == 1200
    assert summary.failed == 0
    assert len(received) == 1200
    sent_values = sorted((m.key, m.value) for m in summary.messages)
    assert sorted((r.key(), r.value()) for r in received) == sent_values  # type: ignore[attr-defined]
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    offsets_of_key: dict[bytes, list[int]] = defaultdict(list)
    for record in received:
        partitions_of_key[record.key()].add(record.partition())  # type: ignore[attr-defined]
    for record in sorted(received, key=lambda r: r.offset()):  # type: ignore[attr-defined]
        offsets_of_key[record.key()].append(record.value())  # type: ignore[attr-defined]
    assert all(len(partitions) == 1 for partitions in partitions_of_key.values())
    sent_order: dict[bytes, list[bytes]] = defaultdict(list)
    for message in summary.messages:
        sent_order[message.key].append(message.value)
    assert dict(offsets_of_key) == dict(sent_order)
    for message in summary.messages:
        if message.event is not None:
            assert message.key == message.event.order_id.encode()


@pytest.mark.kafka
def test_kafka_transport_reports_an_unreachable_broker_as_failed_deliveries() -> None:
    settings = KafkaSourceSettings(bootstrap_servers="127.0.0.1:1", topic="orders")
    transport = KafkaTransport(settings, {"message.timeout.ms": 1500})
    messages = OrderTrafficGenerator(TRAFFIC).advance(START + timedelta(seconds=30))

    transport.send(messages)
    transport.flush(10.0)
    transport.close()

    assert transport.delivered == 0
    assert transport.failed == len(messages)
    assert transport.first_error is not None
    assert "orders" in transport.first_error
    with pytest.raises(ProduceError, match="closed"):
        transport.send(messages)


# --- Event Hubs transport: what can be checked without Azure ---


def test_batches_have_one_partition_key_and_keep_each_orders_order() -> None:
    messages = OrderTrafficGenerator(TRAFFIC).advance(START + timedelta(minutes=5))
    made: list[EventDataBatch] = []

    def new_batch(key: str) -> EventDataBatch:
        batch = EventDataBatch(max_size_in_bytes=1100, partition_key=key)
        made.append(batch)
        return batch

    planned = list(plan_batches(messages, new_batch))

    assert sum(len(members) for _, members in planned) == len(messages)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for batch, members in planned:
        assert len(batch) == len(members)
        assert batch.size_in_bytes <= 1100
        assert {m.key for m in members} == {batch._partition_key.encode()}
        bodies = [b"".join(event.body) for event in batch._internal_events]
        assert bodies == [m.value for m in members]
        by_key[members[0].key].extend(m.sequence for m in members)
    for key, sequences in by_key.items():
        expected = [m.sequence for m in messages if m.key == key]
        assert sequences == expected
    assert any(len(members) > 1 for _, members in planned)
    assert len(made) > len({m.key for m in messages})  # some keys needed a second batch


def test_a_message_larger_than_a_batch_is_reported_not_sent() -> None:
    big = GeneratedMessage(
        sent_at=START, sequence=1, key=b"ord-1", value=b"x" * 5000, kind="bad"
    )
    small = GeneratedMessage(sent_at=START, sequence=2, key=b"ord-1", value=b"{}")

    def new_batch(key: str) -> EventDataBatch:
        return EventDataBatch(max_size_in_bytes=1024, partition_key=key)

    too_large: list[GeneratedMessage] = []
    planned = list(plan_batches([big, small], new_batch, too_large))

    assert too_large == [big]
    assert [members for _, members in planned] == [[small]]
    with pytest.raises(ProduceError, match="5000 bytes"):
        list(plan_batches([big], new_batch))


def test_event_hubs_transport_refuses_a_bad_connection_string_without_echoing_it() -> (
    None
):
    bad = f"Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKey={KEY}"

    with pytest.raises(KafkaSettingsError) as caught:
        EventHubsTransport(Secret(bad), "orders", origin="ORDERPULSE_TEST")

    assert "ORDERPULSE_TEST" in str(caught.value)
    assert KEY not in str(caught.value)


def test_event_hubs_transport_needs_an_event_hub_name() -> None:
    namespace_level = (
        "Endpoint=sb://orders.servicebus.windows.net/;"
        f"SharedAccessKeyName=send;SharedAccessKey={KEY}"
    )
    with pytest.raises(KafkaSettingsError, match="no event hub named"):
        EventHubsTransport(Secret(namespace_level), None)


def test_event_hubs_send_failure_is_retryable_and_secret_free_and_close_is_clean() -> (
    None
):
    # Loopback port 1 refuses the connection at once; no retries so the test is quick.
    unreachable = (
        "Endpoint=sb://127.0.0.1/;"
        f"SharedAccessKeyName=send;SharedAccessKey={KEY};EntityPath=orders"
    )
    transport = EventHubsTransport(
        Secret(unreachable),
        None,
        client_options={
            "custom_endpoint_address": "sb://127.0.0.1:1",
            "retry_total": 0,
            "auth_timeout": 3,
        },
    )
    messages = OrderTrafficGenerator(TRAFFIC).advance(START + timedelta(seconds=20))

    with pytest.raises(ProduceError) as caught:
        transport.send(messages)
    transport.close()
    transport.close()  # a second close is harmless

    assert caught.value.retryable is True
    assert KEY not in str(caught.value)
    assert transport.failed == len(messages)
    assert transport.delivered == 0
    with pytest.raises(ProduceError, match="closed"):
        transport.send(messages)


# --- command line ---


@pytest.mark.kafka
def test_produce_command_sends_to_the_local_broker(
    kafka_bootstrap: str, kafka_topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="orderpulse")
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "produce",
            "--kafka-bootstrap",
            kafka_bootstrap,
            "--topic",
            kafka_topic,
            "--count",
            "200",
            "--rate",
            "2000",
            "--bad-share",
            "0.2",
            "--incident",
            "payment_gateway_outage:pix@-20+10*0.7",
        ]
    )

    status = args.func(args)

    out = capsys.readouterr()
    assert status == 0
    assert "sent=200 delivered=200 failed=0" in out.out
    assert "bad=" in out.out
    assert f"topic={kafka_topic}" in out.err
    received = consume_all(kafka_bootstrap, kafka_topic, 200)
    assert len(received) == 200
    bodies = [r.value() for r in received]  # type: ignore[attr-defined]
    parsed = 0
    for body in bodies:
        try:
            json.loads(body)
            parsed += 1
        except ValueError:
            pass
    assert parsed >= 150


def test_produce_command_fails_with_one_line_on_bad_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "ORDERPULSE_EVENTHUBS_CONNECTION_STRING", f"Endpoint=x;SharedAccessKey={KEY}"
    )
    parser = argparse.ArgumentParser(prog="orderpulse")
    register(parser.add_subparsers())
    args = parser.parse_args(["produce", "--transport", "eventhubs", "--count", "5"])

    status = args.func(args)

    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("orderpulse produce: ORDERPULSE_EVENTHUBS_CONNECTION_STRING")
    assert len(err.strip().splitlines()) == 1
    assert KEY not in err
