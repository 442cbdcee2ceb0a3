"""Rule unit tests written in YAML, run offline against a fake clock.

A test file names the rule files under test and lists test cases. Each case
gives KPI series window by window and expects which alerts are firing at given
times (or none). See alert_rules/README.md for the format; a short example::

    rule_files: [../orders.yaml, ../routing.yaml]
    start: 2025-03-03T12:00:00Z
    tests:
      - name: pix outage fires critical
        series:
          - grain: 5m
            payment_method: pix
            payments_approved: "90x6 40x4"
            payments_failed:   "5x6 60x4"
        expect:
          - at: 30m
            alerts: []
          - at: 45m
            alerts:
              - labels: {alertname: PaymentFailuresByMethod, severity: critical,
                         payment_method: pix}

Series values are space separated: ``12`` one window, ``12x5`` five windows of
12, ``_`` a window with no Gold row at all (``_x5`` five of them). The runner
advances one minute at a time; each window is delivered as a final row when it
ends, and the watermark follows event time exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from alert_rules.alerts import AlertState
from alert_rules.durations import parse_duration
from alert_rules.engine import Engine
from alert_rules.errors import RuleTestError
from alert_rules.loader import load_rule_set
from alert_rules.model import RuleSet
from alert_rules.samples import DIMENSIONS, GRAINS, KPIS, KpiSample, PipelineStatus
from alert_rules.state import InMemoryStateStore

_TOKEN = re.compile(r"^(_|-?\d+(?:\.\d+)?)(?:x(\d+))?$")
_STEP = timedelta(minutes=1)
_COUNT_COLUMNS = (
    "orders_created",
    "orders_cancelled",
    "payments_approved",
    "payments_failed",
    "distinct_customers",
    "late_events",
)


@dataclass(frozen=True)
class TestOutcome:
    """Result of one test case."""

    file: str
    name: str
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when every expectation held."""
        return not self.failures


@dataclass
class _Series:
    grain: str
    dimension: str
    value: str
    columns: dict[str, list[float | None]] = field(default_factory=dict)

    def length(self) -> int:
        return max((len(values) for values in self.columns.values()), default=0)


def expand_values(text: str, where: str) -> list[float | None]:
    """Expand ``"5x3 _ 7"`` into ``[5, 5, 5, None, 7]``."""
    values: list[float | None] = []
    for token in str(text).split():
        match = _TOKEN.match(token)
        if match is None:
            raise RuleTestError(
                f"{where}: bad series token {token!r}; write 12, 12x5, _ or _x5"
            )
        number = None if match.group(1) == "_" else float(match.group(1))
        values.extend([number] * int(match.group(2) or 1))
    return values


def run_test_file(path: Path) -> list[TestOutcome]:
    """Run every test case of ``path``; raise RuleTestError if the file is malformed."""
    document = _read(path)
    rule_paths = [
        path.parent / name for name in _field(document, "rule_files", list, path)
    ]
    rules = load_rule_set(rule_paths)
    start = _start(document, path)
    outcomes = []
    for index, case in enumerate(_field(document, "tests", list, path)):
        where = f"{path}: tests[{index}]"
        if not isinstance(case, dict):
            raise RuleTestError(f"{where}: a test must be a mapping")
        outcomes.append(_run_case(rules, start, case, where, str(path)))
    return outcomes


def _read(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as bad:
        raise RuleTestError(f"{path}: cannot read test file: {bad}") from None
    if not isinstance(document, dict):
        raise RuleTestError(f"{path}: a rule test file must be a mapping")
    unknown = set(document) - {"rule_files", "start", "tests"}
    if unknown:
        raise RuleTestError(f"{path}: unknown keys {sorted(unknown)}")
    return document


def _field(document: Mapping[str, Any], key: str, kind: type, where: object) -> Any:
    value = document.get(key)
    if not isinstance(value, kind):
        raise RuleTestError(f"{where}: {key!r} must be a {kind.__name__}")
    return value


def _start(document: Mapping[str, Any], path: Path) -> datetime:
    raw = document.get("start", "2025-03-03T12:00:00Z")
    moment = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if (moment - datetime(1970, 1, 1, tzinfo=UTC)) % timedelta(minutes=5):
        raise RuleTestError(f"{path}: 'start' must be on a 5-minute boundary")
    return moment.astimezone(UTC)


def _offset(value: Any, where: str) -> timedelta:
    try:
        return parse_duration(str(value))
    except ValueError as bad:
        raise RuleTestError(f"{where}: {bad}") from None


def _series(raw: Any, where: str) -> _Series:
    if not isinstance(raw, dict):
        raise RuleTestError(f"{where}: a series must be a mapping")
    grain = str(raw.get("grain", "1m"))
    if grain not in GRAINS:
        raise RuleTestError(f"{where}: grain must be one of {sorted(GRAINS)}")
    dimensions = [key for key in raw if key in DIMENSIONS and key != "all"]
    if len(dimensions) > 1:
        raise RuleTestError(f"{where}: name at most one dimension, got {dimensions}")
    dimension = dimensions[0] if dimensions else "all"
    series = _Series(grain, dimension, str(raw.get(dimension, "all")))
    for key, text in raw.items():
        if key in ("grain", dimension):
            continue
        if key not in KPIS or key == "payments_attempted":
            raise RuleTestError(f"{where}: unknown series column {key!r}")
        series.columns[key] = expand_values(text, f"{where}.{key}")
    return series


def _sample(series: _Series, index: int, start: datetime) -> KpiSample | None:
    cells = {
        name: values[index] if index < len(values) else None
        for name, values in series.columns.items()
    }
    if all(cell is None for cell in cells.values()):
        return None
    step = GRAINS[series.grain]
    row: dict[str, Any] = {name: int(cells.get(name) or 0) for name in _COUNT_COLUMNS}
    gmv = cells.get("gmv")
    row["gmv"] = float(gmv or 0.0)
    created, cancelled = row["orders_created"], row["orders_cancelled"]
    attempted = row["payments_approved"] + row["payments_failed"]
    derived = {
        "avg_ticket": row["gmv"] / created if created and gmv is not None else None,
        "cancellation_rate": cancelled / created if created else None,
        "payment_failure_rate": row["payments_failed"] / attempted
        if attempted
        else None,
    }
    for name, value in derived.items():
        row[name] = cells[name] if cells.get(name) is not None else value
    for name in ("approval_latency_p50_s", "approval_latency_p95_s"):
        row[name] = cells.get(name)
    window_start = start + step * index
    row.update(
        window_start=window_start,
        window_end=window_start + step,
        grain=series.grain,
        dimension=series.dimension,
        dimension_value=series.value,
        is_final=True,
        updated_at=window_start + step,
    )
    return KpiSample.from_dict(row)


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _run_case(
    rules: RuleSet, start: datetime, case: Mapping[str, Any], where: str, file: str
) -> TestOutcome:
    name = str(case.get("name", where))
    unknown = set(case) - {"name", "series", "expect", "pipeline"}
    if unknown:
        raise RuleTestError(f"{where}: unknown keys {sorted(unknown)}")
    series = [
        _series(raw, f"{where}.series[{i}]")
        for i, raw in enumerate(case.get("series") or [])
    ]
    expectations = _field(case, "expect", list, where)
    checks = sorted(
        ((_offset(item.get("at"), f"{where}.expect"), item) for item in expectations),
        key=lambda pair: pair[0],
    )
    stall_from, stall_until = _stall(case.get("pipeline"), where)
    timeline: dict[datetime, list[KpiSample]] = {}
    for one in series:
        for index in range(one.length()):
            sample = _sample(one, index, start)
            if sample is not None:
                timeline.setdefault(sample.window_end, []).append(sample)
    end = start + max((offset for offset, _ in checks), default=timedelta(0))
    clock = _Clock(start)
    engine = Engine(rules, InMemoryStateStore(), clock)
    failures: list[str] = []
    pending: list[KpiSample] = []
    last_batch = start
    moment = start
    check_index = 0
    while moment <= end:
        clock.now = moment
        pending.extend(timeline.get(moment, []))
        stalled = stall_from is not None and start + stall_from <= moment < start + (
            stall_until or timedelta.max - (moment - start)
        )
        if stalled:
            frozen = start + stall_from if stall_from is not None else moment
            engine.tick(PipelineStatus(frozen, frozen, last_batch))
        else:
            last_batch = moment
            engine.evaluate(pending, PipelineStatus(moment, moment, moment))
            pending = []
        while check_index < len(checks) and start + checks[check_index][0] == moment:
            offset, expectation = checks[check_index]
            failures.extend(_compare(engine.alerts, expectation, offset, where))
            check_index += 1
        moment += _STEP
    return TestOutcome(file, name, tuple(failures))


def _stall(raw: Any, where: str) -> tuple[timedelta | None, timedelta | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict) or "stall_from" not in raw:
        raise RuleTestError(f"{where}.pipeline: give stall_from (and stall_until)")
    until = raw.get("stall_until")
    return (
        _offset(raw["stall_from"], f"{where}.pipeline"),
        None if until is None else _offset(until, f"{where}.pipeline"),
    )


def _compare(
    alerts: tuple[AlertState, ...],
    expectation: Mapping[str, Any],
    offset: timedelta,
    where: str,
) -> list[str]:
    wanted = expectation.get("alerts") or []
    if not isinstance(wanted, list):
        raise RuleTestError(f"{where}.expect: 'alerts' must be a list")
    label = f"at {offset}"
    failures: list[str] = []
    firing = [a for a in alerts if a.state == "firing"]
    unmatched = list(alerts)
    for item in wanted:
        state = str(item.get("state", "firing"))
        labels = {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
        annotations = {
            str(k): str(v) for k, v in (item.get("annotations") or {}).items()
        }
        found = next(
            (
                a
                for a in unmatched
                if a.state == state
                and all(a.labels.get(k) == v for k, v in labels.items())
            ),
            None,
        )
        if found is None:
            failures.append(f"{label}: expected {state} alert {labels}, not found")
            continue
        unmatched.remove(found)
        for key, text in annotations.items():
            actual = found.annotations.get(key)
            if actual != text:
                failures.append(
                    f"{label}: alert {labels} annotation {key}: expected {text!r}, "
                    f"got {actual!r}"
                )
    for alert in firing:
        if alert in unmatched:
            failures.append(f"{label}: unexpected firing alert {alert.labels}")
    return failures
