"""The Kafka source settings and the Event Hubs option builder (no broker needed)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from streaming.kafka_config import (
    KafkaSettingsError,
    KafkaSourceSettings,
    Secret,
    add_source_arguments,
    parse_connection_string,
    settings_from_args,
)

KEY = "c2VjcmV0LWtleS1kby1ub3Qtc2hvdw=="
NAMESPACE_CS = (
    "Endpoint=sb://orders-prod.servicebus.windows.net/;"
    f"SharedAccessKeyName=listen-only;SharedAccessKey={KEY}"
)
HUB_CS = NAMESPACE_CS + ";EntityPath=order-events-prod"


def test_event_hubs_connection_string_becomes_exactly_the_documented_options() -> None:
    settings = KafkaSourceSettings.from_env(
        {"ORDERPULSE_EVENTHUBS_CONNECTION_STRING": HUB_CS}
    )

    assert settings.spark_options() == {
        "kafka.bootstrap.servers": "orders-prod.servicebus.windows.net:9093",
        "subscribe": "order-events-prod",
        "startingOffsets": "earliest",
        "failOnDataLoss": "true",
        "maxOffsetsPerTrigger": "100000",
        "groupIdPrefix": "orderpulse",
        "kafka.request.timeout.ms": "60000",
        "kafka.session.timeout.ms": "30000",
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "PLAIN",
        "kafka.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="$ConnectionString" password="{HUB_CS}";'
        ),
    }


def test_databricks_gets_the_shaded_login_module() -> None:
    settings = KafkaSourceSettings.from_env(
        {
            "ORDERPULSE_EVENTHUBS_CONNECTION_STRING": HUB_CS,
            "DATABRICKS_RUNTIME_VERSION": "17.3",
        }
    )

    jaas = settings.spark_options()["kafka.sasl.jaas.config"]
    assert jaas.startswith(
        "kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule required "
    )


def test_plain_bootstrap_has_no_security_options() -> None:
    settings = KafkaSourceSettings.from_env(
        {
            "ORDERPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:29092",
            "ORDERPULSE_TOPIC": "orders-test",
            "ORDERPULSE_CONSUMER_GROUP": "orderpulse-ci",
            "ORDERPULSE_STARTING_OFFSETS": "latest",
            "ORDERPULSE_MAX_OFFSETS_PER_TRIGGER": "0",
            "ORDERPULSE_FAIL_ON_DATA_LOSS": "false",
        }
    )

    assert settings.spark_options() == {
        "kafka.bootstrap.servers": "127.0.0.1:29092",
        "subscribe": "orders-test",
        "startingOffsets": "latest",
        "failOnDataLoss": "false",
        "kafka.group.id": "orderpulse-ci",
        "kafka.request.timeout.ms": "60000",
        "kafka.session.timeout.ms": "30000",
    }
    assert settings.client_config() == {
        "bootstrap.servers": "127.0.0.1:29092",
        "request.timeout.ms": 60000,
    }


def test_nothing_configured_means_the_local_broker() -> None:
    settings = KafkaSourceSettings.from_env({})

    assert settings.servers == "127.0.0.1:19092"
    assert settings.topic == "order-events"
    assert settings.max_offsets_per_trigger == 100_000
    assert settings.fail_on_data_loss is True
    assert KafkaSourceSettings.from_env({"ORDERPULSE_KAFKA_PORT": "29999"}).servers == (
        "127.0.0.1:29999"
    )


def test_on_databricks_a_missing_source_is_an_error_naming_every_place_looked() -> None:
    with pytest.raises(KafkaSettingsError) as caught:
        KafkaSourceSettings.from_env({"DATABRICKS_RUNTIME_VERSION": "17.3"})

    message = str(caught.value)
    for name in (
        "ORDERPULSE_EVENTHUBS_CONNECTION_STRING",
        "ORDERPULSE_EVENTHUBS_CONNECTION_STRING_FILE",
        "ORDERPULSE_KAFKA_BOOTSTRAP",
    ):
        assert name in message


def test_the_producer_client_config_authenticates_like_the_source() -> None:
    settings = KafkaSourceSettings.from_env(
        {"ORDERPULSE_EVENTHUBS_CONNECTION_STRING": HUB_CS}
    )

    assert settings.client_config() == {
        "bootstrap.servers": "orders-prod.servicebus.windows.net:9093",
        "request.timeout.ms": 60000,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": HUB_CS,
    }


def test_the_secret_never_shows_in_repr_describe_or_redacted_options(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="streaming.kafka_config")
    settings = KafkaSourceSettings.from_env(
        {"ORDERPULSE_EVENTHUBS_CONNECTION_STRING": HUB_CS}
    )

    shown = " ".join(
        (
            repr(settings),
            str(settings),
            settings.describe(),
            repr(settings.redacted_spark_options()),
            repr(settings.eventhubs),
            caplog.text,
        )
    )
    assert KEY not in shown
    assert "listen-only" not in shown
    assert "orders-prod.servicebus.windows.net" in shown
    assert (
        'password="***"' in settings.redacted_spark_options()["kafka.sasl.jaas.config"]
    )
    assert repr(Secret(KEY)) == "Secret('***')"


@pytest.mark.parametrize(
    ("connection_string", "complaint"),
    [
        (f"SharedAccessKeyName=a;SharedAccessKey={KEY}", "has no 'Endpoint'"),
        (
            f"Endpoint=orders;SharedAccessKeyName=a;SharedAccessKey={KEY}",
            "'Endpoint' must",
        ),
        ("Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=a", "needs"),
        (
            "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;"
            + KEY.rstrip("="),
            "Name=value pairs",
        ),
        (
            "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;"
            f'SharedAccessKey="{KEY}"',
            "quote",
        ),
    ],
)
def test_bad_connection_strings_are_refused_without_echoing_them(
    connection_string: str, complaint: str
) -> None:
    with pytest.raises(KafkaSettingsError) as caught:
        KafkaSourceSettings.from_env(
            {"ORDERPULSE_EVENTHUBS_CONNECTION_STRING": connection_string}
        )

    message = str(caught.value)
    assert complaint in message
    assert "ORDERPULSE_EVENTHUBS_CONNECTION_STRING" in message
    assert KEY not in message
    assert KEY not in repr(caught.value)
    assert caught.value.retryable is False


def test_shared_access_signature_is_accepted() -> None:
    connection = parse_connection_string(
        Secret(
            "Endpoint=sb://Orders.servicebus.windows.net/;"
            "SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1&skn=z"
        ),
        "test",
    )

    assert connection.bootstrap_servers == "orders.servicebus.windows.net:9093"
    assert connection.entity_path is None


def test_connection_string_from_a_mounted_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "eventhubs"
    secret_file.write_text(NAMESPACE_CS + "\n")

    settings = KafkaSourceSettings.from_env(
        {
            "ORDERPULSE_EVENTHUBS_CONNECTION_STRING_FILE": str(secret_file),
            "ORDERPULSE_TOPIC": "orders",
        }
    )

    assert settings.topic == "orders"
    assert settings.client_config()["sasl.password"] == NAMESPACE_CS


def test_unreadable_secret_file_names_the_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(
        KafkaSettingsError, match="ORDERPULSE_EVENTHUBS_CONNECTION_STRING_FILE"
    ):
        KafkaSourceSettings.from_env(
            {"ORDERPULSE_EVENTHUBS_CONNECTION_STRING_FILE": str(missing)}
        )


def test_topic_conflicting_with_the_entity_path_is_refused() -> None:
    with pytest.raises(KafkaSettingsError, match="differs from the event hub"):
        KafkaSourceSettings.from_env(
            {
                "ORDERPULSE_EVENTHUBS_CONNECTION_STRING": HUB_CS,
                "ORDERPULSE_TOPIC": "other",
            }
        )


def test_both_a_broker_and_a_connection_string_is_ambiguous() -> None:
    with pytest.raises(KafkaSettingsError, match="keep one"):
        KafkaSourceSettings.from_env(
            {
                "ORDERPULSE_EVENTHUBS_CONNECTION_STRING": HUB_CS,
                "ORDERPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
            }
        )


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"ORDERPULSE_KAFKA_BOOTSTRAP": "localhost"}, "not host:port"),
        ({"ORDERPULSE_TOPIC": "orders/events"}, "topic"),
        ({"ORDERPULSE_STARTING_OFFSETS": "yesterday"}, "starting offsets"),
        ({"ORDERPULSE_MAX_OFFSETS_PER_TRIGGER": "-5"}, "must be positive"),
        ({"ORDERPULSE_MAX_OFFSETS_PER_TRIGGER": "lots"}, "not an integer"),
        ({"ORDERPULSE_FAIL_ON_DATA_LOSS": "maybe"}, "true or false"),
    ],
)
def test_invalid_settings_say_what_is_wrong(
    env: dict[str, str], complaint: str
) -> None:
    with pytest.raises(KafkaSettingsError, match=complaint):
        KafkaSourceSettings.from_env(env)


def test_command_line_options_override_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    args = parser.parse_args(
        [
            "--kafka-bootstrap",
            "127.0.0.1:19092",
            "--topic",
            "orders-cli",
            "--max-offsets-per-trigger",
            "0",
            "--no-fail-on-data-loss",
        ]
    )

    settings = settings_from_args(
        args,
        {"ORDERPULSE_EVENTHUBS_CONNECTION_STRING": HUB_CS, "ORDERPULSE_TOPIC": "x"},
    )

    assert settings.uses_eventhubs is False
    assert settings.servers == "127.0.0.1:19092"
    assert settings.topic == "orders-cli"
    assert settings.max_offsets_per_trigger is None
    assert settings.fail_on_data_loss is False


def test_help_names_the_environment_variables_and_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)

    text = parser.format_help()

    for fragment in (
        "ORDERPULSE_KAFKA_BOOTSTRAP",
        "ORDERPULSE_TOPIC",
        "100000",
        "earliest",
    ):
        assert fragment in text
