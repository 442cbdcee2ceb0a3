"""Helpers to build Gold rows and rule sets in tests (time is always explicit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alert_rules.loader import load_rule_set
from alert_rules.model import RuleSet
from alert_rules.samples import GRAINS, KpiSample, PipelineStatus

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)

ROUTING = """
routing:
  receivers: [oncall-pagerduty, squad-slack]
  routes:
    - match: {severity: critical}
      receivers: [oncall-pagerduty, squad-slack]
      repeat_interval: 1h
  default: {receivers: [squad-slack], repeat_interval: 4h}
inhibit:
  - source: {severity: critical}
    target: {severity: warning}
    equal: [alertname, region, payment_method]
  - source: {alertname: Stalled}
    target: {category: data}
"""


class FakeClock:
    """Wall clock under test control."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def rules_from(tmp_path: Path, text: str, name: str = "rules.yaml") -> RuleSet:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_rule_set([path])


def row(
    minute: int,
    *,
    grain: str = "5m",
    dimension: str = "all",
    value: str = "all",
    final: bool = True,
    **kpis: Any,
) -> KpiSample:
    """A Gold row for the window starting ``minute`` minutes after T0."""
    start = T0 + timedelta(minutes=minute)
    counts = {
        "orders_created": 0,
        "orders_cancelled": 0,
        "payments_approved": 0,
        "payments_failed": 0,
        "distinct_customers": 0,
        "late_events": 0,
    }
    counts.update({k: v for k, v in kpis.items() if k in counts})
    attempted = counts["payments_approved"] + counts["payments_failed"]
    created = counts["orders_created"]
    data: dict[str, Any] = {
        **counts,
        "window_start": start,
        "window_end": start + GRAINS[grain],
        "grain": grain,
        "dimension": dimension,
        "dimension_value": value,
        "gmv": float(kpis.get("gmv", 0.0)),
        "avg_ticket": None,
        "cancellation_rate": counts["orders_cancelled"] / created if created else None,
        "payment_failure_rate": counts["payments_failed"] / attempted
        if attempted
        else None,
        "approval_latency_p50_s": kpis.get("approval_latency_p50_s"),
        "approval_latency_p95_s": kpis.get("approval_latency_p95_s"),
        "is_final": final,
        "updated_at": start + GRAINS[grain],
    }
    return KpiSample.from_dict(data)


def status(minute: int, *, batch_minute: int | None = None) -> PipelineStatus:
    """Pipeline status with the watermark at T0 + ``minute``."""
    moment = T0 + timedelta(minutes=minute)
    batch = T0 + timedelta(minutes=batch_minute if batch_minute is not None else minute)
    return PipelineStatus(
        watermark=moment, latest_event_time=moment, last_batch_at=batch
    )


def generated_gold(config: Any, until: datetime) -> list[KpiSample]:
    """Generated traffic up to ``until`` as final Gold rows.

    ``config`` is a ``streaming.generator.TrafficConfig``; the KPIs come from the
    plain-Python reference computation (tests/support/kpi_reference.py), so the
    quality checks depend on neither Spark nor the streaming job's Gold code.
    """
    from streaming.generator import OrderTrafficGenerator
    from tests.support.kpi_reference import reference_kpis

    messages = OrderTrafficGenerator(config).advance(until)
    events = [m.event for m in messages if m.event is not None]
    rows = []
    for (grain, start, dimension, value), kpis in reference_kpis(events).items():
        end = start + GRAINS[grain]
        if start < config.start or end > until:
            continue
        record: dict[str, Any] = dict(kpis)
        record.update(
            window_start=start,
            window_end=end,
            grain=grain,
            dimension=dimension,
            dimension_value=value,
            is_final=True,
            updated_at=end,
        )
        rows.append(KpiSample.from_dict(record))
    return rows
