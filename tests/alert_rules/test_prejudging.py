"""The columnar pre-judging never changes a verdict.

Two engines see the same randomised Gold traffic (bursts, silences, missing
windows, KPIs without a value, open windows that fill up, late rewrites): one
pre-judges columnar and asks the exact judge only about the pairs it cannot
clear, the other (the reference) asks the exact judge about every pair. Their
transitions and notifications must be identical, call after call.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import alert_rules.engine
from alert_rules.engine import Engine
from alert_rules.model import Rule, RuleSet
from alert_rules.samples import KpiSample
from alert_rules.state import InMemoryStateStore

from .support import ROUTING, T0, FakeClock, row, rules_from, status

RULES = (
    ROUTING
    + """
rules:
  - name: Failing
    kind: threshold
    kpi: payment_failure_rate
    grain: 5m
    split_by: payment_method
    above: {warning: 0.15, critical: 0.30}
    recovery: {warning: 0.08, critical: 0.20}
    min_volume: 20
    for: 5m
    labels: {category: data}
    annotations: {summary: "{{ labels.payment_method }} {{ value }}"}
  - name: FewApprovals
    kind: threshold
    kpi: payments_approved
    grain: 5m
    split_by: payment_method
    open_windows: skip
    below: {warning: 40, critical: 20}
    recovery: {warning: 50, critical: 30}
    min_volume: 10
    for: 10m
    labels: {category: data}
    annotations: {summary: "{{ labels.payment_method }} {{ value }}"}
  - name: SlowApprovals
    kind: threshold
    kpi: approval_latency_p95_s
    grain: 5m
    split_by: payment_method
    above: {warning: 20, critical: 40}
    recovery: {warning: 12, critical: 30}
    min_volume: 20
    for: 5m
    labels: {category: data}
    annotations: {summary: "{{ labels.payment_method }} {{ value }}"}
  - name: Drop
    kind: change
    kpi: orders_created
    grain: 5m
    split_by: region
    drop_percent: {warning: 30, critical: 60}
    recovery_percent: 15
    baseline: {trailing_windows: 4}
    min_baseline: 20
    for: 5m
    labels: {category: data}
    annotations: {summary: "{{ labels.region }} {{ value }}"}
  - name: Surge
    kind: change
    kpi: orders_created
    grain: 5m
    rise_percent: {warning: 80}
    recovery_percent: 40
    baseline: {trailing_windows: 3}
    min_baseline: 20
    for: 5m
    labels: {category: data}
    annotations: {summary: "{{ value }}"}
  - name: Silent
    kind: absence
    grain: 1m
    split_by: region
    for: 2m
    expect_windows: 10
    min_expected: 3
    labels: {category: data}
    annotations: {summary: "no orders from {{ labels.region }}"}
  - name: LongSilent
    kind: absence
    grain: 1m
    split_by: region
    for: 5m
    expect_windows: 20
    min_expected: 2
    labels: {category: data}
    annotations: {summary: "no orders from {{ labels.region }} for long"}
"""
)

METHODS = ("pix", "card", "boleto")
REGIONS = ("SP", "RJ", "MG", "BA", "PR")  # five: enough pairs to pre-judge


def traffic(seed: int, minutes: int) -> list[list[KpiSample]]:
    """The rows of each minute's call: 1m and 5m windows, open and final."""
    rng = random.Random(seed)
    quiet = dict.fromkeys(REGIONS, 0)  # minutes of silence left per region
    calls: list[list[KpiSample]] = []
    for minute in range(1, minutes + 1):
        rows = []
        for name in REGIONS:
            if quiet[name] == 0 and rng.random() < 0.04:
                quiet[name] = rng.randint(1, 45)
            if quiet[name]:
                quiet[name] -= 1
                if rng.random() < 0.5:
                    rows.append(_region(minute - 1, name, 0, "1m"))
                continue
            if rng.random() < 0.9:
                orders = rng.choice((0, 1, 2, 3, 4, 6, 8))
                rows.append(_region(minute - 1, name, orders, "1m"))
        start = minute - minute % 5
        final = minute % 5 == 0
        for method in METHODS:
            if rng.random() < 0.15:
                continue  # no row for this window (yet)
            rows.append(_payments(rng, start - 5 if final else start, method, final))
        if final:
            for name in (*REGIONS, "all"):
                if rng.random() < 0.85:
                    orders = rng.choice((0, 5, 15, 30, 40, 50, 60, 80))
                    rows.append(_region(start - 5, name, orders, "5m"))
        if rng.random() < 0.1 and minute > 10:
            # A late rewrite of an older final window.
            back = start - 5 * rng.randint(2, 4)
            rows.append(_payments(rng, back, rng.choice(METHODS), True, late=minute))
        rng.shuffle(rows)
        calls.append(rows)
    return calls


def _region(minute: int, name: str, orders: int, grain: str) -> KpiSample:
    dimension = "all" if name == "all" else "region"
    return row(minute, grain=grain, dimension=dimension, value=name,
               orders_created=orders)  # fmt: skip


def _payments(
    rng: random.Random, minute: int, method: str, final: bool, late: int = 0
) -> KpiSample:
    kpis: dict[str, Any] = {
        "payments_approved": rng.choice((0, 5, 15, 25, 45, 60)),
        "payments_failed": rng.choice((0, 2, 5, 10, 30)),
    }
    if rng.random() < 0.7:
        kpis["approval_latency_p95_s"] = rng.choice((5.0, 15.0, 25.0, 45.0))
    sample = row(minute, dimension="payment_method", value=method, final=final, **kpis)
    if late:
        return _later(sample, late)
    return sample


def _later(sample: KpiSample, minute: int) -> KpiSample:
    return dataclasses.replace(sample, updated_at=T0 + timedelta(minutes=minute))


def run(rules: RuleSet, calls: list[list[KpiSample]]) -> list[tuple[object, ...]]:
    clock = FakeClock()
    engine = Engine(rules, InMemoryStateStore(), clock)
    seen: list[tuple[object, ...]] = []
    for minute, rows in enumerate(calls, start=1):
        clock.now = T0 + timedelta(minutes=minute)
        result = engine.evaluate(rows, status(minute))
        seen.append(
            (
                minute,
                tuple((t.alert_id, t.state, t.value) for t in result.transitions),
                tuple((n.idempotency_key, n.kind) for n in result.notifications),
                result.series_evaluated,
            )
        )
    return seen


@pytest.mark.parametrize("seed", range(6))
def test_prejudging_gives_the_exact_judges_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rules = rules_from(tmp_path, RULES)
    calls = traffic(seed, 240)

    columnar = run(rules, calls)
    with monkeypatch.context() as patched:

        def exact_only(rule: Rule, series: int) -> bool:
            return False

        patched.setattr(alert_rules.engine, "prejudged", exact_only)
        reference = run(rules, calls)

    assert columnar == reference
    fired = {t[1] for call in reference for t in call[1]}
    assert {"pending", "firing", "resolved"} <= fired  # the scenario bites


SILENCE = (
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
"""
)


@pytest.mark.parametrize(
    ("busy", "orders", "silent_from"),
    [
        # The reference span averages exactly the minimum: the bound must
        # not clear a sum equal to it.
        (range(0, 10), 5, 10),
        # A silence so long that the reference span left the ring's readable
        # range: the ring alone cannot clear it.
        (range(0, 15), 6, 15),
    ],
)
def test_absence_bound_never_clears_a_breaching_silence(
    tmp_path: Path, busy: range, orders: int, silent_from: int
) -> None:
    rules = rules_from(tmp_path, SILENCE)
    clock = FakeClock(T0 + timedelta(minutes=42))
    engine = Engine(rules, InMemoryStateStore(), clock)
    rows = [_region(minute, "RJ", orders, "1m") for minute in busy]
    rows += [
        _region(minute, name, 9, "1m")
        for name in ("SP", "MG", "BA", "PR", "SC")  # enough pairs to pre-judge
        for minute in range(42)
    ]

    engine.evaluate(rows, status(42))

    assert [(a.labels["region"], a.state) for a in engine.alerts] == [("RJ", "firing")]
    assert engine.alerts[0].active_since == T0 + timedelta(minutes=silent_from)
