"""Faults between the outbox and a receiver: 503, 429 with and without
Retry-After, timeouts, resets, a long outage, parking and replay, and a crash
between sending and recording the send. Time is event time (FakeClock)."""

from __future__ import annotations

import io
import random
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from exporters import build_exporters, load_config
from exporters.cli import main as cli_main
from exporters.config import RetryPolicy
from exporters.delivery import backoff_delay
from exporters.hub import ExporterHub
from exporters.outbox import Outbox, OutboxMessage
from tests.exporters.conftest import FakeClock, Fault, ReceiverServer, notification


def make_hub(
    server: ReceiverServer,
    ca_bundle: Path,
    data_dir: Path,
    clock: FakeClock,
    **env: str,
) -> ExporterHub:
    settings = {
        "ORDERPULSE_RECEIVERS": "hook",
        "ORDERPULSE_RECEIVER_HOOK_TYPE": "webhook",
        "ORDERPULSE_RECEIVER_HOOK_URL": f"{server.url}/hook",
        "ORDERPULSE_EXPORTERS_CA_BUNDLE": str(ca_bundle),
        "ORDERPULSE_HTTP_TIMEOUT_S": "0.3",
        **env,
    }
    config = load_config(settings)
    return build_exporters(
        config, data_dir, clock, console=io.StringIO(), rng=random.Random(7)
    )


def hook(kind: str = "firing", fingerprint: str = "fp-1", key: str | None = None):  # type: ignore[no-untyped-def]
    return notification(kind, fingerprint=fingerprint, key=key, receivers=("hook",))


def delivered_keys(server: ReceiverServer) -> list[str]:
    return [r.headers["Idempotency-Key"] for r in server.received]


def test_503_is_retried_after_backoff_and_delivered(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = make_hub(server, ca_bundle, tmp_path, clock)
    server.fail_next(Fault(status=503))
    hub.publish_alerts([], [hook()])

    first = hub.pump()
    assert (first.delivered, first.failed) == (0, 1)
    assert first.next_due_at is not None
    assert hub.pump(clock.now).failed == 0  # backing off: no request at all
    assert server.received == []

    clock.now = first.next_due_at
    assert hub.pump().delivered == 1
    assert delivered_keys(server) == ["fp-1:firing"]


def test_429_with_retry_after_waits_at_least_that_long(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = make_hub(server, ca_bundle, tmp_path, clock)
    server.fail_next(Fault(status=429, headers={"Retry-After": "120"}))
    hub.publish_alerts([], [hook()])

    report = hub.pump()
    assert report.next_due_at == clock.now + __import__("datetime").timedelta(
        seconds=120
    )
    clock.advance(119)
    hub.pump()
    assert server.received == []
    clock.advance(1)
    assert hub.pump().delivered == 1


def test_429_without_retry_after_is_still_retried(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = make_hub(server, ca_bundle, tmp_path, clock)
    server.fail_next(Fault(status=429), Fault(status=429))
    hub.publish_alerts([], [hook()])
    for _ in range(3):
        hub.pump()
        clock.advance(10)
    assert delivered_keys(server) == ["fp-1:firing"]


def test_timeout_and_reset_are_retried_with_the_same_key(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = make_hub(server, ca_bundle, tmp_path, clock)
    # The stalled request is processed by the server after the client gave up:
    # the receiver sees it twice, with one idempotency key to drop the repeat.
    server.fail_next(Fault(stall_s=0.6), Fault(reset=True))
    hub.publish_alerts([], [hook()])
    for _ in range(4):
        hub.pump()
        clock.advance(30)
    server.wait_for(2)
    assert delivered_keys(server) == ["fp-1:firing", "fp-1:firing"]
    assert hub.outbox.pending_count() == 0


def test_a_client_error_parks_at_once_and_the_queue_moves_on(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = make_hub(server, ca_bundle, tmp_path, clock)
    server.fail_next(Fault(status=400))
    hub.publish_alerts([], [hook(fingerprint="bad"), hook(fingerprint="good")])
    report = hub.drain()
    assert report.parked == 1
    assert delivered_keys(server) == ["good:firing"]
    (parked,) = hub.outbox.parked()
    assert parked.fingerprint == "bad"
    assert "HTTP 400" in (parked.park_reason or "")


def test_long_outage_loses_nothing_and_keeps_firing_before_resolved(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = make_hub(
        server, ca_bundle, tmp_path, clock, ORDERPULSE_OUTBOX_MAX_ATTEMPTS="100"
    )
    server.down = True
    fingerprints = [f"fp-{i}" for i in range(12)]
    for fp in fingerprints:
        hub.publish_alerts([], [hook("firing", fp)])
    # Six hours of outage, pumped every minute of event time.
    for _ in range(360):
        hub.pump()
        clock.advance(60)
    for fp in fingerprints:
        hub.publish_alerts([], [hook("resolved", fp)])
    assert hub.outbox.pending_count() == 24
    assert list(hub.outbox.parked()) == []

    server.down = False
    clock.advance(3600)
    hub.drain()
    keys = delivered_keys(server)
    assert len(keys) == 24
    for fp in fingerprints:
        assert keys.index(f"{fp}:firing") < keys.index(f"{fp}:resolved")


def test_memory_while_a_receiver_is_down_does_not_grow_with_the_backlog(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    server.down = True
    peaks = []
    for backlog in (100, 1000):
        hub = make_hub(server, ca_bundle, tmp_path / str(backlog), clock)
        outbox = hub.outbox
        payload = {"type": "notification", "notification": hook().to_json()}
        for i in range(backlog):
            outbox.enqueue(
                "hook",
                idempotency_key=f"k{i}",
                fingerprint=f"fp-{i}",
                payload=payload,
                now=clock.now,
            )
        tracemalloc.start()
        for _ in range(5):
            hub.pump()
            clock.advance(600)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    small, large = peaks
    assert large < small * 1.5, peaks


def test_park_after_max_attempts_then_replay_keeps_order(
    server: ReceiverServer,
    ca_bundle: Path,
    tmp_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub = make_hub(
        server, ca_bundle, tmp_path, clock, ORDERPULSE_OUTBOX_MAX_ATTEMPTS="3"
    )
    server.down = True
    hub.publish_alerts([], [hook("firing", "fp-a")])
    for _ in range(3):
        hub.pump()
        clock.advance(3600)
    (parked,) = hub.outbox.parked()
    assert parked.attempts == 3
    assert "gave up after 3 attempts" in (parked.park_reason or "")

    # The resolve arrives while the firing is parked: it parks behind it
    # instead of overtaking it.
    server.down = False
    hub.publish_alerts([], [hook("resolved", "fp-a"), hook("firing", "fp-b")])
    hub.drain()
    assert delivered_keys(server) == ["fp-b:firing"]
    assert [m.idempotency_key for m in hub.outbox.parked()] == [
        "fp-a:firing",
        "fp-a:resolved",
    ]

    assert cli_main(["exporters", "--data-dir", str(tmp_path), "parked"]) == 0
    listing = capsys.readouterr().out
    assert "fp-a:firing" in listing
    assert "gave up after 3 attempts" in listing
    assert (
        cli_main(
            ["exporters", "--data-dir", str(tmp_path), "replay", "--receiver", "hook"]
        )
        == 0
    )
    hub.drain()
    assert delivered_keys(server) == ["fp-b:firing", "fp-a:firing", "fp-a:resolved"]
    assert list(hub.outbox.parked()) == []


class CrashAfterSend(Outbox):
    """Dies (as a process would) after the receiver accepted but before the
    outbox recorded it."""

    def acknowledge(self, message: OutboxMessage) -> None:
        raise SystemExit("simulated crash after sending")


def test_crash_between_send_and_record_resends_with_the_same_key(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = make_hub(server, ca_bundle, tmp_path, clock)
    hub.publish_alerts([], [hook()])
    crashing = ExporterHub(
        hub.config,
        CrashAfterSend(tmp_path / "outbox"),
        hub._dispatcher._senders,  # the same configured receivers
        clock,
        local=None,
        uploader=None,
        metrics=None,
    )
    with pytest.raises(SystemExit):
        crashing.pump()
    assert delivered_keys(server) == ["fp-1:firing"]

    restarted = make_hub(server, ca_bundle, tmp_path, clock)
    assert restarted.drain().delivered == 1
    assert delivered_keys(server) == ["fp-1:firing", "fp-1:firing"]
    assert restarted.outbox.pending_count() == 0


def test_backoff_grows_is_capped_jittered_and_honours_retry_after() -> None:
    policy = RetryPolicy(base_delay_s=1, max_delay_s=60, jitter=0.5)
    top = lambda low, high: high  # noqa: E731
    bottom = lambda low, high: low  # noqa: E731
    assert [backoff_delay(policy, n, None, top) for n in (1, 2, 3, 7, 8, 30)] == [
        1,
        2,
        4,
        60,
        60,
        60,
    ]
    assert backoff_delay(policy, 3, None, bottom) == 2
    assert backoff_delay(policy, 1, 90, top) == 90
    capped = replace(policy, max_retry_after_s=100)
    assert backoff_delay(capped, 1, 10_000, top) == 100
