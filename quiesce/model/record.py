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
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from quiesce.sidekiq.keys import DEPLOY_RECORD_TTL_S

if TYPE_CHECKING:  # fleet.py reads DeployRecord too: no import cycle at run time
    from quiesce.model.fleet import ProcessRecord, ServerInfo
    from quiesce.model.machines import FlyMachine

SCHEMA_VERSION = 4
CAP_IDENTITY = 1024
"""Longest process identity (and hostname) a record stores; a process with a longer
identity is left out of the record (its signal still goes out)."""
CAP_TEXT = 256
"""Longest tag, label, version or failure a record stores (longer: truncated)."""
CAP_LABELS = 32
"""Most labels a record stores per process."""
CAP_MACHINES = 10_000
"""Most Fly Machines a record stores (Fly's own limit per app is far below)."""
LEDGER_SIZE = 20
"""Most records a scope's history keeps (newest first)."""
LEDGER_MAX_CHARS = 4_000_000
"""Most characters of records a scope's history keeps, the newest always: every command
reads the whole history, and at 10,000 processes a record is about 1 MB (so such a fleet
keeps about 4; up to 2,000 processes keep 20). What the history is for survives the
cut: a retried deploy copies "quiet since" forward into its own record."""
FUTURE_SLACK_S = 3600.0
"""A ledger record started more than this after the reader's Redis clock is ignored."""
T = TypeVar("T")


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


class _Bad(Exception):
    """Internal: one field of the wrong type; the message names it."""


def _show(value: object) -> str:
    return repr(value)[:40]


def _get(data: Mapping[str, Any], key: str, check: Callable[[Any], T | None], what: str) -> T:
    value = check(data.get(key))
    if value is None:
        raise _Bad(f"{key!r} is not {what}: {_show(data.get(key))}")
    return value


def _opt(
    data: Mapping[str, Any], key: str, check: Callable[[Any], T | None], what: str
) -> T | None:
    if data.get(key) is None:
        return None
    return _get(data, key, check, what)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _plain_number(value: Any) -> bool:
    """None, or a finite int or float (never a bool): the fast paths' check."""
    return value is None or (type(value) in (int, float) and math.isfinite(value))


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _boolean(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _object(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


def _texts(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


@dataclasses.dataclass(frozen=True, slots=True)
class FleetEntry:
    """The identity-level facts a record keeps about one pre-deploy process."""

    identity: str
    hostname: str
    pid: int | None = None
    started_at: float | None = None
    tag: str = ""
    labels: tuple[str, ...] = ()
    version: str | None = None
    concurrency: int | None = None
    redis: str = ""

    @classmethod
    def from_process(cls, p: ProcessRecord) -> FleetEntry:
        return cls(
            identity=p.identity,
            hostname=p.hostname,
            pid=p.pid,
            started_at=p.started_at,
            tag=p.tag,
            labels=p.labels,
            version=p.version.text if p.version else None,
            concurrency=p.concurrency,
            redis=p.redis,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FleetEntry:
        return cls(
            identity=_get(data, "identity", _text, "a string"),
            hostname=_get(data, "hostname", _text, "a string"),
            pid=_opt(data, "pid", _integer, "an integer"),
            started_at=_opt(data, "started_at", _number, "a number"),
            tag=_opt(data, "tag", _text, "a string") or "",
            labels=_opt(data, "labels", _texts, "a list of strings") or (),
            version=_opt(data, "version", _text, "a string"),
            concurrency=_opt(data, "concurrency", _integer, "an integer"),
            redis=_opt(data, "redis", _text, "a string") or "",
        )

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self), "labels": list(self.labels)}

    @classmethod
    def from_compact(cls, data: Mapping[str, Any], servers: Sequence[str | None]) -> FleetEntry:
        """Schema 3 (``data`` already merged over ``fleet_common``); ``servers``: the
        record's server URLs, which ``r`` indexes."""
        fast = _fast_compact(data, servers)
        if fast is not None:
            return fast
        identity = _get(data, "i", _text, "a string")
        hostname, pid = _spelled(identity)
        server = _integer(data.get("r"))
        if server is not None:
            redis = servers[server] if 0 <= server < len(servers) else None
            if redis is None:
                raise _Bad(f"'r' is not a server index: {_show(server)}")
        else:
            redis = _opt(data, "r", _text, "a server index or URL") or ""
        return cls(
            identity=identity,
            hostname=_get(data, "h", _text, "a string") if "h" in data else hostname,
            pid=_opt(data, "p", _integer, "an integer") if "p" in data else pid,
            started_at=_opt(data, "s", _number, "a number"),
            tag=_opt(data, "t", _text, "a string") or "",
            labels=_opt(data, "l", _texts, "a list of strings") or (),
            version=_opt(data, "v", _text, "a string"),
            concurrency=_opt(data, "c", _integer, "an integer"),
            redis=redis,
        )

    def to_compact(self, server_index: Mapping[str, int]) -> dict[str, Any]:
        """Schema 3, capped, before ``fleet_common`` takes out the shared values."""
        hostname, pid = _spelled(self.identity)
        data: dict[str, Any] = {"i": self.identity}
        if self.hostname[:CAP_IDENTITY] != hostname:
            data["h"] = self.hostname[:CAP_IDENTITY]
        if self.pid != pid:
            data["p"] = self.pid
        if self.started_at is not None:
            data["s"] = round(self.started_at, 3)
        data["t"] = self.tag[:CAP_TEXT]
        data["l"] = [label[:CAP_TEXT] for label in self.labels[:CAP_LABELS]]
        data["v"] = self.version[:CAP_TEXT] if self.version is not None else None
        data["c"] = self.concurrency
        data["r"] = server_index.get(self.redis, self.redis)
        return data


def _fast_compact(data: Mapping[str, Any], servers: Sequence[str | None]) -> FleetEntry | None:
    """``FleetEntry.from_compact`` for the entry quiesce writes (every field of its type):
    a 10,000-process record is read by every ``status``. None: take the checked path,
    which names what is wrong."""
    get = data.get
    identity, server, labels = get("i"), get("r"), get("l", [])
    started_at, pid, concurrency = get("s"), get("p"), get("c")
    if not (
        type(identity) is str
        and type(server) is int
        and 0 <= server < len(servers)
        and type(labels) is list
        and all(type(label) is str for label in labels)
        and type(get("t", "")) is str
        and type(get("v")) in (str, type(None))
        and type(started_at) in (float, int, type(None))
        and (started_at is None or math.isfinite(started_at))
        and type(pid) in (int, type(None))
        and type(concurrency) in (int, type(None))
        and type(get("h", "")) is str
    ):
        return None
    redis = servers[server]
    if redis is None:
        return None
    hostname, spelled_pid = _spelled(identity)
    return FleetEntry(
        identity=identity,
        hostname=get("h", hostname),
        pid=pid if "p" in data else spelled_pid,
        started_at=None if started_at is None else float(started_at),
        tag=get("t") or "",
        labels=tuple(labels),
        version=get("v"),
        concurrency=concurrency,
        redis=redis,
    )


def _spelled(identity: str) -> tuple[str, int | None]:
    """The hostname and pid an identity spells (``<hostname>:<pid>:<nonce>``, as Sidekiq
    builds it): schema 3 stores them only when they differ."""
    parts = identity.rsplit(":", 2)
    if len(parts) != 3:
        return identity, None
    pid = parts[1]
    return parts[0], int(pid) if pid.isascii() and pid.isdigit() and len(pid) < 10 else None


_OUTCOME_KEYS = ("outcome", "pushed_at", "confirmed_at", "pushes", "quiet_since_deploy")
_OUTCOME_KEYS_COMPACT = ("o", "p", "c", "n", "d")


@dataclasses.dataclass(frozen=True, slots=True)
class OutcomeEntry:
    """What became of one process: ``outcome`` is a ``plan.Outcome`` value. Times are
    epoch seconds on the Redis clock of the server the process registers in."""

    outcome: str
    pushed_at: float | None = None
    """When the last TSTP push went out (None: not signalled, e.g. already quiet)."""
    confirmed_at: float | None = None
    """When this deploy confirmed it quiet; for ``already_quiet``, when the deploy named
    by ``quiet_since_deploy`` did (copied, so it outlives that record)."""
    pushes: int = 0
    quiet_since_deploy: str | None = None
    """``already_quiet`` (schema 4): the earlier deploy of the scope that quieted it."""

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], keys: tuple[str, str, str, str, str] = _OUTCOME_KEYS
    ) -> OutcomeEntry:
        """Schema 1-2 (``keys``: the field names); schema 3+ reads through ``from_compact``."""
        outcome, pushed_at, confirmed_at, pushes, since = keys
        return cls(
            outcome=_get(data, outcome, _text, "a string"),
            pushed_at=_opt(data, pushed_at, _number, "a number"),
            confirmed_at=_opt(data, confirmed_at, _number, "a number"),
            pushes=_opt(data, pushes, _integer, "an integer") or 0,
            quiet_since_deploy=_opt(data, since, _text, "a string"),
        )

    def to_json(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_compact(cls, data: Mapping[str, Any]) -> OutcomeEntry:
        """Schema 3+ (``data`` already merged over ``outcomes_common``)."""
        get = data.get
        outcome, pushed_at, confirmed_at = get("o"), get("p"), get("c")
        pushes, since = get("n"), get("d")
        if (  # what quiesce writes: built directly (every read decodes 10,000 of these)
            type(outcome) is str
            and _plain_number(pushed_at)
            and _plain_number(confirmed_at)
            and type(pushes) in (int, type(None))
            and type(since) in (str, type(None))
        ):
            return cls(
                outcome,
                None if pushed_at is None else float(pushed_at),
                None if confirmed_at is None else float(confirmed_at),
                pushes or 0,
                since,
            )
        return cls.from_json(data, _OUTCOME_KEYS_COMPACT)  # names what is wrong

    def to_compact(self) -> dict[str, Any]:
        data: dict[str, Any] = {"o": self.outcome[:CAP_TEXT], "p": self.pushed_at, "n": self.pushes}
        if self.confirmed_at is not None:
            data["c"] = self.confirmed_at
        if self.quiet_since_deploy is not None:
            data["d"] = self.quiet_since_deploy[:CAP_TEXT]
        return data


def _common(entries: Sequence[dict[str, Any]], shared: Sequence[str]) -> dict[str, Any]:
    """The most frequent value of each ``shared`` key, taken out of the entries that hold
    it (in place): a 10,000-process fleet mostly shares its tag, version and server."""
    common: dict[str, Any] = {}
    for key in shared:
        counts: dict[tuple[type, Any], int] = {}
        for entry in entries:
            if key in entry:
                token = _token(entry[key])
                counts[token] = counts.get(token, 0) + 1
        if not counts:
            continue
        top = max(counts, key=counts.__getitem__)
        for entry in entries:
            if key in entry and _token(entry[key]) == top:
                common[key] = entry.pop(key)
    return common


def _token(value: Any) -> tuple[type, Any]:
    """Hashable and exact (``1`` is not ``True``): the values are JSON scalars or lists of
    strings."""
    return (list, tuple(value)) if isinstance(value, list) else (type(value), value)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerEntry:
    """One Redis server's client counts when the deploy started (the baseline)."""

    redis: str
    connected_clients: int | None = None
    maxclients: int | None = None
    run_id: str | None = None
    """``INFO server`` run_id (schema 2): a different one later means Redis restarted."""

    @classmethod
    def from_server(cls, s: ServerInfo) -> ServerEntry:
        return cls(s.redis, s.connected_clients, s.maxclients, s.run_id)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerEntry:
        return cls(
            redis=_get(data, "redis", _text, "a string"),
            connected_clients=_opt(data, "connected_clients", _integer, "an integer"),
            maxclients=_opt(data, "maxclients", _integer, "an integer"),
            run_id=_opt(data, "run_id", _text, "a string"),
        )

    def to_json(self) -> dict[str, Any]:
        return _plain(self)


@dataclasses.dataclass(frozen=True, slots=True)
class FlyTarget:
    """What the release command was deploying, as Fly told it (schema 4)."""

    app: str
    image_ref: str = ""
    """``FLY_IMAGE_REF`` of the release Machine: the image being deployed."""
    release_version: str | None = None
    """``config.metadata.fly_release_version`` of the release Machine (None: not read)."""
    release_machine: str | None = None
    """``FLY_MACHINE_ID`` of the release Machine."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FlyTarget:
        return cls(
            app=_get(data, "app", _text, "a string"),
            image_ref=_opt(data, "image_ref", _text, "a string") or "",
            release_version=_opt(data, "release_version", _text, "a string"),
            release_machine=_opt(data, "release_machine", _text, "a string"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app[:CAP_TEXT],
            "image_ref": self.image_ref[:CAP_IDENTITY],
            "release_version": _cap(self.release_version),
            "release_machine": _cap(self.release_machine),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class MachineEntry:
    """One Fly Machine of the app as the Machine list showed it at the quiet (schema 4)."""

    id: str
    process_group: str = ""
    image_ref: str = ""
    release_version: str = ""
    state: str = ""

    @classmethod
    def from_compact(cls, machine_id: str, data: Mapping[str, Any]) -> MachineEntry:
        """``data`` already merged over ``machines_common``."""
        return cls(
            id=machine_id,
            process_group=_opt(data, "g", _text, "a string") or "",
            image_ref=_opt(data, "i", _text, "a string") or "",
            release_version=_opt(data, "v", _text, "a string") or "",
            state=_opt(data, "s", _text, "a string") or "",
        )

    @classmethod
    def from_machine(cls, m: FlyMachine) -> MachineEntry:
        return cls(m.id, m.process_group, m.image_ref, m.release_version, m.state)

    def to_compact(self) -> dict[str, Any]:
        return {
            "g": self.process_group[:CAP_TEXT],
            "i": self.image_ref[:CAP_IDENTITY],
            "v": self.release_version[:CAP_TEXT],
            "s": self.state[:CAP_TEXT],
        }


def _cap(text: str | None) -> str | None:
    return text[:CAP_TEXT] if text is not None else None


def _plain(entry: FleetEntry | OutcomeEntry | ServerEntry) -> dict[str, Any]:
    return {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}


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


def has_surrogates(text: str) -> bool:
    """Non-UTF-8 bytes, as the Redis adapter decodes them (``errors="surrogateescape"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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


# -- scope and history (the ledger) -------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class History:
    """A scope's records as read: ``records`` newest first; ``drop``: ledger entries to
    delete on the next write (unreadable, another scope's, expired, past the caps)."""

    records: tuple[DeployRecord, ...] = ()
    drop: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    legacy: bool = False
    """The history is the single pre-ledger record (``quiesce:deploy:latest``)."""
    other_scope: str | None = None
    """The scope of the newest deploy in this Redis when it is not the one asked for and
    the asked scope has no history (a command run without ``--app``, say)."""


def select_history(
    ledger: Mapping[str, str] | None,
    scope: str | None,
    now: float,
    *,
    legacy: str | None = None,
) -> History:
    """A scope's history from its ledger entries (deploy id -> record JSON).

    Records that are unreadable, name another scope (a hash collision, or a hand-made
    entry), or started more than the record TTL before ``now`` are left out and listed
    to drop; of the rest the ``LEDGER_SIZE`` newest are kept, within
    ``LEDGER_MAX_CHARS`` (the newest always). ``legacy``: the global latest record,
    used only when the ledger holds nothing for the scope and the record predates
    scopes (schema < 4) -- or always when no scope is given (the old behaviour).
    """
    keep: list[tuple[DeployRecord, int]] = []
    drop: list[str] = []
    problems: list[str] = []
    for field, text in (ledger or {}).items():
        record, problem = parse_deploy_record(text)
        if problem:
            problems.append(problem)
        if record is not None and record.started_at > now + FUTURE_SLACK_S:
            # Would be "the latest deploy" for as long as it is kept: a clock far off, or
            # a hand-made entry.
            problems.append(f"deploy record {record.deploy_id[:60]} starts in the future")
            record = None
        if (
            record is None
            or record.deploy_id != field
            or (scope is not None and record.scope != scope)
            or record.started_at < now - DEPLOY_RECORD_TTL_S
        ):
            drop.append(field)
            continue
        keep.append((record, len(text)))
    keep.sort(key=lambda pair: (pair[0].started_at, pair[0].deploy_id), reverse=True)
    records: list[DeployRecord] = []
    size = 0
    for record, chars in keep:
        size += chars
        if records and (len(records) >= LEDGER_SIZE or size > LEDGER_MAX_CHARS):
            drop.append(record.deploy_id)
            continue
        records.append(record)
    if records or not legacy:
        return History(tuple(records), tuple(drop), tuple(problems))
    record, problem = parse_deploy_record(legacy)
    problems.extend([problem] if problem else [])
    if record is None:
        return History((), tuple(drop), tuple(problems))
    if scope is not None and record.version >= 4:
        other = record.scope if record.scope != scope else None
        return History((), tuple(drop), tuple(problems), other_scope=other)
    return History((record,), tuple(drop), tuple(problems), legacy=True)


def quiet_since_any(
    history: Sequence[DeployRecord], identity: str
) -> tuple[DeployRecord, float] | None:
    """The oldest deploy of the history that confirmed this process quiet, and when.

    A retried deploy records an already-quiet process as ``already_quiet`` with the
    time (and id) of the deploy that quieted it, so the answer survives that record
    leaving the history; an entry naming a deploy still in the history resolves to it.
    """
    by_id = {r.deploy_id: r for r in history}
    found: tuple[DeployRecord, float] | None = None
    for record in history:  # newest first: the last match is the oldest
        entry = record.outcomes.get(identity)
        if entry is None or entry.confirmed_at is None:
            continue
        origin = by_id.get(entry.quiet_since_deploy or "", record)
        found = (origin, entry.confirmed_at)
    if found is None:
        return None
    origin, at = found
    entry = origin.outcomes.get(identity)
    if entry is not None and entry.confirmed_at is not None:
        at = min(at, entry.confirmed_at)
    return origin, at
