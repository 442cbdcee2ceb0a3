"""Where the Kafka source reads from: a plain broker or Event Hubs' Kafka endpoint.

The same settings serve the streaming job (as Spark Kafka source options, through
:meth:`KafkaSourceSettings.spark_options`) and the producer (as confluent-kafka client
settings, through :meth:`KafkaSourceSettings.client_config`), so both always talk to
the same place in the same way.

Event Hubs speaks the Kafka protocol on port 9093 over TLS with SASL PLAIN: the user
name is the literal ``$ConnectionString`` and the password is the namespace (or event
hub) connection string. The connection string is a secret: it is held in a
:class:`Secret`, never shown by ``repr``, never put into a log line or an exception
message.

Environment variables read by :meth:`KafkaSourceSettings.from_env` (the options of
:func:`add_source_arguments` override them):

- ``ORDERPULSE_EVENTHUBS_CONNECTION_STRING``: Event Hubs connection string (secret).
- ``ORDERPULSE_EVENTHUBS_CONNECTION_STRING_FILE``: a file holding it (a secret store
  mounted as a file).
- ``ORDERPULSE_KAFKA_BOOTSTRAP``: plain Kafka ``host:port[,host:port]``. When neither
  this nor a connection string is set: ``127.0.0.1:19092`` (the local broker of
  ``scripts/kafka``, port from ``ORDERPULSE_KAFKA_PORT``), except on Databricks.
- ``ORDERPULSE_TOPIC``: topic / event hub; default the connection string's
  ``EntityPath``, else ``order-events``.
- ``ORDERPULSE_CONSUMER_GROUP``: Kafka group id; default none (Spark makes a unique
  one per query, prefixed ``orderpulse``).
- ``ORDERPULSE_STARTING_OFFSETS``: ``earliest`` (default), ``latest`` or JSON.
- ``ORDERPULSE_MAX_OFFSETS_PER_TRIGGER``: default 100000; ``0`` means no limit.
- ``ORDERPULSE_FAIL_ON_DATA_LOSS``: ``true`` (default) or ``false``.
- ``ORDERPULSE_KAFKA_SHADED``: ``true`` on Databricks, whose Kafka classes live under
  ``kafkashaded.`` (automatic when ``DATABRICKS_RUNTIME_VERSION`` is set).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from exporters.config import Secret

log = logging.getLogger(__name__)

EVENTHUBS_KAFKA_PORT: Final = 9093
EVENTHUBS_USERNAME: Final = "$ConnectionString"
PLAIN_LOGIN_MODULE: Final = "org.apache.kafka.common.security.plain.PlainLoginModule"
# Databricks relocates the Kafka client classes under this package prefix.
SHADED_PREFIX: Final = "kafkashaded."
LOCAL_BOOTSTRAP_DEFAULT_PORT: Final = 19092
DEFAULT_TOPIC: Final = "order-events"
DEFAULT_GROUP_PREFIX: Final = "orderpulse"
DEFAULT_MAX_OFFSETS_PER_TRIGGER: Final = 100_000
# Event Hubs asks for longer timeouts than Kafka's defaults (30 s request, 45 s
# session): its front ends may take a while to answer while a node restarts for an
# upgrade.
DEFAULT_REQUEST_TIMEOUT_MS: Final = 60_000
DEFAULT_SESSION_TIMEOUT_MS: Final = 30_000

ENV_CONNECTION_STRING: Final = "ORDERPULSE_EVENTHUBS_CONNECTION_STRING"
ENV_CONNECTION_STRING_FILE: Final = "ORDERPULSE_EVENTHUBS_CONNECTION_STRING_FILE"
ENV_BOOTSTRAP: Final = "ORDERPULSE_KAFKA_BOOTSTRAP"
ENV_TOPIC: Final = "ORDERPULSE_TOPIC"
ENV_CONSUMER_GROUP: Final = "ORDERPULSE_CONSUMER_GROUP"
ENV_STARTING_OFFSETS: Final = "ORDERPULSE_STARTING_OFFSETS"
ENV_MAX_OFFSETS: Final = "ORDERPULSE_MAX_OFFSETS_PER_TRIGGER"
ENV_FAIL_ON_DATA_LOSS: Final = "ORDERPULSE_FAIL_ON_DATA_LOSS"
ENV_SHADED: Final = "ORDERPULSE_KAFKA_SHADED"
ENV_LOCAL_PORT: Final = "ORDERPULSE_KAFKA_PORT"
ENV_DATABRICKS: Final = "DATABRICKS_RUNTIME_VERSION"

_BOOTSTRAP = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class KafkaIngestError(Exception):
    """Root of the errors of Kafka / Event Hubs ingestion.

    ``retryable`` says whether trying the same thing again later can succeed.
    """

    retryable: bool = False


class KafkaSettingsError(KafkaIngestError, ValueError):
    """The source settings are missing or invalid; fix the configuration, do not retry.

    Messages name the setting and where it came from, never a secret value.
    """

    retryable = False


@dataclass(frozen=True)
class EventHubsConnection:
    """The parts of an Event Hubs connection string that ingestion needs.

    ``namespace_host`` is e.g. ``orders-prod.servicebus.windows.net``;
    ``entity_path`` is the event hub named in a hub-level connection string (None for
    a namespace-level one).
    """

    namespace_host: str
    entity_path: str | None
    connection_string: Secret = field(repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.namespace_host}:{EVENTHUBS_KAFKA_PORT}"


def parse_connection_string(secret: Secret, origin: str) -> EventHubsConnection:
    """Parse an Event Hubs connection string.

    The form is ``Endpoint=sb://<host>/;SharedAccessKeyName=<name>;SharedAccessKey=<key>``
    with an optional ``;EntityPath=<event hub>``; a ``SharedAccessSignature=...`` may
    replace the key name and key. ``origin`` says where the string came from, for error
    messages; the string itself never appears in one.
    """
    text = secret.reveal().strip()
    parts: dict[str, str] = {}
    for piece in text.split(";"):
        if not piece.strip():
            continue
        name, sep, value = piece.partition("=")
        if not sep or not name.strip():
            raise KafkaSettingsError(
                f"{origin}: the Event Hubs connection string is not a list of "
                "Name=value pairs separated by ';'"
            )
        parts[name.strip().lower()] = value.strip()

    endpoint = parts.get("endpoint")
    if not endpoint:
        raise KafkaSettingsError(f"{origin}: the connection string has no 'Endpoint'")
    match = re.fullmatch(r"(?:sb|amqps|https)://([A-Za-z0-9.\-]+)(?::\d+)?/?", endpoint)
    if match is None:
        raise KafkaSettingsError(
            f"{origin}: 'Endpoint' must look like sb://<namespace>.servicebus.windows.net/"
        )
    has_key = "sharedaccesskeyname" in parts and "sharedaccesskey" in parts
    if not has_key and "sharedaccesssignature" not in parts:
        raise KafkaSettingsError(
            f"{origin}: the connection string needs 'SharedAccessKeyName' and "
            "'SharedAccessKey' (or 'SharedAccessSignature')"
        )
    if '"' in text or "\\" in text:
        # The string is quoted inside the JAAS configuration; a quote would break it.
        raise KafkaSettingsError(
            f"{origin}: the connection string contains a quote or backslash"
        )
    return EventHubsConnection(
        namespace_host=match.group(1).lower(),
        entity_path=parts.get("entitypath") or None,
        connection_string=Secret(text),
    )


@dataclass(frozen=True)
class KafkaSourceSettings:
    """Where and how the streaming job reads order events over the Kafka protocol.

    Exactly one of ``bootstrap_servers`` (a plain Kafka broker, no authentication) and
    ``eventhubs`` (Event Hubs' Kafka endpoint, SASL_SSL + PLAIN) is set.

    Defaults, and why they are safe:

    - ``starting_offsets="earliest"``: used only when the query has no checkpoint yet,
      so a new job first reads everything the hub still retains instead of silently
      skipping what was sent before it started; after that the checkpoint decides.
    - ``max_offsets_per_trigger=100_000``: bounds a micro-batch after a backlog (a
      restart after an outage) so it fits in memory and finishes in tens of seconds;
      None removes the bound.
    - ``fail_on_data_loss=True``: if offsets the checkpoint expects are gone (the job
      was down longer than the hub's retention, or the topic was recreated), the query
      stops with an error rather than skipping events without a trace. Set it to False
      only after deciding to accept the gap.
    - ``consumer_group=None``: Spark keeps the read position in its checkpoint, not in
      a Kafka group, and makes a fresh group id per query (prefixed ``orderpulse``), so
      two queries never steal each other's partitions. Set one when the namespace only
      authorizes named groups.
    - ``request_timeout_ms=60000`` and ``session_timeout_ms=30000``: Event Hubs'
      recommendations for its Kafka endpoint, harmless for a local broker.
    """

    bootstrap_servers: str | None = None
    eventhubs: EventHubsConnection | None = None
    topic: str = DEFAULT_TOPIC
    consumer_group: str | None = None
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int | None = DEFAULT_MAX_OFFSETS_PER_TRIGGER
    fail_on_data_loss: bool = True
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS
    shaded_login_module: bool = False

    def __post_init__(self) -> None:
        if (self.bootstrap_servers is None) == (self.eventhubs is None):
            raise KafkaSettingsError(
                "set exactly one of a Kafka bootstrap address and an Event Hubs "
                "connection string"
            )
        if self.bootstrap_servers is not None:
            for server in self.bootstrap_servers.split(","):
                if not _BOOTSTRAP.match(server.strip()):
                    raise KafkaSettingsError(
                        f"bootstrap server {server.strip()!r} is not host:port"
                    )
        if not _TOPIC.match(self.topic):
            raise KafkaSettingsError(
                f"topic {self.topic!r} must be 1-249 letters, digits, '.', '_' or '-'"
            )
        if self.starting_offsets not in ("earliest", "latest") and not (
            self.starting_offsets.lstrip().startswith("{")
        ):
            raise KafkaSettingsError(
                f"starting offsets {self.starting_offsets!r} must be 'earliest', "
                "'latest' or a JSON object of offsets per partition"
            )
        if (
            self.max_offsets_per_trigger is not None
            and self.max_offsets_per_trigger < 1
        ):
            raise KafkaSettingsError(
                "max offsets per trigger must be positive (None for no limit), got "
                f"{self.max_offsets_per_trigger}"
            )
        for name in ("request_timeout_ms", "session_timeout_ms"):
            if getattr(self, name) < 1000:
                raise KafkaSettingsError(f"{name} must be at least 1000 ms")

    @property
    def uses_eventhubs(self) -> bool:
        return self.eventhubs is not None

    @property
    def servers(self) -> str:
        """The bootstrap address the clients connect to."""
        if self.eventhubs is not None:
            return self.eventhubs.bootstrap_servers
        assert self.bootstrap_servers is not None
        return self.bootstrap_servers

    def describe(self) -> str:
        """A one-line, secret-free description for logs and progress output."""
        kind = "eventhubs" if self.uses_eventhubs else "kafka"
        return f"source={kind} bootstrap={self.servers} topic={self.topic}"

    def spark_options(self) -> dict[str, str]:
        """The options of Spark's Kafka source (``spark.readStream.format("kafka")``).

        The result holds the connection string (inside ``kafka.sasl.jaas.config``) when
        reading Event Hubs: hand it to Spark, do not log it; log
        :meth:`redacted_spark_options` instead.
        """
        options = {
            "kafka.bootstrap.servers": self.servers,
            "subscribe": self.topic,
            "startingOffsets": self.starting_offsets,
            "failOnDataLoss": "true" if self.fail_on_data_loss else "false",
            "kafka.request.timeout.ms": str(self.request_timeout_ms),
            "kafka.session.timeout.ms": str(self.session_timeout_ms),
        }
        if self.max_offsets_per_trigger is not None:
            options["maxOffsetsPerTrigger"] = str(self.max_offsets_per_trigger)
        if self.consumer_group is not None:
            options["kafka.group.id"] = self.consumer_group
        else:
            options["groupIdPrefix"] = DEFAULT_GROUP_PREFIX
        if self.eventhubs is not None:
            options.update(
                {
                    "kafka.security.protocol": "SASL_SSL",
                    "kafka.sasl.mechanism": "PLAIN",
                    "kafka.sasl.jaas.config": self._jaas_config(self.eventhubs),
                }
            )
        return options

    def redacted_spark_options(self) -> dict[str, str]:
        """:meth:`spark_options` with the JAAS configuration's password hidden."""
        options = self.spark_options()
        if "kafka.sasl.jaas.config" in options:
            options["kafka.sasl.jaas.config"] = self._jaas_config(None)
        return options

    def client_config(self) -> dict[str, Any]:
        """confluent-kafka (librdkafka) settings reaching the same place, for producers
        and admin clients. Holds the secret when reading Event Hubs; do not log it."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.servers,
            "request.timeout.ms": self.request_timeout_ms,
        }
        if self.eventhubs is not None:
            config.update(
                {
                    "security.protocol": "SASL_SSL",
                    "sasl.mechanisms": "PLAIN",
                    "sasl.username": EVENTHUBS_USERNAME,
                    "sasl.password": self.eventhubs.connection_string.reveal(),
                }
            )
        return config

    def _jaas_config(self, connection: EventHubsConnection | None) -> str:
        module = (
            SHADED_PREFIX if self.shaded_login_module else ""
        ) + PLAIN_LOGIN_MODULE
        password = connection.connection_string.reveal() if connection else "***"
        return (
            f'{module} required username="{EVENTHUBS_USERNAME}" password="{password}";'
        )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> KafkaSourceSettings:
        """Settings from the environment (see the module docstring), then ``overrides``.

        ``overrides`` are field names of this class; a value of None leaves the
        environment's (or the default) in place. ``connection_string`` may be given as
        an override (a :class:`Secret` or str) and wins over the environment.
        """
        env = os.environ if env is None else env
        given = {key: value for key, value in overrides.items() if value is not None}

        secret, origin = _connection_string(env, given.pop("connection_string", None))
        bootstrap = (
            given.pop("bootstrap_servers", None) or env.get(ENV_BOOTSTRAP) or None
        )
        if secret is not None and bootstrap is not None:
            raise KafkaSettingsError(
                f"both a Kafka bootstrap address and an Event Hubs connection string "
                f"({origin}) are set; keep one"
            )
        eventhubs = parse_connection_string(secret, origin) if secret else None
        if eventhubs is None and bootstrap is None:
            bootstrap = _local_bootstrap(env)

        topic = given.pop("topic", None) or env.get(ENV_TOPIC) or None
        if eventhubs is not None and eventhubs.entity_path:
            if topic is not None and topic != eventhubs.entity_path:
                raise KafkaSettingsError(
                    f"topic {topic!r} differs from the event hub "
                    f"{eventhubs.entity_path!r} named by the connection string "
                    f"({origin})"
                )
            topic = eventhubs.entity_path

        fields: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "eventhubs": eventhubs,
            "topic": topic or DEFAULT_TOPIC,
            "consumer_group": env.get(ENV_CONSUMER_GROUP) or None,
            "starting_offsets": env.get(ENV_STARTING_OFFSETS) or "earliest",
            "max_offsets_per_trigger": _max_offsets(env.get(ENV_MAX_OFFSETS)),
            "fail_on_data_loss": _flag(env, ENV_FAIL_ON_DATA_LOSS, default=True),
            "shaded_login_module": _flag(
                env, ENV_SHADED, default=ENV_DATABRICKS in env
            ),
        }
        unknown = set(given) - set(cls.__dataclass_fields__)
        if unknown:
            raise KafkaSettingsError(
                f"unknown Kafka source settings: {sorted(unknown)}"
            )
        fields.update(given)
        settings = cls(**fields)
        log.debug("kafka source settings %s", settings.describe())
        return settings


def _connection_string(
    env: Mapping[str, str], override: Secret | str | None
) -> tuple[Secret | None, str]:
    if override is not None:
        secret = override if isinstance(override, Secret) else Secret(override)
        return secret, "the connection string passed in"
    if env.get(ENV_CONNECTION_STRING):
        return Secret(env[ENV_CONNECTION_STRING]), ENV_CONNECTION_STRING
    path = env.get(ENV_CONNECTION_STRING_FILE)
    if path:
        origin = f"{ENV_CONNECTION_STRING_FILE}={path}"
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise KafkaSettingsError(
                f"{origin}: cannot read the file ({error.strerror})"
            ) from None
        if not text:
            raise KafkaSettingsError(f"{origin}: the file is empty")
        return Secret(text), origin
    return None, "nowhere"


def _local_bootstrap(env: Mapping[str, str]) -> str:
    if ENV_DATABRICKS in env:
        # On a cluster a missing secret must not quietly turn into "read loopback".
        raise KafkaSettingsError(
            f"no Kafka source configured: looked at {ENV_CONNECTION_STRING}, "
            f"{ENV_CONNECTION_STRING_FILE} and {ENV_BOOTSTRAP}"
        )
    port = env.get(ENV_LOCAL_PORT) or str(LOCAL_BOOTSTRAP_DEFAULT_PORT)
    return f"127.0.0.1:{port}"


def _max_offsets(text: str | None) -> int | None:
    if text is None or not text.strip():
        return DEFAULT_MAX_OFFSETS_PER_TRIGGER
    try:
        value = int(text)
    except ValueError:
        raise KafkaSettingsError(
            f"{ENV_MAX_OFFSETS}={text!r} is not an integer"
        ) from None
    return None if value == 0 else value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise KafkaSettingsError(f"{name}={text!r} must be true or false")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the Kafka source options to a command. The connection string has no option:
    a command line shows up in process lists, so it comes from the environment or a
    file (``--eventhubs-connection-string-file``)."""
    group = parser.add_argument_group(
        "Kafka / Event Hubs source",
        "Options override the environment variables named in brackets.",
    )
    group.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT",
        help=f"plain Kafka brokers [{ENV_BOOTSTRAP}] "
        f"(default 127.0.0.1:{LOCAL_BOOTSTRAP_DEFAULT_PORT}, the local broker, when no "
        f"Event Hubs connection string is set in {ENV_CONNECTION_STRING})",
    )
    group.add_argument(
        "--eventhubs-connection-string-file",
        metavar="PATH",
        help="file holding the Event Hubs connection string "
        f"[{ENV_CONNECTION_STRING_FILE}]",
    )
    group.add_argument(
        "--topic",
        help=f"topic or event hub [{ENV_TOPIC}] (default: the connection string's "
        f"EntityPath, else {DEFAULT_TOPIC})",
    )
    group.add_argument(
        "--consumer-group",
        help=f"Kafka group id [{ENV_CONSUMER_GROUP}] (default: a fresh id per query)",
    )
    group.add_argument(
        "--starting-offsets",
        help=f"where a query without checkpoint starts [{ENV_STARTING_OFFSETS}] "
        "(default earliest)",
    )
    group.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        metavar="N",
        help=f"largest micro-batch, 0 for no limit [{ENV_MAX_OFFSETS}] "
        f"(default {DEFAULT_MAX_OFFSETS_PER_TRIGGER})",
    )
    group.add_argument(
        "--fail-on-data-loss",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"stop when expected offsets are gone [{ENV_FAIL_ON_DATA_LOSS}] "
        "(default: stop)",
    )


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> KafkaSourceSettings:
    """The settings of a command parsed with :func:`add_source_arguments`."""
    env = dict(os.environ if env is None else env)
    if args.eventhubs_connection_string_file:
        env.pop(ENV_CONNECTION_STRING, None)
        env[ENV_CONNECTION_STRING_FILE] = args.eventhubs_connection_string_file
    if args.kafka_bootstrap:
        # An explicit broker on the command line wins over a connection string that
        # happens to be in the environment.
        env.pop(ENV_CONNECTION_STRING, None)
        env.pop(ENV_CONNECTION_STRING_FILE, None)
    max_offsets = args.max_offsets_per_trigger
    overrides: dict[str, Any] = {
        "bootstrap_servers": args.kafka_bootstrap,
        "topic": args.topic,
        "consumer_group": args.consumer_group,
        "starting_offsets": args.starting_offsets,
        "fail_on_data_loss": args.fail_on_data_loss,
    }
    settings = KafkaSourceSettings.from_env(env, **overrides)
    if max_offsets is not None:
        settings = replace(
            settings, max_offsets_per_trigger=None if max_offsets == 0 else max_offsets
        )
    return settings


__all__ = [
    "EventHubsConnection",
    "KafkaIngestError",
    "KafkaSettingsError",
    "KafkaSourceSettings",
    "Secret",
    "add_source_arguments",
    "parse_connection_string",
    "settings_from_args",
]
