"""The deploy ledger: the last deploys of one scope, newest first, bounded in count and
size, records of other scopes or from the future dropped; and "quiet since which deploy"."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from quiesce.model.record import DeployRecord, parse_deploy_record
from quiesce.sidekiq.keys import DEPLOY_RECORD_TTL_S

LEDGER_SIZE = 20
"""Most records a scope's history keeps (newest first)."""


LEDGER_MAX_CHARS = 4_000_000
"""Most characters of records a scope's history keeps, the newest always: every command
reads the whole history, and at 10,000 processes a record is about 1 MB (so such a fleet
keeps about 4; up to 2,000 processes keep 20). What the history is for survives the
cut: a retried deploy copies "quiet since" forward into its own record."""


FUTURE_SLACK_S = 3600.0
"""A ledger record started more than this after the reader's Redis clock is ignored."""


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
