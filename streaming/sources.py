"""Where raw messages come from: the embedded landing folder or Kafka / Event Hubs.

Both sources produce the same *raw* frame: a binary ``payload`` plus the source
coordinates of :data:`streaming.tables.SOURCE_COORDINATES`, so the pipeline does not
care which one runs.

The embedded source is a landing folder: :class:`LandingWriter` writes generated
messages as JSON-lines files (atomically: a hidden temporary file renamed into place),
and Spark's file source streams them in, one row per line with its file and line number
as coordinates.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from streaming.generator import GeneratedMessage, OrderTrafficGenerator
from streaming.tables import SOURCE_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

RAW_COLUMNS = ("payload", *SOURCE_COLUMNS)


class LandingWriter:
    """Writes messages into the landing folder, one file per call, never half a file.

    Lines are the raw message bytes; a message containing a newline byte cannot be
    represented in this format, so the writer refuses it (Kafka carries such bytes).
    """

    def __init__(self, landing_dir: Path) -> None:
        self.landing_dir = landing_dir
        landing_dir.mkdir(parents=True, exist_ok=True)
        existing = sorted(landing_dir.glob("part-*.jsonl"))
        self._next = int(existing[-1].name[5:17]) + 1 if existing else 0

    def write(self, payloads: Iterable[bytes]) -> Path | None:
        lines = list(payloads)
        if not lines:
            return None
        for payload in lines:
            if b"\n" in payload:
                raise ValueError("a landing-file message cannot contain a newline byte")
        name = f"part-{self._next:012d}.jsonl"
        self._next += 1
        temporary = self.landing_dir / f".{name}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(b"\n".join(lines) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        final = self.landing_dir / name
        temporary.rename(final)
        return final


class GeneratorFeed:
    """Runs the traffic generator against the landing folder in a background thread.

    Every ``step`` of wall time it advances the generator to ``clock()`` and writes what
    was sent in the meantime. :meth:`write_until` writes history up to a time in one
    go (the demo starts with half an hour of past traffic).
    """

    def __init__(
        self,
        generator: OrderTrafficGenerator,
        writer: LandingWriter,
        clock: Callable[[], datetime],
        step: timedelta = timedelta(seconds=2),
        on_write: Callable[[list[GeneratedMessage]], None] | None = None,
    ) -> None:
        self.generator = generator
        self.writer = writer
        self.clock = clock
        self.step = step
        self.on_write = on_write
        self.messages_written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def write_until(self, moment: datetime) -> int:
        messages = self.generator.advance(moment)
        self.writer.write(message.value for message in messages)
        self.messages_written += len(messages)
        if self.on_write:
            self.on_write(messages)
        return len(messages)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="generator-feed", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.step.total_seconds()):
                self.write_until(self.clock())
        except BaseException as error:  # surfaced by the runner, which stops the job
            self.error = error


def landing_stream(
    spark: SparkSession, landing_dir: Path, max_files_per_trigger: int = 50
) -> DataFrame:
    """The landing folder as a stream of raw rows, one per line."""
    landing_dir.mkdir(parents=True, exist_ok=True)
    files = (
        spark.readStream.format("text")
        .option("wholetext", "true")
        .option("maxFilesPerTrigger", max_files_per_trigger)
        .option("pathGlobFilter", "part-*.jsonl")
        .load(str(landing_dir))
        .select(F.col("value"), F.col("_metadata.file_path").alias("source_file"))
    )
    lines = files.select(
        "source_file",
        F.posexplode(F.split(F.regexp_replace("value", "\n$", ""), "\n")).alias(
            "line_index", "line"
        ),
    )
    return lines.select(
        F.encode("line", "UTF-8").alias("payload"),
        F.lit("file").alias("source"),
        F.lit(None).cast("string").alias("source_topic"),
        F.lit(None).cast("int").alias("source_partition"),
        F.lit(None).cast("long").alias("source_offset"),
        F.lit(None).cast("timestamp").alias("source_timestamp"),
        F.lit(None).cast("binary").alias("source_key"),
        "source_file",
        (F.col("line_index") + 1).cast("int").alias("source_line"),
    )


def kafka_stream(spark: SparkSession, options: Mapping[str, str]) -> DataFrame:
    """A Kafka (or Event Hubs Kafka endpoint) topic as a stream of raw rows.

    ``options`` are the Spark Kafka source options (``kafka.bootstrap.servers``,
    ``subscribe``, security settings, ``startingOffsets`` ...).
    """
    reader = spark.readStream.format("kafka")
    for key, value in options.items():
        reader = reader.option(key, value)
    return reader.load().select(
        F.col("value").alias("payload"),
        F.lit("kafka").alias("source"),
        F.col("topic").alias("source_topic"),
        F.col("partition").cast("int").alias("source_partition"),
        F.col("offset").cast("long").alias("source_offset"),
        F.col("timestamp").alias("source_timestamp"),
        F.col("key").alias("source_key"),
        F.lit(None).cast("string").alias("source_file"),
        F.lit(None).cast("int").alias("source_line"),
    )
