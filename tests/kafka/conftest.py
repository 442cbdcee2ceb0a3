"""Fixtures for tests against the real local Kafka broker of ``scripts/kafka``.

The broker is shared by the whole run: if ``.ci/run`` (or a developer) already started
it, the tests use it and leave it running; otherwise the session starts it and stops it
at the end. Each test gets its own topic, deleted afterwards.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka"


def broker(verb: str) -> str:
    """Run ``scripts/kafka <verb>``; return what it printed, fail the test on error."""
    result = subprocess.run(
        [str(SCRIPT), verb], capture_output=True, text=True, check=False, timeout=180
    )
    if verb != "status" and result.returncode != 0:
        pytest.fail(f"scripts/kafka {verb} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    status = broker("status")
    started_here = not status.startswith("ready")
    address = broker("start").splitlines()[-1]
    yield address
    if started_here:
        broker("stop")


@pytest.fixture(scope="session")
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[[int], str]]:
    """Makes fresh topics (``new_topic(partitions)``); all are deleted at the end."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    made: list[str] = []

    def make(partitions: int = 2) -> str:
        name = f"orders-test-{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
        made.append(name)
        return name

    yield make
    if made:
        for future in admin.delete_topics(made).values():
            future.result(timeout=30)


@pytest.fixture
def kafka_topic(new_topic: Callable[[int], str]) -> str:
    """A fresh topic with 2 partitions."""
    return new_topic(2)
