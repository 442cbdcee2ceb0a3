"""Figures for the Kafka path on this machine (a benchmark, not a test).

1. Producer: generated order messages per second from ``KafkaTransport`` into the local
   broker (all delivered, acks=all, idempotent).
2. Pipeline: messages per second from the broker through Bronze, Silver and Gold, for
   one ``availableNow`` run over the produced topic (Spark session start excluded).

Needs the local broker (``scripts/kafka start``; started and stopped here if it is not
running). Run: ``.venv/bin/python bench/bench_kafka.py [--messages N]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.cimpl import NewTopic  # noqa: E402

from streaming.generator import OrderTrafficGenerator, TrafficConfig  # noqa: E402
from streaming.kafka_config import KafkaSourceSettings  # noqa: E402
from streaming.produce import KafkaTransport, ProduceLimits, produce  # noqa: E402

SCRIPT = ROOT / "scripts" / "kafka"
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def broker(verb: str) -> str:
    result = subprocess.run(
        [str(SCRIPT), verb], check=False, capture_output=True, text=True
    )
    if verb != "status" and result.returncode != 0:
        raise SystemExit(f"scripts/kafka {verb}: {result.stderr.strip()}")
    return result.stdout.strip()


def bench_producer(settings: KafkaSourceSettings, messages: int) -> float:
    generator = OrderTrafficGenerator(
        TrafficConfig(start=START, seed=3, orders_per_minute=3000, bad_share=0.02)
    )
    transport = KafkaTransport(settings)
    summary = produce(
        generator,
        transport,
        ProduceLimits(rate=None, count=messages),
        clock=lambda: START + timedelta(days=1),
    )
    transport.close()
    assert summary.delivered == messages, summary.render()
    print(
        f"producer: {messages} messages, {summary.payload_bytes / 1e6:.1f} MB in "
        f"{summary.elapsed_s:.2f} s -> {summary.messages_per_s:,.0f} messages/s"
    )
    return summary.messages_per_s


def bench_pipeline(settings: KafkaSourceSettings, messages: int) -> float:
    from streaming.pipeline import OrderPipeline
    from streaming.sources import kafka_stream
    from streaming.spark_session import SparkSettings, build_spark_session
    from streaming.tables import TableLayout

    spark = build_spark_session(SparkSettings(app_name="orderpulse-bench-kafka"))
    with tempfile.TemporaryDirectory() as data_dir:
        pipeline = OrderPipeline(spark, TableLayout(Path(data_dir)))
        started = time.monotonic()
        query = pipeline.start(
            kafka_stream(spark, settings.spark_options()), available_now=True
        )
        query.awaitTermination()
        elapsed = time.monotonic() - started
        if query.exception() is not None:
            raise SystemExit(f"pipeline failed: {query.exception()}")
        batches = pipeline.last_batch_id
    rate = messages / elapsed
    print(
        f"pipeline: {messages} messages broker -> Gold in {elapsed:.1f} s "
        f"({(batches or 0) + 1} micro-batches of <= "
        f"{settings.max_offsets_per_trigger}) -> {rate:,.0f} messages/s"
    )
    spark.stop()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--pipeline-messages", type=int, default=100_000)
    args = parser.parse_args()

    started_here = not broker("status").startswith("ready")
    bootstrap = broker("start").splitlines()[-1]
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    try:
        settings = KafkaSourceSettings(bootstrap_servers=bootstrap, topic=topic)
        bench_producer(settings, args.pipeline_messages)
        pipeline_settings = KafkaSourceSettings(
            bootstrap_servers=bootstrap, topic=topic, max_offsets_per_trigger=50_000
        )
        bench_pipeline(pipeline_settings, args.pipeline_messages)
        other = f"{topic}-producer"
        admin.create_topics([NewTopic(other, 2, 1)])[other].result(timeout=30)
        bench_producer(
            KafkaSourceSettings(bootstrap_servers=bootstrap, topic=other), args.messages
        )
        admin.delete_topics([other])[other].result(timeout=30)
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)
        if started_here:
            broker("stop")


if __name__ == "__main__":
    main()
