"""Every option is spelled as its help says: typer 0.27 (the floor) turns an option whose
metavar equals its name into ``--NAME`` unless the name is given explicitly."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command

from quiesce.cli.app import app

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", COMMANDS)
def test_no_option_is_spelled_in_capitals(name: str) -> None:
    command = get_command(app).commands[name]  # type: ignore[attr-defined]
    flags = [opt for param in command.params for opt in getattr(param, "opts", [])]
    assert not [f for f in flags if re.fullmatch(r"--[A-Z][A-Z0-9_-]*", f)]
