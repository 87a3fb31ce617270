"""The Redis keys captured from real Sidekiq processes (tests/fixtures), as rows."""

from __future__ import annotations

import json
from typing import Any

from quiesce.sidekiq.keys import PROCESS_FIELDS
from quiesce.sidekiq.rows import RawProcess
from tests.support import FIXTURES


def load(version: str, scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (FIXTURES / f"sidekiq-{version}" / f"{scenario}.json").read_text()
    )
    return data


def raw_row(capture: dict[str, Any]) -> RawProcess:
    """The row quiesce's snapshot pipeline would read for the captured process."""
    identity = capture["identity"]
    keys = capture["keys"]
    spec = keys.get(identity)
    fields = {f: (spec["value"].get(f) if spec else None) for f in PROCESS_FIELDS}
    ttl = spec["ttl"] if spec else -2
    signals = keys.get(f"{identity}-signals", {}).get("value", [])
    return RawProcess(identity, fields, pttl_ms=ttl * 1000 if ttl >= 0 else ttl, signals=signals)
