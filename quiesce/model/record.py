"""The deploy record quiesce keeps, and Sidekiq's deploy-mark stamp (pure).

A record is written when ``quiesce quiet`` pushes its signals and rewritten with the
outcomes when the wait ends, so a release command killed mid-wait still leaves one
(``state`` stays ``pending``). Later commands read it to tell pre-deploy processes from
new ones, to say how long a process has been quiet, and to compare Redis connection
counts with the baseline.

Records are typed and frozen; ``parse_deploy_record`` is the one reader. It accepts
schema 1 (``"schema": 1``, no ``state``/``pushed_at``/``pushes``/``run_id``),
schema 2 (``"version": 2``), schema 3 (``"version": 3``) and schema 4 (``"version":
4``, written since), and keeps top-level fields it does not know (a newer quiesce may
have added them) so that a rewrite does not drop them.

Schema 4 adds what a deploy is judged by later: its ``scope`` (which fleet it quieted:
``quiet.scope_of``), the Fly ``target`` (app, image, release, the release Machine) and the
Fly ``machines`` seen at the quiet, with ``fly_checked`` saying whether Fly's list was
really read. Records of a scope are kept as a short history (the "ledger", newest
first, ``LEDGER_SIZE`` at most): ``select_history`` picks them, ``quiet_since_any``
says which deploy of the scope quieted a process. Records from before schema 4 have no
scope: they are only a fallback when a scope has no ledger yet.

Schema 3 is schema 2 made compact, because a record holds the whole fleet and is kept
twice for 14 days (3.3 MB at 10,000 processes in schema 2, under 1 MB in schema 3):
fleet and outcome entries use one-letter keys and leave out what they can rebuild (a
hostname and pid that the identity already spells, the default of a field), the Redis
URL is an index into ``servers``, and a value most entries share is written once in
``fleet_common``/``outcomes_common``. The typed API (``FleetEntry``, ``OutcomeEntry``)
is the same for every schema. What one hostile heartbeat can copy into a record is
capped: identities over ``CAP_IDENTITY`` characters are left out, hostnames truncated
to ``CAP_IDENTITY``, and tags, labels, versions and the failure to ``CAP_TEXT``
characters, at most ``CAP_LABELS`` labels (the release label is the operator's, not
Redis's, and is kept whole).

Reading is tolerant in two steps. Anything wrong at the top level (not JSON, not an
object, not UTF-8, a field of the wrong type) rejects the whole record: ``(None,
problem)``; nothing in it can be trusted. A malformed *entry* of ``fleet``,
``servers`` or ``outcomes`` is dropped and the rest kept: ``(record, problem)``, the
problem naming how many were dropped. Dropping errs on the safe side: a process
without an outcome entry is shown as running rather than quieting, so ``status
--expect quiet`` fails instead of passing on a record it could not read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # fleet.py reads DeployRecord too: no import cycle at run time
    from quiesce.model.fleet import ProcessRecord, ServerInfo
from quiesce.model.record_entries import (
    FleetEntry,
    FlyTarget,
    MachineEntry,
    OutcomeEntry,
    ServerEntry,
    _common,
)
from quiesce.model.record_fields import (
    CAP_IDENTITY,
    CAP_MACHINES,
    CAP_TEXT,
    T,
    _Bad,
    _boolean,
    _get,
    _integer,
    _number,
    _object,
    _opt,
    _show,
    _text,
    has_surrogates,
)

SCHEMA_VERSION = 4


class DeployState(enum.StrEnum):
    PENDING = "pending"
    """Signals pushed, outcomes not final (the wait is running, or was killed)."""
    COMPLETE = "complete"
    """The wait ended and every outcome was written (failed outcomes included)."""
    FAILED = "failed"
    """The run broke off after signals went out; ``failure`` says why."""


def new_deploy_id(now: float, suffix: str) -> str:
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{suffix}"


def mark_stamp(now: float) -> tuple[str, str]:
    """``(datecode, stamp)`` as ``Sidekiq::Deploy#mark`` computes them.

    The time is floored to the minute (so N processes marking one deploy make one
    mark); the hash is ``<YYYYMMDD>-marks`` and the field Ruby's ``Time#iso8601``
    of the UTC minute, e.g. ``2026-11-26T07:14:00Z``.
    """
    floor = dt.datetime.fromtimestamp(now, dt.UTC).replace(second=0, microsecond=0)
    return floor.strftime("%Y%m%d"), floor.strftime("%Y-%m-%dT%H:%M:%SZ")


_KNOWN = frozenset(
    {
        "version", "schema", "deploy_id", "release", "strategy", "started_at", "finished_at",
        "until", "timeout_s", "state", "failure", "fleet", "servers", "outcomes",
        "quiesce_version", "fleet_common", "outcomes_common", "scope", "target", "machines",
        "machines_common", "fly_checked",
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class DeployRecord:
    deploy_id: str
    release: str | None
    strategy: str
    started_at: float
    """Redis clock (the snapshot's ``taken_at``), epoch seconds."""
    until: str
    timeout_s: float
    state: DeployState = DeployState.PENDING
    failure: str | None = None
    """Why the run failed after signals went out (``state`` is ``failed``)."""
    finished_at: float | None = None
    fleet: tuple[FleetEntry, ...] = ()
    servers: tuple[ServerEntry, ...] = ()
    outcomes: Mapping[str, OutcomeEntry] = dataclasses.field(default_factory=dict)
    """Identity -> outcome; read it, replace it with ``with_outcomes``."""
    quiesce_version: str = ""
    scope: str = ""
    """Which fleet this deploy quieted (``scope_of``); "" in records before schema 4."""
    target: FlyTarget | None = None
    """What was being deployed, when the release command knew its Fly app."""
    machines: Mapping[str, MachineEntry] = dataclasses.field(default_factory=dict)
    """Fly Machine id -> the Machine as listed at the quiet (empty: Fly not read)."""
    fly_checked: bool = False
    """True only when Fly's Machine list was actually read during the quiet."""
    version: int = SCHEMA_VERSION
    """Schema of the record as read (1 to 4); always written as ``SCHEMA_VERSION``."""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Top-level fields this quiesce does not know, re-written as they were read."""

    @classmethod
    def start(
        cls,
        *,
        deploy_id: str,
        release: str | None,
        strategy: str,
        started_at: float,
        until: str,
        timeout_s: float,
        processes: Sequence[ProcessRecord],
        servers: Sequence[ServerInfo],
        quiesce_version: str,
        scope: str = "",
    ) -> DeployRecord:
        return cls(
            scope=scope,
            deploy_id=deploy_id,
            release=release,
            strategy=strategy,
            started_at=started_at,
            until=until,
            timeout_s=timeout_s,
            fleet=tuple(FleetEntry.from_process(p) for p in processes if p.alive),
            servers=tuple(ServerEntry.from_server(s) for s in servers),
            quiesce_version=quiesce_version,
        )

    def with_outcomes(self, outcomes: Mapping[str, OutcomeEntry]) -> DeployRecord:
        """A copy whose outcomes are updated (merged over the existing ones)."""
        return dataclasses.replace(self, outcomes={**self.outcomes, **outcomes})

    def finish(self, finished_at: float, *, failure: str | None = None) -> DeployRecord:
        """A copy marked ``complete``, or ``failed`` when ``failure`` says why."""
        state = DeployState.FAILED if failure else DeployState.COMPLETE
        return dataclasses.replace(self, finished_at=finished_at, state=state, failure=failure)

    def quiet_since(self, identity: str) -> float | None:
        """When this deploy confirmed the process quiet (Redis clock), if it did."""
        entry = self.outcomes.get(identity)
        return entry.confirmed_at if entry is not None else None

    def with_fly(
        self, target: FlyTarget | None, machines: Sequence[MachineEntry], *, checked: bool
    ) -> DeployRecord:
        """A copy with what Fly said at the quiet (``checked``: the list was read)."""
        return dataclasses.replace(
            self,
            target=target,
            machines={m.id: m for m in machines[:CAP_MACHINES]},
            fly_checked=checked,
        )

    def to_json(self) -> str:
        """Schema 4 (compact, capped: see the module docstring)."""
        data: dict[str, Any] = dict(self.extra)
        index = {s.redis: i for i, s in reversed(list(enumerate(self.servers)))}
        fleet = [e.to_compact(index) for e in self.fleet if len(e.identity) <= CAP_IDENTITY]
        outcomes = {k: e.to_compact() for k, e in self.outcomes.items() if len(k) <= CAP_IDENTITY}
        machines = {
            k: e.to_compact()
            for k, e in list(self.machines.items())[:CAP_MACHINES]
            if len(k) <= CAP_TEXT
        }
        data.update(
            version=SCHEMA_VERSION,
            deploy_id=self.deploy_id,
            release=self.release,
            strategy=self.strategy,
            started_at=self.started_at,
            finished_at=self.finished_at,
            until=self.until,
            timeout_s=self.timeout_s,
            state=self.state.value,
            failure=self.failure[:CAP_TEXT] if self.failure is not None else None,
            fleet_common=_common(fleet, ("t", "l", "v", "c", "r")),
            fleet=fleet,
            servers=[e.to_json() for e in self.servers],
            outcomes_common=_common(list(outcomes.values()), ("o", "p", "n")),
            outcomes=outcomes,
            quiesce_version=self.quiesce_version,
            scope=self.scope,
            target=self.target.to_json() if self.target is not None else None,
            machines_common=_common(list(machines.values()), ("g", "i", "v", "s")),
            machines=machines,
            fly_checked=self.fly_checked,
        )
        return json.dumps(data, separators=(",", ":"), sort_keys=True)


def quiet_since(deploy: DeployRecord | None, identity: str) -> float | None:
    """When the latest deploy confirmed this process quiet (Redis clock), if it did."""
    return deploy.quiet_since(identity) if deploy is not None else None


def parse_deploy_record(text: str | None) -> tuple[DeployRecord | None, str | None]:
    """The one reader: ``(record, problem)``, never an exception.

    ``(None, None)``: no record. ``(None, problem)``: unusable, ``problem`` says why in
    one line. ``(record, problem)``: usable, but malformed entries were dropped.
    """
    if not text:
        return None, None
    if has_surrogates(text):
        return None, "deploy record is not valid UTF-8"
    try:
        data = json.loads(text)
    except RecursionError:
        return None, "deploy record JSON is nested too deeply"
    except ValueError as exc:  # JSONDecodeError, and ints over Python's 4,300-digit limit
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return None, f"deploy record is not valid JSON ({reason[:60]})"
    if not isinstance(data, dict):
        return None, "deploy record is not a JSON object"
    try:
        return _record(data)
    except _Bad as exc:
        return None, f"deploy record field {exc}"


def _record(data: dict[str, Any]) -> tuple[DeployRecord, str | None]:
    schema = _integer(data.get("version")) or _integer(data.get("schema")) or 1
    state_text = _opt(data, "state", _text, "a string")
    finished_at = _opt(data, "finished_at", _number, "a number")
    if state_text is None:  # schema 1 has no state: a finished run rewrote the record
        state = DeployState.COMPLETE if finished_at is not None else DeployState.PENDING
    elif state_text in {s.value for s in DeployState}:
        state = DeployState(state_text)
    else:
        raise _Bad(f"'state' is not pending, complete or failed: {_show(state_text)}")
    dropped: list[str] = []
    bad_servers: list[str] = []  # reported after the fleet's, as schema 2 did
    servers = tuple(_entries(data, "servers", ServerEntry.from_json, bad_servers))
    build_fleet: Callable[[Mapping[str, Any]], FleetEntry] = FleetEntry.from_json
    build_outcome: Callable[[Mapping[str, Any]], OutcomeEntry] = OutcomeEntry.from_json
    if schema >= 3:
        # ``r`` indexes the list as written: a dropped server entry must not shift it.
        written = data["servers"] if isinstance(data.get("servers"), list) else []
        urls = [_redis_of(item) for item in written]
        fleet_common = _common_of(data, "fleet_common")
        outcome_common = _common_of(data, "outcomes_common")

        def compact_fleet(item: Mapping[str, Any]) -> FleetEntry:
            return FleetEntry.from_compact({**fleet_common, **item}, urls)

        def compact_outcome(item: Mapping[str, Any]) -> OutcomeEntry:
            return OutcomeEntry.from_compact({**outcome_common, **item})

        build_fleet, build_outcome = compact_fleet, compact_outcome

    fleet = tuple(_entries(data, "fleet", build_fleet, dropped))
    dropped.extend(bad_servers)
    outcomes = _outcomes(data, dropped, build_outcome)
    machines = _machines(data, dropped)
    target_data = _opt(data, "target", _object, "an object")
    try:
        target = FlyTarget.from_json(target_data) if target_data is not None else None
    except _Bad as exc:
        dropped.append(f"target ({exc})")
        target = None
    record = DeployRecord(
        deploy_id=_get(data, "deploy_id", _text, "a string"),
        release=_opt(data, "release", _text, "a string"),
        strategy=_opt(data, "strategy", _text, "a string") or "unknown",
        started_at=_get(data, "started_at", _number, "a number"),
        until=_opt(data, "until", _text, "a string") or "",
        timeout_s=_opt(data, "timeout_s", _number, "a number") or 0.0,
        state=state,
        failure=_opt(data, "failure", _text, "a string"),
        finished_at=finished_at,
        fleet=fleet,
        servers=servers,
        outcomes=outcomes,
        quiesce_version=_opt(data, "quiesce_version", _text, "a string") or "",
        scope=_opt(data, "scope", _text, "a string") or "",
        target=target,
        machines=machines,
        fly_checked=_opt(data, "fly_checked", _boolean, "true or false") or False,
        version=schema,
        extra={k: v for k, v in data.items() if k not in _KNOWN},
    )
    if not dropped:
        return record, None
    more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
    return record, f"deploy record {record.deploy_id}: dropped {dropped[0]}{more}"


def _entries(
    data: Mapping[str, Any], key: str, build: Callable[[Mapping[str, Any]], T], dropped: list[str]
) -> list[T]:
    items = data.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise _Bad(f"{key!r} is not a list: {_show(items)}")
    out = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise _Bad("it is not an object")
            out.append(build(item))
        except _Bad as exc:
            dropped.append(f"{key}[{i}] ({exc})")
    return out


def _redis_of(item: Any) -> str | None:
    redis = item.get("redis") if isinstance(item, dict) else None
    return redis if isinstance(redis, str) else None


def _common_of(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    common = data.get(key)
    if common is None:
        return {}
    if not isinstance(common, dict):
        raise _Bad(f"{key!r} is not an object: {_show(common)}")
    return common


def _outcomes(
    data: Mapping[str, Any],
    dropped: list[str],
    build: Callable[[Mapping[str, Any]], OutcomeEntry],
) -> dict[str, OutcomeEntry]:
    items = data.get("outcomes")
    if items is None:
        return {}
    if not isinstance(items, dict):
        raise _Bad(f"'outcomes' is not an object: {_show(items)}")
    out = {}
    for identity, item in items.items():
        try:
            if not isinstance(item, dict):
                raise _Bad("it is not an object")
            out[identity] = build(item)
        except _Bad as exc:
            dropped.append(f"outcome of {identity[:60]!r} ({exc})")
    return out


def _machines(data: Mapping[str, Any], dropped: list[str]) -> dict[str, MachineEntry]:
    items = data.get("machines")
    if items is None:
        return {}
    if not isinstance(items, dict):
        raise _Bad(f"'machines' is not an object: {_show(items)}")
    common = _common_of(data, "machines_common")
    out = {}
    for machine_id, item in list(items.items())[:CAP_MACHINES]:
        try:
            if not isinstance(item, dict):
                raise _Bad("it is not an object")
            out[machine_id] = MachineEntry.from_compact(machine_id, {**common, **item})
        except _Bad as exc:
            dropped.append(f"machine {machine_id[:60]!r} ({exc})")
    return out
