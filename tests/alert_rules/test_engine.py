"""Engine lifecycle: every rule kind and the edges on-call cares about."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from alert_rules.alerts import EvaluationResult
from alert_rules.engine import Engine
from alert_rules.model import RuleSet
from alert_rules.state import InMemoryStateStore
from tests.alert_rules.support import ROUTING, T0, FakeClock, row, rules_from, status

FAILURES = (
    ROUTING
    + """
rules:
  - name: Failures
    kind: threshold
    kpi: payment_failure_rate
    grain: 5m
    split_by: payment_method
    above: {warning: 0.15, critical: 0.30}
    recovery: {warning: 0.08, critical: 0.20}
    min_volume: 20
    for: 10m
    labels: {category: data}
    annotations:
      summary: "{{ labels.payment_method }} failing at {{ value | percent }}"
      runbook_url: https://runbooks.example/failures
"""
)


def pay(minute: int, failed: int, approved: int = 100, method: str = "pix") -> object:
    return row(
        minute,
        dimension="payment_method",
        value=method,
        payments_failed=failed,
        payments_approved=approved,
    )


def step(
    engine: Engine, clock: FakeClock, minute: int, *rows: object
) -> EvaluationResult:
    clock.now = T0 + timedelta(minutes=minute)
    return engine.evaluate(list(rows), status(minute))  # type: ignore[arg-type]


@pytest.fixture
def failures(tmp_path: Path) -> RuleSet:
    return rules_from(tmp_path, FAILURES)


def test_threshold_fires_after_for_and_resolves_once(failures: RuleSet) -> None:
    clock = FakeClock()
    engine = Engine(failures, InMemoryStateStore(), clock)

    first = step(engine, clock, 5, pay(0, failed=50))
    second = step(engine, clock, 10, pay(5, failed=50))
    calm = step(engine, clock, 15, pay(10, failed=5))

    assert [t.state for t in first.transitions] == ["pending", "pending"]
    assert first.notifications == ()
    firing = [n for n in second.notifications if n.kind == "firing"]
    assert [(n.severity, n.receivers) for n in firing] == [
        ("critical", ("oncall-pagerduty", "squad-slack"))
    ]  # the warning of the same scope is inhibited by the critical
    assert firing[0].annotations["summary"] == "pix failing at 33.3%"
    assert firing[0].starts_at == T0 + timedelta(minutes=10)
    resolved = [n for n in calm.notifications if n.kind == "resolved"]
    assert [(n.severity, n.ends_at) for n in resolved] == [
        ("critical", T0 + timedelta(minutes=15))
    ]
    rows = {(t.severity, t.state) for t in calm.transitions}
    assert rows == {("critical", "resolved"), ("warning", "resolved")}


def test_transition_record_has_exactly_the_gold_alerts_columns(
    failures: RuleSet,
) -> None:
    clock = FakeClock()
    engine = Engine(failures, InMemoryStateStore(), clock)
    step(engine, clock, 5, pay(0, failed=50))
    result = step(engine, clock, 10, pay(5, failed=50))

    record = next(t for t in result.transitions if t.state == "firing").to_record()

    assert set(record) == {
        "alert_id", "rule", "severity", "fingerprint", "labels", "state", "value",
        "threshold", "active_since", "fired_at", "resolved_at", "evaluated_at",
        "annotations", "receivers",
    }  # fmt: skip
    assert record["active_since"] == T0
    assert record["fired_at"] == T0 + timedelta(minutes=10)
    assert record["labels"]["payment_method"] == "pix"
    assert record["threshold"] == 0.30


def test_flapping_around_the_level_pages_once(failures: RuleSet) -> None:
    clock = FakeClock()
    engine = Engine(failures, InMemoryStateStore(), clock)
    notes = []
    # 35%, 33%, then hovering between 22% and 32%: above the critical
    # recovery level (20%), so the page stays open instead of flapping.
    for index, failed in enumerate([54, 50, 28, 47, 30, 45, 29, 46]):
        minute = 5 * (index + 1)
        notes.extend(step(engine, clock, minute, pay(minute - 5, failed)).notifications)

    assert [(n.kind, n.severity) for n in notes] == [("firing", "critical")]


def test_small_volume_never_fires(failures: RuleSet) -> None:
    clock = FakeClock()
    engine = Engine(failures, InMemoryStateStore(), clock)
    for minute in range(5, 60, 5):
        step(engine, clock, minute, pay(minute - 5, failed=2, approved=0))

    assert engine.alerts == ()


def test_restart_mid_pending_keeps_the_timer(failures: RuleSet) -> None:
    store = InMemoryStateStore()
    clock = FakeClock()
    before = Engine(failures, store, clock)
    step(before, clock, 5, pay(0, failed=50))

    after = Engine(failures, store, clock)
    result = step(after, clock, 10, pay(5, failed=50))

    firing = [t for t in result.transitions if t.state == "firing"]
    assert [t.severity for t in firing] == ["critical", "warning"]
    assert all(t.active_since == T0 for t in firing)


def test_restart_while_firing_neither_repages_nor_misses_the_resolve(
    failures: RuleSet,
) -> None:
    store = InMemoryStateStore()
    clock = FakeClock()
    before = Engine(failures, store, clock)
    step(before, clock, 5, pay(0, failed=50))
    paged = step(before, clock, 10, pay(5, failed=50)).notifications
    before.acknowledge(n.idempotency_key for n in paged)

    after = Engine(failures, store, clock)
    still = step(after, clock, 15, pay(10, failed=45))
    calm = step(after, clock, 20, pay(15, failed=3))

    assert still.notifications == ()
    assert [(n.kind, n.receivers) for n in calm.notifications] == [
        ("resolved", ("oncall-pagerduty", "squad-slack"))
    ]


def test_crash_before_delivery_redelivers_with_the_same_key(failures: RuleSet) -> None:
    store = InMemoryStateStore()
    clock = FakeClock()
    crashed = Engine(failures, store, clock)
    step(crashed, clock, 5, pay(0, failed=50))
    lost = step(crashed, clock, 10, pay(5, failed=50)).notifications
    # the process dies here: nothing was delivered or acknowledged

    restarted = Engine(failures, store, clock)
    replay = step(restarted, clock, 10, pay(5, failed=50))
    following = step(restarted, clock, 15, pay(10, failed=50))

    assert [n.idempotency_key for n in replay.notifications] == [
        n.idempotency_key for n in lost
    ]
    assert following.notifications == ()


def test_replayed_batch_gives_identical_alert_ids(failures: RuleSet) -> None:
    ids = []
    for _ in range(2):
        clock = FakeClock()
        engine = Engine(failures, InMemoryStateStore(), clock)
        step(engine, clock, 5, pay(0, failed=50))
        result = step(engine, clock, 10, pay(5, failed=50))
        ids.append(sorted(t.alert_id for t in result.transitions))

    assert ids[0] == ids[1]
    assert len(set(ids[0])) == len(ids[0])


def test_repeat_interval_for_still_firing_alerts(failures: RuleSet) -> None:
    clock = FakeClock()
    engine = Engine(failures, InMemoryStateStore(), clock)
    kinds = []
    for minute in range(5, 80, 5):
        result = step(engine, clock, minute, pay(minute - 5, failed=50))
        kinds.extend((minute, n.kind) for n in result.notifications)

    assert kinds == [(10, "firing"), (70, "repeat")]


def test_resolve_during_a_silence_is_still_delivered(tmp_path: Path) -> None:
    silenced = (
        FAILURES
        + """
silences:
  - matchers: {alertname: Failures, payment_method: pix}
    starts_at: 2025-03-03T12:12:00Z
    ends_at: 2025-03-03T14:00:00Z
    reason: gateway vendor maintenance
    author: ana
"""
    )
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, silenced), InMemoryStateStore(), clock)
    step(engine, clock, 5, pay(0, failed=50))
    paged = step(engine, clock, 10, pay(5, failed=50)).notifications
    during = [step(engine, clock, m, pay(m - 5, failed=50)) for m in range(15, 75, 5)]
    resolved = step(engine, clock, 75, pay(70, failed=1)).notifications

    assert [n.kind for n in paged] == ["firing"]
    assert all(r.notifications == () for r in during)  # no repeat while silenced
    assert [(n.kind, n.severity) for n in resolved] == [("resolved", "critical")]


def test_alert_firing_inside_a_silence_stays_quiet(tmp_path: Path) -> None:
    silenced = (
        FAILURES
        + """
silences:
  - matchers: {payment_method: {in: [pix, boleto]}}
    starts_at: 2025-03-03T11:00:00Z
    ends_at: 2025-03-03T14:00:00Z
    reason: load test
    author: bruno
"""
    )
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, silenced), InMemoryStateStore(), clock)
    results = [step(engine, clock, m, pay(m - 5, failed=50)) for m in (5, 10, 15)]
    results.append(step(engine, clock, 20, pay(15, failed=1)))

    assert all(r.notifications == () for r in results)
    assert any(
        t.state == "firing" and t.receivers == () for t in results[1].transitions
    )


def test_reload_resets_only_the_changed_rule(tmp_path: Path) -> None:
    both = (
        FAILURES
        + """
  - name: Latency
    kind: threshold
    kpi: approval_latency_p95_s
    grain: 5m
    above: {critical: 60}
    labels: {category: data}
    annotations: {summary: "p95 {{ value }}"}
"""
    )
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, both), InMemoryStateStore(), clock)
    hot = [pay(0, failed=50), row(0, payments_approved=100, approval_latency_p95_s=90)]
    step(engine, clock, 5, *hot)
    step(
        engine,
        clock,
        10,
        pay(5, failed=50),
        row(5, approval_latency_p95_s=90, payments_approved=100),
    )
    changed = both.replace("above: {critical: 60}", "above: {critical: 75}")

    reset = engine.replace_rules(rules_from(tmp_path, changed, "changed.yaml"))
    after = step(engine, clock, 15, pay(10, failed=50))

    assert reset == ["Latency"]
    assert [(n.rule, n.kind) for n in after.notifications] == [("Latency", "resolved")]
    assert {a.rule for a in engine.alerts} == {"Failures"}


def test_hot_reload_rejects_an_invalid_file_and_keeps_running(tmp_path: Path) -> None:
    from alert_rules.reload import RuleWatcher

    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "failures.yaml").write_text(FAILURES, encoding="utf-8")
    watcher = RuleWatcher([folder])
    clock = FakeClock()
    engine = Engine(watcher.load(), InMemoryStateStore(), clock, watcher=watcher)
    step(engine, clock, 5, pay(0, failed=50))
    (folder / "failures.yaml").write_text(
        FAILURES.replace("for: 10m", "for: 7m"), encoding="utf-8"
    )

    clock.now = T0 + timedelta(minutes=6)
    rejected = engine.tick(status(6))
    fired = step(engine, clock, 10, pay(5, failed=50))

    assert rejected.reload_errors
    assert "'for' must be a whole number of 5m windows" in rejected.reload_errors[0]
    assert any(n.kind == "firing" for n in fired.notifications)

    (folder / "failures.yaml").write_text(
        FAILURES.replace("above: {warning: 0.15", "above: {warning: 0.16"),
        encoding="utf-8",
    )
    clock.now = T0 + timedelta(minutes=11)
    reloaded = engine.tick(status(11))
    assert reloaded.reload_errors == ()
    assert engine.rules.rule("Failures").levels[1].trigger == 0.16
    # The edited rule starts afresh: its old page is resolved, and as the
    # retained windows still breach the new level, a new episode fires.
    assert [(n.kind, n.severity) for n in reloaded.notifications] == [
        ("resolved", "critical"),
        ("firing", "critical"),
    ]


ABSENCE = (
    ROUTING
    + """
rules:
  - name: Silent
    kind: absence
    grain: 1m
    split_by: region
    for: 3m
    expect_windows: 10
    min_expected: 5
    labels: {category: data}
    annotations: {summary: "no orders from {{ labels.region }}"}
  - name: Stalled
    kind: pipeline_stalled
    max_batch_age: 3m
    max_watermark_stall: 6m
    labels: {category: pipeline}
    annotations: {summary: "stalled {{ value | int }}s"}
"""
)


def region(minute: int, name: str, orders: int) -> object:
    return row(
        minute, grain="1m", dimension="region", value=name, orders_created=orders
    )


def test_absence_fires_only_while_the_pipeline_is_fresh(tmp_path: Path) -> None:
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, ABSENCE), InMemoryStateStore(), clock)
    for minute in range(1, 21):
        step(
            engine,
            clock,
            minute,
            region(minute - 1, "SP", 10),
            region(minute - 1, "RJ", 8),
        )
    notes = []
    for minute in range(21, 25):  # RJ goes silent, SP keeps the watermark moving
        notes += step(engine, clock, minute, region(minute - 1, "SP", 10)).notifications

    assert [(n.rule, n.labels.get("region"), n.kind) for n in notes] == [
        ("Silent", "RJ", "firing")
    ]
    assert notes[0].starts_at == T0 + timedelta(minutes=23)


def test_stalled_pipeline_raises_its_own_alert_instead_of_absences(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, ABSENCE), InMemoryStateStore(), clock)
    for minute in range(1, 21):
        step(
            engine,
            clock,
            minute,
            region(minute - 1, "SP", 10),
            region(minute - 1, "RJ", 8),
        )
    notes = []
    for minute in range(21, 40):  # nothing arrives at all; only the timer runs
        clock.now = T0 + timedelta(minutes=minute)
        notes += engine.tick(status(20, batch_minute=20)).notifications

    assert [(n.rule, n.kind) for n in notes] == [("Stalled", "firing")]
    assert notes[0].starts_at == T0 + timedelta(minutes=24)


def test_threshold_judges_open_windows_once_the_volume_guard_passes(
    failures: RuleSet,
) -> None:
    rules = failures
    clock = FakeClock()
    engine = Engine(rules, InMemoryStateStore(), clock)
    step(engine, clock, 5, pay(0, failed=50))
    early = step(
        engine,
        clock,
        6,
        row(
            5,
            dimension="payment_method",
            value="pix",
            final=False,
            payments_failed=3,
            payments_approved=2,
        ),
    )
    filled = step(
        engine,
        clock,
        8,
        row(
            5,
            dimension="payment_method",
            value="pix",
            final=False,
            payments_failed=20,
            payments_approved=20,
        ),
    )

    assert early.notifications == ()  # 5 payments: below min_volume, not judged yet
    assert any(n.kind == "firing" for n in filled.notifications)


CHANGE = (
    ROUTING
    + """
rules:
  - name: Drop
    kind: change
    kpi: orders_created
    grain: 5m
    drop_percent: {critical: 50}
    baseline: {same_window: 1d}
    min_baseline: 50
    annotations: {summary: "{{ value | int }} vs {{ baseline | int }} a day ago"}
  - name: Spike
    kind: anomaly
    kpi: orders_cancelled
    grain: 5m
    deviation: {warning: 4}
    direction: above
    rolling_windows: 12
    min_volume: 10
    annotations: {summary: "{{ value | int }} cancels, usual {{ baseline | round }}"}
"""
)


def test_change_against_the_same_window_a_day_earlier(tmp_path: Path) -> None:
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, CHANGE), InMemoryStateStore(), clock)
    day = 24 * 60
    yesterday = [row(m - day, orders_created=200 + m) for m in range(0, 30, 5)]
    engine.evaluate(yesterday, status(-day + 30))
    results = [
        step(engine, clock, m + 5, row(m, orders_created=orders))
        for m, orders in zip(range(0, 30, 5), [210, 190, 80, 90, 200, 205], strict=True)
    ]

    kinds = [(i, n.kind) for i, r in enumerate(results) for n in r.notifications]
    assert kinds == [(2, "firing"), (4, "resolved")]
    assert results[2].notifications[0].annotations["summary"] == "80 vs 210 a day ago"


def test_anomaly_fires_on_a_spike_with_enough_volume(tmp_path: Path) -> None:
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, CHANGE), InMemoryStateStore(), clock)
    usual = [10, 12, 9, 11, 10, 13, 8, 10, 12, 11, 9, 10]
    for index, cancels in enumerate(usual):
        step(engine, clock, 5 * index + 5, row(5 * index, orders_cancelled=cancels))
    spike = step(engine, clock, 65, row(60, orders_cancelled=40))

    assert [(n.rule, n.kind) for n in spike.notifications] == [("Spike", "firing")]
    assert spike.notifications[0].annotations["summary"] == "40 cancels, usual 10.42"


CATCH_UP = (
    FAILURES
    + """
  - name: Silent
    kind: absence
    grain: 1m
    split_by: region
    for: 3m
    expect_windows: 10
    min_expected: 5
    fresh_within: 10m
    labels: {category: data}
    annotations: {summary: "no orders from {{ labels.region }}"}
  - name: Stalled
    kind: pipeline_stalled
    max_batch_age: 3m
    max_watermark_stall: 6m
    labels: {category: pipeline}
    annotations: {summary: "stalled {{ value | int }}s"}
"""
)


def test_a_pipeline_catching_up_still_pages_on_its_data(tmp_path: Path) -> None:
    # A back-log: wall clock 25 to 55 minutes ahead of event time, batches
    # complete every minute and the watermark advances five minutes a batch.
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, CATCH_UP), InMemoryStateStore(), clock)
    notes = []
    for batch, minute in enumerate(range(5, 40, 5)):
        clock.now = T0 + timedelta(minutes=60 + batch)
        rows = [pay(minute - 5, failed=50 if minute > 10 else 2)]
        rows += [
            region(minute - 5 + m, "RJ", 0 if minute > 20 else 8) for m in range(5)
        ]
        status_now = status(minute, batch_minute=60 + batch)
        notes += engine.evaluate(rows, status_now).notifications

    assert [(n.rule, n.kind, n.severity) for n in notes] == [
        ("Failures", "firing", "critical")
    ]  # no PipelineStalled, and no absence while the watermark is far behind


def test_watermark_standing_still_while_batches_complete_is_a_stall(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    engine = Engine(rules_from(tmp_path, CATCH_UP), InMemoryStateStore(), clock)
    notes = []
    for minute in range(1, 12):  # batches keep coming, event time stuck at 1
        clock.now = T0 + timedelta(minutes=minute)
        notes += engine.evaluate([], status(1, batch_minute=minute)).notifications

    assert [(n.rule, n.kind) for n in notes] == [("Stalled", "firing")]
    assert notes[0].starts_at == T0 + timedelta(minutes=8)


def test_nothing_is_written_when_nothing_changed(failures: RuleSet) -> None:
    store = InMemoryStateStore()
    clock = FakeClock()
    engine = Engine(failures, store, clock)
    step(engine, clock, 5, pay(0, failed=2))
    saves = store.saves

    engine.tick(status(5))
    engine.tick(status(5))
    engine.acknowledge([])

    assert store.saves == saves
