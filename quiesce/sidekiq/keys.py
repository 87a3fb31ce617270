"""Every Redis key quiesce reads or writes, built in this one place.

Sidekiq's own keys follow ``../docs`` (Sidekiq 5.2 to 8.1): with a redis-namespace
(Sidekiq <= 6) every *key* gets ``<namespace>:`` in front, while set *members*
(identities in ``processes``) stay bare. quiesce's own state lives under
``quiesce:`` (inside the namespace too, so two namespaced apps never share it),
always with a TTL.
"""

from __future__ import annotations

import dataclasses
import hashlib

HEARTBEAT_TTL_S = 60
"""Sidekiq refreshes ``EXPIRE <identity> 60`` on every beat."""

SIGNAL_TTL_S = 60
"""``Sidekiq::Process#signal`` sets ``EXPIRE <identity>-signals 60`` on every push."""

MARK_TTL_S = 90 * 24 * 60 * 60
"""``Sidekiq::Deploy::MARK_TTL``: deploy marks are kept 90 days."""

DEPLOY_LOCK_TTL_S = 60
"""``Sidekiq::Deploy#mark`` holds ``deploylock-<label>`` NX for 60 s."""

DEPLOY_RECORD_TTL_S = 14 * 24 * 60 * 60
"""How long quiesce keeps its own deploy records."""

PROCESS_FIELDS = ("info", "busy", "beat", "quiet", "rss", "rtt_us", "concurrency")
"""The hash fields ``ProcessSet#each`` reads (8.1.2+ list; older versions lack some)."""

LEDGER_SCOPE_MAX = 200
"""A scope longer than this is hashed into its ledger key (``Keys.ledger``)."""

POLL_FIELDS = ("quiet", "beat")
"""What the confirmation loop needs from a process hash on every poll."""

DRAIN_POLL_FIELDS = ("quiet", "beat", "busy")
"""The same while draining: ``busy`` is cross-checked with the work hash."""

WORK_SUFFIXES = (":workers", ":work")
"""Work in progress: ``<identity>:workers`` up to 6.4.1, ``<identity>:work`` from 6.4.2."""


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one Sidekiq universe (one Redis DB, optionally namespaced)."""

    namespace: str = ""

    def _k(self, key: str) -> str:
        return f"{self.namespace}:{key}" if self.namespace else key

    # Sidekiq's keys -----------------------------------------------------------
    @property
    def processes(self) -> str:
        return self._k("processes")

    def process(self, identity: str) -> str:
        return self._k(identity)

    def work(self, identity: str) -> str:
        """Work in progress: ``<identity>:work`` from 6.4.2 (``:workers`` before)."""
        return self._k(f"{identity}:work")

    def work_hash(self, identity: str, suffix: str) -> str:
        """The work hash under either name (``versions.VersionBand.work_key_suffix``)."""
        if suffix not in WORK_SUFFIXES:
            raise ValueError(f"not a work hash suffix: {suffix!r}")
        return self._k(f"{identity}{suffix}")

    def workers(self, identity: str) -> str:
        """Work in progress up to 6.4.1: ``<identity>:workers``."""
        return self.work_hash(identity, ":workers")

    def signals(self, identity: str) -> str:
        return self._k(f"{identity}-signals")

    def deploy_lock(self, label: str) -> str:
        return self._k(f"deploylock-{label}")

    def marks(self, datecode: str) -> str:
        """``<YYYYMMDD>-marks``, the hash ``Sidekiq::Deploy`` writes and the Web UI reads."""
        return self._k(f"{datecode}-marks")

    # quiesce's own keys --------------------------------------------------------
    def deploy_record(self, deploy_id: str) -> str:
        return self._k(f"quiesce:deploy:{deploy_id}")

    @property
    def latest_deploy(self) -> str:
        """The newest record of any scope: what quiesce before the ledger judged by. Still
        written (older readers), read only as a fallback for a scope without a ledger."""
        return self._k("quiesce:deploy:latest")

    def ledger(self, scope: str) -> str:
        """A scope's history: a hash, deploy id -> record JSON, with the record TTL.

        A long scope (many filters) is named by its SHA-256 instead: records carry their
        scope, so a reader still checks each one belongs to it."""
        if len(scope) > LEDGER_SCOPE_MAX:
            scope = "sha256:" + hashlib.sha256(scope.encode("utf-8", "surrogateescape")).hexdigest()
        # Under quiesce:deploy: so the release role's one key pattern covers it.
        return self._k(f"quiesce:deploy:ledger:{scope}")

    # -- exporter: Sidekiq's queue and job-set keys --------------------------------
    @property
    def queues(self) -> str:
        """The set of queue names (no prefix); never ``SCAN queue:*`` (Pro's private lists)."""
        return self._k("queues")

    def queue(self, name: str) -> str:
        """``queue:<name>``: clients LPUSH, fetch pops from the right (oldest at -1)."""
        return self._k(f"queue:{name}")

    @property
    def schedule(self) -> str:
        return self._k("schedule")

    @property
    def retry(self) -> str:
        return self._k("retry")

    @property
    def paused(self) -> str:
        """Sidekiq Pro's paused-queue set (read by OSS ``Stats#queue_summaries`` 8.1.1+)."""
        return self._k("paused")
