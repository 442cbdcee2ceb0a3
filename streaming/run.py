"""``orderpulse run``: the whole pipeline, from a source to Gold, alerts and exporters.

With no configuration it runs the embedded source: the traffic generator writes into the
landing folder of the data directory (after back-filling some history that contains an
injected incident) and the streaming job reads it, so the real streaming path runs end
to end with no broker and no cloud account.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from streaming.generator import (
    Incident,
    OrderTrafficGenerator,
    TrafficConfig,
    default_incidents,
    parse_incident,
)
from streaming.pipeline import BatchReport, OrderPipeline, PipelineSettings
from streaming.sources import GeneratorFeed, LandingWriter, kafka_stream, landing_stream
from streaming.tables import SCHEMAS, TableLayout

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    data_dir: Path = Path("data")
    duration_s: float | None = None
    source: str = "embedded"
    orders_per_minute: float = 300.0
    seed: int = 7
    backfill_minutes: float = 30.0
    incidents: tuple[str, ...] = ()
    default_incidents: bool = True
    bad_share: float = 0.01
    duplicate_share: float = 0.01
    late_share: float = 0.002
    trigger_seconds: float = 10.0
    files_per_trigger: int = 10
    rules_dir: Path | None = None
    alerts: bool = True
    kafka_options: dict[str, str] = field(default_factory=dict)


class ProgressPrinter:
    """One line per micro-batch (KPIs and alerts are printed by the exporters)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.batches = 0
        self.totals = {
            "input": 0,
            "silver": 0,
            "quarantined": 0,
            "duplicates": 0,
            "late": 0,
        }
        self.started = time.monotonic()

    def __call__(self, report: BatchReport) -> None:
        self.batches += 1
        self.totals["input"] += report.input_rows
        self.totals["silver"] += report.silver_rows
        self.totals["quarantined"] += report.quarantined_rows
        self.totals["duplicates"] += report.duplicates_dropped
        self.totals["late"] += report.late_events
        watermark = report.watermark.strftime("%H:%M:%S") if report.watermark else "-"
        rate = report.input_rows / max(report.batch_duration_s, 1e-3)
        self.out.write(
            f"batch {report.batch_id:>4} | "
            f"in {report.input_rows:>6,} ({rate:,.0f}/s) | "
            f"silver {report.silver_rows:>6,} "
            f"quarantined {report.quarantined_rows:>4,} "
            f"duplicates {report.duplicates_dropped:>4,} "
            f"late {report.late_events:>3,} | "
            f"gold rows {report.gold_rows_upserted:>5,} | "
            f"watermark {watermark} UTC | {report.batch_duration_s:.1f}s\n"
        )
        self.out.flush()


def traffic_config(options: RunOptions, now: datetime) -> tuple[TrafficConfig, bool]:
    """The generator's configuration; back-fill only on a fresh data directory."""
    layout = TableLayout(options.data_dir)
    fresh = not any(layout.landing_dir.glob("part-*.jsonl"))
    start = now - timedelta(minutes=options.backfill_minutes) if fresh else now
    incidents: list[Incident] = [
        parse_incident(spec, now) for spec in options.incidents
    ]
    if options.default_incidents:
        incidents.extend(
            incident for incident in default_incidents(now) if incident.end > start
        )
    config = TrafficConfig(
        start=start,
        seed=options.seed,
        orders_per_minute=options.orders_per_minute,
        incidents=tuple(incidents),
        bad_share=options.bad_share,
        duplicate_share=options.duplicate_share,
        late_share=options.late_share,
        late_by=timedelta(minutes=3),
    )
    return config, fresh


def run(
    options: RunOptions,
    spark: SparkSession,
    out: TextIO = sys.stdout,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    extra_listeners: tuple[Callable[[BatchReport], None], ...] = (),
) -> int:
    """Run until ``duration_s`` elapses or Ctrl-C; return the exit code."""
    layout = TableLayout(options.data_dir)
    progress = ProgressPrinter(out)
    listeners: list[Callable[[BatchReport], None]] = [progress, *extra_listeners]
    closers: list[Callable[[], None]] = []
    if options.alerts:
        from streaming.alerting import build_alerting

        alerting = build_alerting(spark, layout, options.rules_dir, clock, out)
        listeners.append(alerting.on_batch)
        closers.append(alerting.close)
    pipeline = OrderPipeline(
        spark, layout, PipelineSettings(), clock=clock, listeners=tuple(listeners)
    )
    feed = None
    if options.source == "embedded":
        config, fresh = traffic_config(options, clock())
        feed = GeneratorFeed(
            OrderTrafficGenerator(config), LandingWriter(layout.landing_dir), clock
        )
        _announce_embedded(out, options, config, fresh)
        if fresh:
            # One landing file per minute of history, so the catch-up runs as a few
            # ordinary micro-batches rather than one huge one.
            moment = config.start
            while moment < clock() - timedelta(minutes=1):
                moment += timedelta(minutes=1)
                feed.write_until(moment)
        feed.start()
        stream: DataFrame = landing_stream(
            spark, layout.landing_dir, options.files_per_trigger
        )
    else:
        stream = kafka_stream(spark, options.kafka_options)
        out.write(
            f"Reading topic {options.kafka_options.get('subscribe', '?')} from Kafka\n"
        )
    query = pipeline.start(stream, trigger_seconds=options.trigger_seconds)
    code = _wait(query, feed, options.duration_s, out)
    if feed:
        feed.stop()
    _stop_between_batches(query, progress, out)
    for close in closers:
        close()
    _summary(out, progress, layout, options, feed)
    return code


def _wait(
    query: Any, feed: GeneratorFeed | None, duration_s: float | None, out: TextIO
) -> int:
    deadline = time.monotonic() + duration_s if duration_s else None
    try:
        while query.isActive:
            query.awaitTermination(1.0)
            if feed and feed.error:
                out.write(f"error: the traffic generator stopped: {feed.error}\n")
                return 1
            if deadline and time.monotonic() >= deadline:
                return 0
    except KeyboardInterrupt:
        out.write("\nStopping (Ctrl-C): the next start resumes from the checkpoint.\n")
        return 0
    error = query.exception()
    if error is not None:
        out.write(f"error: the streaming query failed: {error}\n")
        return 1
    return 0


def _stop_between_batches(
    query: Any, progress: ProgressPrinter, out: TextIO, patience_s: float = 120.0
) -> None:
    """Let the running micro-batch finish, then stop the query.

    Stopping mid-batch would be safe (every write is idempotent and the batch is
    replayed on the next start) but wastes the work; a second Ctrl-C stops at once.
    """
    if not query.isActive:
        return
    if query.status.get("isTriggerActive"):
        out.write("Waiting for the current micro-batch to finish...\n")
        out.flush()
        finished = progress.batches
        deadline = time.monotonic() + patience_s
        try:
            while (
                progress.batches == finished
                and query.isActive
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
        except KeyboardInterrupt:
            out.write("Stopping now; the interrupted batch is replayed on restart.\n")
    query.stop()


def _announce_embedded(
    out: TextIO, options: RunOptions, config: TrafficConfig, fresh: bool
) -> None:
    out.write(
        f"OrderPulse: embedded source, "
        f"{options.orders_per_minute:.0f} orders/min at peak, "
        f"data in {options.data_dir}\n"
    )
    if fresh:
        out.write(
            f"Back-filling {options.backfill_minutes:.0f} minutes of history first.\n"
        )
    else:
        out.write("Resuming on an existing data directory (from its checkpoint).\n")
    for incident in config.incidents:
        target = f" ({incident.target})" if incident.target else ""
        out.write(
            f"Injected incident: {incident.kind}{target} "
            f"{incident.start:%H:%M}-{incident.end:%H:%M} UTC\n"
        )
    out.flush()


def _summary(
    out: TextIO,
    progress: ProgressPrinter,
    layout: TableLayout,
    options: RunOptions,
    feed: GeneratorFeed | None,
) -> None:
    elapsed = time.monotonic() - progress.started
    totals = progress.totals
    out.write(
        f"\nDone: {progress.batches} micro-batches in {elapsed:.0f}s; "
        f"{totals['input']:,} messages "
        f"({totals['input'] / max(elapsed, 1e-3):,.0f}/s), "
        f"{totals['silver']:,} events in Silver, "
        f"{totals['quarantined']:,} quarantined, "
        f"{totals['duplicates']:,} duplicates dropped, {totals['late']:,} late.\n"
    )
    if feed:
        out.write(
            f"Generated {feed.messages_written:,} messages into {layout.landing_dir}\n"
        )
    out.write("Where to look:\n")
    for table in SCHEMAS:
        out.write(f"  {table:<22} {layout.path(table)}\n")
    out.write(
        f"  exported alerts/KPIs   {options.data_dir / 'exports'}\n"
        f"  try: orderpulse rules backtest --data-dir {options.data_dir}\n"
    )
    out.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where tables, checkpoints and the landing folder live",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds; without it, run until Ctrl-C",
    )
    parser.add_argument(
        "--source",
        choices=("embedded", "kafka"),
        default="embedded",
        help="embedded generator (no broker) or Kafka / Event Hubs",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=300.0,
        dest="orders_per_minute",
        help="embedded source: orders per minute at the evening peak",
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="embedded source: random seed"
    )
    parser.add_argument(
        "--backfill-minutes",
        type=float,
        default=30.0,
        help="embedded source: minutes of history written on a fresh data dir",
    )
    parser.add_argument(
        "--incident",
        action="append",
        default=[],
        dest="incidents",
        metavar="SPEC",
        help="extra incident kind[:target]@offset_min+duration_min[*intensity]",
    )
    parser.add_argument(
        "--no-default-incidents",
        action="store_false",
        dest="default_incidents",
        help="do not inject the demo incidents",
    )
    parser.add_argument(
        "--bad-share",
        type=float,
        default=0.01,
        help="embedded source: share of malformed messages",
    )
    parser.add_argument(
        "--trigger-seconds", type=float, default=10.0, help="micro-batch interval"
    )
    parser.add_argument(
        "--rules-dir",
        type=Path,
        default=None,
        help="alert rule files (default: the packaged orders rules)",
    )
    parser.add_argument(
        "--no-alerts",
        action="store_false",
        dest="alerts",
        help="run the pipeline without the rule engine and exporters",
    )
