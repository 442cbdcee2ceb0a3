"""Shared fixtures: one local Spark session for the whole test run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    from streaming.spark_session import SparkSettings, build_spark_session

    session = build_spark_session(SparkSettings(app_name="orderpulse-tests"))
    yield session
    session.stop()
