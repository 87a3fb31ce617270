"""The shipped examples parse, and every quiesce command they run exists with every flag they
use (checked with `quiesce <command> --help`). A missing command or flag fails: an example
that breaks on every deploy is never "skipped"."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from quiesce.model.release_command import QuiesceCall, quiesce_calls
from tests.support.cli import run

ROOT = Path(__file__).resolve().parents[2]
FLY_TOMLS = ["fly.toml.example", "examples/fly.exporter.toml"]
WORKFLOWS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").rglob("*.yml"))


def _toml_calls(name: str) -> list[tuple[str, QuiesceCall]]:
    config = tomllib.loads((ROOT / name).read_text())
    image = str((config.get("build") or {}).get("image", ""))
    found = []
    release = (config.get("deploy") or {}).get("release_command")
    if release:
        found += [(f"{name} release_command", c) for c in quiesce_calls(release)]
    for group, cmd in (config.get("processes") or {}).items():
        # In the quiesce image, a process command is the entrypoint's arguments.
        line = f"quiesce {cmd}" if "quiesce" in image else str(cmd)
        found += [(f"{name} [processes] {group}", c) for c in quiesce_calls(line)]
    return found


def _workflow_calls(name: str) -> list[tuple[str, QuiesceCall]]:
    found = []
    for line in (ROOT / name).read_text().splitlines():
        match = re.match(r"\s*(?:-\s*)?run:\s*(.+)", line)
        if match and match.group(1).startswith("quiesce "):
            found += [(f"{name}: {match.group(1)}", c) for c in quiesce_calls(match.group(1))]
    return found


CALLS = [c for n in FLY_TOMLS for c in _toml_calls(n)] + [
    c for n in WORKFLOWS for c in _workflow_calls(n)
]


@pytest.mark.parametrize("name", FLY_TOMLS)
def test_fly_tomls_parse(name: str) -> None:
    config = tomllib.loads((ROOT / name).read_text())
    assert config["app"]
    assert _toml_calls(name), f"{name} runs no quiesce command"


def test_fly_toml_example_release_command_fits_its_timeout() -> None:
    config = tomllib.loads((ROOT / "fly.toml.example").read_text())
    (call,) = quiesce_calls(config["deploy"]["release_command"])
    assert call.command == "quiet"
    assert float(call.value("--timeout") or 30) + 30 <= 300  # release_command_timeout "5m"
    assert config["deploy"]["release_command_timeout"] == "5m"


def test_exporter_app_is_scraped() -> None:
    config = tomllib.loads((ROOT / "examples/fly.exporter.toml").read_text())
    assert config["metrics"]["path"] == "/metrics"
    assert config["metrics"]["processes"] == ["exporter"]


def test_workflows_use_secrets_by_name_only() -> None:
    assert WORKFLOWS, "no workflow examples"
    for name in WORKFLOWS:
        text = (ROOT / name).read_text()
        for value in re.findall(r"(FLY_API_TOKEN|REDIS_URL):\s*(\S.*)", text):
            assert value[1] == f"${{{{ secrets.{value[0]} }}}}", (name, value)


def _has(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


@pytest.mark.parametrize(("where", "call"), CALLS, ids=[w for w, _ in CALLS])
def test_command_and_flags_exist(where: str, call: QuiesceCall) -> None:
    assert call.command is not None, f"{where}: no quiesce command"
    code, top_help, _ = run("--help")
    assert code == 0
    for flag in call.global_flags:
        assert _has(top_help, flag), f"{where}: quiesce has no option {flag}"
    code, help_text, err = run(call.command, "--help")
    assert code == 0, f"{where}: `quiesce {call.command}` does not exist: {err}"
    for flag in call.flags:
        assert _has(help_text, flag), f"{where}: quiesce {call.command} has no option {flag}"
