"""Label values and odd process fields (issue 16): distinct names stay distinct series, and
a beating process with one odd field stays a consumer."""

from __future__ import annotations

import json

from quiesce.model.decode import decode_process
from quiesce.model.fleet import ProcessState
from quiesce.model.metrics import label_value
from quiesce.sidekiq.rows import RawProcess


def test_literal_backslash_x_and_raw_byte_get_different_labels() -> None:
    typed = "bad\\xffbyte"  # someone named the queue with a backslash, x, f, f
    raw = b"bad\xffbyte".decode("utf-8", "surrogateescape")
    assert label_value(typed) != label_value(raw)
    assert label_value(raw) == "bad\\xffbyte"
    assert label_value(typed) == "bad\\\\xffbyte"
    assert label_value("plain_queue") == "plain_queue"


def _row(**fields: str) -> RawProcess:
    info = {"hostname": "web.1", "pid": 7, "queues": ["default"], "concurrency": 5}
    base = {"info": json.dumps(info), "beat": "1700000000.0", "quiet": "false", "busy": "0"}
    return RawProcess("web.1:7:abcdefabcdef", {**base, **fields}, pttl_ms=58_000)


def test_odd_rss_is_a_note_not_an_unreadable_process() -> None:
    proc = decode_process(_row(rss="lots", rtt_us="x"), 1700000002.0)
    assert proc.state is ProcessState.RUNNING
    assert proc.problem is None
    assert proc.rss_kib is None
    assert any("'rss'" in n for n in proc.notes) and any("'rtt_us'" in n for n in proc.notes)


def test_odd_quiet_flag_still_makes_the_process_unreadable() -> None:
    # Whether it takes jobs cannot be told: that field decides, so no guess is made.
    proc = decode_process(_row(quiet="maybe"), 1700000002.0)
    assert proc.state is ProcessState.UNREADABLE
