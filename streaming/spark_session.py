"""The one place where Spark sessions are built.

Every job, test and benchmark gets its session from :func:`build_spark_session`, so
Delta, the state store and the jar list are configured identically everywhere. Jars are
handed to Spark as local files (``spark.jars``) fetched once by ``scripts/setup``; a
session never resolves packages from the network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JAR_DIR = PROJECT_ROOT / ".cache" / "jars" / "spark"
JAR_DIR_ENV = "ORDERPULSE_JAR_DIR"

LOG4J_CONFIG = Path(__file__).resolve().parent / "log4j2.properties"
ROCKSDB_PROVIDER = (
    "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
)

_VERSIONED_JAR = re.compile(r"^(?P<artifact>.+?)-\d[\w.\-]*\.jar$")


class SparkSetupError(RuntimeError):
    """The local jars or Java needed to start Spark are missing; run scripts/setup."""


@dataclass(frozen=True)
class SparkSettings:
    """How a session is built. The defaults suit a 2-core machine in local mode.

    ``shuffle_partitions`` and the state store provider are fixed once a checkpoint
    exists, so they are chosen here and nowhere else.
    """

    app_name: str = "orderpulse"
    master: str | None = "local[2]"
    shuffle_partitions: int = 2
    jar_dir: Path | None = None
    extra_conf: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "WARN"


def artifact_name(jar: Path) -> str:
    """``kafka-clients-3.9.2.jar`` -> ``kafka-clients``."""
    match = _VERSIONED_JAR.match(jar.name)
    return match.group("artifact") if match else jar.stem


def local_jars(jar_dir: Path, spark_jars: Iterable[Path]) -> list[Path]:
    """The jars in ``jar_dir`` that pyspark does not already ship.

    Maven copies the whole dependency tree, including artifacts such as scala-library or
    slf4j that pyspark has in its own ``jars`` folder; adding a second version of those
    to the classpath only invites conflicts, so they are left out.
    """
    shipped = {artifact_name(jar) for jar in spark_jars}
    return sorted(
        jar for jar in jar_dir.glob("*.jar") if artifact_name(jar) not in shipped
    )


def _jar_dir(settings: SparkSettings) -> Path:
    if settings.jar_dir is not None:
        return settings.jar_dir
    return Path(os.environ.get(JAR_DIR_ENV, DEFAULT_JAR_DIR))


def session_conf(settings: SparkSettings) -> dict[str, str]:
    """The Spark configuration of an OrderPulse session, as plain key/value pairs."""
    import pyspark

    jar_dir = _jar_dir(settings)
    pyspark_jars = Path(pyspark.__file__).parent / "jars"
    jars = local_jars(jar_dir, pyspark_jars.glob("*.jar"))
    if not any(jar.name.startswith("delta-spark_") for jar in jars):
        raise SparkSetupError(
            f"no delta-spark jar in {jar_dir}: run scripts/setup to fetch the jars "
            f"(or point {JAR_DIR_ENV} at a folder that has them)"
        )
    conf = {
        "spark.jars": ",".join(str(jar) for jar in jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": (
            "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        ),
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.streaming.stateStore.providerClass": ROCKSDB_PROVIDER,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Validation builds deep expression trees; the default thread stack is too
        # small for Spark to analyse (or print) them on the stream execution thread.
        "spark.driver.extraJavaOptions": (
            f"-Duser.timezone=UTC -Xss16m -Dlog4j2.configurationFile={LOG4J_CONFIG}"
        ),
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        # Small local batches: skip the adaptive re-planning and keep files few.
        "spark.sql.adaptive.enabled": "false",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.streaming.noDataMicroBatches.enabled": "false",
    }
    if settings.master and settings.master.startswith("local"):
        # Local mode talks to itself only: bind the driver to loopback instead of
        # whatever address the host name resolves to.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    conf.update(settings.extra_conf)
    return conf


def build_spark_session(settings: SparkSettings | None = None) -> SparkSession:
    """Build (or return the running) Spark session with Delta and local jars."""
    from pyspark.sql import SparkSession

    settings = settings or SparkSettings()
    if settings.master and settings.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(settings.app_name)
    if settings.master:
        builder = builder.master(settings.master)
    for key, value in session_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    return spark
