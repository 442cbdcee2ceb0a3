"""The rule engine: evaluates rules on Gold windows and runs the alert lifecycle.

Lifecycle of one alert (one rule level on one series)::

    (nothing) --breach--> pending --held for `for`--> firing --recovered--> resolved
                            \\--breach stops--> dropped (a "resolved" row, no message)

Each transition is one :class:`Transition` (a ``gold.alerts`` row). Firing,
repeat and resolved transitions that reach receivers are :class:`Notification`.

Time: window judgements use event time (``PipelineStatus``); silences, repeat
intervals, freshness and the pipeline-stalled rule use the injected wall
clock. Nothing sleeps.

Cost: evaluation is separate from persistence. Rows go into an in-memory
window history indexed by series; each window is judged once per rule level
(verdicts and breaching runs are memoised until a row at or before them
changes), and a rule level whose series and final window did not move since
its last judgement is skipped in O(1). Templates are rendered only on a
transition. Only what changed (alerts, undelivered notifications, new or
dropped windows, the watermark) is written to the state store, and nothing is
written when nothing changed.

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
from datetime import UTC, datetime, timedelta

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
from alert_rules.columns import (
    PreJudge,
    SeriesColumns,
    prejudged,
)
from alert_rules.conditions import (
    Observation,
    SeriesJudge,
    VerdictMemo,
    lookback,
    windows_needed,
)
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
from alert_rules.samples import GRAINS, KpiSample, PipelineStatus
from alert_rules.state import (
    EngineMeta,
    StateChanges,
    StateKey,
    StateStore,
    alert_row,
    meta_row,
    outbox_row,
    window_key,
    window_row,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_PIPELINE_KEY: SeriesKey = ("", "all", "all")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# What a rule level's verdict on a series depends on besides the alert itself:
# the series' version, the newest final window of its grain, and for absence
# rules whether the pipeline is fresh. Equal epochs give equal verdicts.
_Epoch = tuple[int, datetime, bool]


@dataclass(frozen=True)
class _Change:
    """A lifecycle change found while judging, turned into rows afterwards."""

    kind: str  # pending, firing, resolved, dropped (pending ended), retired
    alert: AlertState
    rule: Rule | None


@dataclass(frozen=True)
class _Track:
    """One rule level on one series, with its precomputed identity."""

    rule: Rule
    level: Level
    key: SeriesKey
    labels: dict[str, str]
    fingerprint: str
    needed: int
    # Judges final windows only (its verdict is memoised per final window).
    final_only: bool


@dataclass(frozen=True)
class _Plan:
    """One rule's tracks, series by series, and where its series sit in the arrays.

    ``vectorised`` is False for a rule judged exactly on every series (see
    :func:`alert_rules.columns.prejudged`).
    """

    tracks: tuple[tuple[_Track, ...], ...]
    vectorised: bool
    # Rule levels x series: the evaluations one call makes.
    pairs: int


class Engine:
    """Evaluates a :class:`RuleSet` and keeps alert state in a :class:`StateStore`.

    ``rules``: the validated rule set. ``state_store``: where state survives
    restarts; it is read on construction. ``clock``: returns the wall-clock
    time (aware UTC). ``watcher``: optional hot-reload source polled on
    :meth:`tick`.

    Restart contract for the caller: the engine restores its alerts, its
    undelivered notifications (returned again by the first call) and the
    window history it had persisted. Passing recent Gold rows to
    :meth:`evaluate` once on start (e.g. the last :attr:`history_needed` of
    ``gold.order_kpis``) is safe and fills any gap: rows the engine already
    holds with the same ``updated_at`` are ignored, newer ones replace theirs.
    A restart never re-pages an alert that was already notified, keeps pending
    alerts with their start time, and resolves a firing alert whose condition
    ended while the engine was down at the first call that sees the data.
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
        self._meta = EngineMeta()
        self._persisted: dict[StateKey, str] = {}
        self._persisted_progress: tuple[datetime | None, datetime | None] = (
            None,
            None,
        )
        self._memo = VerdictMemo()
        self._epochs: dict[tuple[str, str, SeriesKey], _Epoch] = {}
        self._plans: dict[str, _Plan] = {}
        # The series rules in order, with their plans and freshness limit.
        self._order: list[tuple[Rule, _Plan, timedelta | None]] = []
        self._placement: dict[str, tuple[str, int, int]] = {}
        self._tracks_layout = -1
        self.rules = rules
        self._history = WindowHistory({}, set())
        self._columns = SeriesColumns([])
        self._prejudge = PreJudge(self._columns, [])
        self._finals: tuple[datetime, dict[str, datetime], dict[str, int]] | None = None
        self._identities: dict[tuple[str, str], tuple[dict[str, str], str]] = {}
        self.last_ingest_seconds = 0.0
        self.last_judge_seconds = 0.0
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
        self._series_rules = [
            rule
            for rule in rules.rules
            if not isinstance(rule.condition, StalledCondition)
        ]
        self._stalled_rules = [
            rule for rule in rules.rules if isinstance(rule.condition, StalledCondition)
        ]
        self._history.retention = retention
        self._history.wanted = wanted
        self._columns = SeriesColumns(self._series_rules)
        self._columns.add(list(self._history.samples()))
        self._plans = {}
        self._tracks_layout = -1
        self._identities.clear()
        self._epochs.clear()
        self._memo.clear()

    @property
    def history_needed(self) -> timedelta:
        """How much Gold history the rules read (replay this much on start)."""
        return max(self._history.retention.values(), default=timedelta(0))

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
        """Load alerts, undelivered notifications, windows and the watermark."""
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
        accepted: list[KpiSample] = []
        self._history.add(snapshot.history, accepted)
        self._columns.add(accepted)
        self._redeliver = list(snapshot.outbox)
        self._meta = snapshot.meta
        self._memo.clear()
        self._epochs.clear()
        self._tracks_layout = -1
        # What was just read is what is stored: only later changes are written.
        self._persisted = dict(self._small_rows())
        self._persisted_progress = (
            self._meta.watermark,
            self._meta.watermark_advanced_at,
        )
        stored, _dropped = self._history.take_changes()
        logger.info(
            "alert_state_restored alerts=%d undelivered=%d windows=%d",
            len(self._alerts),
            len(self._redeliver),
            len(stored),
        )

    def _small_rows(self) -> dict[StateKey, str]:
        rows = dict(alert_row(alert) for alert in self._alerts.values())
        rows.update(outbox_row(n) for n in self._redeliver)
        rows.update(outbox_row(n) for n in self._outbox)
        return rows

    def save_state(self) -> None:
        """Persist what changed since the last save (done after every call).

        Alerts and undelivered notifications are compared with what was last
        written; new and dropped history windows come from the history. When
        nothing changed, nothing is written.
        """
        rows = self._small_rows()
        upserts = [
            (key, payload)
            for key, payload in rows.items()
            if self._persisted.get(key) != payload
        ]
        deletes = [key for key in self._persisted if key not in rows]
        stored, dropped = self._history.take_changes()
        upserts.extend(window_row(sample) for sample in stored)
        deletes.extend(window_key(sample) for sample in dropped)
        progress = (self._meta.watermark, self._meta.watermark_advanced_at)
        if not upserts and not deletes and progress == self._persisted_progress:
            return
        self._meta.saved_at = self._clock()
        upserts.append(meta_row(self._meta))
        self._store.save(StateChanges(tuple(upserts), tuple(deletes)))
        for key in deletes:
            self._persisted.pop(key, None)
        self._persisted.update(
            (key, payload) for key, payload in upserts if key[0] in ("alert", "outbox")
        )
        self._persisted_progress = progress

    def acknowledge(self, keys: Iterable[str]) -> None:
        """Mark notifications delivered by idempotency key, and persist that."""
        done = set(keys)
        if not done:
            return
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
        """Take the Gold rows of a micro-batch (any number, any order) and evaluate.

        Every rule level is evaluated on every series it watches; those whose
        series did not change and whose newest final window did not move keep
        their verdict at O(1) cost. State is saved before returning (see the
        class docstring for the restart contract).
        """
        started = time.perf_counter()
        accepted: list[KpiSample] = []
        touched = self._history.add(samples, accepted)
        self._columns.add(accepted)
        for key, since in touched.items():
            self._memo.forget(key, since)
        return self._run(pipeline, time.perf_counter() - started)

    def tick(self, pipeline: PipelineStatus) -> EvaluationResult:
        """Timer evaluation (absence, stalls, repeats) when no rows arrive.

        Hot reload happens here: a changed, valid rule set is swapped in first;
        an invalid one is logged and reported, and the last good rules run.
        """
        errors: tuple[str, ...] = ()
        if self._watcher is not None:
            update = self._watcher.poll()
            errors = update.errors
            if update.rules is not None:
                self.replace_rules(update.rules)
        result = self._run(pipeline)
        if not errors:
            return result
        return EvaluationResult(
            result.transitions,
            result.notifications,
            result.rules_evaluated,
            result.series_evaluated,
            errors,
        )

    def judge(self, pipeline: PipelineStatus) -> tuple[list[_Change], int]:
        """Pure evaluation: judge every rule level on its series, in memory.

        Returns the lifecycle changes and the number of rule level x series
        evaluations made. Nothing is rendered, routed or persisted here.
        """
        now = self._clock()
        self._track_watermark(pipeline, now)
        judge = SeriesJudge(self._history, pipeline.watermark, self._memo)
        changes: list[_Change] = [_Change("retired", a, None) for a in self._retired]
        self._retired = []
        evaluations = 0
        for rule in self._stalled_rules:
            changes.extend(self._judge_pipeline(rule, pipeline, now))
            evaluations += 1
        lag = now - pipeline.watermark
        live = self._live()
        finals, indices = self._final_windows(pipeline.watermark)
        flagged = self._prejudge.run(indices)
        for rule, plan, fresh_within in self._order:
            final = finals[rule.grain]
            fresh = fresh_within is None or lag <= fresh_within
            evaluations += plan.pairs
            suspects = self._suspects(rule, plan, fresh, live, flagged)
            for series, level in suspects:
                track = plan.tracks[series][level]
                epoch = (self._history.version(track.key), final, fresh)
                change = self._judge_track(track, judge, fresh, epoch)
                if change is not None:
                    changes.append(change)
        return changes, evaluations

    def _run(
        self, pipeline: PipelineStatus, ingest_seconds: float = 0.0
    ) -> EvaluationResult:
        started = time.perf_counter()
        now = self._clock()
        at = max(pipeline.latest_event_time, pipeline.watermark)
        changes, evaluations = self.judge(pipeline)
        self.last_judge_seconds = time.perf_counter() - started
        self.last_ingest_seconds = ingest_seconds
        judged = self.last_judge_seconds + ingest_seconds
        result = self._publish(changes, at, now, evaluations, judged)
        for key in self._history.prune(pipeline.watermark):
            oldest = self._history.oldest(key)
            self._memo.trim(key, oldest)
            self._columns.set_oldest((key[0], key[1]), key[2], oldest)
        self.save_state()
        logger.info(
            "rules_evaluated rules=%d evaluations=%d transitions=%d notifications=%d "
            "duration_ms=%.1f",
            len(self.rules.rules),
            evaluations,
            len(result.transitions),
            len(result.notifications),
            (time.perf_counter() - started) * 1000,
        )
        return result

    def _suspects(
        self,
        rule: Rule,
        plan: _Plan,
        fresh: bool,
        live: dict[str, set[tuple[int, int]]],
        flagged: dict[str, list[tuple[int, int]]],
    ) -> list[tuple[int, int]]:
        """The (series, level) pairs of ``rule`` the exact judge must see.

        Those with a live (pending or firing) alert, and those the columnar
        pre-judging (``flagged``) cannot clear; every pair of a rule judged
        exactly.
        """
        alive = live.get(rule.name)
        if not plan.vectorised:
            return [
                (series, level)
                for series in range(len(plan.tracks))
                for level in range(len(rule.levels))
            ]
        found = flagged.get(rule.name) if fresh else None
        if found is None:
            return sorted(alive) if alive else []
        if alive:
            return sorted(alive.union(found))
        return sorted(found)

    def _final_windows(
        self, watermark: datetime
    ) -> tuple[dict[str, datetime], dict[str, int]]:
        """Newest final window start and index of every grain, at ``watermark``."""
        if self._finals is not None and self._finals[0] == watermark:
            return self._finals[1], self._finals[2]
        since = watermark - _EPOCH
        starts: dict[str, datetime] = {}
        indices: dict[str, int] = {}
        for rule in self._series_rules:
            grain = rule.grain
            if grain not in starts:
                # The window before the one the watermark is in (as
                # history.last_final_start), as a count of windows.
                step = GRAINS[grain]
                index = since // step - 1
                starts[grain] = _EPOCH + step * index
                indices[grain] = index
        self._finals = (watermark, starts, indices)
        return starts, indices

    def _judge_track(
        self, track: _Track, judge: SeriesJudge, fresh: bool, epoch: _Epoch
    ) -> _Change | None:
        """Exact judging of one rule level on one series (see conditions)."""
        alerts = self._alerts
        rule = track.rule
        if track.final_only:
            # No alert and a final window that does not breach: nothing to do
            # (one memo lookup).
            if track.fingerprint not in alerts and (
                not fresh
                or not judge.final_verdict(rule, track.level, track.key).breaching
            ):
                return None
            return self._judge(track, judge, fresh, alerts)
        memo_key = (rule.name, track.level.severity, track.key)
        if self._epochs.get(memo_key) == epoch:
            return None
        change = self._judge(track, judge, fresh, alerts)
        if change is None:
            self._epochs[memo_key] = epoch
        else:
            self._epochs.pop(memo_key, None)
        return change

    def _live(self) -> dict[str, set[tuple[int, int]]]:
        """Series and level of every live alert, by rule."""
        self._refresh_plans()
        live: dict[str, set[tuple[int, int]]] = {}
        for fingerprint in self._alerts:
            placed = self._placement.get(fingerprint)
            if placed is not None:
                rule, series, level = placed
                live.setdefault(rule, set()).add((series, level))
        return live

    def _track_watermark(self, pipeline: PipelineStatus, now: datetime) -> None:
        meta = self._meta
        if meta.watermark is None or pipeline.watermark > meta.watermark:
            meta.watermark = pipeline.watermark
            meta.watermark_advanced_at = now

    def _refresh_plans(self) -> None:
        """Rebuild the plans when series appeared or disappeared."""
        if self._tracks_layout == self._history.layout and self._plans:
            return
        self._plans = {}
        self._placement = {}
        self._order = []
        columnar_rules: list[tuple[Rule, list[int]]] = []
        for rule in self._series_rules:
            keys = [
                key
                for key in self._history.keys(rule.grain, rule.scope.dimension)
                if rule.scope.admits(key[2])
            ]
            tracks = tuple(
                tuple(self._track(rule, level, key) for level in rule.levels)
                for key in keys
            )
            columnar = prejudged(rule, len(keys))
            if columnar:
                dimension = rule.scope.dimension
                rows = [
                    self._columns.slot(rule.grain, dimension, key[2]) for key in keys
                ]
                columnar_rules.append((rule, rows))
            plan = _Plan(tracks, columnar, len(tracks) * len(rule.levels))
            self._plans[rule.name] = plan
            condition = rule.condition
            fresh_within = (
                condition.fresh_within
                if isinstance(condition, AbsenceCondition)
                else None
            )
            self._order.append((rule, plan, fresh_within))
            for series, per_level in enumerate(tracks):
                for level, track in enumerate(per_level):
                    self._placement[track.fingerprint] = (rule.name, series, level)
        self._prejudge = PreJudge(self._columns, columnar_rules)
        self._tracks_layout = self._history.layout

    def _track(self, rule: Rule, level: Level, key: SeriesKey) -> _Track:
        labels, fingerprint = self._identity(rule, level.severity, key)
        final_only = not rule.judge_open_windows
        return _Track(
            rule, level, key, labels, fingerprint, windows_needed(rule), final_only
        )

    @staticmethod
    def _identity(
        rule: Rule, severity: str, key: SeriesKey
    ) -> tuple[dict[str, str], str]:
        labels = {**rule.labels, "alertname": rule.name, "severity": severity}
        if rule.scope.dimension != "all":
            labels[rule.scope.dimension] = key[2]
        return labels, fingerprint_of(rule.name, labels)

    def _judge(
        self,
        track: _Track,
        judge: SeriesJudge,
        fresh: bool,
        alerts: dict[str, AlertState],
    ) -> _Change | None:
        rule, level, key = track.rule, track.level, track.key
        alert = alerts.get(track.fingerprint)
        if alert is not None and alert.state == "firing":
            recovered, value = judge.recovered(rule, level, key, alert)
            alert.value = value if value is not None else alert.value
            return self._end(alert, "resolved", rule) if recovered else None
        if not fresh:
            # A pipeline catching up (or stalled) has no recent windows yet:
            # hold absence verdicts instead of paging every region.
            return None
        observation = judge.observe(rule, level, key)
        if alert is None:
            return self._open(track, observation)
        if not observation.breaching:
            return self._end(alert, "dropped", rule)
        self._observe(alert, observation)
        if observation.run_windows >= track.needed:
            return self._fire(alert, rule)
        return None

    def _open(self, track: _Track, observation: Observation) -> _Change | None:
        """Start a pending alert (firing at once when the run is long enough)."""
        if not observation.breaching or observation.run_start is None:
            return None
        rule = track.rule
        alert = AlertState(
            fingerprint=track.fingerprint,
            rule=rule.name,
            severity=track.level.severity,
            labels=dict(track.labels),
            state="pending",
            active_since=observation.run_start,
            rule_digest=rule.digest,
        )
        self._alerts[track.fingerprint] = alert
        self._observe(alert, observation)
        if observation.run_windows >= track.needed:
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
        identity = self._identities.get((rule.name, level.severity))
        if identity is None:
            identity = self._identity(rule, level.severity, _PIPELINE_KEY)
            self._identities[(rule.name, level.severity)] = identity
        labels, fingerprint = identity
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

    def _stalled(
        self, condition: StalledCondition, pipeline: PipelineStatus, now: datetime
    ) -> tuple[bool, datetime | None, float | None, float | None]:
        """(stalled?, since when, seconds without progress, allowed seconds).

        Progress is a completed micro-batch or a watermark that moved forward;
        how far the watermark is behind the wall clock does not matter (a
        pipeline catching up on a back-log is making progress).
        """
        batch_age = now - pipeline.last_batch_at
        advanced_at = self._meta.watermark_advanced_at or now
        standing = now - advanced_at
        findings = []
        if batch_age > condition.max_batch_age:
            findings.append(
                (
                    pipeline.last_batch_at + condition.max_batch_age,
                    batch_age,
                    condition.max_batch_age,
                )
            )
        if standing > condition.max_watermark_stall:
            findings.append(
                (
                    advanced_at + condition.max_watermark_stall,
                    standing,
                    condition.max_watermark_stall,
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
        self,
        changes: list[_Change],
        at: datetime,
        now: datetime,
        series_count: int,
        judged_seconds: float,
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
            evaluation_seconds=judged_seconds,
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
