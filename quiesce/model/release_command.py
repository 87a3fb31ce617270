"""A ``release_command`` as Fly runs it: split into words with no shell (Fly's
``init.cmd = shlex.split(release_command)``), with every quiesce call in it found, also
inside ``sh -c '...'``. Pure: doctor judges what this finds."""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
from collections.abc import Sequence

SHELL_OPERATORS = frozenset({"&&", "||", ";", "|", ">", "<", "&"})
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh"})
PUNCTUATION = frozenset("();<>|&")
REDIRECTS = frozenset({">", ">>", "<", ">&", "<&", "&>", ">|", "&>>", "<<", "<<<"})
EXPANSION = re.compile(r"\$\{[^}]*\}?|\$\(|\$[A-Za-z_][A-Za-z0-9_]*|\$[0-9?#@*!$-]|`")
"""``$VAR``, ``${VAR}``, ``$(cmd)``, backticks: no shell runs a release_command, so they
reach the program as they are written."""

VALUE_OPTIONS = frozenset(
    {
        "-r",
        "--redis-url",
        "--namespace",
        "--tls-ca-cert",
        "--tls-cert",
        "--tls-key",
        "--connect-timeout",
        "--read-timeout",
    }
)
"""Connection options that take a value (they may come before the command)."""


@dataclasses.dataclass(frozen=True, slots=True)
class QuiesceCall:
    """One ``quiesce ...`` invocation found in a release_command or a process command."""

    argv: tuple[str, ...]
    """From the word after ``quiesce`` on."""
    command: str | None
    """The subcommand (``quiet``), ``None`` when only options were given."""
    global_flags: tuple[str, ...]
    """Option names before the subcommand."""
    flags: tuple[str, ...]
    """Option names after the subcommand (``--timeout=30`` counts as ``--timeout``)."""

    def value(self, flag: str) -> str | None:
        """The value of the last ``flag VALUE`` or ``flag=VALUE``, if any."""
        found = None
        for i, word in enumerate(self.argv):
            if word.startswith(f"{flag}="):
                found = word.split("=", 1)[1]
            elif word == flag and i + 1 < len(self.argv):
                found = self.argv[i + 1]
        return found


def shell_words(command: str) -> list[str] | None:
    """``command`` split as a shell would split it into words and operators (``2>&1`` is
    ``2``, ``>&``, ``1``); None when its quotes do not close."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return None


def is_operator(word: str) -> bool:
    return bool(word) and set(word) <= PUNCTUATION


def shell_wrapped(words: Sequence[str]) -> str | None:
    """The script of ``sh -c '<script>'`` (or bash, dash ...), else None."""
    if len(words) >= 3 and posixpath.basename(words[0]) in SHELLS and "-c" in words:
        inner = words[words.index("-c") + 1 :]
        return inner[0] if inner else ""
    return None


def quiesce_calls(command: str) -> list[QuiesceCall]:
    """Every ``quiesce`` invocation in ``command`` (also inside ``sh -c '... && ...'``),
    its redirections (``2>&1``, ``> log``) left out."""
    words = shell_words(command)
    if words is None:
        return []
    script = shell_wrapped(words)
    if script is not None:
        return quiesce_calls(script) if script else []
    calls = []
    segment: list[str] = []
    skip = False
    for i, word in enumerate([*words, "&&"]):
        if skip:
            skip = False
            continue
        if word in REDIRECTS:
            if segment and segment[-1].isdigit() and i > 0:
                segment.pop()  # the file descriptor of 2>&1
            skip = True  # the redirection's target
            continue
        if not is_operator(word):
            segment.append(word)
            continue
        for j, w in enumerate(segment):
            if posixpath.basename(w) == "quiesce":
                calls.append(_call(tuple(segment[j + 1 :])))
                break
        segment = []
    return calls


def _call(argv: tuple[str, ...]) -> QuiesceCall:
    command = None
    global_flags: list[str] = []
    flags: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            (flags if command else global_flags).append(name)
            skip = command is None and name in VALUE_OPTIONS and "=" not in word
        elif command is None:
            command = word
    return QuiesceCall(argv, command, tuple(global_flags), tuple(flags))
