"""The docs show only commands and flags that exist, and their links resolve.

Every `quiesce <command> ... --flag` in README.md and docs/*.md (fenced code blocks and
inline code) must name a command and flags that `python -m quiesce <command> --help` lists.
The truth comes from the CLI's help output in a subprocess, never from quiesce's internals,
so the check survives the package being reorganised. In docs/reference.md, each flag shown
in the section of a command (`## quiesce <command>`) must also exist on that command.
Flags of other tools (fly, flyctl, redis-cli, bundle, docker...) are ignored.

A page may show a wrong command on purpose (the typo `doctor` catches): mark that one line
with `<!-- docs-check: wrong on purpose -->` at its end (prose), or a trailing
`# wrong on purpose` comment (a code block line). Only that line is skipped; a marked line
that shows no quiesce invocation at all is itself a problem, so markers cannot pile up.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages other engineers are writing: a link to one may dangle until it lands, and is
# checked like any other as soon as the file exists.
PENDING_PAGES: set[str] = set()
# The one way to show a deliberately wrong command (see the module docstring).
_WRONG_ON_PURPOSE = re.compile(
    r"<!-- docs-check: wrong on purpose -->\s*$|\s# wrong on purpose\s*$"
)

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE = re.compile(r"(`+)(.+?)\1")
# `quiesce` as a program name: alone or as bin/quiesce, .venv/bin/quiesce, /usr/local/bin/quiesce.
_PROGRAM = re.compile(r"(?<![\w./:-])(?:[\w./-]*/)?quiesce(?=\s|$)")
# Where a program name starts a command, rather than sitting in a sentence.
_COMMAND_START = re.compile(r"(?:^|[\"'(=]|&&|\|\||[|;$#]|\brun:|\$\()\s*$")
_FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)")
_PLACEHOLDER = re.compile(r"^[<\[{].*|^\.\.\.|^[A-Z_]+$")
_END = re.compile(r"\s(?:&&|\|\|?|;)\s|\s#|`|,\s")


@dataclass(frozen=True)
class Shown:
    """One quiesce invocation shown in a page."""

    where: str
    text: str


def _help(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    for name in list(env):
        if name.startswith(("REDIS_", "QUIESCE_", "FLY_")):
            del env[name]
    return subprocess.run(
        [sys.executable, "-m", "quiesce", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def parse_help(text: str) -> tuple[set[str], set[str]]:
    """The flags (`--timeout`, `-r`, both halves of `--wait / --no-wait`) and the commands
    listed by one `--help` output."""
    flags: set[str] = set()
    commands: set[str] = set()
    section = ""
    for line in text.splitlines():
        stripped = line.strip(" │|╭╮╰╯─")
        indent = len(line) - len(line.lstrip(" │|"))
        if re.match(r"^[A-Z][\w ]*:$", stripped) or re.match(r"^[╭─]+ ?\w", line.strip()):
            section = stripped.rstrip(":").strip("─ ").lower()
            continue
        if not stripped or indent > 6:
            continue  # a wrapped description line
        if stripped.startswith("-"):
            spec = re.split(r"\s{2,}", stripped, maxsplit=1)[0]
            flags.update(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", spec))
        elif section.startswith("command"):
            commands.add(stripped.split()[0])
    return flags, commands


@functools.cache
def cli_commands() -> frozenset[str]:
    result = _help("--help")
    assert result.returncode == 0, result.stderr
    return frozenset(parse_help(result.stdout)[1])


@functools.cache
def cli_flags(command: str) -> frozenset[str] | None:
    """Flags the command accepts per its help (None: not a command). Without a command:
    the options that go before any command."""
    result = _help(*([command] if command else []), "--help")
    if result.returncode != 0:
        return None
    return frozenset(parse_help(result.stdout)[0])


@functools.cache
def accepts_hidden(command: str, flag: str) -> bool:
    """A flag the help does not list may still be a hidden alias (`--tls-insecure`): ask
    the parser itself, which refuses an unknown option before it prints any help."""
    return _help(*([command] if command else []), flag, "--help").returncode == 0


def _code_texts(page: str, text: str) -> list[tuple[int, str, bool]]:
    """(line number, code text, is a whole code-block line) for every code block line and
    every inline code span, continuation lines of a block joined to their command. Lines
    marked wrong on purpose are left out."""
    found: list[tuple[int, str, bool]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if _WRONG_ON_PURPOSE.search(line):
            found.append((number, "", False))  # ends a block command; shows nothing
            continue
        if fenced:
            previous = found[-1] if found and found[-1][2] else None
            continuing = re.match(r"^\s+[\[-]", line) and previous is not None
            if previous is not None and (continuing or previous[1].endswith("\\")):
                found[-1] = (previous[0], previous[1].rstrip("\\") + " " + line.strip(), True)
            else:
                found.append((number, line, True))
        else:
            found += [(number, m.group(2), False) for m in _INLINE.finditer(line)]
    return found


def invocations(page: str, text: str) -> list[Shown]:
    """Every quiesce invocation in a page's code."""
    shown: list[Shown] = []
    for number, code, _block in _code_texts(page, text):
        code = code.replace("\\|", "|")
        for match in _PROGRAM.finditer(code):
            rest = code[match.end() :]
            opener = code[: match.start()].rstrip()[-1:]
            end = _END.search(rest)
            stop = end.start() if end else len(rest)
            closer = {"'": "'", '"': '"', "(": ")"}.get(opener, "")
            if closer and closer in rest:  # release_command = "quiesce ...", (quiesce ...)
                stop = min(stop, rest.index(closer))
            args = rest[:stop]
            words = args.split()
            starts = bool(_COMMAND_START.search(code[: match.start()]))
            first = next((w for w in words if not w.startswith("-")), "")
            # In a sentence ("no quiesce deploy record"), only a real command name counts.
            if starts or first in cli_commands() or (words and words[0].startswith("-")):
                shown.append(Shown(f"{page}:{number}", "quiesce " + " ".join(words)))
    return shown


def _flag_words(words: list[str]) -> list[str]:
    flags = []
    for word in words:
        word = word.strip("[]{}(),|")
        match = _FLAG.match(word)
        if match and not word.endswith(("...", "-")) and not word.startswith("--*"):
            flags.append(match.group(1))
    return flags


def problems_with(shown: Shown) -> list[str]:
    """What is wrong with one invocation: an unknown command, or flags it does not take."""
    words = shown.text.split()[1:]
    command = ""
    before: list[str] = []
    after: list[str] = []
    for index, word in enumerate(words):
        if word.startswith("-") or command:
            (after if command else before).append(word)
            continue
        previous = words[index - 1] if index else ""
        if previous.startswith("-") and "=" not in previous and not _takes_no_value(previous):
            before.append(word)  # the value of a connection option: -r URL status
            continue
        if _PLACEHOLDER.match(word):
            return []  # `quiesce <command> --help`: a pattern, not an invocation
        command = word
    found = []
    if command and command not in cli_commands():
        return [f"{shown.where}: `{shown.text}`: no command {command!r}"]
    for scope, flags in (("", before), (command, after)):
        if scope == "" and command and not flags:
            continue
        known = cli_flags(scope)
        assert known is not None
        for flag in _flag_words(flags):
            if flag not in known and not accepts_hidden(scope, flag):
                name = f"quiesce {scope}".strip()
                found.append(f"{shown.where}: `{shown.text}`: {name} has no flag {flag}")
    return found


def _takes_no_value(flag: str) -> bool:
    return flag in {"-v", "--verbose", "--tls-skip-verify", "--tls-insecure", "-h", "--help"}


def reference_problems(page: str, text: str) -> list[str]:
    """Flags shown under `## quiesce <command>` in the reference exist on that command."""
    found = []
    command = None
    for number, line in enumerate(text.splitlines(), 1):
        heading = re.match(r"^##\s+`?quiesce (\w+)`?\s*$", line)
        if heading or line.startswith("## "):
            command = heading.group(1) if heading else None
            continue
        if command is None or command not in cli_commands():
            continue
        for span in _INLINE.finditer(line):
            code = span.group(2).replace("\\|", "|")
            if not code.startswith("-"):
                continue
            for flag in _flag_words(code.split()):
                known = cli_flags(command) or frozenset()
                if flag not in known and not accepts_hidden(command, flag):
                    found.append(f"{page}:{number}: quiesce {command} has no flag {flag}")
    return found


def marker_problems(page: str, text: str) -> list[str]:
    """A wrong-on-purpose marker on a line that shows no quiesce invocation hides nothing:
    it is stale, and would only make the next real mistake on that line invisible."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if _WRONG_ON_PURPOSE.search(line):
            unmarked = _WRONG_ON_PURPOSE.sub("", line)
            fence = "```\n" if not _INLINE.search(unmarked) else ""
            if not invocations(page, fence + unmarked + ("\n```" if fence else "")):
                found.append(
                    f"{page}:{number}: marked wrong on purpose but shows no quiesce command"
                )
    return found


def check_page(page: str, text: str) -> list[str]:
    found = [p for shown in invocations(page, text) for p in problems_with(shown)]
    found += marker_problems(page, text)
    if page.endswith("reference.md"):
        found += reference_problems(page, text)
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    fenced = False
    anchors = set()
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^#{1,6}\s+(.+?)\s*#*$", line)):
            anchors.add(_slug(match.group(1)))
    return anchors


def link_problems(page: Path, text: str, root: Path = ROOT) -> list[str]:
    """Relative links (files and #anchors) that do not resolve."""
    found = []
    prose = re.sub(r"(?ms)^\s*```.*?^\s*```", "", text)
    prose = _INLINE.sub("", prose)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        where = f"{page.relative_to(root).as_posix()}: ({target})"
        if not path.exists():
            if rel not in PENDING_PAGES:
                found.append(f"{where}: no such file {rel}")
            continue
        if anchor and path.suffix == ".md" and anchor not in _anchors(path.read_text()):
            found.append(f"{where}: no heading #{anchor} in {rel}")
    return found


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_commands_and_flags_shown_exist(page: Path) -> None:
    assert check_page(_name(page), page.read_text()) == []


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page: Path) -> None:
    assert link_problems(page, page.read_text()) == []


def test_the_docs_show_commands_at_all() -> None:
    """Guards the checker itself: it finds the README's release command."""
    shown = [s.text for s in invocations("README.md", (ROOT / "README.md").read_text())]
    assert "quiesce quiet --strategy immediate --timeout 60s" in shown
    assert "quiesce rejoin --wait --timeout 20m" in shown


SAMPLE = """\
Run `quiesce quiet --timeout 5 --made-up-flag` first.

```sh
bin/quiesce -r redis://x/0 status --machines --expect running
quiesce rejoin --wait \\
    --no-such-wait 3
quiesce nosuchcommand --json
fly secrets set --stage REDIS_URL=x     # another tool's flags are not ours
release_command = "quiesce quiet --until drained --bogus-in-toml"
```

Prose: `no quiesce deploy record in Redis`, and `redis-cli --bogus`.
"""


def test_checker_catches_made_up_commands_and_flags() -> None:
    found = check_page("sample.md", SAMPLE)
    assert len(found) == 4, found
    assert "sample.md:1" in found[0] and "no flag --made-up-flag" in found[0]
    assert "sample.md:5" in found[1] and "no flag --no-such-wait" in found[1]
    assert "no command 'nosuchcommand'" in found[2]
    assert "no flag --bogus-in-toml" in found[3]


def test_checker_accepts_real_and_hidden_flags() -> None:
    sample = "`quiesce -v status -m --tls-insecure` and `quiesce quiet --no-wait --no-mark`"
    assert check_page("ok.md", sample) == []


def test_a_line_marked_wrong_on_purpose_is_skipped_and_only_that_line() -> None:
    sample = (
        "doctor names `quiesce qiuet` with quiesce's own message. "
        "<!-- docs-check: wrong on purpose -->\n"
        "but `quiesce qiuet` on the next line is still caught.\n"
        "```sh\n"
        "quiesce quiet --bogus-flag   # wrong on purpose\n"
        "quiesce quiet --other-bogus\n"
        "```\n"
        "A stale marker on prose. <!-- docs-check: wrong on purpose -->\n"
    )
    found = check_page("marked.md", sample)
    assert len(found) == 3, found
    assert "marked.md:2" in found[0] and "no command 'qiuet'" in found[0]
    assert "marked.md:5" in found[1] and "no flag --other-bogus" in found[1]
    assert "marked.md:7" in found[2] and "shows no quiesce command" in found[2]


def test_reference_check_catches_a_flag_under_the_wrong_command() -> None:
    sample = "## `quiesce status`\n\n| `--jobs` | ok |\n| `--until drained` | not status's |\n"
    assert check_page("docs/reference.md", sample) == [
        "docs/reference.md:4: quiesce status has no flag --until"
    ]


def test_link_checker_catches_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Some `code` here\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#some-code-here) [web](https://example.com)\n"
        "[gone](docs/nope.md) [bad anchor](docs/a.md#nope) `[not a link](x.md)`\n"
    )
    found = link_problems(page, page.read_text(), root=tmp_path)
    assert len(found) == 2, found
    assert "no such file docs/nope.md" in found[0]
    assert "no heading #nope" in found[1]
