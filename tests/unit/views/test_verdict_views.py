"""The rejoin and recover views say what each verdict rests on (pure)."""

from __future__ import annotations

import re

from quiesce.model.recover import Candidate, RecoverReport
from quiesce.model.rejoin import rejoin_report
from quiesce.model.snapshot import FleetSnapshot
from quiesce.views.rejoin import recover_json, recover_text, rejoin_json, rejoin_text
from tests.support.verdicts import NOW, OLD_RELEASE, fly, new, proc, record


def test_rejoin_text_and_json_name_the_target_and_why_a_machine_is_not_back() -> None:
    before = [proc("A"), proc("B"), proc("C")]
    rec = record(before, groups={"A": "worker", "B": "worker", "C": "worker"})
    snapshot = FleetSnapshot(processes=(new("A"), new("C")), taken_at=NOW, latest_deploy=rec)
    r = rejoin_report(rec, snapshot, [fly("A"), fly("C", release=OLD_RELEASE)])
    text = rejoin_text(r)
    assert "deployed: release 64, image registry.fly.io/my-app:deployment-64 (from the " in text
    assert "  group worker: 1 of 3 back\n" in text  # B is gone, and no new Machine took its slot
    assert re.search(r"^  C +worker +old-image ", text, re.M), text  # columns fit content
    assert "(Fly lists it on release 63, the deploy is release 64" in text
    data = rejoin_json(r)
    assert data["target"] == {
        "release_version": "64",
        "image_ref": "registry.fly.io/my-app:deployment-64",
        "source": "record",
    }
    assert data["grouped_by"] == "fly" and data["not_back"] == ["B", "C"]
    row = next(m for m in data["machines"] if m["machine"] == "C")
    assert row["state"] == "old-image" and "release 63" in row["why"]


def test_recover_dry_run_lists_jobs_and_the_deploy_that_quieted_each_machine() -> None:
    c = Candidate(
        "m1", ("m1:1:a",), ("redis://r",), 400.0, ("InvoiceJob (billing, 5m00s)",), 3, "d1"
    )
    report = RecoverReport("restart", False, (c,), notes=("m2: it also runs 1 non-quiet process",))
    text = recover_text(report)
    assert "would restart m1: 1 quiet process, quiet 6m40s (deploy d1), 3 jobs running" in text
    assert "    InvoiceJob (billing, 5m00s)\n    ... and 2 more" in text
    assert "note: m2: it also runs 1 non-quiet process" in text
    (m,) = recover_json(report)["machines"]
    assert (m["deploy_id"], m["busy"], m["jobs"]) == ("d1", 3, ["InvoiceJob (billing, 5m00s)"])
