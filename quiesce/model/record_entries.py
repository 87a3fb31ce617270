"""The entries of a deploy record: per pre-deploy process (``FleetEntry``), per quiet
outcome (``OutcomeEntry``), per Redis server, per Fly Machine, and the Fly target; each
with its compact encoding (schema 3 and 4) and its tolerant reader."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # fleet.py reads DeployRecord too: no import cycle at run time
    from quiesce.model.fleet import ProcessRecord, ServerInfo
    from quiesce.model.machines import FlyMachine
from quiesce.model.record_fields import (
    CAP_IDENTITY,
    CAP_LABELS,
    CAP_TEXT,
    _Bad,
    _cap,
    _get,
    _integer,
    _number,
    _opt,
    _plain_number,
    _show,
    _text,
    _texts,
)


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


def _plain(entry: FleetEntry | OutcomeEntry | ServerEntry) -> dict[str, Any]:
    return {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
