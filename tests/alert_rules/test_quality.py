"""Alert quality on generated traffic (issue #3), in a few seconds.

A few hours of a normal day, around the evening peak and at night, must
fire no default rule; each kind of injected incident must be detected by its
rule within two windows of its start. Gold rows come from the plain-Python
reference KPIs; the engine replays them as the backtest does. The full-day
version with printed figures is ``bench/bench_rules.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alert_rules.backtest import BacktestReport, backtest
from alert_rules.cli import default_rules_dir
from alert_rules.loader import load_rule_set
from alert_rules.model import RuleSet
from alert_rules.samples import GRAINS
from streaming.generator import Incident, TrafficConfig
from tests.alert_rules.support import generated_gold

# The rate the default rules are tuned for: 150 orders a minute at the peak.
PEAK_ORDERS_PER_MINUTE = 150.0
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rule_set([default_rules_dir()])


def replay(
    rules: RuleSet, start: datetime, span: timedelta, *incidents: Incident
) -> BacktestReport:
    config = TrafficConfig(
        start=start, orders_per_minute=PEAK_ORDERS_PER_MINUTE, incidents=incidents
    )
    return backtest(rules, generated_gold(config, start + span))


@pytest.mark.parametrize(
    "start",
    [
        datetime(2025, 3, 3, 21, 30, tzinfo=UTC),  # 18:30-20:30 in Brasília: peak
        datetime(2025, 3, 4, 3, 0, tzinfo=UTC),  # 00:00-02:00 in Brasília: night
    ],
    ids=["evening-peak", "night"],
)
def test_a_normal_day_fires_no_default_rule(rules: RuleSet, start: datetime) -> None:
    report = replay(rules, start, 2 * HOUR)

    assert report.windows > 0
    fired = {
        rule: [(e.severity, e.labels, e.fired_at.isoformat()) for e in episodes]
        for rule, episodes in report.episodes.items()
    }
    assert fired == {}


INCIDENT_DAY = datetime(2025, 3, 3, 14, 0, tzinfo=UTC)  # from 11:00 in Brasília

# Each incident once, apart enough that each starts from normal traffic, with
# the rule that must catch it and the label naming its target.
INCIDENTS = [
    (
        Incident("payment_gateway_outage", INCIDENT_DAY + 40 * MINUTE, 20 * MINUTE,
                 "pix", 0.6),
        "PaymentFailuresByMethod",
        "payment_method",
    ),
    (
        Incident("region_outage", INCIDENT_DAY + 77 * MINUTE, 20 * MINUTE, "SP"),
        "NoOrdersFromRegion",
        "region",
    ),
    (
        Incident("cancellation_surge", INCIDENT_DAY + 111 * MINUTE, 20 * MINUTE,
                 None, 0.5),
        "CancellationSurge",
        None,
    ),
    (
        Incident("approval_latency_creep", INCIDENT_DAY + 140 * MINUTE,
                 30 * MINUTE, None, 20.0),
        "ApprovalLatencyHigh",
        None,
    ),
]  # fmt: skip


def test_each_incident_is_detected_within_two_windows(rules: RuleSet) -> None:
    report = replay(
        rules, INCIDENT_DAY, 175 * MINUTE, *(incident for incident, _, _ in INCIDENTS)
    )

    delays = {}
    for incident, rule, label in INCIDENTS:
        fired = [
            episode.fired_at
            for episode in report.episodes.get(rule, [])
            if episode.fired_at >= incident.start
            and (label is None or episode.labels.get(label) == incident.target)
        ]
        assert fired, f"{incident.kind} was not detected by {rule}"
        delays[incident.kind] = (min(fired) - incident.start) / GRAINS[
            rules.rule(rule).grain
        ]
    assert all(windows <= 2 for windows in delays.values()), delays
