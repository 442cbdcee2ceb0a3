"""``orderpulse produce``: send generated order traffic to Kafka or Event Hubs.

The traffic comes from :class:`streaming.generator.OrderTrafficGenerator` (incidents,
bad messages, duplicates and late events as asked) and goes out through one of two
transports:

- :class:`KafkaTransport` (confluent-kafka): the local broker of ``scripts/kafka`` or
  Event Hubs' Kafka endpoint; the message key is the order id.
- :class:`EventHubsTransport` (``azure-eventhub``): batches built and sized by the SDK,
  one partition key (the order id) per batch, so an order's events land on one
  partition in the order they were sent.

Both carry the generator's bytes unchanged, the same bytes the embedded source writes.

Pacing: messages leave at most at ``rate`` per second, and never before their simulated
send time has passed on the wall clock (an event from the future would be rejected by
Silver). Traffic starts ``backfill`` before now, so the first messages go out as fast as
the rate allows and the rest follow in real time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Protocol

from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient
from azure.eventhub.exceptions import EventHubError
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streaming.generator import (
    GeneratedMessage,
    Incident,
    OrderTrafficGenerator,
    TrafficConfig,
    default_incidents,
    parse_incident,
)
from streaming.kafka_config import (
    ENV_BOOTSTRAP,
    ENV_CONNECTION_STRING,
    ENV_CONNECTION_STRING_FILE,
    ENV_TOPIC,
    KafkaIngestError,
    KafkaSettingsError,
    KafkaSourceSettings,
    Secret,
    parse_connection_string,
)

log = logging.getLogger(__name__)

# Room for the broker's 4 MiB limit (scripts/kafka) plus protocol overhead.
KAFKA_MAX_MESSAGE_BYTES = 5 * 1024 * 1024
GENERATOR_STEP = timedelta(seconds=1)


class ProduceError(KafkaIngestError):
    """Messages could not be delivered (broker or hub unreachable, refused, timed out).

    Retryable: the same send can succeed once the service is back.
    """

    retryable = True


class Transport(Protocol):
    """Where produced messages go. ``send`` may return before delivery; ``flush`` waits
    for every outstanding delivery; ``close`` flushes and releases connections."""

    name: str
    delivered: int
    failed: int
    first_error: str | None

    def send(self, messages: Sequence[GeneratedMessage]) -> None: ...

    def flush(self, timeout_s: float) -> None: ...

    def close(self) -> None: ...


class KafkaTransport:
    """Sends through confluent-kafka; key = order id, value = the event's JSON bytes.

    Against a plain broker the producer is idempotent (no duplicates, order kept across
    retries). Event Hubs' Kafka endpoint does not offer idempotence here, so order is
    kept by allowing one in-flight request per connection instead.
    """

    name = "kafka"

    def __init__(
        self, settings: KafkaSourceSettings, overrides: Mapping[str, Any] | None = None
    ) -> None:
        config: dict[str, Any] = {
            **settings.client_config(),
            "acks": "all",
            "linger.ms": 20,
            "message.max.bytes": KAFKA_MAX_MESSAGE_BYTES,
            "client.id": "orderpulse-produce",
        }
        if settings.uses_eventhubs:
            config.update({"enable.idempotence": False, "max.in.flight": 1})
        else:
            config.update({"enable.idempotence": True, "compression.type": "lz4"})
        config.update(overrides or {})
        self.topic = settings.topic
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        self._producer = Producer(config)
        self._closed = False

    def send(self, messages: Sequence[GeneratedMessage]) -> None:
        if self._closed:
            raise ProduceError(f"kafka transport to topic {self.topic!r} is closed")
        for message in messages:
            self._produce(message)
        self._producer.poll(0)

    def _produce(self, message: GeneratedMessage) -> None:
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    value=message.value,
                    key=message.key,
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.05)

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is None:
            self.delivered += 1
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = f"kafka topic {self.topic!r}: {error.str()}"

    def flush(self, timeout_s: float) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            self.failed += remaining
            self.first_error = self.first_error or (
                f"kafka topic {self.topic!r}: {remaining} messages still undelivered "
                f"after {timeout_s:.0f}s"
            )

    def close(self) -> None:
        if not self._closed:
            self.flush(30.0)
            self._closed = True


def plan_batches(
    messages: Iterable[GeneratedMessage],
    new_batch: Callable[[str], EventDataBatch],
    too_large: list[GeneratedMessage] | None = None,
) -> Iterator[tuple[EventDataBatch, list[GeneratedMessage]]]:
    """Event Hubs batches for ``messages``: one partition key (the message key, the
    order id) per batch, messages of a key in their original order, each batch filled
    until the SDK says it is full. Yields (batch, the messages in it).

    A message too large for an empty batch is appended to ``too_large`` when given,
    else it raises :class:`ProduceError` naming it.
    """
    by_key: dict[str, list[GeneratedMessage]] = {}
    for message in messages:
        by_key.setdefault(message.key.decode("utf-8", "replace"), []).append(message)
    for key, keyed in by_key.items():
        batch, members = new_batch(key), list[GeneratedMessage]()
        for message in keyed:
            try:
                batch.add(EventData(message.value))
            except ValueError:
                if not members and too_large is not None:
                    too_large.append(message)
                    continue
                if not members:
                    raise ProduceError(
                        f"message {message.sequence} ({len(message.value)} bytes, key "
                        f"{key!r}) is larger than an Event Hubs batch "
                        f"({batch.max_size_in_bytes} bytes)"
                    ) from None
                yield batch, members
                batch, members = new_batch(key), []
                batch.add(EventData(message.value))
            members.append(message)
        if members:
            yield batch, members


class EventHubsTransport:
    """Sends through the ``azure-eventhub`` SDK, batch by batch (:func:`plan_batches`).

    Sends are synchronous: :meth:`send` returns once the hub has accepted the batches or
    they have failed. A failed batch counts its messages as failed and keeps going.
    """

    name = "eventhubs"

    def __init__(
        self,
        connection_string: Secret,
        eventhub_name: str | None,
        origin: str = "the connection string",
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        connection = parse_connection_string(connection_string, origin)
        self.eventhub_name = eventhub_name or connection.entity_path
        if not self.eventhub_name:
            raise KafkaSettingsError(
                f"{origin}: no event hub named (no EntityPath and no --topic)"
            )
        self.namespace = connection.namespace_host
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        try:
            self._client = EventHubProducerClient.from_connection_string(
                connection_string.reveal(),
                eventhub_name=self.eventhub_name,
                **(client_options or {}),
            )
        except ValueError:
            # The SDK's message could quote the string; say what and where instead.
            raise KafkaSettingsError(
                f"{origin}: the SDK refused the Event Hubs connection string"
            ) from None
        self._closed = False

    def send(self, messages: Sequence[GeneratedMessage]) -> None:
        if self._closed:
            raise ProduceError(
                f"event hubs transport to {self.eventhub_name!r} is closed"
            )
        too_large: list[GeneratedMessage] = []
        accepted = 0
        try:
            for batch, members in plan_batches(messages, self._new_batch, too_large):
                self._client.send_batch(batch)
                accepted += len(members)
        except EventHubError as error:
            self.delivered += accepted
            self._fail(len(messages) - accepted, error)
            raise ProduceError(
                f"event hub {self.eventhub_name!r} on {self.namespace}: "
                f"{type(error).__name__}"
            ) from None
        self.delivered += accepted
        if too_large:
            self.failed += len(too_large)
            self.first_error = self.first_error or (
                f"event hub {self.eventhub_name!r}: message {too_large[0].sequence} "
                f"({len(too_large[0].value)} bytes) is larger than a batch may be"
            )

    def _new_batch(self, key: str) -> EventDataBatch:
        return self._client.create_batch(partition_key=key)

    def _fail(self, count: int, error: Exception) -> None:
        self.failed += max(count, 0)
        if self.first_error is None:
            self.first_error = (
                f"event hub {self.eventhub_name!r} on {self.namespace}: "
                f"{type(error).__name__}"
            )

    def flush(self, timeout_s: float) -> None:
        """Nothing is buffered: every send waited for its batches."""

    def close(self) -> None:
        if not self._closed:
            self._client.close()
            self._closed = True


@dataclass(frozen=True)
class ProduceLimits:
    """When to stop: after ``count`` messages, after ``duration`` of wall time, or at
    the first of both. ``rate`` is the most messages per second (None: no limit)."""

    rate: float | None = 500.0
    count: int | None = None
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        if self.count is None and self.duration is None:
            raise KafkaSettingsError("produce needs --count or --duration")
        if self.rate is not None and self.rate <= 0:
            raise KafkaSettingsError(f"--rate must be positive, got {self.rate}")
        if self.count is not None and self.count < 1:
            raise KafkaSettingsError(f"--count must be positive, got {self.count}")


@dataclass(frozen=True)
class ProduceSummary:
    """What a produce run did."""

    transport: str
    sent: int
    delivered: int
    failed: int
    by_kind: Mapping[str, int]
    payload_bytes: int
    elapsed_s: float
    first_error: str | None = None
    first_sent_at: datetime | None = None
    last_sent_at: datetime | None = None
    messages: tuple[GeneratedMessage, ...] = field(default=(), repr=False)

    @property
    def messages_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def render(self) -> str:
        kinds = " ".join(f"{kind}={n}" for kind, n in sorted(self.by_kind.items()))
        line = (
            f"produced transport={self.transport} sent={self.sent} "
            f"delivered={self.delivered} failed={self.failed} {kinds} "
            f"bytes={self.payload_bytes} elapsed_s={self.elapsed_s:.1f} "
            f"rate_per_s={self.messages_per_s:.0f}"
        )
        if self.first_error:
            line += f"\nfirst error: {self.first_error}"
        return line


class ProgressBar:
    """A one-line progress bar on a terminal; a line every few seconds elsewhere."""

    def __init__(
        self,
        stream: IO[str],
        total: int | None,
        seconds: float | None,
        monotonic: Callable[[], float],
    ) -> None:
        self.stream = stream
        self.total = total
        self.seconds = seconds
        self.monotonic = monotonic
        self.started = monotonic()
        self._interactive = stream.isatty()
        self._last_shown = -1e9

    def update(
        self, sent: int, delivered: int, failed: int, *, force: bool = False
    ) -> None:
        now = self.monotonic()
        elapsed = now - self.started
        if not force and now - self._last_shown < (0.2 if self._interactive else 5.0):
            return
        self._last_shown = now
        fractions = []
        if self.total:
            fractions.append(sent / self.total)
        if self.seconds:
            fractions.append(elapsed / self.seconds)
        done = min(max(fractions, default=0.0), 1.0)
        bar = "#" * int(done * 30)
        text = (
            f"[{bar:<30}] {done:4.0%} sent={sent} delivered={delivered} "
            f"failed={failed} {sent / max(elapsed, 1e-9):.0f}/s"
        )
        if self._interactive:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._interactive:
            self.stream.write("\n")
            self.stream.flush()


def produce(
    generator: OrderTrafficGenerator,
    transport: Transport,
    limits: ProduceLimits,
    *,
    clock: Callable[[], datetime],
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: ProgressBar | None = None,
    keep_messages: bool = False,
) -> ProduceSummary:
    """Send the generator's messages through ``transport`` within ``limits``.

    ``clock`` is the wall clock in event time (the generator is never advanced past
    it); ``monotonic`` and ``sleep`` pace the sending. With ``keep_messages`` the
    summary holds every message sent (tests compare them with what the pipeline wrote).
    """
    started = monotonic()
    sent, payload_bytes = 0, 0
    kinds: Counter[str] = Counter()
    kept: list[GeneratedMessage] = []
    first: datetime | None = None
    last: datetime | None = None
    slice_size = max(1, int(limits.rate / 10)) if limits.rate else 1000

    def out_of_time() -> bool:
        return limits.duration is not None and (
            monotonic() - started >= limits.duration.total_seconds()
        )

    while not out_of_time() and (limits.count is None or sent < limits.count):
        until = min(generator.clock + GENERATOR_STEP, clock())
        if until <= generator.clock:
            sleep(0.05)  # caught up with real time: wait for the next message to be due
            continue
        messages = generator.advance(until)
        if limits.count is not None:
            messages = messages[: limits.count - sent]
        for start in range(0, len(messages), slice_size):
            if out_of_time():
                break
            chunk = messages[start : start + slice_size]
            if limits.rate:
                ahead = (sent + len(chunk)) / limits.rate - (monotonic() - started)
                if ahead > 0:
                    sleep(ahead)
            transport.send(chunk)
            sent += len(chunk)
            payload_bytes += sum(len(m.value) for m in chunk)
            kinds.update(m.kind for m in chunk)
            first = first or chunk[0].sent_at
            last = chunk[-1].sent_at
            if keep_messages:
                kept.extend(chunk)
            if progress:
                progress.update(sent, transport.delivered, transport.failed)
    transport.flush(60.0)
    if progress:
        progress.update(sent, transport.delivered, transport.failed, force=True)
        progress.finish()
    summary = ProduceSummary(
        transport=transport.name,
        sent=sent,
        delivered=transport.delivered,
        failed=transport.failed,
        by_kind=dict(kinds),
        payload_bytes=payload_bytes,
        elapsed_s=monotonic() - started,
        first_error=transport.first_error,
        first_sent_at=first,
        last_sent_at=last,
        messages=tuple(kept),
    )
    log.info(
        "produce transport=%s sent=%d delivered=%d failed=%d elapsed_s=%.2f",
        summary.transport,
        summary.sent,
        summary.delivered,
        summary.failed,
        summary.elapsed_s,
    )
    return summary


def ensure_topic(settings: KafkaSourceSettings, partitions: int) -> bool:
    """Create the topic on a plain Kafka broker if it is missing; True if created.

    Event hubs are created in Azure (infra/), never from here.
    """
    admin = AdminClient(settings.client_config())
    try:
        existing = admin.list_topics(timeout=15).topics
    except KafkaException as error:
        raise ProduceError(
            f"kafka at {settings.servers} did not answer: {error.args[0].str()}"
        ) from None
    if settings.topic in existing:
        return False
    futures = admin.create_topics([NewTopic(settings.topic, partitions, 1)])
    try:
        futures[settings.topic].result(timeout=30)
    except KafkaException as error:
        if "TOPIC_ALREADY_EXISTS" not in str(error):
            raise ProduceError(
                f"creating topic {settings.topic!r} on {settings.servers} failed: "
                f"{error.args[0].str()}"
            ) from None
        return False
    return True


# --- command line ---


def register(subparsers: Any) -> None:
    """Add ``produce`` to the ``orderpulse`` command (``subparsers`` of argparse)."""
    parser = subparsers.add_parser(
        "produce",
        help="send generated order events to Kafka or Event Hubs",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target = parser.add_argument_group("where to")
    target.add_argument(
        "--transport",
        choices=("kafka", "eventhubs"),
        default="kafka",
        help="kafka: confluent-kafka (local broker or the Event Hubs Kafka endpoint); "
        "eventhubs: the azure-eventhub SDK (needs a connection string)",
    )
    target.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT",
        help=f"plain Kafka brokers [{ENV_BOOTSTRAP}]; default 127.0.0.1:19092 when "
        f"no connection string is set [{ENV_CONNECTION_STRING}]",
    )
    target.add_argument(
        "--eventhubs-connection-string-file",
        metavar="PATH",
        help=f"file holding the connection string [{ENV_CONNECTION_STRING_FILE}]",
    )
    target.add_argument("--topic", help=f"topic or event hub [{ENV_TOPIC}]")
    target.add_argument(
        "--partitions",
        type=int,
        default=3,
        help="partitions of the topic when it is created on a plain broker",
    )
    amount = parser.add_argument_group("how much")
    amount.add_argument("--rate", type=float, default=500.0, help="messages per second")
    amount.add_argument("--count", type=int, help="stop after this many messages")
    amount.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long"
    )
    traffic = parser.add_argument_group("what")
    traffic.add_argument("--seed", type=int, default=7)
    traffic.add_argument("--orders-per-minute", type=float, default=600.0)
    traffic.add_argument(
        "--backfill-minutes",
        type=float,
        default=30.0,
        help="traffic starts this long ago (sent as fast as --rate allows)",
    )
    traffic.add_argument("--bad-share", type=float, default=0.0)
    traffic.add_argument("--duplicate-share", type=float, default=0.0)
    traffic.add_argument("--late-share", type=float, default=0.0)
    traffic.add_argument(
        "--incident",
        action="append",
        default=[],
        metavar="SPEC",
        help="kind[:target]@offset_min+duration_min[*intensity], e.g. "
        "payment_gateway_outage:pix@-10+5*0.7; repeatable",
    )
    traffic.add_argument(
        "--demo-incidents",
        action="store_true",
        help="add the demo's incidents (a gateway outage and a cancellation surge)",
    )
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """The ``produce`` command; returns the exit status."""
    try:
        summary = _run(args, dict(os.environ))
    except KafkaIngestError as error:
        print(f"orderpulse produce: {error}", file=sys.stderr)
        return 1
    print(summary.render())
    return 0 if summary.failed == 0 else 1


def _run(args: argparse.Namespace, env: dict[str, str]) -> ProduceSummary:
    if args.eventhubs_connection_string_file:
        env.pop(ENV_CONNECTION_STRING, None)
        env[ENV_CONNECTION_STRING_FILE] = args.eventhubs_connection_string_file
    if args.kafka_bootstrap:
        env.pop(ENV_CONNECTION_STRING, None)
        env.pop(ENV_CONNECTION_STRING_FILE, None)
    settings = KafkaSourceSettings.from_env(
        env, bootstrap_servers=args.kafka_bootstrap, topic=args.topic
    )
    limits = ProduceLimits(
        rate=args.rate,
        count=args.count,
        duration=timedelta(seconds=args.duration) if args.duration else None,
    )
    now = datetime.now(UTC)
    generator = OrderTrafficGenerator(_traffic(args, now))
    transport = _transport(args.transport, settings, args.partitions)
    print(f"producing to {settings.describe()} via {transport.name}", file=sys.stderr)
    progress = ProgressBar(
        sys.stderr, limits.count, args.duration, monotonic=time.monotonic
    )
    try:
        return produce(
            generator,
            transport,
            limits,
            clock=lambda: datetime.now(UTC),
            progress=progress,
        )
    finally:
        transport.close()


def _traffic(args: argparse.Namespace, now: datetime) -> TrafficConfig:
    try:
        incidents: list[Incident] = [
            parse_incident(spec, now) for spec in args.incident
        ]
        if args.demo_incidents:
            incidents.extend(default_incidents(now))
        return TrafficConfig(
            start=now - timedelta(minutes=args.backfill_minutes),
            seed=args.seed,
            orders_per_minute=args.orders_per_minute,
            incidents=tuple(incidents),
            bad_share=args.bad_share,
            duplicate_share=args.duplicate_share,
            late_share=args.late_share,
        )
    except ValueError as error:
        raise KafkaSettingsError(str(error)) from None


def _transport(kind: str, settings: KafkaSourceSettings, partitions: int) -> Transport:
    if kind == "eventhubs":
        if settings.eventhubs is None:
            raise KafkaSettingsError(
                f"--transport eventhubs needs a connection string in "
                f"{ENV_CONNECTION_STRING} or {ENV_CONNECTION_STRING_FILE}"
            )
        return EventHubsTransport(
            settings.eventhubs.connection_string,
            settings.topic,
            origin="the Event Hubs connection string",
        )
    if not settings.uses_eventhubs and ensure_topic(settings, partitions):
        print(
            f"created topic {settings.topic} ({partitions} partitions)", file=sys.stderr
        )
    return KafkaTransport(settings)


__all__ = [
    "EventHubsTransport",
    "KafkaTransport",
    "ProduceError",
    "ProduceLimits",
    "ProduceSummary",
    "ProgressBar",
    "Transport",
    "ensure_topic",
    "plan_batches",
    "produce",
    "register",
    "run_command",
]
