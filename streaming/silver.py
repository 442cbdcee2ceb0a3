"""Bronze rows to Silver: parse against the event contract, validate, normalize.

Every Bronze row ends up in exactly one of two places: a typed Silver candidate, or a
quarantine row with a reason code and a readable detail. Checks run in a fixed order and
the first failing one names the reason, so each rejected message has one reason.

Reason codes (stable: dashboards and runbooks refer to them):

``invalid_encoding``  the payload is not UTF-8
``empty_payload``     nothing, or only white space, was received
``payload_too_large`` larger than the contract allows (1 MiB)
``malformed_json``    not parseable as JSON
``not_an_object``     JSON, but not an object
``missing_field``     a required field is absent or null
``invalid_type``      a field has the wrong JSON type
``unsupported_schema_version``  a schema version this job does not know
``invalid_enum``      event type, channel, region, payment method or currency unknown
``invalid_timestamp`` ``occurred_at`` is not ISO-8601 with an offset
``timestamp_out_of_range``  before 2020 or more than the allowed skew in the future
``negative_amount``   an amount or item price below zero
``invalid_items``     items with a non-positive quantity or missing sku
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType

from streaming.events import (
    CHANNELS,
    EVENT_TYPES,
    PAYMENT_METHODS,
    REGIONS,
    SCHEMA_VERSION,
)
from streaming.tables import LINE_ITEM, SOURCE_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MAX_PAYLOAD_BYTES = 1024 * 1024
REQUIRED_FIELDS = (
    "event_id",
    "event_type",
    "occurred_at",
    "order_id",
    "channel",
    "region",
    "schema_version",
)
STRING_FIELDS = (
    "event_id",
    "event_type",
    "occurred_at",
    "order_id",
    "channel",
    "region",
    "customer_id",
    "payment_method",
    "currency",
    "reason",
)
ISO_8601_WITH_OFFSET = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$"
)
EARLIEST_EVENT = "2020-01-01 00:00:00"
ITEMS_TYPE = ArrayType(LINE_ITEM).simpleString()


@dataclass(frozen=True)
class ValidationSettings:
    """How strict Silver is. ``future_skew`` bounds how far ahead of ingestion an
    event may claim to have happened (clock skew on the application's hosts)."""

    future_skew: timedelta = timedelta(minutes=5)
    max_payload_bytes: int = MAX_PAYLOAD_BYTES


def _field(doc: Column, name: str) -> Column:
    return F.try_variant_get(doc, f"$.{name}", "variant")


def _json_type(doc: Column, name: str) -> Column:
    """The JSON type of a field: ``STRING``, ``BIGINT``, ``DECIMAL(..)``, ``VOID``...

    Null when the field is absent.
    """
    return F.schema_of_variant(_field(doc, name))


def _first(*checks: tuple[Column, str, Column]) -> Column:
    """The first failing check as a struct(reason_code, reason_detail), else null."""
    return F.coalesce(
        *(
            F.when(failed, F.struct(F.lit(code).alias("code"), detail.alias("detail")))
            for failed, code, detail in checks
        )
    )


def _first_of(*candidates: Column) -> Column:
    return F.coalesce(*candidates)


def _text(name: str) -> Column:
    return F.col(f"fields.{name}")


def classify(
    bronze: DataFrame, settings: ValidationSettings | None = None
) -> DataFrame:
    """Bronze rows with a ``rejection`` struct (null when valid) and normalized fields.

    The result keeps every Bronze column and adds ``fields`` (the contract's fields,
    normalized) and ``rejection``.
    """
    settings = settings or ValidationSettings()
    text = F.col("payload").cast("string")
    doc = F.try_parse_json(text)
    decoded = bronze.withColumn("payload_text", text).withColumn("doc", doc)

    doc_col = F.col("doc")
    missing = _first_of(
        *(
            F.when(
                _field(doc_col, name).isNull() | (_json_type(doc_col, name) == "VOID"),
                F.lit(name),
            )
            for name in REQUIRED_FIELDS
        )
    )
    wrong_string = _first_of(
        *(
            F.when(
                (_json_type(doc_col, name) != "STRING")
                & (_json_type(doc_col, name) != "VOID"),
                F.concat(
                    F.lit(f"field '{name}' must be a string, got "),
                    _json_type(doc_col, name),
                ),
            )
            for name in STRING_FIELDS
        )
    )
    version_type = _json_type(doc_col, "schema_version")
    amount_type = _json_type(doc_col, "amount")
    items_type = _json_type(doc_col, "items")
    wrong_type = _first_of(
        wrong_string,
        F.when(
            ~version_type.isin("BIGINT", "INT", "SMALLINT", "TINYINT"),
            F.concat(
                F.lit("field 'schema_version' must be an integer, got "), version_type
            ),
        ),
        F.when(
            amount_type.isNotNull()
            & (amount_type != "VOID")
            & ~(
                amount_type.startswith("DECIMAL") | amount_type.isin("BIGINT", "DOUBLE")
            ),
            F.concat(F.lit("field 'amount' must be a number, got "), amount_type),
        ),
        F.when(
            items_type.isNotNull()
            & (items_type != "VOID")
            & ~items_type.startswith("ARRAY"),
            F.concat(F.lit("field 'items' must be an array, got "), items_type),
        ),
    )

    fields = F.struct(
        F.trim(F.try_variant_get(doc_col, "$.event_id", "string")).alias("event_id"),
        F.lower(F.trim(F.try_variant_get(doc_col, "$.event_type", "string"))).alias(
            "event_type"
        ),
        F.trim(F.try_variant_get(doc_col, "$.occurred_at", "string")).alias(
            "occurred_at_text"
        ),
        F.trim(F.try_variant_get(doc_col, "$.order_id", "string")).alias("order_id"),
        F.lower(F.trim(F.try_variant_get(doc_col, "$.channel", "string"))).alias(
            "channel"
        ),
        F.upper(F.trim(F.try_variant_get(doc_col, "$.region", "string"))).alias(
            "region"
        ),
        F.try_variant_get(doc_col, "$.schema_version", "int").alias("schema_version"),
        F.trim(F.try_variant_get(doc_col, "$.customer_id", "string")).alias(
            "customer_id"
        ),
        F.lower(F.trim(F.try_variant_get(doc_col, "$.payment_method", "string"))).alias(
            "payment_method"
        ),
        F.try_variant_get(doc_col, "$.amount", "decimal(18,2)").alias("amount"),
        F.upper(F.trim(F.try_variant_get(doc_col, "$.currency", "string"))).alias(
            "currency"
        ),
        F.try_variant_get(doc_col, "$.items", ITEMS_TYPE).alias("items"),
        F.try_variant_get(doc_col, "$.reason", "string").alias("reason"),
    )
    typed = decoded.withColumn("fields", F.when(doc_col.isNotNull(), fields))
    occurred_at = F.try_to_timestamp(_text("occurred_at_text"))
    typed = typed.withColumn("occurred_at_parsed", occurred_at)

    def enum_check(name: str, allowed: tuple[str, ...]) -> Column:
        value = _text(name)
        return F.when(
            value.isNotNull() & ~value.isin(*allowed),
            F.concat(F.lit(f"field '{name}' has unknown value '"), value, F.lit("'")),
        )

    bad_enum = _first_of(
        enum_check("event_type", EVENT_TYPES),
        enum_check("channel", CHANNELS),
        enum_check("region", REGIONS),
        enum_check("payment_method", PAYMENT_METHODS),
        F.when(
            _text("currency").isNotNull() & ~_text("currency").rlike("^[A-Z]{3}$"),
            F.concat(
                F.lit("field 'currency' is not an ISO 4217 code: '"),
                _text("currency"),
                F.lit("'"),
            ),
        ),
    )
    items = _text("items")
    bad_items = F.exists(
        items,
        lambda item: (
            item["quantity"].isNull() | (item["quantity"] <= 0) | item["sku"].isNull()
        ),
    )
    negative_item = F.exists(items, lambda item: item["unit_price"] < 0)
    skew_seconds = int(settings.future_skew.total_seconds())
    latest_allowed = F.col("ingested_at") + F.expr(f"INTERVAL {skew_seconds} SECONDS")

    rejection = _first(
        (
            F.when(F.col("payload").isNull(), F.lit(False)).otherwise(
                ~F.is_valid_utf8(text)
            ),
            "invalid_encoding",
            F.lit("payload is not valid UTF-8"),
        ),
        (
            F.col("payload").isNull() | text.rlike(r"^\s*$"),
            "empty_payload",
            F.lit("message has no content"),
        ),
        (
            F.octet_length(F.col("payload")) > settings.max_payload_bytes,
            "payload_too_large",
            F.concat(
                F.lit("payload is "),
                F.octet_length(F.col("payload")).cast("string"),
                F.lit(f" bytes; the limit is {settings.max_payload_bytes}"),
            ),
        ),
        (doc_col.isNull(), "malformed_json", F.lit("payload is not valid JSON")),
        (
            ~F.schema_of_variant(doc_col).startswith("OBJECT"),
            "not_an_object",
            F.concat(
                F.lit("expected a JSON object, got "), F.schema_of_variant(doc_col)
            ),
        ),
        (
            missing.isNotNull(),
            "missing_field",
            F.concat(F.lit("required field '"), missing, F.lit("' is missing or null")),
        ),
        (wrong_type.isNotNull(), "invalid_type", wrong_type),
        (
            _text("schema_version") != SCHEMA_VERSION,
            "unsupported_schema_version",
            F.concat(
                F.lit("schema_version "),
                _text("schema_version").cast("string"),
                F.lit(f" is not supported (this job reads {SCHEMA_VERSION})"),
            ),
        ),
        (bad_enum.isNotNull(), "invalid_enum", bad_enum),
        (
            ~_text("occurred_at_text").rlike(ISO_8601_WITH_OFFSET)
            | F.col("occurred_at_parsed").isNull(),
            "invalid_timestamp",
            F.concat(
                F.lit("occurred_at '"),
                _text("occurred_at_text"),
                F.lit("' is not an ISO-8601 timestamp with an offset"),
            ),
        ),
        (
            (F.col("occurred_at_parsed") < F.lit(EARLIEST_EVENT).cast("timestamp"))
            | (F.col("occurred_at_parsed") > latest_allowed),
            "timestamp_out_of_range",
            F.concat(
                F.lit("occurred_at "),
                F.col("occurred_at_parsed").cast("string"),
                F.lit(" UTC is before 2020 or more than "),
                F.lit(str(skew_seconds)),
                F.lit("s after ingestion at "),
                F.col("ingested_at").cast("string"),
            ),
        ),
        (
            (_text("amount") < 0) | F.coalesce(negative_item, F.lit(False)),
            "negative_amount",
            F.when(
                _text("amount") < 0,
                F.concat(
                    F.lit("amount "),
                    _text("amount").cast("string"),
                    F.lit(" is negative"),
                ),
            ).otherwise(F.lit("an item has a negative unit_price")),
        ),
        (
            F.coalesce(bad_items, F.lit(False)),
            "invalid_items",
            F.lit("an item has no sku or a quantity that is not positive"),
        ),
    )
    return typed.withColumn("rejection", rejection)


def quarantine_rows(classified: DataFrame) -> DataFrame:
    """The rejected rows in the ``silver.quarantine`` shape."""
    return classified.where(F.col("rejection").isNotNull()).select(
        "payload",
        F.when(F.is_valid_utf8(F.col("payload_text")), F.col("payload_text"))
        .otherwise(F.make_valid_utf8(F.col("payload_text")))
        .alias("payload_text"),
        F.col("rejection.code").alias("reason_code"),
        F.col("rejection.detail").alias("reason_detail"),
        *SOURCE_COLUMNS,
        "ingested_at",
        "batch_id",
    )


def silver_candidates(classified: DataFrame) -> DataFrame:
    """The accepted rows, typed and normalized to the ``silver.order_events`` shape
    (without ``watermark_at_arrival``, which the pipeline adds)."""
    return classified.where(F.col("rejection").isNull()).select(
        _text("event_id").alias("event_id"),
        _text("event_type").alias("event_type"),
        F.col("occurred_at_parsed").alias("occurred_at"),
        F.to_date(F.col("occurred_at_parsed")).alias("event_date"),
        _text("order_id").alias("order_id"),
        _text("channel").alias("channel"),
        _text("region").alias("region"),
        _text("schema_version").alias("schema_version"),
        _text("customer_id").alias("customer_id"),
        _text("payment_method").alias("payment_method"),
        _text("amount").alias("amount"),
        F.coalesce(_text("currency"), F.lit("BRL")).alias("currency"),
        _text("items").alias("items"),
        _text("reason").alias("reason"),
        "source",
        "source_topic",
        "source_partition",
        "source_offset",
        "source_file",
        "source_line",
        "ingested_at",
        "batch_id",
    )
