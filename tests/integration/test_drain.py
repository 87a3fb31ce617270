"""``quiet --until drained``, ``status --jobs`` and the exclusion filters, against a real
redis-server and simulated Sidekiq processes that run jobs and write their work hashes as
each Sidekiq version does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from quiesce.errors import ExitCode
from quiesce.model.drain import Grace, advice
from quiesce.model.filters import Filters
from quiesce.model.fleet import ProcessRecord, SidekiqVersion
from quiesce.model.quiet import Outcome
from quiesce.model.report import Event, Progress, QuietOptions
from quiesce.model.verdict import Target, Until, Verdict, assess, finalize
from quiesce.runs.quiet import quiet_fleet
from quiesce.sidekiq.rows import PollRow
from quiesce.sidekiq.work import RunningJob
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess, make_processes
from tests.support import simulated_fleet
from tests.support.cli import run
from tests.support.stores import store_for

FleetFactory = Callable[..., SimulatedFleet]
BEAT_S = 0.3


@pytest.fixture
def start_fleet(redis_url: str) -> Iterator[FleetFactory]:
    fleets: list[SimulatedFleet] = []

    def start(processes: list[SimulatedProcess], beat: float = BEAT_S) -> SimulatedFleet:
        fleet: SimulatedFleet = simulated_fleet(redis_url, processes, beat_interval_s=beat, seed=1)
        fleets.append(fleet.start())
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()
        assert fleet.error is None, fleet.error


def by_identity(report: object) -> dict[str, object]:
    return {e.process.identity: e for e in report.entries}  # type: ignore[attr-defined]


def three_versions() -> list[SimulatedProcess]:
    procs = []
    for version, seed in (("6.4.1", 1), ("7.3.10", 2), ("8.1.7", 3)):
        procs.extend(make_processes(1, version=version, seed=seed))
    return procs


def test_busy_processes_finishing_at_different_times_all_drain(
    start_fleet: FleetFactory, redis_url: str, raw: redis.Redis
) -> None:
    procs = three_versions()
    jobs = [
        p.start_job(s, job_class=f"Job{i}")
        for i, (p, s) in enumerate(zip(procs, (0.5, 1.5, 2.5), strict=True))
    ]
    start_fleet(procs)
    # Each version's own work hash holds its job before the drain starts.
    assert raw.hlen(f"{procs[0].identity}:workers") == 1
    assert raw.hlen(f"{procs[1].identity}:work") == 1 and raw.hlen(f"{procs[2].identity}:work") == 1
    events: list[Event] = []
    report = quiet_fleet(
        [store_for(redis_url)],
        QuietOptions(until=Until.DRAINED, timeout_s=20, release="v1"),
        on_event=events.append,
    )
    assert report.exit_code is ExitCode.OK, report
    assert {e.outcome for e in report.entries} == {Outcome.DRAINED}
    done = time.time()
    assert all(job.ends_at <= done for job in jobs)  # returned only after every job ended
    assert all(p.quiet and p.signals_seen == ["TSTP"] for p in procs)
    progress = [e for e in events if isinstance(e, Progress)]
    assert any(e.jobs > 0 and e.longest_s is not None for e in progress), progress
    assert progress[-1].drained == 3 and progress[-1].pending == 0


def test_a_process_that_exits_while_draining_says_so(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    leaving, staying = make_processes(2, seed=5)
    leaving.start_job(60, job_class="LongJob")
    staying.start_job(0.6)
    fleet = start_fleet([leaving, staying])

    def on_event(event: Event) -> None:
        if isinstance(event, Progress) and leaving.quiet and not leaving.stopped:
            fleet.leave([leaving])  # TERM'd by someone else mid-drain

    report = quiet_fleet(
        [store_for(redis_url)], QuietOptions(until=Until.DRAINED, timeout_s=20), on_event=on_event
    )
    entries = by_identity(report)
    assert report.exit_code is ExitCode.OK, report
    gone = entries[leaving.identity]
    assert gone.outcome is Outcome.VANISHED  # type: ignore[attr-defined]
    assert "exited while draining" in gone.reason  # type: ignore[attr-defined]
    assert "1 running job" in gone.reason  # type: ignore[attr-defined]
    assert entries[staying.identity].outcome is Outcome.DRAINED  # type: ignore[attr-defined]


def test_a_job_past_the_deadline_is_still_busy_with_advice(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    (proc,) = make_processes(1, version="8.1.7", seed=9)
    job = proc.start_job(120, job_class="ReportJob", queue="reports", args=["secret@example.com"])
    start_fleet([proc])
    report = quiet_fleet(
        [store_for(redis_url)],
        QuietOptions(until=Until.DRAINED, timeout_s=2, kill_timeout_s=5),
    )
    assert report.exit_code is ExitCode.NOT_CONFIRMED
    (entry,) = report.entries
    assert entry.outcome is Outcome.STILL_BUSY
    (running,) = entry.jobs
    assert (running.job_class, running.queue, running.jid) == ("ReportJob", "reports", job.jid)
    assert running.runtime_s is not None and running.runtime_s >= 1
    from quiesce.views.fleet import report_json, report_text

    text = report_text(report)
    assert "STILL_BUSY" in text and "ReportJob" in text and job.jid in text
    assert "FAILED: 1 process still running jobs (not drained); exit 3" in text
    assert "kill_timeout 5s leaves no room for Sidekiq's -t" in text
    assert "killed mid-run" in text and "release_command_timeout" in text
    assert "secret@example.com" not in text  # args never in the report
    data = report_json(report)
    (proc_json,) = data["processes"]
    assert proc_json["outcome"] == "still_busy" and proc_json["jobs"][0]["class"] == "ReportJob"
    assert "args" not in proc_json["jobs"][0]
    assert data["advice"] and data["exit_code"] == 3


def test_busy_field_without_work_entry_is_not_drained(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    """Cross-check: a thread counted in ``busy`` with no work entry is still running."""
    (proc,) = make_processes(1, seed=11, busy=1)
    start_fleet([proc])
    report = quiet_fleet([store_for(redis_url)], QuietOptions(until=Until.DRAINED, timeout_s=2))
    (entry,) = report.entries
    assert entry.outcome is Outcome.STILL_BUSY and entry.busy == 1 and entry.jobs == ()


def test_already_quiet_process_is_waited_for_not_signalled(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    (proc,) = make_processes(1, seed=12)
    proc.quiet = True
    job = proc.start_job(1.0)
    start_fleet([proc])
    report = quiet_fleet([store_for(redis_url)], QuietOptions(until=Until.DRAINED, timeout_s=20))
    (entry,) = report.entries
    assert entry.outcome is Outcome.DRAINED and entry.pushes == 0
    assert proc.signals_seen == [] and job.ends_at <= time.time()


def test_each_drain_poll_is_one_round_trip(start_fleet: FleetFactory, redis_url: str) -> None:
    procs = make_processes(300, seed=13)
    for p in procs[:100]:
        p.start_job(30)
    fleet = start_fleet(procs, beat=30)
    store = store_for(redis_url)
    poll = store.poll([p.identity for p in procs], work=[(":work",) for _ in procs])
    assert store.round_trips == 1
    assert sum(1 for r in poll.rows if r.work) == 100
    assert all(r.busy == ("1" if r.work else "0") for r in poll.rows)
    fleet.stop()


# -- verdict rules (pure) ------------------------------------------------------------
def record(version: str = "7.3.10") -> ProcessRecord:
    return ProcessRecord("h:1:n", "h", 1, True, version=SidekiqVersion(version, False, 10.0))


ENTRY = json.dumps({"queue": "q", "payload": json.dumps({"class": "C", "jid": "j"}), "run_at": 100})


def row(quiet: str, busy: str, work: dict[str, str]) -> PollRow:
    return PollRow(True, quiet, "100.0", 59_000, 0, busy=busy, work=work)


@pytest.mark.parametrize(
    ("busy", "work", "verdict"),
    [
        ("0", {}, Verdict.DRAINED),
        ("1", {}, Verdict.WAITING),  # busy says running, no entry (yet): not idle
        ("0", {"t": ENTRY}, Verdict.WAITING),  # the work hash is a beat ahead: not idle
        ("0", {"t": "{broken"}, Verdict.WAITING),  # unreadable entry still counts
        ("x", {}, Verdict.WAITING),  # unreadable busy is not idle
    ],
)
def test_drained_only_when_both_accounts_agree(
    busy: str, work: dict[str, str], verdict: Verdict
) -> None:
    target = Target(record(), pushed_at_ms=90_000, pushes=1)
    _, got = assess(target, row("true", busy, work), 110_000, Until.DRAINED)
    assert got is verdict


def test_idle_but_not_yet_quiet_is_not_drained() -> None:
    """The beat that popped TSTP may precede a job start by milliseconds: wait for quiet."""
    target = Target(record(), pushed_at_ms=90_000, pushes=1)
    seen, got = assess(target, row("false", "0", {}), 100_000, Until.DRAINED)
    assert got is Verdict.WAITING and seen.delivered
    assert finalize(seen).outcome is Outcome.NOT_CONFIRMED


def test_deadline_with_jobs_is_still_busy() -> None:
    target = Target(record(), pushed_at_ms=90_000, pushes=1)
    seen, _ = assess(target, row("true", "1", {"t": ENTRY}), 130_000, Until.DRAINED)
    final = finalize(seen)
    assert final.outcome is Outcome.STILL_BUSY
    assert final.work.jobs[0].runtime_s == 30.0


# -- CLI: status --jobs, exclusion filters --------------------------------------------
@pytest.fixture
def job_fleet(start_fleet: FleetFactory) -> list[SimulatedProcess]:
    critical, normal, other = make_processes(3, seed=21)
    critical.tag, critical.queues = "critical", ("critical",)
    now = time.time()
    critical.start_job(
        900, job_class="PaymentJob", queue="critical", args=["card-4242"], now=now - 300
    )
    normal.quiet = True
    normal.start_job(900, job_class="MailJob", args=["someone@example.com"], now=now - 200)
    normal.start_job(900, job_class="ShortJob", now=now - 100)
    start_fleet([critical, normal, other])
    return [critical, normal, other]


def test_status_jobs_lists_jobs_longest_first_without_args(
    redis_url: str, job_fleet: list[SimulatedProcess]
) -> None:
    code, out, _ = run("status", "--jobs", "-r", redis_url)
    assert code == 0, out
    assert out.index("MailJob") < out.index("ShortJob")
    assert "PaymentJob" in out and "card-4242" not in out and "someone@example.com" not in out
    assert "jobs running on quiet processes: 2 (longest 3m" in out and "MailJob); 3 in all" in out
    code, out, _ = run("status", "--jobs", "--args", "-r", redis_url)
    assert "someone@example.com" in out


def test_status_jobs_json(redis_url: str, job_fleet: list[SimulatedProcess]) -> None:
    code, out, _ = run("status", "--jobs", "--json", "-r", redis_url)
    assert code == 0, out
    data = json.loads(out)
    jobs = {j["class"]: j for m in data["machines"] for p in m["processes"] for j in p["jobs"]}
    assert set(jobs) == {"PaymentJob", "MailJob", "ShortJob"}
    assert "args" not in jobs["MailJob"] and jobs["MailJob"]["queue"] == "default"
    assert data["jobs_summary"]["running_on_quiet"] == 2
    assert data["jobs_summary"]["longest_on_quiet"]["class"] == "MailJob"
    _, out, _ = run("status", "--jobs", "--json", "--args", "-r", redis_url)
    assert '"card-4242"' in out
    _, out, _ = run("status", "--json", "-r", redis_url)
    assert "jobs" not in json.loads(out)["machines"][0]["processes"][0]


def test_exclusion_filters_on_status_and_quiet(
    redis_url: str, job_fleet: list[SimulatedProcess]
) -> None:
    critical, normal, other = job_fleet
    code, out, _ = run("status", "--exclude-queue", "critical", "-r", redis_url)
    assert code == 0 and critical.identity.rsplit(":", 1)[1] not in out
    assert "excluded by filters: 1 (--exclude-queue critical: 1)" in out
    code, out, err = run(
        "quiet", "--exclude-tag", "critical", "--exclude-hostname", normal.hostname,
        "--timeout", "10", "-r", redis_url,
    )  # fmt: skip
    assert code == 0, out + err
    assert (
        f"excluded by filters: 2 (--exclude-hostname {normal.hostname}: 1; "
        "--exclude-tag critical: 1)"
        in out
        or f"excluded by filters: 2 (--exclude-tag critical: 1; "
        f"--exclude-hostname {normal.hostname}: 1)"
        in out
    ), out
    assert critical.signals_seen == [] and not critical.quiet
    assert other.signals_seen == ["TSTP"]


def test_exclude_filters_unit() -> None:
    proc = ProcessRecord("web-1:1:n", "web-1", 1, True, tag="app", labels=("a",), queues=("q",))
    assert Filters(exclude_hostnames=("web-*",)).excluded_by(proc) == "--exclude-hostname web-*"
    assert Filters(exclude_labels=("a",)).excluded_by(proc) == "--exclude-label a"
    assert Filters(exclude_queues=("z",)).excluded_by(proc) is None
    unreadable = ProcessRecord("x:1:n", "x", 1, True, problem="bad JSON")
    assert Filters(exclude_tags=("app",)).excluded_by(unreadable) is None  # never on a guess


def test_drained_with_no_wait_is_a_usage_error() -> None:
    code, _, err = run("quiet", "--until", "drained", "--no-wait", "-r", "redis://127.0.0.1:1")
    assert code == 2 and "--no-wait" in err


# -- advice (pure) --------------------------------------------------------------------
def job(runtime: float, name: str = "C") -> RunningJob:
    return RunningJob("h:1:n", "h", "t", "q", name, "j", 0.0, runtime)


def test_advice_kill_timeout_shorter_than_sidekiq_timeout() -> None:
    lines = advice([], Grace(5, None), timed_out=False, drain_timeout_s=30)
    assert len(lines) == 1
    assert "kill_timeout 5s leaves no room for Sidekiq's -t (default 25s" in lines[0]
    assert "at least 30s" in lines[0]
    assert advice([], Grace(40, 30), timed_out=False, drain_timeout_s=30) == []


def test_advice_compares_the_longest_job_with_the_grace() -> None:
    fits = advice([job(3)], Grace(60, 30), timed_out=False, drain_timeout_s=30)
    assert len(fits) == 1 and "fits in the 30s" in fits[0]
    long = advice(
        [job(95, "ExportJob"), job(3)], Grace(60, 30), timed_out=False, drain_timeout_s=30
    )
    assert "ExportJob" in long[0] and "has run 1m35s, longer than the 30s" in long[0]
    assert "raise -t above the longest job (more than 1m35s; now Sidekiq's -t 30s)" in long[0]


def test_advice_on_a_drain_timeout_lists_the_jobs_that_will_be_killed() -> None:
    lines = advice(
        [job(50, "A"), job(10, "B")], Grace(None, 20), timed_out=True, drain_timeout_s=30
    )
    # No --kill-timeout: Fly's default 5 s is assumed, and said to be assumed.
    assert "Fly's default kill_timeout of 5s (assumed" in lines[0]
    assert "2 jobs still running at the deadline" in lines[1]
    assert "5s more (Fly's default kill_timeout" in lines[1]
    assert lines[2].startswith("  A ") and lines[3].startswith("  B ")
    # 50 s run so far plus two 10 s heartbeats, with the reason given.
    assert "--timeout 70 or more (50s it has run so far plus two heartbeats" in lines[4]


def test_advice_does_not_ask_for_a_longer_t_when_t_already_covers_the_job() -> None:
    (lines,) = [advice([job(14)], Grace(30, 25, 5.0), timed_out=True, drain_timeout_s=10)[-1:]]
    text = lines[0]
    assert "longer than" not in text and "is not done" in text
    assert "-t above" not in text and "--timeout 24 or more" in text


def test_advice_after_an_interrupt_says_so() -> None:
    lines = advice([job(14)], Grace(30, 25), timed_out=True, drain_timeout_s=60, interrupted=True)
    assert "still running when the run was interrupted" in lines[0]
    assert "deadline" not in " ".join(lines)


def test_kill_timeout_advice_without_drain_uses_the_jobs_seen_at_the_start(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    (proc,) = make_processes(1, seed=31)
    proc.start_job(900, job_class="ImportJob", now=time.time() - 100)
    start_fleet([proc])
    report = quiet_fleet([store_for(redis_url)], QuietOptions(timeout_s=10, kill_timeout_s=60))
    assert report.exit_code is ExitCode.OK
    (line,) = report.advice
    assert "ImportJob" in line and "longer than the 25s a stopping Machine gives it" in line
