"""Canary rollouts: the state machine, its store, and the controller that drives it.

::

    start ──> running ──(step passed)──> running (next weight) ── … ──> promoted
                │  ▲                                                     (last step passed,
           pause│  │resume                                              or `promote`)
                ▼  │
               paused
    running/paused ──(worse, hard SLO breach, no verdict by the deadline, `rollback`)──> rolled_back
    start whose canary alias cannot be set ──> aborted

A rollout is a row of ``rollouts`` (one active — running or paused — per feature) and
every change of it a row of ``rollout_transitions`` with its actor, reason and the
metrics that justified it. The config is snapshotted at start, so a rollout is judged by
the rules it started with.

:meth:`RolloutController.tick` (the leader's, every interval) reads each active
rollout's live metrics since its step started and acts: a hard SLO breach rolls back at
once (even while paused); a running step is judged once, when ``min_step_s`` has passed
and both versions have ``min_calls`` calls — pass moves to the next weight (after the
last, 100%, promotes), worse rolls back; a step still short of calls then is
*inconclusive* (noted once) and rolls back after ``progress_deadline_s``. At 100% the
champion gets no traffic, so the last step compares with the champion's calls over the
whole rollout.

The controller reaches the registry only through the callables it is given
(:func:`controller_for` wires the real ones), so it is tested without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
from pydantic import ValidationError

from keel.control import audit
from keel.control.canary_stats import Judgement, breach, judge, rate_test_count
from keel.control.live_metrics import VersionMetrics, live_metrics
from keel.errors import (
    FeatureNotFound,
    GateRequired,
    InvalidRequest,
    KeelError,
    RolloutConflict,
    RolloutNotFound,
)
from keel.spec import RolloutSpec
from keel.store.db import Connection, Store
from keel.types import JSON

if TYPE_CHECKING:
    from keel.spec import KeelSpec

log = logging.getLogger("keel.control")

State = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
ACTIVE: tuple[State, ...] = ("running", "paused")
CONTROLLER = "controller"  # the actor of automatic transitions


@dataclass(frozen=True, slots=True)
class Rollout:
    id: int
    feature: str
    candidate: str
    baseline: str  # the champion when the rollout started
    state: State
    step: int  # index into spec.steps
    weight: float  # the candidate's share of traffic now
    spec: RolloutSpec  # the snapshot it is judged by
    forced: bool  # started without a passing eval run
    gate_run: str | None
    step_started_at: float
    inconclusive_since: float | None
    reason: str | None
    created_by: str
    created_at: float
    updated_at: float

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_json(self) -> dict[str, JSON]:
        return {"id": self.id, "feature": self.feature, "candidate": self.candidate,
                "baseline": self.baseline, "state": self.state, "step": self.step,
                "steps": list(self.spec.steps), "weight": self.weight, "forced": self.forced,
                "gate_run": self.gate_run, "step_started_at": self.step_started_at,
                "inconclusive_since": self.inconclusive_since, "reason": self.reason,
                "created_by": self.created_by, "created_at": self.created_at,
                "updated_at": self.updated_at}


@dataclass(frozen=True, slots=True)
class Transition:
    id: int
    rollout_id: int
    feature: str
    from_state: State | None
    to_state: State
    step: int
    weight: float
    reason: str
    metrics: dict[str, JSON] | None
    actor: str
    at: float

    def to_json(self) -> dict[str, JSON]:
        return {"id": self.id, "rollout_id": self.rollout_id, "feature": self.feature,
                "from_state": self.from_state, "to_state": self.to_state, "step": self.step,
                "weight": self.weight, "reason": self.reason, "metrics": self.metrics,
                "actor": self.actor, "at": self.at}


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _rollout(row: Any) -> Rollout:
    config = orjson.loads(row["config"])
    return Rollout(
        id=row["id"], feature=row["feature"], candidate=row["candidate"],
        baseline=row["baseline"], state=row["state"], step=row["step"], weight=row["weight"],
        spec=RolloutSpec.model_validate(config["rollout"]), forced=bool(config.get("forced")),
        gate_run=config.get("gate_run"), step_started_at=row["step_started_at"],
        inconclusive_since=row["inconclusive_since"], reason=row["reason"],
        created_by=row["created_by"], created_at=row["created_at"],
        updated_at=row["updated_at"])


class RolloutStore:
    """Rollouts and their transitions in the store. Every change is one ``BEGIN
    IMMEDIATE`` transaction that checks the state it changes (compare and set), so the
    controller and a person at the CLI never both win."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        conn = self.store.connect()
        try:
            yield conn
        finally:
            conn.close()

    def _write(self) -> AbstractContextManager[Connection]:
        return self.store.transaction("rollouts")

    def create(self, feature: str, candidate: str, baseline: str, spec: RolloutSpec, *,
               actor: str, now: float, forced: bool = False, gate_run: str | None = None,
               reason: str | None = None) -> tuple[Rollout, Transition]:
        """Start a rollout at ``spec.steps[0]``. RolloutConflict if one is active."""
        config = {"rollout": spec.model_dump(mode="json"), "forced": forced,
                  "gate_run": gate_run}
        weight = spec.steps[0]
        reason = reason or (
            f"started: {candidate} against champion {baseline} at {weight:.0%}"
            + (" (forced without a passing eval run)" if forced else ""))
        with self._write() as conn:
            self.store.lock(conn, "audit")  # each transition is an audit row
            busy = conn.execute(
                "SELECT id, candidate, state FROM rollouts WHERE feature = ?"
                " AND state IN ('running', 'paused')", (feature,)).fetchone()
            if busy is not None:
                raise RolloutConflict(
                    f"'{feature}' already has an active rollout (#{busy['id']}: "
                    f"{busy['candidate']}, {busy['state']}); pause, promote or roll it back first")
            rollout_id = int(conn.execute(
                "INSERT INTO rollouts (feature, candidate, baseline, state, step, weight, config,"
                " step_started_at, inconclusive_since, reason, created_by, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (feature, candidate, baseline, "running", 0, weight, _dumps(config), now, None,
                 reason, actor, now, now)).fetchone()[0])
            transition = self._record(conn, rollout_id, feature, None, "running", 0, weight,
                                      reason, None, actor, now)
        return self.get(rollout_id), transition

    def change(self, rollout: Rollout, to_state: State, *, actor: str, reason: str, now: float,
               metrics: dict[str, JSON] | None = None, step: int | None = None,
               weight: float | None = None, step_started_at: float | None = None,
               inconclusive_since: float | None = None) -> Transition:
        """Move ``rollout`` (as it was read) to ``to_state``; RolloutConflict when it
        changed meanwhile. ``inconclusive_since`` is cleared unless given."""
        step = rollout.step if step is None else step
        weight = rollout.weight if weight is None else weight
        with self._write() as conn:
            self.store.lock(conn, "audit")  # each transition is an audit row
            cursor = conn.execute(
                "UPDATE rollouts SET state = ?, step = ?, weight = ?, step_started_at = ?,"
                " inconclusive_since = ?, reason = ?, updated_at = ?"
                " WHERE id = ? AND state = ? AND step = ?",
                (to_state, step, weight,
                 rollout.step_started_at if step_started_at is None else step_started_at,
                 inconclusive_since, reason, now, rollout.id, rollout.state, rollout.step))
            if cursor.rowcount != 1:
                raise RolloutConflict(
                    f"rollout #{rollout.id} of '{rollout.feature}' changed meanwhile; look at "
                    "`keel rollout status` and try again")
            return self._record(conn, rollout.id, rollout.feature, rollout.state, to_state, step,
                                weight, reason, metrics, actor, now)

    @staticmethod
    def _record(conn: Connection, rollout_id: int, feature: str,
                from_state: State | None, to_state: State, step: int, weight: float,
                reason: str, metrics: dict[str, JSON] | None, actor: str,
                now: float) -> Transition:
        transition_id = int(conn.execute(
            "INSERT INTO rollout_transitions (rollout_id, from_state, to_state, step, weight,"
            " reason, metrics, actor, ts) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
            (rollout_id, from_state, to_state, step, weight, reason,
             None if metrics is None else _dumps(metrics), actor, now)).fetchone()[0])
        audit.append(conn, actor, f"rollout.{to_state}" if from_state else "rollout.start",
                     f"{feature}/rollout#{rollout_id}", {"from": from_state, "to": to_state,
                     "step": step, "weight": weight, "reason": reason})
        return Transition(transition_id, rollout_id, feature, from_state, to_state,
                          step, weight, reason, metrics, actor, now)

    def get(self, rollout_id: int) -> Rollout:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise RolloutNotFound(f"no rollout #{rollout_id}")
        return _rollout(row)

    def active(self, feature: str | None = None) -> list[Rollout]:
        """Running and paused rollouts, of one feature or all."""
        sql = "SELECT * FROM rollouts WHERE state IN ('running', 'paused')"
        args: tuple[str, ...] = ()
        if feature is not None:
            sql, args = sql + " AND feature = ?", (feature,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        return [_rollout(r) for r in rows]

    def current(self, feature: str) -> Rollout:
        """The feature's active rollout; RolloutNotFound when there is none."""
        found = self.active(feature)
        if not found:
            raise RolloutNotFound(f"'{feature}' has no active rollout")
        return found[0]

    def latest(self, feature: str) -> Rollout | None:
        """The feature's newest rollout, active or not."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM rollouts WHERE feature = ? ORDER BY id DESC"
                               " LIMIT 1", (feature,)).fetchone()
        return None if row is None else _rollout(row)

    def transitions(self, rollout_id: int, limit: int | None = None) -> list[Transition]:
        """Oldest first; with ``limit``, the latest ``limit`` of them."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT t.*, r.feature FROM rollout_transitions t JOIN rollouts r"
                " ON r.id = t.rollout_id WHERE t.rollout_id = ? ORDER BY t.id DESC LIMIT ?",
                (rollout_id, 2**62 if limit is None else limit)).fetchall()
        return [Transition(r["id"], r["rollout_id"], r["feature"], r["from_state"], r["to_state"],
                           r["step"], r["weight"], r["reason"],
                           None if r["metrics"] is None else orjson.loads(r["metrics"]),
                           r["actor"], r["ts"]) for r in reversed(rows)]


def current_splits(store: Store) -> dict[str, tuple[str, float, int]]:
    """feature -> (canary version, weight, rollout id) of every active rollout: what the
    routers apply (``Split(weight, sticky, salt=str(rollout id))``)."""
    return {r.feature: (r.candidate, r.weight, r.id) for r in RolloutStore(store).active()}


# --- the seams to the registry and the gates -----------------------------------------


class Promote(Protocol):
    """Make ``version`` the champion (the registry's champion move)."""

    def __call__(self, feature: str, version: str, *, actor: str, reason: str,
                 gate_run: str | None, force: bool) -> None: ...


class SetCanary(Protocol):
    """Point the ``canary`` alias at ``version``; remove it when None."""

    def __call__(self, feature: str, version: str | None, *, actor: str, reason: str) -> None: ...


GateCheck = Callable[[str, str], str | None]  # (feature, version) -> passing eval run id
Champion = Callable[[str], str]  # feature -> the champion's version now
MetricsSource = Callable[[Store, str, str, float, float | None], VersionMetrics]


def _snapshot(judgement: Judgement | None, candidate: VersionMetrics | None,
              baseline: VersionMetrics | None) -> dict[str, JSON]:
    return {"judgement": None if judgement is None else judgement.to_json(),
            "candidate": None if candidate is None else candidate.to_json(),
            "baseline": None if baseline is None else baseline.to_json()}


class RolloutController:
    def __init__(self, store: Store, specs: Mapping[str, RolloutSpec], *,
                 promote: Promote, set_canary: SetCanary, gate_check: GateCheck,
                 champion: Champion, metrics: MetricsSource = live_metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.rollouts = RolloutStore(store)
        self.specs = specs
        self._promote = promote
        self._set_canary = set_canary
        self._gate_check = gate_check
        self._champion = champion
        self._metrics = metrics
        self.clock = clock

    # --- manual actions -----------------------------------------------------------

    def start(self, feature: str, candidate: str, *, actor: str, force: bool = False,
              steps: Sequence[float] | None = None) -> Rollout:
        """Put ``candidate`` on the canary at the first step. Needs a passing eval run when
        the feature's ``rollout.require_gate`` is on, unless ``force`` (recorded)."""
        spec = self._spec(feature)
        if steps is not None:
            try:
                spec = RolloutSpec.model_validate({**spec.model_dump(), "steps": list(steps)})
            except ValidationError as exc:
                message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise InvalidRequest(f"--steps: {message}", param="steps") from None
        baseline = self._champion(feature)
        if candidate == baseline:
            raise RolloutConflict(f"'{candidate}' is already the champion of '{feature}'")
        gate_run = self._gate_check(feature, candidate)
        if gate_run is None and spec.require_gate and not force:
            raise GateRequired(
                f"'{candidate}' has no passing eval on the gate dataset of '{feature}'; run "
                f"`keel eval {feature} --version {candidate} --gate` first, or start with --force")
        forced = gate_run is None and spec.require_gate
        rollout, _ = self.rollouts.create(feature, candidate, baseline, spec, actor=actor,
                                          now=self.clock(), forced=forced, gate_run=gate_run)
        try:
            self._set_canary(feature, candidate, actor=actor, reason=f"rollout #{rollout.id}")
        except BaseException as exc:
            message = exc.message if isinstance(exc, KeelError) else str(exc)
            self.rollouts.change(rollout, "aborted", actor=actor, now=self.clock(),
                                 reason=f"aborted: the canary alias could not be set: {message}",
                                 weight=0.0)
            raise
        return rollout

    def pause(self, feature: str, *, actor: str, reason: str | None = None) -> Transition:
        """Hold the weight: no more steps (hard SLO breaches still roll back)."""
        rollout = self.rollouts.current(feature)
        if rollout.state != "running":
            raise RolloutConflict(f"rollout #{rollout.id} of '{feature}' is {rollout.state}")
        return self.rollouts.change(rollout, "paused", actor=actor, now=self.clock(),
                                    reason=reason or f"paused at {rollout.weight:.0%}",
                                    metrics=self._observe(rollout))

    def resume(self, feature: str, *, actor: str) -> Transition:
        """Run again; the current step starts over (fresh window, fresh deadline)."""
        rollout = self.rollouts.current(feature)
        if rollout.state != "paused":
            raise RolloutConflict(f"rollout #{rollout.id} of '{feature}' is {rollout.state}")
        now = self.clock()
        return self.rollouts.change(rollout, "running", actor=actor, now=now,
                                    reason=f"resumed at {rollout.weight:.0%}", step_started_at=now)

    def promote(self, feature: str, *, actor: str, force: bool = False,
                reason: str | None = None) -> Transition:
        """Make the candidate champion now, skipping the steps left. Needs a passing eval
        run when ``require_gate`` is on, unless ``force``."""
        rollout = self.rollouts.current(feature)
        gate_run = self._gate_check(feature, rollout.candidate)
        if gate_run is None and rollout.spec.require_gate and not force:
            raise GateRequired(
                f"'{rollout.candidate}' has no passing eval on the gate dataset of '{feature}'; run "
                f"`keel eval {feature} --version {rollout.candidate} --gate`, or promote --force")
        note = reason or f"promoted by hand at {rollout.weight:.0%}"
        if gate_run is None:
            note += " (forced without a passing eval run)"
        return self._finish_promotion(rollout, actor, note, gate_run, self._observe(rollout))

    def rollback(self, feature: str, *, actor: str, reason: str | None = None) -> Transition:
        rollout = self.rollouts.current(feature)
        return self._roll_back(rollout, actor, reason or "rolled back by hand",
                               self._observe(rollout))

    # --- the loop -----------------------------------------------------------------

    def tick(self) -> list[Transition]:
        """Judge every active rollout once; the transitions it made."""
        out: list[Transition] = []
        for rollout in self.rollouts.active():
            try:
                transition = self._tick(rollout)
            except RolloutConflict:
                continue  # changed by someone else meanwhile: judged again next tick
            except Exception:  # one bad rollout must not stop the others
                log.exception("rollout #%s of %s: tick failed", rollout.id, rollout.feature)
                continue
            if transition is not None:
                out.append(transition)
        return out

    def _tick(self, rollout: Rollout) -> Transition | None:
        spec, now = rollout.spec, self.clock()
        n_tests = rate_test_count(spec)
        candidate = self._metrics(self.store, rollout.feature, rollout.candidate,
                                  rollout.step_started_at, None)
        hard = breach(candidate, spec, n_tests)
        if hard is not None:
            return self._roll_back(rollout, CONTROLLER, hard.reason,
                                   _snapshot(hard, candidate, None))
        if rollout.state != "running" or now - rollout.step_started_at < spec.min_step_s:
            return None
        baseline = self._baseline(rollout)
        judgement = judge(candidate, baseline, spec, n_tests)
        snapshot = _snapshot(judgement, candidate, baseline)
        if judgement.verdict in ("worse", "breach"):
            return self._roll_back(rollout, CONTROLLER, judgement.reason, snapshot)
        if judgement.verdict == "wait":
            if rollout.inconclusive_since is None:
                return self.rollouts.change(
                    rollout, "running", actor=CONTROLLER, now=now, metrics=snapshot,
                    inconclusive_since=now,
                    reason=f"inconclusive at {rollout.weight:.0%}: {judgement.reason}; rolls "
                           f"back if still so after {spec.progress_deadline_s:.0f}s")
            if now - rollout.inconclusive_since >= spec.progress_deadline_s:
                return self._roll_back(
                    rollout, CONTROLLER, f"no verdict within the progress deadline "
                    f"({spec.progress_deadline_s:.0f}s): {judgement.reason}", snapshot)
            return None
        nxt = rollout.step + 1
        if nxt < len(spec.steps):
            weight = spec.steps[nxt]
            return self.rollouts.change(
                rollout, "running", actor=CONTROLLER, now=now, metrics=snapshot, step=nxt,
                weight=weight, step_started_at=now,
                reason=f"step {nxt}/{len(spec.steps)} passed at {rollout.weight:.0%}: "
                       f"{judgement.reason}; now {weight:.0%}")
        gate_run = self._gate_check(rollout.feature, rollout.candidate)
        if gate_run is None and spec.require_gate and not rollout.forced:
            return self.rollouts.change(
                rollout, "paused", actor=CONTROLLER, now=now, metrics=snapshot,
                reason=f"every step passed, but '{rollout.candidate}' has no passing eval run "
                       "to be champion: run the gate eval, then `keel rollout promote`")
        return self._finish_promotion(
            rollout, CONTROLLER, f"every step passed: {judgement.reason}", gate_run, snapshot)

    # --- endings --------------------------------------------------------------------

    def _finish_promotion(self, rollout: Rollout, actor: str, reason: str,
                          gate_run: str | None, snapshot: dict[str, JSON] | None) -> Transition:
        # the champion moves first: if it fails, the rollout stays as it was
        self._promote(rollout.feature, rollout.candidate, actor=actor, reason=reason,
                      gate_run=gate_run, force=gate_run is None)
        transition = self.rollouts.change(rollout, "promoted", actor=actor, now=self.clock(),
                                          reason=reason, metrics=snapshot, weight=1.0)
        self._drop_canary(rollout, actor, f"rollout #{rollout.id} promoted")
        return transition

    def _roll_back(self, rollout: Rollout, actor: str, reason: str,
                   snapshot: dict[str, JSON] | None) -> Transition:
        # recorded first: an ended rollout has no split, so its traffic stops at once
        transition = self.rollouts.change(rollout, "rolled_back", actor=actor, now=self.clock(),
                                          reason=reason, metrics=snapshot, weight=0.0)
        self._drop_canary(rollout, actor, f"rollout #{rollout.id} rolled back")
        log.warning("rollout #%s of %s rolled back: %s", rollout.id, rollout.feature, reason)
        return transition

    def _drop_canary(self, rollout: Rollout, actor: str, reason: str) -> None:
        try:
            self._set_canary(rollout.feature, None, actor=actor, reason=reason)
        except Exception:  # the rollout has ended; the alias is only a leftover
            log.exception("rollout #%s of %s: could not remove the canary alias", rollout.id,
                          rollout.feature)

    def _baseline(self, rollout: Rollout) -> VersionMetrics:
        # at 100% the champion serves nobody: compare with its calls over the whole rollout
        since = rollout.created_at if rollout.weight >= 1.0 else rollout.step_started_at
        return self._metrics(self.store, rollout.feature, rollout.baseline, since, None)

    def _observe(self, rollout: Rollout) -> dict[str, JSON]:
        """Both versions' numbers in the current step, for a person's transition."""
        candidate = self._metrics(self.store, rollout.feature, rollout.candidate,
                                  rollout.step_started_at, None)
        return _snapshot(None, candidate, self._baseline(rollout))

    def _spec(self, feature: str) -> RolloutSpec:
        try:
            return self.specs[feature]
        except KeyError:
            raise FeatureNotFound(
                f"no feature '{feature}' (features: {', '.join(self.specs) or 'none'})") from None


def controller_for(store: Store, spec: KeelSpec, *,
                   clock: Callable[[], float] = time.time) -> RolloutController:
    """The controller wired to the version registry and the eval gates."""
    from keel.control.registry import Registry, gate_run_for

    registry = Registry(store)

    def promote(feature: str, version: str, *, actor: str, reason: str, gate_run: str | None,
                force: bool) -> None:
        registry.move_alias(feature, "champion", version, actor=actor, force=force,
                            reason=reason, gate_run=gate_run)

    def set_canary(feature: str, version: str | None, *, actor: str, reason: str) -> None:
        if version is None:
            registry.remove_alias(feature, "canary", actor=actor, reason=reason)
        else:
            registry.move_alias(feature, "canary", version, actor=actor, reason=reason)

    def gate_check(feature: str, version: str) -> str | None:
        try:
            return gate_run_for(store, feature, spec.features[feature], version)
        except GateRequired:  # no gate dataset pinned: no run can pass
            return None

    def champion(feature: str) -> str:
        return registry.aliases(feature).get("champion") or spec.features[feature].aliases["champion"]

    return RolloutController(store, {f: s.rollout for f, s in spec.features.items()},
                             promote=promote, set_canary=set_canary, gate_check=gate_check,
                             champion=champion, clock=clock)
