"""What each Sidekiq version writes to Redis: one frozen row per version band (pure).

Every version threshold quiesce knows lives in ``BANDS`` and nowhere else: the decoder
(version inference, beat interval), the simulator (which fields and ``info`` keys to
write) and the tests read it. A band starts at the first version where any of its
facts changed and runs until the next band starts; the source for each row is
``docs/sidekiq-protocol.md`` (sections in the row comments).

Supported: 5.2.0 up to the last *major* that has a row (today 8.x; 8.2 would be read
as 8.1.2+). Supporting Sidekiq 9 means adding one row whose ``first`` is ``(9, 0, 0)``:
the first unsupported version and every help text follow from the table.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import re

Version = tuple[int, int, int]

QUIET_SIGNAL = "TSTP"
"""Sidekiq's quiet signal in every supported version (5.2 also took USR1, which kills 6.x+)."""

_VERSION_RE = re.compile(r"^(\d{1,4})\.(\d{1,4})(?:\.(\d{1,4}))?")


class Weights(enum.StrEnum):
    NONE = "none"
    """No ``info.weights`` key (up to 7.0.1)."""
    HASH = "hash"
    """7.0.2 only: one ``queue -> count`` object."""
    PER_CAPSULE = "per_capsule"
    """7.0.3+: an array with one ``queue -> weight`` object per capsule."""


class WorkPayload(enum.StrEnum):
    OBJECT = "object"
    """``payload`` in a work entry is the job hash itself (up to 6.0.1)."""
    JSON_STRING = "json_string"
    """``payload`` is the job JSON as a string, double-encoded (6.0.2+, #4316)."""


class JobTimeUnits(enum.StrEnum):
    FLOAT_SECONDS = "float_s"
    """``created_at``/``enqueued_at``/``failed_at``/``retried_at``: float epoch seconds."""
    INT_MILLISECONDS = "int_ms"
    """The same fields as integer epoch milliseconds (8.0.0+); scores stay float seconds."""


@dataclasses.dataclass(frozen=True, slots=True)
class VersionBand:
    """What every Sidekiq from ``first`` up to the next band writes and does."""

    first: Version
    beat_interval_s: float
    """``BEAT_PAUSE``: the sleep between two beats (doc 1.2)."""
    hash_fields: frozenset[str]
    """Optional fields of the ``<identity>`` hash this band writes, beyond
    ``info busy beat quiet`` (doc 1.3): ``rss`` 6.1.3+, ``rtt_us`` 6.2.0+,
    ``concurrency`` 8.1.2+."""
    concurrency_in_info: bool
    """``info.concurrency`` (up to 8.1.1); 8.1.2 moved it to the hash field."""
    capsules_in_info: bool
    """``info.capsules`` (8.0.9+)."""
    info_has_version: bool
    """``info.version`` (7.0.2+): the only reliable way to read the version."""
    info_has_embedded: bool
    """``info.embedded`` (7.0.3+)."""
    embedded_ignores_signals: bool
    """7.0.3+ embedded processes pop signals and ignore them (doc 2.2)."""
    weights: Weights
    work_key_suffix: str
    """Busy jobs: ``<identity>:workers`` up to 6.4.1, ``<identity>:work`` from 6.4.2."""
    work_payload: WorkPayload
    job_time_units: JobTimeUnits
    quiet_signal: str = QUIET_SIGNAL

    @property
    def concurrency_in_hash(self) -> bool:
        return "concurrency" in self.hash_fields


_FLOAT_S = JobTimeUnits.FLOAT_SECONDS

BANDS: tuple[VersionBand, ...] = (
    VersionBand(  # 5.2.0: oldest supported
        first=(5, 2, 0), beat_interval_s=5.0, hash_fields=frozenset(),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=False,
        info_has_embedded=False, embedded_ignores_signals=False, weights=Weights.NONE,
        work_key_suffix=":workers", work_payload=WorkPayload.OBJECT, job_time_units=_FLOAT_S,
    ),
    VersionBand(  # 6.0.2: work payload becomes a JSON string (doc 3)
        first=(6, 0, 2), beat_interval_s=5.0, hash_fields=frozenset(),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=False,
        info_has_embedded=False, embedded_ignores_signals=False, weights=Weights.NONE,
        work_key_suffix=":workers", work_payload=WorkPayload.JSON_STRING, job_time_units=_FLOAT_S,
    ),
    VersionBand(  # 6.1.3: + rss (doc 1.3)
        first=(6, 1, 3), beat_interval_s=5.0, hash_fields=frozenset({"rss"}),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=False,
        info_has_embedded=False, embedded_ignores_signals=False, weights=Weights.NONE,
        work_key_suffix=":workers", work_payload=WorkPayload.JSON_STRING, job_time_units=_FLOAT_S,
    ),
    VersionBand(  # 6.2.0: + rtt_us (doc 1.3)
        first=(6, 2, 0), beat_interval_s=5.0, hash_fields=frozenset({"rss", "rtt_us"}),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=False,
        info_has_embedded=False, embedded_ignores_signals=False, weights=Weights.NONE,
        work_key_suffix=":workers", work_payload=WorkPayload.JSON_STRING, job_time_units=_FLOAT_S,
    ),
    VersionBand(  # 6.4.2: <identity>:work replaces :workers (doc 3)
        first=(6, 4, 2), beat_interval_s=5.0, hash_fields=frozenset({"rss", "rtt_us"}),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=False,
        info_has_embedded=False, embedded_ignores_signals=False, weights=Weights.NONE,
        work_key_suffix=":work", work_payload=WorkPayload.JSON_STRING, job_time_units=_FLOAT_S,
    ),
    VersionBand(  # 7.0.0: BEAT_PAUSE = 10 (doc 1.2)
        first=(7, 0, 0), beat_interval_s=10.0, hash_fields=frozenset({"rss", "rtt_us"}),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=False,
        info_has_embedded=False, embedded_ignores_signals=False, weights=Weights.NONE,
        work_key_suffix=":work", work_payload=WorkPayload.JSON_STRING, job_time_units=_FLOAT_S,
    ),
    VersionBand(  # 7.0.2: + info.version, info.weights as one hash (doc 1.4)
        first=(7, 0, 2), beat_interval_s=10.0, hash_fields=frozenset({"rss", "rtt_us"}),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=True,
        info_has_embedded=False, embedded_ignores_signals=False, weights=Weights.HASH,
        work_key_suffix=":work", work_payload=WorkPayload.JSON_STRING, job_time_units=_FLOAT_S,
    ),
    VersionBand(  # 7.0.3: + info.embedded, weights per capsule; embedded ignore signals
        first=(7, 0, 3), beat_interval_s=10.0, hash_fields=frozenset({"rss", "rtt_us"}),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=True,
        info_has_embedded=True, embedded_ignores_signals=True, weights=Weights.PER_CAPSULE,
        work_key_suffix=":work", work_payload=WorkPayload.JSON_STRING, job_time_units=_FLOAT_S,
    ),
    VersionBand(  # 8.0.0: job timestamps in integer milliseconds (doc 4.3)
        first=(8, 0, 0), beat_interval_s=10.0, hash_fields=frozenset({"rss", "rtt_us"}),
        concurrency_in_info=True, capsules_in_info=False, info_has_version=True,
        info_has_embedded=True, embedded_ignores_signals=True, weights=Weights.PER_CAPSULE,
        work_key_suffix=":work", work_payload=WorkPayload.JSON_STRING,
        job_time_units=JobTimeUnits.INT_MILLISECONDS,
    ),
    VersionBand(  # 8.0.9: + info.capsules (doc 1.4)
        first=(8, 0, 9), beat_interval_s=10.0, hash_fields=frozenset({"rss", "rtt_us"}),
        concurrency_in_info=True, capsules_in_info=True, info_has_version=True,
        info_has_embedded=True, embedded_ignores_signals=True, weights=Weights.PER_CAPSULE,
        work_key_suffix=":work", work_payload=WorkPayload.JSON_STRING,
        job_time_units=JobTimeUnits.INT_MILLISECONDS,
    ),
    VersionBand(  # 8.1.2: concurrency moves from info to a hash field (doc 1.3)
        first=(8, 1, 2), beat_interval_s=10.0,
        hash_fields=frozenset({"rss", "rtt_us", "concurrency"}),
        concurrency_in_info=False, capsules_in_info=True, info_has_version=True,
        info_has_embedded=True, embedded_ignores_signals=True, weights=Weights.PER_CAPSULE,
        work_key_suffix=":work", work_payload=WorkPayload.JSON_STRING,
        job_time_units=JobTimeUnits.INT_MILLISECONDS,
    ),
)  # fmt: skip

OLDEST_SUPPORTED: Version = BANDS[0].first
FIRST_UNSUPPORTED: Version = (BANDS[-1].first[0] + 1, 0, 0)
"""Every minor of the newest major with a row is accepted (later 8.x read as 8.1.2+)."""

OPTIONAL_HASH_FIELDS = frozenset().union(*(b.hash_fields for b in BANDS))


def parse_version(text: str) -> Version | None:
    """``"7.3.10"`` -> ``(7, 3, 10)``; ``"8.1"`` -> ``(8, 1, 0)``; suffixes (``.pre``) ignored."""
    match = _VERSION_RE.match(text.strip())
    if not match:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def format_version(version: Version, *, short: bool = True) -> str:
    """``(6, 2, 0)`` -> ``"6.2"`` (``short``) or ``"6.2.0"``."""
    major, minor, patch = version
    return f"{major}.{minor}" if short and patch == 0 else f"{major}.{minor}.{patch}"


def is_supported(version: Version, *, allow_newer: bool = False) -> bool:
    if version < OLDEST_SUPPORTED:
        return False
    return allow_newer or version < FIRST_UNSUPPORTED


def band_for(version: Version, *, allow_newer: bool = False) -> VersionBand | None:
    """The band ``version`` falls in; ``None`` when unsupported. ``allow_newer`` reads any
    version from ``FIRST_UNSUPPORTED`` on as the last band (never anything older than 5.2)."""
    if not is_supported(version, allow_newer=allow_newer):
        return None
    found = BANDS[0]
    for band in BANDS:
        if band.first > version:
            break
        found = band
    return found


def band_last(band: VersionBand) -> str:
    """The newest version of ``band`` as text: ``"6.1.2"``, ``"6.1.x"``, ``"6.x"``, ``"8.x"``."""
    index = BANDS.index(band)
    if index + 1 == len(BANDS):
        return f"{band.first[0]}.x"
    major, minor, patch = BANDS[index + 1].first
    if patch > 0:
        return f"{major}.{minor}.{patch - 1}"
    if minor > 0:
        return f"{major}.{minor - 1}.x"
    return f"{major - 1}.x"


def range_text(bands: tuple[VersionBand, ...]) -> str:
    """``"6.2-7.0.1"``: from the first band's first version to the last band's last."""
    return f"{format_version(bands[0].first)}-{band_last(bands[-1])}"


def bands_without_version(present: frozenset[str]) -> tuple[VersionBand, ...]:
    """Candidate bands for a process that writes no ``info.version`` (up to 7.0.1), from
    the optional hash fields it wrote (doc 1.4): a field proves at least the first band
    that writes it (``rtt_us`` => 6.2.0+); a missing one rules out the bands that write
    it, unless that contradicts a present field."""
    unversioned = tuple(b for b in BANDS if not b.info_has_version)
    wrote = present & OPTIONAL_HASH_FIELDS
    floor = max(
        (next(b.first for b in BANDS if field in b.hash_fields) for field in wrote),
        default=OLDEST_SUPPORTED,
    )
    later = tuple(b for b in unversioned if b.first >= floor)
    exact = tuple(b for b in later if b.hash_fields == wrote)
    return exact or later or unversioned


def supported_versions_help() -> str:
    """One sentence for ``--help``: the supported range and the beat intervals."""
    newest = f"{BANDS[-1].first[0]}.x"
    beats = f"{BANDS[0].beat_interval_s:g} s"
    for before, band in itertools.pairwise(BANDS):
        if band.beat_interval_s != before.beat_interval_s:
            beats += f" up to {band_last(before)}, {band.beat_interval_s:g} s from "
            beats += format_version(band.first, short=False)
    return (
        f"Sidekiq {format_version(OLDEST_SUPPORTED)} to {newest} (heartbeat every {beats}); "
        f"newer versions only with --allow-newer-sidekiq, read as {newest}"
    )
