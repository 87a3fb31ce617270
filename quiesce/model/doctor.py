"""``quiesce doctor``: deploy settings that lose jobs or stall deploys, each with its fix.

Pure: the caller reads fly.toml (``quiesce.runs.doctor``: a bounded read, then
``parse_fly_toml``) and, when a Redis is given, the fleet snapshot and busy jobs;
``check_config`` and ``check_fleet`` only judge. The release command's arguments are
judged by quiesce's own command-line parser, passed in by the CLI as ``ArgvCheck`` (the
model never imports the CLI), so doctor refuses exactly what the deploy would. Fly's defaults and
limits are from flyctl (see ``docs/fly.md``): kill_timeout 5 s (max 300 s), kill_signal
SIGINT, release_command_timeout 5m, strategy rolling; the release command runs without a
shell (``init.cmd = shlex.split(release_command)``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import posixpath
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from quiesce.errors import ConfigError
from quiesce.model.drain import running_jobs
from quiesce.model.fleet import ProcessRecord
from quiesce.model.release_command import (
    EXPANSION,
    QuiesceCall,
    is_operator,
    quiesce_calls,
    shell_words,
    shell_wrapped,
)
from quiesce.model.report import DEFAULT_QUIET_TIMEOUT_S
from quiesce.model.snapshot import FleetSnapshot
from quiesce.text import parse_duration as parse_cli_duration
from quiesce.text import parse_duration as text_duration
from quiesce.text import plural

ArgvCheck = Callable[[Sequence[str]], str | None]
"""Given the words after ``quiesce``, the one-line error quiesce would print for them, or
None when it would accept them (the CLI passes its own parser)."""

SIDEKIQ_SHUTDOWN_TIMEOUT_S = 25.0
"""Sidekiq's ``-t``/``:timeout:`` default: how long shutdown waits for running jobs."""
SIDEKIQ_REQUEUE_MARGIN_S = 5.0
"""After its timeout Sidekiq pushes unfinished jobs back to Redis: Fly must not kill it then."""
FLY_KILL_TIMEOUT_S = 5.0
FLY_KILL_TIMEOUT_MAX_S = 300.0
FLY_KILL_SIGNAL = "SIGINT"
FLY_RELEASE_COMMAND_TIMEOUT_S = 300.0
QUIET_TIMEOUT_S = DEFAULT_QUIET_TIMEOUT_S
"""``quiesce quiet --timeout`` default."""
RELEASE_MARGIN_S = 30.0
"""Beyond quiet's --timeout: connecting, reading the fleet, the report (and retries)."""
SHUTDOWN_SIGNALS = frozenset({"SIGTERM", "SIGINT"})
"""What Sidekiq traps as shutdown (quiet, wait -t, push back, exit)."""
_SIGNAL_EFFECT = {
    "SIGTSTP": "only quiets Sidekiq; it never exits, so Fly kills it at kill_timeout",
    "SIGKILL": "kills Sidekiq at once, mid-job",
    "SIGQUIT": "is not trapped by Sidekiq: Ruby dies at once, mid-job",
    "SIGUSR1": "quiets Sidekiq 5 and is ignored by 6+: it never exits, Fly kills it",
    "SIGUSR2": "only reopens logs (or nothing): Sidekiq never exits, Fly kills it",
    "SIGHUP": "is not a Sidekiq shutdown signal",
}
STRATEGIES = ("rolling", "immediate", "canary", "bluegreen")
"""flyctl's strategies (docs/fly.md: anything else falls into the rolling branch)."""
_RELEASE_LABEL = re.compile(r"registry\.fly\.io/|:deployment-|^release[:=-]|^v\d+$")


class Level(enum.StrEnum):
    ERROR = "error"
    """Loses jobs or stalls deploys: doctor exits non-zero."""
    WARNING = "warning"


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    code: str
    message: str
    fix: str

    @property
    def line(self) -> str:
        return f"{self.level.value}: {self.message}; fix: {self.fix}"

    def as_json(self) -> dict[str, str]:
        return {
            "level": self.level.value,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
        }


# -- reading --------------------------------------------------------------------------------
def parse_fly_toml(text: str, *, name: str = "fly.toml") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name} is not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses per nesting level: a bomb, not a fly.toml
        raise ConfigError(f"{name} nests arrays or tables too deeply to be a fly.toml") from None


def parse_duration(value: object) -> float | None:
    """Seconds from a fly.toml duration (``30``, ``"30s"``, ``"5m"``, ``"1h30m"``: the one
    parser, ``text.parse_duration``); ``None`` for no limit (``"none"``, ``0``). Raises
    ``ValueError`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, str) and value.strip().lower() in ("none", ""):
        return None
    seconds = float(value) if not isinstance(value, str) else text_duration(value)
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {value!r}")
    return seconds if seconds > 0 else None


# -- judging fly.toml -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class Deploy:
    """What the checks read from fly.toml, with Fly's defaults filled in."""

    kill_timeout_s: float
    kill_timeout_given: bool
    kill_signal: str
    strategy: str
    release_command: str | None
    release_command_timeout_s: float | None
    processes: Mapping[str, str]
    worker_groups: tuple[str, ...]
    sidekiq_timeout_s: float
    sidekiq_timeout_from: str
    strategy_given: bool = False


def read_deploy(
    config: Mapping[str, Any],
    *,
    sidekiq_timeout_s: float | None = None,
    groups: Sequence[str] = (),
) -> Deploy:
    deploy = _table(config, "deploy", "[deploy]")
    processes = _processes(config)
    release_command = deploy.get("release_command")
    if release_command is not None and not isinstance(release_command, str):
        raise ConfigError(
            f"fly.toml: [deploy] release_command is {_kind(release_command)}, not a string "
            '(release_command = "quiesce quiet --timeout 60")'
        )
    for key, where in (("kill_signal", config), ("strategy", deploy)):
        if key in where and not isinstance(where[key], str):
            raise ConfigError(f"fly.toml: {key} is {_kind(where[key])}, not a string")
    workers = tuple(groups) or tuple(
        name for name, cmd in processes.items() if re.search(r"\bsidekiq\b", cmd)
    )
    timeout_from = "--sidekiq-timeout"
    if sidekiq_timeout_s is None:
        sidekiq_timeout_s, timeout_from = SIDEKIQ_SHUTDOWN_TIMEOUT_S, "Sidekiq's default"
        for name in workers:
            match = re.search(r"(?:^|\s)(?:-t|--timeout)[=\s]+(\d+)", processes.get(name, ""))
            if match:
                sidekiq_timeout_s, timeout_from = float(match.group(1)), f"-t in [processes] {name}"
    try:
        kill = parse_duration(config.get("kill_timeout", FLY_KILL_TIMEOUT_S))
        release_timeout = parse_duration(
            deploy.get("release_command_timeout", f"{FLY_RELEASE_COMMAND_TIMEOUT_S:g}s")
        )
    except ValueError as exc:
        raise ConfigError(f"fly.toml: {exc}") from exc
    signal_name = str(config.get("kill_signal", FLY_KILL_SIGNAL)).upper()
    return Deploy(
        kill_timeout_s=kill if kill is not None else FLY_KILL_TIMEOUT_S,
        kill_timeout_given="kill_timeout" in config,
        kill_signal=signal_name if signal_name.startswith("SIG") else f"SIG{signal_name}",
        strategy=str(deploy.get("strategy", "rolling")).lower(),
        strategy_given="strategy" in deploy,
        release_command=release_command,
        release_command_timeout_s=release_timeout,
        processes=processes,
        worker_groups=workers,
        sidekiq_timeout_s=sidekiq_timeout_s,
        sidekiq_timeout_from=timeout_from,
    )


_KINDS = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _kind(value: object) -> str:
    """How TOML calls ``value``'s type (``[[processes]]`` is an array of tables)."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "an array of tables"
    return _KINDS.get(type(value), "a date or time")


def _table(config: Mapping[str, Any], key: str, shown: str) -> Mapping[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"fly.toml: {shown} is {_kind(value)}, not a table")
    return value


def _processes(config: Mapping[str, Any]) -> dict[str, str]:
    """``[processes]``: group name -> command string (Fly also takes no other shape)."""
    table = config.get("processes")
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(
            f"fly.toml: processes is {_kind(table)}, not a table of commands "
            '([processes] then worker = "bundle exec sidekiq")'
        )
    for name, cmd in table.items():
        if not isinstance(cmd, str):
            raise ConfigError(
                f"fly.toml: [processes] {safe_key(name)} is {_kind(cmd)}, not a command string"
            )
    return {str(k): v for k, v in table.items()}


def safe_key(name: str) -> str:
    return name if name.isprintable() and len(name) <= 60 else repr(name[:60])


def check_config(
    d: Deploy, config: Mapping[str, Any], *, parse: ArgvCheck | None = None
) -> list[Finding]:
    """The fly.toml checks; ``parse`` (quiesce's own parser) judges the release command's
    arguments, and is skipped when None."""
    findings = [*_kill_checks(d), *_release_checks(d, parse), *_group_checks(d)]
    if d.strategy == "bluegreen":
        findings += _bluegreen_checks(d, config)
    return findings


def _kill_checks(d: Deploy) -> list[Finding]:
    out = []
    need = d.sidekiq_timeout_s + SIDEKIQ_REQUEUE_MARGIN_S
    shown = f"{d.kill_timeout_s:g} s" + ("" if d.kill_timeout_given else " (Fly's default)")
    if d.kill_timeout_s > FLY_KILL_TIMEOUT_MAX_S:
        out.append(
            Finding(
                Level.ERROR,
                "kill-timeout-too-long",
                f"kill_timeout is {shown}, above Fly's maximum of 300 s",
                "set kill_timeout = 300 or less",
            )
        )
    elif d.kill_timeout_s < need:
        fix = (
            f"set kill_timeout = {need:g} (Sidekiq's {d.sidekiq_timeout_s:g} s + "
            f"{SIDEKIQ_REQUEUE_MARGIN_S:g} s to push unfinished jobs back)"
            if need <= FLY_KILL_TIMEOUT_MAX_S
            else f"lower Sidekiq's -t to {FLY_KILL_TIMEOUT_MAX_S - SIDEKIQ_REQUEUE_MARGIN_S:g} "
            "and set kill_timeout = 300 (Fly's maximum)"
        )
        out.append(
            Finding(
                Level.ERROR,
                "kill-timeout-short",
                f"kill_timeout is {shown} but Sidekiq's shutdown timeout is "
                f"{d.sidekiq_timeout_s:g} s ({d.sidekiq_timeout_from}): Fly kills workers "
                "mid-job before Sidekiq can push unfinished jobs back",
                fix,
            )
        )
    if d.kill_signal not in SHUTDOWN_SIGNALS:
        effect = _SIGNAL_EFFECT.get(d.kill_signal, "is not a Sidekiq shutdown signal")
        out.append(
            Finding(
                Level.ERROR,
                "kill-signal",
                f"kill_signal = {d.kill_signal} {effect}",
                'set kill_signal = "SIGTERM" (Sidekiq shuts down on TERM or INT)',
            )
        )
    return out


def _release_checks(d: Deploy, parse: ArgvCheck | None = None) -> list[Finding]:
    example = 'release_command = "quiesce quiet --strategy immediate --timeout 60"'
    if not d.release_command:
        return [
            Finding(
                Level.WARNING,
                "no-release-command",
                "[deploy] has no release_command: Sidekiq is not quieted before Machines "
                "are replaced, so old code keeps taking jobs after migrations",
                f"add {example} under [deploy]",
            )
        ]
    words = shell_words(d.release_command)
    if words is None:
        return [
            Finding(
                Level.ERROR,
                "release-command-quotes",
                "release_command has a quote that does not close: Fly cannot split it",
                "close the quote, or drop it",
            )
        ]
    out = _shell_checks(d.release_command, words)
    calls = quiesce_calls(d.release_command)
    if parse is not None:
        out += _argument_checks(calls, parse)
    quiets = [c for c in calls if c.command == "quiet"]
    if not quiets:
        return [
            *out,
            Finding(
                Level.WARNING,
                "release-command-no-quiet",
                "release_command does not run `quiesce quiet`: Sidekiq keeps taking jobs with "
                "the old code while the deploy runs",
                f"use {example}",
            ),
        ]
    call = quiets[-1]
    out += _strategy_checks(d, call)
    wait_s = 0.0 if "--no-wait" in call.flags else _seconds(call.value("--timeout"))
    limit = d.release_command_timeout_s
    if limit is not None and limit < wait_s + RELEASE_MARGIN_S:
        need = wait_s + RELEASE_MARGIN_S
        out.append(
            Finding(
                Level.ERROR,
                "release-command-timeout",
                f"release_command_timeout is {limit:g} s but quiet waits up to {wait_s:g} s "
                f"(--timeout) plus about {RELEASE_MARGIN_S:g} s to connect and report: flyctl "
                "fails the deploy before quiet's verdict",
                f'set release_command_timeout = "{_minutes(need)}" under [deploy], or lower '
                "quiet's --timeout",
            )
        )
    return out


def _shell_checks(command: str, words: Sequence[str]) -> list[Finding]:
    """Shell syntax where no shell runs: Fly splits the string into words and execs them."""
    if shell_wrapped(words) is not None:
        return []
    operators = sorted({w for w in words if is_operator(w)})
    expansions = sorted({m.group() for w in words for m in EXPANSION.finditer(w)})
    if not operators and not expansions:
        return []
    program = posixpath.basename(words[0]) if words else "the program"
    fix = "wrap it in a shell: " + _sh_c(command)
    return [
        Finding(
            Level.ERROR,
            "release-command-shell",
            f"release_command uses shell syntax ({' '.join([*operators, *expansions])}) but Fly "
            f"runs it without a shell: {program} receives it as literal arguments (nothing is "
            "redirected, chained or expanded; quiesce refuses the extra arguments, exit 2)",
            fix,
        )
    ]


def _sh_c(command: str) -> str:
    """The release_command line that runs ``command`` through sh, as TOML."""
    if any(ch in command for ch in "'\\\""):
        return "release_command = \"sh -c '...'\" with the command inside (or a script)"
    return f"release_command = \"sh -c '{command}'\""


def _argument_checks(calls: Sequence[QuiesceCall], parse: ArgvCheck) -> list[Finding]:
    out = []
    for call in calls:
        if any(EXPANSION.search(w) for w in call.argv):
            continue  # a shell fills these in at run time: their values are unknown here
        problem = parse(call.argv)
        if problem is not None:
            shown = " ".join(shlex.quote(w) for w in ("quiesce", *call.argv))
            out.append(
                Finding(
                    Level.ERROR,
                    "release-command-arguments",
                    f"release_command `{shown}` is refused by quiesce: {problem}; every deploy "
                    "would fail with exit 2",
                    "correct it (quiesce <command> --help lists the options)",
                )
            )
    return out


def _strategy_checks(d: Deploy, call: QuiesceCall) -> list[Finding]:
    recorded = call.value("--strategy")
    if recorded is None or recorded.lower() == d.strategy:
        return []
    where = "[deploy] strategy" if d.strategy_given else "Fly's default strategy"
    return [
        Finding(
            Level.ERROR,
            "strategy-mismatch",
            f"release_command records --strategy {recorded} but {where} is {d.strategy}: the "
            "deploy record (and bluegreen's checks) would describe a different deploy",
            f'use --strategy {d.strategy}, or set strategy = "{recorded}" under [deploy] '
            "(a `fly deploy --strategy` flag overrides fly.toml: keep the two the same)",
        )
    ]


def _group_checks(d: Deploy) -> list[Finding]:
    if d.worker_groups:
        return [
            Finding(
                Level.ERROR,
                "unknown-group",
                f"--group {name} is not in [processes]",
                f"use one of: {', '.join(d.processes) or '(no [processes] table)'}",
            )
            for name in d.worker_groups
            if d.processes and name not in d.processes
        ]
    return [
        Finding(
            Level.WARNING,
            "no-sidekiq-group",
            "no [processes] entry runs sidekiq: doctor cannot tell which group is the worker",
            'add worker = "bundle exec sidekiq" under [processes], or name it with --group',
        )
    ]


def _bluegreen_checks(d: Deploy, config: Mapping[str, Any]) -> list[Finding]:
    checked = _checked_groups(config, tuple(d.processes) or ("app",))
    if not checked:
        return [
            Finding(
                Level.ERROR,
                "bluegreen-no-checks",
                "strategy is bluegreen but no Machine has checks: flyctl refuses the deploy",
                "add a [checks.<name>] (or [[http_service.checks]]) block",
            )
        ]
    return [
        Finding(
            Level.WARNING,
            "bluegreen-worker-no-checks",
            f"bluegreen: process group {name} has no checks: flyctl counts its new Machines "
            "ready once started, so a crashing Sidekiq still replaces the old (quiet) Machines",
            f'add [checks.sidekiq] with processes = ["{name}"] (e.g. type = "http", '
            "port = 7433 with the sidekiq_alive gem)",
        )
        for name in d.worker_groups
        if name not in checked
    ]


def _checked_groups(config: Mapping[str, Any], groups: Sequence[str]) -> set[str]:
    """Process groups some check covers: top-level [checks], [http_service] and [[services]]
    checks (a block without ``processes`` covers every group)."""
    found: set[str] = set()

    def cover(block: Mapping[str, Any]) -> None:
        named = block.get("processes")
        if isinstance(named, list):
            found.update(str(n) for n in named)
        else:  # absent (every group), or a shape Fly would refuse: not doctor's to judge here
            found.update(groups)

    checks = config.get("checks")
    for check in checks.values() if isinstance(checks, dict) else ():
        if isinstance(check, Mapping):
            cover(check)
    http = config.get("http_service")
    if isinstance(http, Mapping) and http.get("checks"):
        cover(http)
    services = config.get("services")
    for service in services if isinstance(services, list) else ():
        if isinstance(service, Mapping) and any(
            service.get(k) for k in ("checks", "http_checks", "tcp_checks")
        ):
            cover(service)
    return found


def _seconds(value: str | None) -> float:
    """quiet's --timeout as quiesce reads it (``60``, ``60s``, ``5m``); the default when
    absent or unreadable (the argument check reports the latter)."""
    if value is None:
        return QUIET_TIMEOUT_S
    try:
        return parse_cli_duration(value)
    except ValueError:
        return QUIET_TIMEOUT_S


def _minutes(seconds: float) -> str:
    minutes = -(-int(seconds) // 60)
    return f"{minutes}m"


# -- judging the live fleet -------------------------------------------------------------------
def check_fleet(
    d: Deploy,
    snapshot: FleetSnapshot,
    *,
    releases: Sequence[str] = (),
) -> list[Finding]:
    """Embedded processes, processes without a release label, the longest job running now
    against kill_timeout (``snapshot`` read with the work hashes: the one busy-jobs reader,
    ``sidekiq.work``). ``releases``: labels that count as release labels, beside the latest
    deploy record's and anything shaped like a Fly image ref."""
    live = [p for p in snapshot.processes if p.alive and p.problem is None]
    out = []
    embedded = [p for p in live if p.embedded]
    if embedded:
        out.append(
            Finding(
                Level.WARNING,
                "embedded",
                f"{_processes_on(embedded)} run embedded Sidekiq (configure_embed): they "
                "ignore quiet, so they keep taking jobs with the old code until Fly stops them",
                'run Sidekiq as its own process group (worker = "bundle exec sidekiq")',
            )
        )
    known = set(releases)
    if snapshot.latest_deploy is not None and snapshot.latest_deploy.release:
        known.add(snapshot.latest_deploy.release)
    unlabelled = [
        p
        for p in live
        if not p.embedded and not any(lb in known or _RELEASE_LABEL.search(lb) for lb in p.labels)
    ]
    if unlabelled:
        out.append(
            Finding(
                Level.WARNING,
                "no-release-label",
                f"{_processes_on(unlabelled)} carry no release label: rejoin can tell new "
                "processes from old only by start time",
                "label them with the image: the initializer in docs/after-deploy.md (one line "
                "for every Sidekiq version; c[:labels] alone crashes Sidekiq before 6.5)",
            )
        )
    jobs = running_jobs(snapshot)
    longest = jobs[0] if jobs and jobs[0].runtime_s is not None else None
    if longest is not None and longest.runtime_s is not None:
        running_s = longest.runtime_s
        if running_s > d.kill_timeout_s:
            out.append(
                Finding(
                    Level.WARNING,
                    "job-longer-than-kill-timeout",
                    f"{longest.job_class} on {longest.machine} (queue {longest.queue}) has run "
                    f"{running_s:.0f} s, longer than kill_timeout {d.kill_timeout_s:g} s: a "
                    "deploy now interrupts it, and its retry starts over",
                    f"raise kill_timeout (max {FLY_KILL_TIMEOUT_MAX_S:g}) and Sidekiq's -t, or "
                    "make the job resumable (Sidekiq::IterableJob, smaller batches)",
                )
            )
    return out


def _processes_on(processes: Sequence[ProcessRecord]) -> str:
    machines = sorted({p.machine for p in processes})
    shown = ", ".join(machines[:3]) + (", ..." if len(machines) > 3 else "")
    return (
        f"{plural(len(processes), 'process', 'processes')} on "
        f"{plural(len(machines), 'Machine')} ({shown})"
    )


def summary(findings: Sequence[Finding]) -> str:
    errors = sum(f.level is Level.ERROR for f in findings)
    warnings = len(findings) - errors
    if not findings:
        return "doctor: no problems found"
    return f"doctor: {plural(errors, 'error')}, {plural(warnings, 'warning')}"
