"""Silver validation: every reason code, with its detail, on real Spark."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from streaming.silver import classify, quarantine_rows, silver_candidates

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

INGESTED_AT = datetime(2026, 3, 2, 20, 1, tzinfo=UTC)
GOOD: dict[str, Any] = {
    "event_id": "e-1",
    "event_type": "Order_Created",
    "occurred_at": "2026-03-02T17:00:00.447-03:00",
    "order_id": "o-1",
    "channel": "APP",
    "region": "sp",
    "schema_version": 1,
    "payment_method": "PIX",
    "amount": 12.5,
    "items": [{"sku": "A", "quantity": 2, "unit_price": 6.25}],
    "unknown_field": "kept in Bronze, ignored after",
}


def variant(**changes: Any) -> bytes:
    body = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return json.dumps(body).encode()


CASES: list[tuple[bytes, str, str]] = [
    (b"\xff\xfe{}", "invalid_encoding", "not valid UTF-8"),
    (b"", "empty_payload", "no content"),
    (b"  \t ", "empty_payload", "no content"),
    (b"x" * (1024 * 1024 + 1), "payload_too_large", "1048577 bytes"),
    (b'{"event_id": ', "malformed_json", "not valid JSON"),
    (b"[1, 2]", "not_an_object", "ARRAY"),
    (variant(order_id=...), "missing_field", "'order_id'"),
    (variant(region=None), "missing_field", "'region'"),
    (variant(amount="twelve"), "invalid_type", "'amount' must be a number"),
    (
        variant(schema_version="v1"),
        "invalid_type",
        "'schema_version' must be an integer",
    ),
    (variant(event_id=5), "invalid_type", "'event_id' must be a string"),
    (variant(items="none"), "invalid_type", "'items' must be an array"),
    (variant(schema_version=2), "unsupported_schema_version", "schema_version 2"),
    (variant(channel="fax"), "invalid_enum", "'channel' has unknown value 'fax'"),
    (variant(region="XX"), "invalid_enum", "'region' has unknown value 'XX'"),
    (variant(currency="reais"), "invalid_enum", "ISO 4217"),
    (variant(occurred_at="yesterday"), "invalid_timestamp", "'yesterday'"),
    (variant(occurred_at="2026-03-02T17:00:00"), "invalid_timestamp", "offset"),
    (variant(occurred_at="2019-12-31T23:00:00Z"), "timestamp_out_of_range", "2019"),
    (variant(occurred_at="2026-03-02T20:07:00Z"), "timestamp_out_of_range", "after"),
    (variant(amount=-1), "negative_amount", "-1.00"),
    (
        variant(items=[{"sku": "A", "quantity": 1, "unit_price": -3}]),
        "negative_amount",
        "item",
    ),
    (
        variant(items=[{"sku": "A", "quantity": 0, "unit_price": 1}]),
        "invalid_items",
        "quantity",
    ),
]


@pytest.fixture(scope="module")
def classified(spark: SparkSession) -> Any:
    payloads = [variant(), *(payload for payload, _, _ in CASES)]
    rows = [
        (payload, "file", None, None, None, None, None, "f.jsonl", line, INGESTED_AT, 0)
        for line, payload in enumerate(payloads)
    ]
    bronze = spark.createDataFrame(
        rows,
        "payload binary, source string, source_topic string, source_partition int, "
        "source_offset long, source_timestamp timestamp, source_key binary, "
        "source_file string, source_line int, ingested_at timestamp, batch_id long",
    )
    return classify(bronze).cache()


def test_each_bad_message_gets_its_reason_and_a_readable_detail(
    classified: Any,
) -> None:
    rejected = {
        row["source_line"]: (row["reason_code"], row["reason_detail"])
        for row in quarantine_rows(classified).collect()
    }
    for line, (_, code, detail) in enumerate(CASES, start=1):
        assert rejected[line][0] == code, (line, rejected[line])
        assert detail in rejected[line][1], (line, rejected[line])
    assert 0 not in rejected
    assert len(rejected) == len(CASES)


def test_a_valid_event_is_typed_and_normalized(classified: Any) -> None:
    [event] = silver_candidates(classified).collect()
    assert event["event_type"] == "order_created"
    assert event["channel"] == "app"
    assert event["region"] == "SP"
    assert event["payment_method"] == "pix"
    assert event["currency"] == "BRL"
    assert event["occurred_at"].astimezone(UTC) == datetime(
        2026, 3, 2, 20, 0, 0, 447000, tzinfo=UTC
    )
    assert event["amount"] == Decimal("12.50")
    assert event["items"][0]["quantity"] == 2


def test_quarantine_keeps_the_raw_payload(classified: Any) -> None:
    rows = {row["source_line"]: row for row in quarantine_rows(classified).collect()}
    assert bytes(rows[1]["payload"]) == b"\xff\xfe{}"
    assert rows[5]["payload_text"] == '{"event_id": '
