"""A simulated Sidekiq fleet that heartbeats exactly like the real thing.

Each beat is ``Launcher#❤``'s registry MULTI: ``SADD processes``, ``EXISTS``, ``HSET`` of
the fields its version writes, ``EXPIRE 60``, ``RPOP <identity>-signals``. The hash
reports the quiet flag as it was *before* the popped signal, so ``quiet = "true"``
appears one beat after the pop, as in Sidekiq. TERM quiets, then the process leaves
(``SREM`` + ``UNLINK :work``; the hash lingers until it expires). Embedded processes
(7.0.3+) pop and ignore signals. Used by tests, the benchmark and ``quiesce simulate``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from quiesce.decode import beat_interval_for, parse_version
from quiesce.keys import HEARTBEAT_TTL_S, Keys


@dataclasses.dataclass(slots=True)
class SimulatedProcess:
    identity: str
    hostname: str
    pid: int
    version: str = "7.3.10"
    concurrency: int = 5
    queues: tuple[str, ...] = ("default",)
    tag: str = "app"
    labels: tuple[str, ...] = ()
    embedded: bool = False
    started_at: float = dataclasses.field(default_factory=time.time)
    busy: int = 0
    quiet: bool = False
    stopped: bool = False
    stalled: bool = False
    """Stops beating (a hung process): its hash expires after 60 s."""
    malformed_info: bool = False
    signals_seen: list[str] = dataclasses.field(default_factory=list)
    _info: str | None = None

    def info_json(self) -> str:
        if self.malformed_info:
            return '{"hostname":"' + self.hostname + '","pid":'  # truncated, as a bad dump would be
        if self._info is None:
            self._info = json.dumps(self._info_dict(), separators=(",", ":"))
        return self._info

    def _info_dict(self) -> dict[str, Any]:
        numbers = parse_version(self.version) or (7, 3, 10)
        weights = {q: 0 for q in self.queues}
        info: dict[str, Any] = {
            "hostname": self.hostname,
            "started_at": self.started_at,
            "pid": self.pid,
            "tag": self.tag,
        }
        if numbers >= (8, 0, 9):
            info["capsules"] = {
                "default": {"concurrency": self.concurrency, "mode": "strict", "weights": weights}
            }
        if numbers < (8, 1, 2):
            info["concurrency"] = self.concurrency
        info["queues"] = list(self.queues)
        if numbers >= (7, 0, 3):
            info["weights"] = [weights]
        info["labels"] = list(self.labels)
        info["identity"] = self.identity
        if numbers >= (7, 0, 2):
            info["version"] = self.version
        if numbers >= (7, 0, 3):
            info["embedded"] = self.embedded
        return info

    def fields(self, now: float) -> dict[str, str]:
        numbers = parse_version(self.version) or (7, 3, 10)
        fields = {
            "info": self.info_json(),
            "busy": str(self.busy),
            "beat": repr(now),
            "quiet": "true" if self.quiet else "false",
        }
        if numbers >= (6, 1, 3):
            fields["rss"] = "30132"
        if numbers >= (6, 2, 0):
            fields["rtt_us"] = "36"
        if numbers >= (8, 1, 2):
            fields["concurrency"] = str(self.concurrency)
        return fields

    def handle(self, signal: str | None) -> None:
        if signal is None:
            return
        self.signals_seen.append(signal)
        if self.embedded and (parse_version(self.version) or (0, 0, 0)) >= (7, 0, 3):
            return
        if signal == "TSTP":
            self.quiet = True
        elif signal == "TERM":
            self.quiet = True
            self.stopped = True


def make_processes(
    count: int,
    *,
    version: str = "7.3.10",
    per_machine: int = 1,
    seed: int | None = None,
    **overrides: Any,
) -> list[SimulatedProcess]:
    """``count`` processes on ``count / per_machine`` Machines with Fly-style 14-hex ids."""
    rng = random.Random(seed)
    processes = []
    machine = ""
    for i in range(count):
        if i % per_machine == 0:
            machine = f"{rng.getrandbits(56):014x}"
        pid = 1 + i % per_machine if per_machine > 1 else 1
        nonce = f"{rng.getrandbits(48):012x}"
        identity = f"{machine}:{pid}:{nonce}"
        processes.append(
            SimulatedProcess(
                identity=identity, hostname=machine, pid=pid, version=version, **overrides
            )
        )
    return processes


@dataclasses.dataclass(frozen=True, slots=True)
class BeatWrite:
    """One simulated heartbeat: what ``Launcher#❤`` writes in its registry MULTI."""

    identity: str
    fields: dict[str, str]


class SidekiqWrites:
    """What a Sidekiq process writes (never quiesce): the simulator plays Sidekiq."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def beat(self, beats: Sequence[BeatWrite]) -> list[str | None]:
        """Each beat's registry MULTI, all in one round trip; returns each popped signal."""
        keys = self.keys
        pipe: Any = self.client.pipeline(transaction=False)
        for b in beats:
            fields = [x for pair in b.fields.items() for x in pair]
            pipe.execute_command("MULTI")
            pipe.execute_command("SADD", keys.processes, b.identity)
            pipe.execute_command("EXISTS", keys.process(b.identity))
            pipe.execute_command("HSET", keys.process(b.identity), *fields)
            pipe.execute_command("EXPIRE", keys.process(b.identity), HEARTBEAT_TTL_S)
            pipe.execute_command("RPOP", keys.signals(b.identity))
            pipe.execute_command("EXEC")
        results = pipe.execute()
        return [results[i * 7 + 6][4] for i in range(len(beats))]

    def leave(self, identities: Sequence[str]) -> None:
        """A stopping process's ``clear_heartbeat``: SREM and UNLINK ``:work``."""
        if not identities:
            return
        pipe: Any = self.client.pipeline(transaction=False)
        for ident in identities:
            pipe.execute_command("SREM", self.keys.processes, ident)
            pipe.execute_command("UNLINK", self.keys.work(ident))
        pipe.execute()


class SimulatedFleet:
    """Heartbeats a set of processes from one thread, each on its own phase."""

    def __init__(
        self,
        store: Any,
        processes: Sequence[SimulatedProcess],
        *,
        beat_interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        # Interim: accept a SidekiqStore too (its client), until callers pass writes.
        self.store = (
            store if isinstance(store, SidekiqWrites) else SidekiqWrites(store._client, store.keys)
        )
        self.processes = list(processes)
        self.clock = clock
        self._rng = random.Random(seed)
        self._interval = {
            p.identity: beat_interval_s or beat_interval_for(parse_version(p.version) or (7, 0, 0))
            for p in self.processes
        }
        self._next: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def beat_due(self) -> int:
        """Beat every process whose turn has come; returns how many beat."""
        now = self.clock()
        due = [
            p
            for p in self.processes
            if not p.stopped and not p.stalled and self._next.get(p.identity, 0.0) <= now
        ]
        if not due:
            return 0
        popped = self.store.beat([BeatWrite(p.identity, p.fields(now)) for p in due])
        leaving = []
        for proc, signal in zip(due, popped, strict=True):
            proc.handle(signal)
            interval = self._interval[proc.identity]
            if proc.identity not in self._next:  # after the first beat, spread the phases
                self._next[proc.identity] = now + self._rng.uniform(0.1, 1.0) * interval
            else:
                self._next[proc.identity] = now + interval
            if proc.stopped:
                leaving.append(proc.identity)
        if leaving:
            self.store.leave(leaving)
        return len(due)

    def next_due(self) -> float:
        live = [
            self._next.get(p.identity, 0.0)
            for p in self.processes
            if not p.stopped and not p.stalled
        ]
        return min(live, default=self.clock() + 0.5)

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.beat_due()
                self._stop.wait(max(0.005, min(0.5, self.next_due() - self.clock())))
        except BaseException as exc:  # surfaced by stop() so a test sees why beats ended
            self.error = exc

    def start(self) -> SimulatedFleet:
        self.beat_due()  # registered before start() returns, like Sidekiq's first beat
        self._thread = threading.Thread(target=self.run, name="simulated-sidekiq", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimulatedFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
