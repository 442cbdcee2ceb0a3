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


def measure(files_per_batch: int, landing: Path, root: Path) -> list[BatchReport]:
    spark = build_spark_session()
    layout = TableLayout(root / f"run-{files_per_batch}")
    layout.data_dir.mkdir(parents=True)
    (layout.data_dir / "landing").symlink_to(landing)
    reports: list[BatchReport] = []
    pipeline = OrderPipeline(spark, layout, listeners=(reports.append,))
    query = pipeline.start(
        landing_stream(spark, layout.landing_dir, files_per_batch), available_now=True
    )
    query.awaitTermination()
    return reports


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
        for files in args.batch_files:
            reports = measure(files, root / "landing", root)
            # The first batch pays the JIT and Delta table creation; report it apart.
            steady = reports[1:] or reports
            rows = sum(r.input_rows for r in steady)
            seconds = sum(r.batch_duration_s for r in steady)
            print(
                f"{files:>11}  {len(reports):>7}  {rows / len(steady):>10,.0f}  "
                f"{statistics.median(r.batch_duration_s for r in steady):>14.1f}  "
                f"{rows / seconds:>10,.0f}"
            )


if __name__ == "__main__":
    main()
