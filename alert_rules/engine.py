"""The rule engine: evaluates rules on Gold windows and runs the alert lifecycle.

Lifecycle of one alert (one rule level on one series)::

    (nothing) --breach--> pending --held for `for`--> firing --recovered--> resolved
                            \\--breach stops--> dropped (a "resolved" row, no message)

Each transition is one :class:`Transition` (a ``gold.alerts`` row). Firing,
repeat and resolved transitions that reach receivers are :class:`Notification`.

Time: window judgements use event time (``PipelineStatus``); silences, repeat
intervals and the pipeline-stalled rule use the injected wall clock. Nothing
sleeps.

Delivery contract (at least once): the engine saves its state, including the
notifications it just produced, before returning them. They count as delivered
when the caller makes its next ``evaluate``/``tick`` call (or calls
:meth:`Engine.acknowledge`). After a crash, undelivered notifications are
returned again, with the same ``idempotency_key``, by the first call after
restore.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from alert_rules.alerts import (
    AlertState,
    AlertStateName,
    EvaluationResult,
    Notification,
    NotificationKind,
    Transition,
    fingerprint_of,
    stable_id,
)
from alert_rules.conditions import Observation, SeriesJudge, lookback, windows_needed
from alert_rules.history import SeriesKey, WindowHistory
from alert_rules.model import (
    AbsenceCondition,
    Level,
    Rule,
    RuleSet,
    StalledCondition,
    match_all,
)
from alert_rules.reload import RuleWatcher
from alert_rules.samples import KpiSample, PipelineStatus
from alert_rules.state import EngineSnapshot, StateStore

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DEFAULT_FRESHNESS = StalledCondition(
    max_batch_age=timedelta(minutes=5), max_watermark_lag=timedelta(minutes=10)
)
_PIPELINE_KEY: SeriesKey = ("", "all", "all")


@dataclass(frozen=True)
class _Change:
    """A lifecycle change found while judging, turned into rows afterwards."""

    kind: str  # pending, firing, resolved, dropped (pending ended), retired
    alert: AlertState
    rule: Rule | None


class Engine:
    """Evaluates a :class:`RuleSet` and keeps alert state in a :class:`StateStore`.

    ``rules``: the validated rule set. ``state_store``: where state survives
    restarts; it is read on construction. ``clock``: returns the wall-clock
    time (aware UTC). ``watcher``: optional hot-reload source polled on
    :meth:`tick`.
    """

    def __init__(
        self,
        rules: RuleSet,
        state_store: StateStore,
        clock: Clock,
        *,
        watcher: RuleWatcher | None = None,
    ) -> None:
        self._store = state_store
        self._clock = clock
        self._watcher = watcher
        self._alerts: dict[str, AlertState] = {}
        self._outbox: list[Notification] = []
        self._redeliver: list[Notification] = []
        self._retired: list[AlertState] = []
        self._labels: dict[tuple[str, str, SeriesKey], tuple[dict[str, str], str]] = {}
        self.rules = rules
        self._history = WindowHistory({}, set())
        self._configure(rules)
        self.restore()

    # -- configuration -------------------------------------------------------

    def _configure(self, rules: RuleSet) -> None:
        retention: dict[str, timedelta] = {}
        wanted: set[tuple[str, str]] = set()
        for rule in rules.rules:
            if isinstance(rule.condition, StalledCondition):
                continue
            wanted.add((rule.grain, rule.scope.dimension))
            retention[rule.grain] = max(
                retention.get(rule.grain, timedelta(0)), lookback(rule)
            )
        self.rules = rules
        self._rules_by_name = {rule.name: rule for rule in rules.rules}
        self._history.retention = retention
        self._history.wanted = wanted
        self._labels.clear()
        self._freshness = next(
            (
                rule.condition
                for rule in rules.rules
                if isinstance(rule.condition, StalledCondition)
            ),
            DEFAULT_FRESHNESS,
        )

    def replace_rules(self, rules: RuleSet) -> list[str]:
        """Swap in ``rules``; alerts of changed or removed rules are retired.

        Unchanged rules (same content digest) keep their pending and firing
        alerts. A retired firing alert is resolved at the next evaluation, so
        on-call still gets the resolve of a page sent under the old rule.
        Return the names of the rules whose state was reset.
        """
        new_digests = {rule.name: rule.digest for rule in rules.rules}
        reset = {
            alert.rule
            for alert in self._alerts.values()
            if new_digests.get(alert.rule) != alert.rule_digest
        }
        for fingerprint, alert in list(self._alerts.items()):
            if alert.rule in reset:
                self._retired.append(alert)
                del self._alerts[fingerprint]
        self._configure(rules)
        logger.info(
            "rules_replaced rules=%d reset=%s",
            len(rules.rules),
            ",".join(sorted(reset)) or "-",
        )
        return sorted(reset)

    # -- persistence ---------------------------------------------------------

    def restore(self) -> None:
        """Load alerts, undelivered notifications and window history from the store."""
        snapshot = self._store.load()
        if snapshot is None:
            return
        self._alerts.clear()
        for alert in snapshot.alerts:
            rule = self._rules_by_name.get(alert.rule)
            if rule is None or rule.digest != alert.rule_digest:
                self._retired.append(alert)
            else:
                self._alerts[alert.fingerprint] = alert
        self._history.add(snapshot.history)
        self._redeliver = list(snapshot.outbox)
        logger.info(
            "alert_state_restored alerts=%d undelivered=%d windows=%d",
            len(self._alerts),
            len(self._redeliver),
            len(snapshot.history),
        )

    def save_state(self) -> None:
        """Persist the current state (done automatically after every call)."""
        snapshot = EngineSnapshot(
            alerts=list(self._alerts.values()),
            outbox=list(self._redeliver) + list(self._outbox),
            history=list(self._history.samples()),
            saved_at=self._clock(),
        )
        self._store.save(snapshot)

    def acknowledge(self, keys: Iterable[str]) -> None:
        """Mark notifications delivered by idempotency key, and persist that."""
        done = set(keys)
        self._outbox = [n for n in self._outbox if n.idempotency_key not in done]
        self._redeliver = [n for n in self._redeliver if n.idempotency_key not in done]
        self.save_state()

    @property
    def alerts(self) -> tuple[AlertState, ...]:
        """The pending and firing alerts (read-only view for tests and tools)."""
        return tuple(self._alerts.values())

    # -- evaluation ----------------------------------------------------------

    def evaluate(
        self, samples: Iterable[KpiSample], pipeline: PipelineStatus
    ) -> EvaluationResult:
        """Take the Gold rows of a micro-batch and evaluate the series they touch.

        Rules whose verdict does not depend on new rows (absence, pipeline
        stalled) and series with live alerts are evaluated too.
        """
        touched = self._history.add(samples)
        return self._run(pipeline, touched)

    def tick(self, pipeline: PipelineStatus) -> EvaluationResult:
        """Timer evaluation of every rule and series (absence, stalls, repeats).

        Hot reload happens here: a changed, valid rule set is swapped in first;
        an invalid one is logged and reported, and the last good rules run.
        """
        errors: tuple[str, ...] = ()
        if self._watcher is not None:
            update = self._watcher.poll()
            errors = update.errors
            if update.rules is not None:
                self.replace_rules(update.rules)
        result = self._run(pipeline, None)
        if not errors:
            return result
        return EvaluationResult(
            result.transitions,
            result.notifications,
            result.rules_evaluated,
            result.series_evaluated,
            errors,
        )

    def _run(
        self, pipeline: PipelineStatus, touched: set[SeriesKey] | None
    ) -> EvaluationResult:
        started = time.perf_counter()
        now = self._clock()
        at = max(pipeline.latest_event_time, pipeline.watermark)
        judge = SeriesJudge(self._history, pipeline.watermark)
        fresh = not self._stalled(self._freshness, pipeline, now)[0]
        changes: list[_Change] = [_Change("retired", a, None) for a in self._retired]
        self._retired = []
        series_count = 0
        alerted = {(a.rule, self._series_of(a)) for a in self._alerts.values()}
        for rule in self.rules.rules:
            if isinstance(rule.condition, StalledCondition):
                changes.extend(self._judge_pipeline(rule, pipeline, now))
                series_count += 1
                continue
            for key in self._series_for(rule, touched, alerted):
                series_count += 1
                for level in rule.levels:
                    change = self._judge(rule, level, key, judge, fresh)
                    if change is not None:
                        changes.append(change)
        result = self._publish(changes, at, now, series_count)
        horizon = pipeline.watermark
        self._history.prune(horizon)
        self.save_state()
        logger.info(
            "rules_evaluated rules=%d series=%d transitions=%d notifications=%d "
            "fresh=%s duration_ms=%.1f",
            len(self.rules.rules),
            series_count,
            len(result.transitions),
            len(result.notifications),
            fresh,
            (time.perf_counter() - started) * 1000,
        )
        return result

    def _series_of(self, alert: AlertState) -> str:
        rule = self._rules_by_name.get(alert.rule)
        if rule is None:
            return ""
        return alert.labels.get(rule.scope.dimension, "all")

    def _series_for(
        self,
        rule: Rule,
        touched: set[SeriesKey] | None,
        alerted: set[tuple[str, str]],
    ) -> list[SeriesKey]:
        keys = [
            key
            for key in self._history.keys(rule.grain, rule.scope.dimension)
            if rule.scope.admits(key[2])
        ]
        if touched is None or isinstance(rule.condition, AbsenceCondition):
            return keys
        return [k for k in keys if k in touched or (rule.name, k[2]) in alerted]

    def _identity(
        self, rule: Rule, severity: str, key: SeriesKey
    ) -> tuple[dict[str, str], str]:
        cache_key = (rule.name, severity, key)
        known = self._labels.get(cache_key)
        if known is None:
            labels = {**rule.labels, "alertname": rule.name, "severity": severity}
            if rule.scope.dimension != "all":
                labels[rule.scope.dimension] = key[2]
            known = (labels, fingerprint_of(rule.name, labels))
            self._labels[cache_key] = known
        return known

    def _judge(
        self, rule: Rule, level: Level, key: SeriesKey, judge: SeriesJudge, fresh: bool
    ) -> _Change | None:
        fingerprint = self._identity(rule, level.severity, key)[1]
        alert = self._alerts.get(fingerprint)
        if alert is not None and alert.state == "firing":
            recovered, value = judge.recovered(rule, level, key, alert)
            alert.value = value if value is not None else alert.value
            return self._end(alert, "resolved", rule) if recovered else None
        if isinstance(rule.condition, AbsenceCondition) and not fresh:
            # A stalled pipeline sees no rows anywhere: hold absence verdicts
            # (the stalled alert speaks for it) instead of paging every region.
            return None
        observation = judge.observe(rule, level, key)
        if alert is None:
            return self._open(rule, level, key, observation)
        if not observation.breaching:
            return self._end(alert, "dropped", rule)
        self._observe(alert, observation)
        if observation.run_windows >= windows_needed(rule):
            return self._fire(alert, rule)
        return None

    def _open(
        self, rule: Rule, level: Level, key: SeriesKey, observation: Observation
    ) -> _Change | None:
        """Start a pending alert (firing at once when the run is long enough)."""
        if not observation.breaching or observation.run_start is None:
            return None
        labels, fingerprint = self._identity(rule, level.severity, key)
        alert = AlertState(
            fingerprint=fingerprint,
            rule=rule.name,
            severity=level.severity,
            labels=dict(labels),
            state="pending",
            active_since=observation.run_start,
            rule_digest=rule.digest,
        )
        self._alerts[fingerprint] = alert
        self._observe(alert, observation)
        if observation.run_windows >= windows_needed(rule):
            return self._fire(alert, rule)
        return _Change("pending", alert, rule)

    @staticmethod
    def _observe(alert: AlertState, observation: Observation) -> None:
        alert.value = observation.value
        alert.threshold = observation.threshold
        alert.reference = observation.reference
        alert.spread = observation.spread

    def _fire(self, alert: AlertState, rule: Rule) -> _Change:
        alert.state = "firing"
        return _Change("firing", alert, rule)

    def _end(self, alert: AlertState, kind: str, rule: Rule | None) -> _Change:
        del self._alerts[alert.fingerprint]
        return _Change(kind, alert, rule)

    def _judge_pipeline(
        self, rule: Rule, pipeline: PipelineStatus, now: datetime
    ) -> list[_Change]:
        condition = rule.condition
        assert isinstance(condition, StalledCondition)
        level = rule.levels[0]
        labels, fingerprint = self._identity(rule, level.severity, _PIPELINE_KEY)
        stalled, since, value, threshold = self._stalled(condition, pipeline, now)
        alert = self._alerts.get(fingerprint)
        if alert is None:
            if not stalled or since is None:
                return []
            alert = AlertState(
                fingerprint=fingerprint,
                rule=rule.name,
                severity=level.severity,
                labels=dict(labels),
                state="pending",
                active_since=since,
                rule_digest=rule.digest,
                value=value,
                threshold=threshold,
            )
            self._alerts[fingerprint] = alert
            if now - since >= rule.hold_for:
                return [self._fire(alert, rule)]
            return [_Change("pending", alert, rule)]
        if not stalled:
            kind = "resolved" if alert.state == "firing" else "dropped"
            return [self._end(alert, kind, rule)]
        alert.value, alert.threshold = value, threshold
        if alert.state == "pending" and now - alert.active_since >= rule.hold_for:
            return [self._fire(alert, rule)]
        return []

    @staticmethod
    def _stalled(
        condition: StalledCondition, pipeline: PipelineStatus, now: datetime
    ) -> tuple[bool, datetime | None, float | None, float | None]:
        """(stalled?, since when, how late in seconds, allowed seconds)."""
        batch_age = now - pipeline.last_batch_at
        lag = now - pipeline.watermark
        findings = []
        if batch_age > condition.max_batch_age:
            findings.append(
                (
                    pipeline.last_batch_at + condition.max_batch_age,
                    batch_age,
                    condition.max_batch_age,
                )
            )
        if lag > condition.max_watermark_lag:
            findings.append(
                (
                    pipeline.watermark + condition.max_watermark_lag,
                    lag,
                    condition.max_watermark_lag,
                )
            )
        if not findings:
            return (
                False,
                None,
                batch_age.total_seconds(),
                condition.max_batch_age.total_seconds(),
            )
        since, late, allowed = min(findings, key=lambda f: f[0])
        return True, since, late.total_seconds(), allowed.total_seconds()

    # -- publishing ----------------------------------------------------------

    def _publish(
        self, changes: list[_Change], at: datetime, now: datetime, series_count: int
    ) -> EvaluationResult:
        transitions: list[Transition] = []
        notifications: list[Notification] = list(self._redeliver)
        self._redeliver = []
        fired = {c.alert.fingerprint for c in changes if c.kind == "firing"}
        for change in changes:
            alert, rule = change.alert, change.rule
            if rule is not None:
                alert.annotations = self._render(rule, alert)
            if change.kind == "pending":
                transitions.append(self._row(alert, "pending", at, ()))
            elif change.kind == "firing":
                alert.fired_at = self._event_time(rule, at, now)
            elif change.kind == "dropped":
                transitions.append(self._row(alert, "resolved", at, ()))
            else:  # resolved or retired
                ended = self._event_time(rule, at, now)
                receivers = alert.notified_receivers
                transitions.append(self._row(alert, "resolved", at, receivers, ended))
                if receivers:
                    notifications.append(
                        self._note(alert, "resolved", receivers, ended)
                    )
        muted = self._muted(now)
        for alert in self._alerts.values():
            if alert.state != "firing":
                continue
            sent = self._notify(alert, alert.fingerprint in muted, now, notifications)
            if alert.fingerprint in fired:
                transitions.append(self._row(alert, "firing", at, sent))
        for transition in transitions:
            logger.info(
                "alert_transition rule=%s state=%s severity=%s fingerprint=%s "
                "labels=%s value=%s receivers=%s",
                transition.rule,
                transition.state,
                transition.severity,
                transition.fingerprint,
                ",".join(f"{k}={v}" for k, v in sorted(transition.labels.items())),
                transition.value,
                ",".join(transition.receivers) or "-",
            )
        self._outbox = list(notifications)
        return EvaluationResult(
            tuple(transitions),
            tuple(notifications),
            len(self.rules.rules),
            series_count,
        )

    @staticmethod
    def _event_time(rule: Rule | None, at: datetime, now: datetime) -> datetime:
        # The pipeline-stalled rule lives in wall-clock time; data rules in event time.
        if rule is not None and isinstance(rule.condition, StalledCondition):
            return now
        return at

    def _notify(
        self,
        alert: AlertState,
        muted: bool,
        now: datetime,
        notifications: list[Notification],
    ) -> tuple[str, ...]:
        """Send the first firing or a due repeat unless muted; return receivers."""
        if muted:
            return ()
        receivers, repeat_interval = self.rules.routing.route(alert.labels)
        if not receivers:
            return ()
        if not alert.notified_receivers:
            alert.notified_receivers = receivers
            alert.last_notified_at = now
            notifications.append(self._note(alert, "firing", receivers, None))
            return receivers
        last = alert.last_notified_at
        if last is not None and now - last >= repeat_interval:
            alert.repeats += 1
            alert.last_notified_at = now
            merged = tuple(dict.fromkeys(alert.notified_receivers + receivers))
            alert.notified_receivers = merged
            notifications.append(self._note(alert, "repeat", receivers, None))
        return ()

    def _muted(self, now: datetime) -> set[str]:
        """Fingerprints silenced at ``now`` or inhibited by a firing alert."""
        firing = [a for a in self._alerts.values() if a.state == "firing"]
        muted: set[str] = set()
        for alert in firing:
            if any(s.active(now, alert.labels) for s in self.rules.silences):
                muted.add(alert.fingerprint)
                continue
            for inhibit in self.rules.inhibit:
                if not match_all(inhibit.target, alert.labels):
                    continue
                if any(
                    source.fingerprint != alert.fingerprint
                    and match_all(inhibit.source, source.labels)
                    and all(
                        source.labels.get(name, "") == alert.labels.get(name, "")
                        for name in inhibit.equal
                    )
                    for source in firing
                ):
                    muted.add(alert.fingerprint)
                    break
        return muted

    def _render(self, rule: Rule, alert: AlertState) -> dict[str, str]:
        change = None
        if alert.reference and alert.value is not None:
            change = (alert.value - alert.reference) / alert.reference * 100
        context: dict[str, object] = {
            "value": alert.value,
            "threshold": alert.threshold,
            "baseline": alert.reference,
            "change_percent": change,
            "rule": rule.name,
            "severity": alert.severity,
            "kpi": rule.kpi or "",
            "grain": rule.grain,
            "active_since": alert.active_since.isoformat(),
        }
        return {
            name: template.render(context, alert.labels)
            for name, template in rule.annotations.items()
        }

    @staticmethod
    def _row(
        alert: AlertState,
        state: AlertStateName,
        at: datetime,
        receivers: tuple[str, ...],
        resolved_at: datetime | None = None,
    ) -> Transition:
        return Transition(
            alert_id=stable_id(
                alert.fingerprint, state, alert.active_since.isoformat()
            ),
            rule=alert.rule,
            severity=alert.severity,
            fingerprint=alert.fingerprint,
            labels=dict(alert.labels),
            state=state,
            value=alert.value,
            threshold=alert.threshold,
            active_since=alert.active_since,
            fired_at=alert.fired_at,
            resolved_at=resolved_at,
            evaluated_at=at,
            annotations=dict(alert.annotations),
            receivers=receivers,
        )

    @staticmethod
    def _note(
        alert: AlertState,
        kind: NotificationKind,
        receivers: tuple[str, ...],
        ends_at: datetime | None,
    ) -> Notification:
        return Notification(
            kind=kind,
            receivers=receivers,
            fingerprint=alert.fingerprint,
            rule=alert.rule,
            severity=alert.severity,
            labels=dict(alert.labels),
            annotations=dict(alert.annotations),
            value=alert.value,
            threshold=alert.threshold,
            starts_at=alert.fired_at or alert.active_since,
            ends_at=ends_at,
            idempotency_key=stable_id(
                alert.fingerprint, kind, alert.active_since.isoformat(), alert.repeats
            ),
        )
