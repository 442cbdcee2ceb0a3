"""The whole pipeline reading the real local broker, through restarts and odd messages.

One scenario, shared by the tests of this module (each micro-batch costs seconds):

1. produce traffic (bad messages and duplicates mixed in), start the stream, let it
   catch up;
2. stop the broker while the stream runs, start it again, produce more plus odd
   messages (2 MB, empty, non-UTF-8 bytes, keyless), let the stream catch up;
3. stop the stream, produce more, start a new stream on the same checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from pyspark.sql import functions as F

from streaming.events import encode
from streaming.generator import GeneratedMessage, OrderTrafficGenerator, TrafficConfig
from streaming.kafka_config import KafkaSourceSettings
from streaming.pipeline import OrderPipeline, PipelineSettings
from streaming.produce import KafkaTransport, ProduceLimits, produce
from streaming.sources import kafka_stream
from streaming.tables import TableLayout
from tests.kafka.conftest import broker
from tests.support.kpi_reference import kpi_mismatches, reference_kpis
from tests.support.traffic import gold_by_key

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

pytestmark = [pytest.mark.kafka, pytest.mark.spark]

START = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)
TRAFFIC = TrafficConfig(
    start=START, seed=23, orders_per_minute=90, bad_share=0.06, duplicate_share=0.05
)
END_OF_TRAFFIC = START + timedelta(minutes=30)
PHASES = (400, 300, 300)


@dataclass
class Scenario:
    layout: TableLayout
    topic: str
    bootstrap: str
    generated: list[GeneratedMessage]
    odd: dict[str, tuple[bytes | None, bytes]]

    @property
    def total(self) -> int:
        return len(self.generated) + len(self.odd)


def odd_messages(sample: GeneratedMessage) -> dict[str, tuple[bytes | None, bytes]]:
    """(key, value) of messages a broken or hostile sender could produce."""
    assert sample.event is not None
    keyless_valid = encode({**sample.event.to_dict(), "event_id": "evt-keyless-valid"})
    return {
        "huge": (b"ord-huge", b'{"event_id":"' + b"x" * (2 * 1024 * 1024) + b'"}'),
        "empty": (b"ord-empty", b""),
        "not_utf8": (b"ord-bytes", b'{"event_id":"\xff\xfe\xc3\x28"}'),
        "keyless_bad": (None, b"{not json"),
        "keyless_valid": (None, keyless_valid),
    }


def send_odd(
    bootstrap: str, topic: str, odd: dict[str, tuple[bytes | None, bytes]]
) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": 5_000_000}
    )
    failures: list[str] = []
    for key, value in odd.values():
        producer.produce(
            topic,
            value=value,
            key=key,
            on_delivery=lambda error, _m: (
                failures.append(str(error)) if error else None
            ),
        )
    assert producer.flush(30) == 0
    assert failures == []


def wait_for_bronze(
    spark: SparkSession, layout: TableLayout, rows: int, query: StreamingQuery
) -> None:
    """Wait until batches holding ``rows`` Bronze rows are completely written (their
    health row is the last write), so stopping the query then interrupts nothing."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if query.exception() is not None:
            raise AssertionError(f"streaming query failed: {query.exception()}")
        health = layout.read(spark, "gold.pipeline_health")
        written = health.agg(F.sum("bronze_rows")).first()
        if written is not None and (written[0] or 0) >= rows:
            return
        time.sleep(1.0)
    raise AssertionError(f"the pipeline did not write {rows} Bronze rows in time")


@pytest.fixture(scope="module")
def scenario(
    spark: SparkSession,
    kafka_bootstrap: str,
    new_topic: Callable[[int], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Scenario:
    topic = new_topic(2)
    layout = TableLayout(Path(tmp_path_factory.mktemp("kafka-pipeline")))
    settings = KafkaSourceSettings(
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
        max_offsets_per_trigger=5000,
        request_timeout_ms=20_000,
        session_timeout_ms=10_000,
    )
    generator = OrderTrafficGenerator(TRAFFIC)
    generated: list[GeneratedMessage] = []

    def send(count: int) -> None:
        transport = KafkaTransport(settings)
        summary = produce(
            generator,
            transport,
            ProduceLimits(rate=None, count=count),
            clock=lambda: END_OF_TRAFFIC,
            keep_messages=True,
        )
        transport.close()
        assert summary.delivered == count
        generated.extend(summary.messages)

    def start_stream() -> StreamingQuery:
        # Traffic is produced far faster than real time, so a few milliseconds of
        # skew between the two partitions at a trigger are minutes of event time.
        # A wide lateness keeps every event on time, so Gold can be compared with
        # the reference; lateness itself is tested in tests/streaming.
        pipeline = OrderPipeline(
            spark, layout, PipelineSettings(allowed_lateness=timedelta(hours=6))
        )
        return pipeline.start(
            kafka_stream(spark, settings.spark_options()), trigger_seconds=2.0
        )

    send(PHASES[0])
    query = start_stream()
    wait_for_bronze(spark, layout, PHASES[0], query)

    broker("stop")
    time.sleep(3)  # the running stream polls a dead broker for a while
    broker("start")
    send(PHASES[1])
    odd = odd_messages(next(m for m in generated if m.event is not None))
    send_odd(kafka_bootstrap, topic, odd)
    wait_for_bronze(spark, layout, PHASES[0] + PHASES[1] + len(odd), query)
    query.stop()

    send(PHASES[2])
    query = start_stream()
    try:
        wait_for_bronze(spark, layout, sum(PHASES) + len(odd), query)
        query.processAllAvailable()
    finally:
        query.stop()
    return Scenario(layout, topic, kafka_bootstrap, generated, odd)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets-check"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in (0, 1)
        }
    finally:
        consumer.close()


def test_bronze_has_every_message_once_with_its_coordinates(
    spark: SparkSession, scenario: Scenario
) -> None:
    bronze = scenario.layout.read(spark, "bronze.order_events")
    rows = bronze.select(
        "source", "source_topic", "source_partition", "source_offset",
        "source_timestamp", "source_key", "payload",
    ).collect()  # fmt: skip

    assert len(rows) == scenario.total
    coordinates = {(r["source_partition"], r["source_offset"]) for r in rows}
    expected = {
        (partition, offset)
        for partition, end in end_offsets(scenario.bootstrap, scenario.topic).items()
        for offset in range(end)
    }
    assert coordinates == expected
    assert {r["source"] for r in rows} == {"kafka"}
    assert {r["source_topic"] for r in rows} == {scenario.topic}
    assert all(r["source_timestamp"] is not None for r in rows)
    received = sorted(
        (
            bytes(r["source_key"]) if r["source_key"] is not None else b"",
            bytes(r["payload"] or b""),
        )
        for r in rows
    )
    sent = sorted(
        [(m.key, m.value) for m in scenario.generated]
        + [(key or b"", value) for key, value in scenario.odd.values()]
    )
    assert received == sent


def test_every_message_is_accounted_for_and_nothing_is_doubled(
    spark: SparkSession, scenario: Scenario
) -> None:
    layout = scenario.layout
    silver = layout.read(spark, "silver.order_events")
    quarantine = layout.read(spark, "silver.quarantine").count()
    health = layout.read(spark, "gold.pipeline_health").collect()

    silver_rows = silver.count()
    assert silver.select("event_id").distinct().count() == silver_rows
    duplicates = sum(r["duplicates_dropped"] for r in health)
    assert silver_rows + quarantine + duplicates == scenario.total
    for row in health:
        assert row["bronze_rows"] == (
            row["silver_rows"] + row["quarantined_rows"] + row["duplicates_dropped"]
        )
    valid_ids = {m.event.event_id for m in scenario.generated if m.event is not None}
    assert silver_rows == len(valid_ids) + 1  # and the keyless valid event
    assert len({r["batch_id"] for r in health}) == len(health)


def test_gold_equals_an_independent_computation(
    spark: SparkSession, scenario: Scenario
) -> None:
    events = [m.event for m in scenario.generated if m.event is not None]
    keyless = scenario.odd["keyless_valid"][1]
    expected = reference_kpis([*events, _event_from(events[0], keyless)])
    gold = gold_by_key(spark, scenario.layout)

    assert set(gold) == set(expected)
    assert kpi_mismatches(gold, expected) == []


def test_odd_messages_are_quarantined_with_their_reasons(
    spark: SparkSession, scenario: Scenario
) -> None:
    quarantine = scenario.layout.read(spark, "silver.quarantine")
    reason_by_key = {
        (
            bytes(r["source_key"]) if r["source_key"] is not None else None,
            r["reason_code"],
        )
        for r in quarantine.where(
            F.col("source_key").isNull()
            | F.col("source_key").cast("string").startswith("ord-")
        )
        .select("source_key", "reason_code")
        .collect()
    }

    assert (b"ord-huge", "payload_too_large") in reason_by_key
    assert (b"ord-empty", "empty_payload") in reason_by_key
    assert (b"ord-bytes", "invalid_encoding") in reason_by_key
    assert (None, "malformed_json") in reason_by_key
    bad_defects = sorted(m.defect or "" for m in scenario.generated if m.kind == "bad")
    generated_reasons = sorted(
        r["reason_code"]
        for r in quarantine.where(
            F.col("source_key").cast("string").startswith("bad-")
        ).collect()
    )
    assert generated_reasons == bad_defects


def test_the_restarted_stream_resumed_from_its_checkpoint(
    spark: SparkSession, scenario: Scenario
) -> None:
    health = (
        scenario.layout.read(spark, "gold.pipeline_health")
        .orderBy("batch_id")
        .collect()
    )
    bronze = scenario.layout.read(spark, "bronze.order_events")

    batch_ids = [r["batch_id"] for r in health]
    assert batch_ids == list(range(len(batch_ids)))
    per_batch = {r["batch_id"]: r["bronze_rows"] for r in health}
    assert sum(per_batch.values()) == scenario.total
    last_batch = bronze.where(F.col("batch_id") == batch_ids[-1]).count()
    assert last_batch <= PHASES[2]  # the new query read only what it had not read


def _event_from(template: Any, payload: bytes) -> Any:
    import json
    from dataclasses import replace

    return replace(template, event_id=json.loads(payload)["event_id"])
