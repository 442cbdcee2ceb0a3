"""Alert quality scenario and evaluation cost of the default rule set. Prints figures.

Run: ``.venv/bin/python -m bench.bench_rules``  (about a minute on 2 cores)

1. Quality: a simulated normal day with seasonality (streaming.generator, KPIs
   from the plain-Python reference) must fire no default rule; then a day with
   injected incidents, each of which must be detected within two windows.
2. Cost: rule x series evaluations per second, and the evaluation time of one
   micro-batch with the default rules.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from alert_rules.backtest import backtest
from alert_rules.cli import default_rules_dir
from alert_rules.engine import Engine
from alert_rules.loader import load_rule_set
from alert_rules.samples import GRAINS, KpiSample, PipelineStatus
from alert_rules.state import InMemoryStateStore
from streaming.generator import Incident, OrderTrafficGenerator, TrafficConfig
from tests.support.kpi_reference import reference_kpis

DAY_START = datetime(2025, 3, 3, 3, 0, tzinfo=UTC)  # 00:00 in Brasília
PEAK_ORDERS_PER_MINUTE = 150.0

# incident kind -> (rule that must catch it, label that must match)
EXPECTED = {
    "payment_gateway_outage": ("PaymentFailuresByMethod", "payment_method"),
    "region_outage": ("NoOrdersFromRegion", "region"),
    "cancellation_surge": ("CancellationSurge", None),
    "approval_latency_creep": ("ApprovalLatencyHigh", None),
}


def gold_rows(config: TrafficConfig, until: datetime) -> list[KpiSample]:
    """Generated traffic turned into final Gold rows by the reference KPI code."""
    messages = OrderTrafficGenerator(config).advance(until)
    events = [m.event for m in messages if m.event is not None]
    rows = []
    for (grain, start, dimension, value), kpis in reference_kpis(events).items():
        if start + GRAINS[grain] > until:
            continue
        record: dict[str, Any] = dict(kpis)
        record.update(
            window_start=start,
            window_end=start + GRAINS[grain],
            grain=grain,
            dimension=dimension,
            dimension_value=value,
            is_final=True,
            updated_at=start + GRAINS[grain],
        )
        rows.append(KpiSample.from_dict(record))
    return rows


def quality() -> None:
    rules = load_rule_set([default_rules_dir()])
    end = DAY_START + timedelta(days=1)

    started = time.perf_counter()
    normal = gold_rows(
        TrafficConfig(start=DAY_START, orders_per_minute=PEAK_ORDERS_PER_MINUTE), end
    )
    report = backtest(rules, normal)
    fired = sum(len(episodes) for episodes in report.episodes.values())
    print(
        f"normal day: {len(normal)} Gold rows, {fired} alert(s) fired "
        f"({time.perf_counter() - started:.1f}s)"
    )
    for rule, episodes in report.episodes.items():
        for episode in episodes:
            print(
                f"    false alarm {rule} {episode.severity} {episode.labels} "
                f"at {episode.fired_at:%H:%M}"
            )

    hour = timedelta(hours=1)
    minutes = timedelta(minutes=1)
    incidents = (
        Incident("payment_gateway_outage", DAY_START + 11 * hour, 20 * minutes,
                 "pix", 0.6),
        Incident("region_outage", DAY_START + 14 * hour + 2 * minutes, 20 * minutes,
                 "SP"),
        Incident("cancellation_surge", DAY_START + 17 * hour + minutes, 20 * minutes,
                 None, 0.5),
        Incident("approval_latency_creep", DAY_START + 20 * hour, 30 * minutes,
                 None, 20.0),
    )  # fmt: skip
    config = TrafficConfig(
        start=DAY_START, orders_per_minute=PEAK_ORDERS_PER_MINUTE, incidents=incidents
    )
    report = backtest(rules, gold_rows(config, end))
    print("incident day (detection = first firing after the incident start):")
    for incident in incidents:
        rule, label = EXPECTED[incident.kind]
        episodes = [
            e
            for e in report.episodes.get(rule, [])
            if e.fired_at >= incident.start
            and (label is None or e.labels.get(label) == incident.target)
        ]
        if not episodes:
            print(f"    {incident.kind:24} {rule:26} NOT DETECTED")
            continue
        delay = min(e.fired_at for e in episodes) - incident.start
        grain = rules.rule(rule).grain
        windows = delay / GRAINS[grain]
        verdict = "ok" if windows <= 2 else "LATE"
        print(
            f"    {incident.kind:24} {rule:26} "
            f"after {delay.total_seconds() / 60:4.1f} min "
            f"= {windows:.1f} x {grain} windows {verdict}"
        )
    others = {
        rule: len(episodes)
        for rule, episodes in report.episodes.items()
        if rule not in {r for r, _ in EXPECTED.values()}
    }
    print(f"    other rules fired: {others or 'none'}")


def cost() -> None:
    rules = load_rule_set([default_rules_dir()])
    rows = gold_rows(
        TrafficConfig(start=DAY_START + timedelta(hours=18), orders_per_minute=600.0),
        DAY_START + timedelta(hours=20),
    )
    by_end: dict[datetime, list[KpiSample]] = {}
    for sample in rows:
        by_end.setdefault(sample.window_end, []).append(sample)
    moments = sorted(by_end)

    class Clock:
        now = moments[0]

        def __call__(self) -> datetime:
            return self.now

    clock = Clock()
    engine = Engine(rules, InMemoryStateStore(), clock)
    evaluations = 0
    elapsed = 0.0
    batch_times = []
    for moment in moments:
        clock.now = moment
        status = PipelineStatus(moment, moment, moment)
        started = time.perf_counter()
        result = (
            engine.tick(status) if False else engine.evaluate(by_end[moment], status)
        )
        spent = time.perf_counter() - started
        elapsed += spent
        batch_times.append(spent)
        levels = sum(len(r.levels) for r in rules.rules) / len(rules.rules)
        evaluations += round(result.series_evaluated * levels)
    batch_times.sort()
    median = batch_times[len(batch_times) // 2]
    print(
        f"evaluation cost over {len(moments)} micro-batches of 600 orders/min traffic "
        f"(state saved to memory each batch):"
    )
    print(
        f"    rule x series evaluations: {evaluations}, {evaluations / elapsed:,.0f}/s "
        f"(target 1,000,000/s)"
    )
    print(
        f"    per micro-batch: median {median * 1000:.1f} ms, "
        f"p95 {batch_times[int(len(batch_times) * 0.95)] * 1000:.1f} ms; "
        f"share of a 10 s micro-batch: {median / 10:.2%} (target < 5%)"
    )


if __name__ == "__main__":
    quality()
    cost()
