"""doctor as a pre-flight of the release command (issue 16): every fly.toml below passed
with "no problems found" and failed every deploy with exit 2 (or crashed doctor)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quiesce.cli.doctor import refusal
from tests.support.cli import one_line_error, run

ROOT = Path(__file__).resolve().parents[3]

BASE = """
kill_signal = "SIGTERM"
kill_timeout = 30
[processes]
  app = "bin/rails server"
  worker = "bundle exec sidekiq"
[deploy]
  strategy = "immediate"
  release_command_timeout = "5m"
"""


def doctor(tmp_path: Path, release_command: str) -> tuple[int, str, str]:
    path = tmp_path / "fly.toml"
    path.write_text(BASE + f"  release_command = {release_command}\n")
    return run("doctor", str(path))


@pytest.mark.parametrize(
    ("release_command", "needle"),
    [
        ('"quiesce quiet --timeout nan"', "'--timeout'"),
        ('"quiesce quiet --timeout 60 --bogus-flag"', "No such option: --bogus-flag"),
        ('"quiesce quiet --until bogus"', "'--until'"),
        ('"quiesce qiuet"', "No such command 'qiuet'"),
        ('"quiesce quiet --strategy bluegren"', "'--strategy'"),
    ],
)
def test_arguments_quiesce_refuses_are_errors_naming_them(
    tmp_path: Path, release_command: str, needle: str
) -> None:
    code, out, _ = doctor(tmp_path, release_command)
    assert code == 3, out
    (line,) = [x for x in out.splitlines() if "release-command" in x or "refused by" in x]
    assert line.startswith("error: release_command `quiesce ") and needle in line, line
    assert "no problems found" not in out


@pytest.mark.parametrize(
    ("release_command", "syntax"),
    [
        ('"quiesce quiet --timeout 60 2>&1"', ">&"),
        ('"quiesce quiet --timeout 60 && echo done"', "&&"),
        ('"quiesce quiet --release $FLY_IMAGE_REF"', "$FLY_IMAGE_REF"),
        ('"quiesce quiet --release ${FLY_IMAGE_REF}"', "${FLY_IMAGE_REF}"),
        ('"quiesce quiet --timeout 60 > /tmp/log"', ">"),
    ],
)
def test_shell_syntax_without_a_shell_is_an_error_with_the_sh_c_fix(
    tmp_path: Path, release_command: str, syntax: str
) -> None:
    code, out, _ = doctor(tmp_path, release_command)
    assert code == 3, out
    (line,) = [x for x in out.splitlines() if "shell syntax" in x]
    assert f"({syntax}" in line or f" {syntax})" in line or f" {syntax} " in line, line
    assert "fix: wrap it in a shell: release_command = \"sh -c '" in line


def test_the_same_command_inside_sh_c_passes(tmp_path: Path) -> None:
    code, out, _ = doctor(
        tmp_path,
        "\"sh -c 'quiesce quiet --strategy immediate --release $FLY_IMAGE_REF --timeout 60 2>&1'\"",
    )
    assert code == 0 and "no problems found" in out, out


def test_strategy_disagreeing_with_deploy_strategy_is_an_error(tmp_path: Path) -> None:
    code, out, _ = doctor(tmp_path, '"quiesce quiet --strategy bluegreen --timeout 60"')
    assert code == 3
    assert "--strategy bluegreen but [deploy] strategy is immediate" in out


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[deploy]\nrelease_command = 42\n", "release_command is an integer, not a string"),
        ('processes = "x"\n', "processes is a string, not a table"),
        ('[[processes]]\nworker = "x"\n', "processes is an array of tables"),
        ("[processes]\nworker = 5\n", "[processes] worker is an integer"),
        ("deploy = 5\n", "[deploy] is an integer, not a table"),
        ('[deploy]\nstrategy = ["a"]\n', "strategy is an array"),
        ("kill_signal = 15\n", "kill_signal is an integer"),
        ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", "nests arrays or tables too deeply"),
        ("checks = 5\nservices = 3\n[deploy]\nstrategy = 'bluegreen'\n", None),
    ],
)
def test_wrong_shapes_and_bombs_are_one_line_errors(
    tmp_path: Path, toml: str, needle: str | None
) -> None:
    path = tmp_path / "fly.toml"
    path.write_text(toml)
    code, out, err = run("doctor", str(path))
    assert "Traceback" not in out + err and "internal error" not in err
    if needle is None:
        assert code in (0, 3), err
        return
    assert code == 2, out
    assert needle in one_line_error(err)


def test_an_endless_file_is_read_within_bounds() -> None:
    code, _, err = run("doctor", "/dev/zero")
    assert code == 2
    assert "/dev/zero is larger than 1 MB" in one_line_error(err)


@pytest.mark.parametrize("name", ["fly.toml.example", "examples/fly.exporter.toml"])
def test_the_shipped_fly_tomls_have_no_release_command_errors(name: str) -> None:
    code, out, err = run("doctor", str(ROOT / name))
    assert "refused by quiesce" not in out and "shell syntax" not in out, out
    assert "strategy-mismatch" not in out and "records --strategy" not in out, out
    assert code in (0, 3), err


def test_refusal_sees_what_a_real_run_sees() -> None:
    assert refusal(["quiet", "--timeout", "60"]) is None
    assert refusal(["-r", "redis://x:1/0", "quiet", "--timeout=90", "--until", "drained"]) is None
    assert refusal(["quiet", "--help"]) is None and refusal(["--version"]) is None
    assert "No such option" in (refusal(["quiet", "--nope"]) or "")
