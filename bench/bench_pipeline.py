"""Pipeline throughput, landing folder to Gold (a benchmark, not a test).

Generates order traffic into a landing folder, then runs the real streaming job with the
available-now trigger at several micro-batch sizes, and prints per batch size: messages
per second through Bronze, Silver (+ quarantine) and Gold, and the batch duration.

    .venv/bin/python -m bench.bench_pipeline [--orders-per-minute 3000] [--minutes 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streaming.generator import OrderTrafficGenerator, TrafficConfig
from streaming.pipeline import BatchReport, OrderPipeline
from streaming.sources import LandingWriter, landing_stream
from streaming.spark_session import build_spark_session
from streaming.tables import TableLayout

START = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)


def land(landing: Path, orders_per_minute: float, minutes: int) -> int:
    config = TrafficConfig(
        start=START,
        orders_per_minute=orders_per_minute,
        bad_share=0.01,
        duplicate_share=0.01,
    )
    generator = OrderTrafficGenerator(config)
    writer = LandingWriter(landing)
    total = 0
    for messages in generator.run(
        START + timedelta(minutes=minutes), timedelta(minutes=1)
    ):
        writer.write(m.value for m in messages)
        total += len(messages)
    return total


@dataclass(frozen=True)
class Measured:
    """One batch: its report and the wall time of each pipeline step."""

    report: BatchReport
    phase_seconds: dict[str, float]


def measure(files_per_batch: int, landing: Path, root: Path) -> list[Measured]:
    spark = build_spark_session()
    layout = TableLayout(root / f"run-{files_per_batch}")
    layout.data_dir.mkdir(parents=True)
    (layout.data_dir / "landing").symlink_to(landing)
    batches: list[Measured] = []

    def record(report: BatchReport) -> None:
        batches.append(Measured(report, dict(pipeline.phase_seconds)))

    pipeline = OrderPipeline(spark, layout, listeners=(record,))
    query = pipeline.start(
        landing_stream(spark, layout.landing_dir, files_per_batch), available_now=True
    )
    query.awaitTermination()
    return batches


def phase_medians(batches: list[Measured]) -> str:
    """``name=median_s`` per step, slowest first."""
    names = {name for batch in batches for name in batch.phase_seconds}
    medians = {
        name: statistics.median(batch.phase_seconds.get(name, 0.0) for batch in batches)
        for name in names
    }
    ranked = sorted(medians.items(), key=lambda item: -item[1])
    return " ".join(f"{name}={seconds:.2f}" for name, seconds in ranked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders-per-minute", type=float, default=3000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--batch-files", type=int, nargs="*", default=[1, 5, 15])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orderpulse-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        total = land(root / "landing", args.orders_per_minute, args.minutes)
        generated_s = time.perf_counter() - started
        print(f"generated {total:,} messages in {generated_s:.1f}s "
              f"({total / generated_s:,.0f}/s)")  # fmt: skip
        build_spark_session()  # start-up is not part of any figure
        print("files/batch  batches  msgs/batch  median batch s  msgs/s (all batches)")
        phases: list[str] = []
        for files in args.batch_files:
            batches = measure(files, root / "landing", root)
            # The first batch pays the JIT and Delta table creation; leave it out.
            steady = batches[1:] or batches
            reports = [batch.report for batch in steady]
            rows = sum(r.input_rows for r in reports)
            seconds = sum(r.batch_duration_s for r in reports)
            print(
                f"{files:>11}  {len(batches):>7}  {rows / len(reports):>10,.0f}  "
                f"{statistics.median(r.batch_duration_s for r in reports):>14.1f}  "
                f"{rows / seconds:>10,.0f}"
            )
            phases.append(f"{files:>11}  {phase_medians(steady)}")
        print("files/batch  median seconds per step (steady batches)")
        print("\n".join(phases))


if __name__ == "__main__":
    main()
