"""Shipping (issue 18): nothing we document installs quiesce by bare name from a package index
(no such release is ours: whoever publishes the name runs their code in the user's deploy job),
every action the example workflows use is pinned by commit SHA, the workflows keep untrusted
input out of their scripts, the Dockerfile keeps its fixes, and bin/build-binary refuses a
Python without the shared libpython before doing anything else. bin/build-image (run by
.ci/run) builds and smoke-tests the image itself."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Files whose snippets users copy: the README, docs/*.md and everything under examples/.
DOCUMENTS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(p for p in (ROOT / "examples").rglob("*") if p.is_file()),
    ]
    if p.is_file()
)
WORKFLOWS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").rglob("*.yml"))

# An install command, and what follows it on the line.
_INSTALL = re.compile(
    r"(?:\bpip3?(?:\.\d+)?|\bpython3?(?:\.\d+)?\s+-m\s+pip|\buv\s+pip|\bpipx|\buv\s+tool)"
    r"\s+install\b(?P<args>[^`\n]*)"
    r"|\b(?:uv|poetry)\s+add\b(?P<add>[^`\n]*)"
)
# quiesce, quiesce[postgres], quiesce==0.1.0, quiesce>=0.1 ... : a name resolved by an index.
_BARE = re.compile(r"^quiesce(\[[^\]]*\])?\s*((==|>=|<=|~=|!=|===|<|>)\S*)?$", re.IGNORECASE)


def bare_installs(text: str) -> list[str]:
    """The requirements in `text`'s install commands that name quiesce by bare name."""
    found = []
    for match in _INSTALL.finditer(text):
        args = match.group("args") if match.group("args") is not None else match.group("add")
        try:
            words = shlex.split(args, comments=True)
        except ValueError:  # an unbalanced quote in prose: fall back to whitespace
            words = [w.strip("'\"") for w in args.split()]
        for word in words:
            if word in {"&&", "||", ";", "|"}:
                break
            if not word.startswith("-") and _BARE.match(word.strip().rstrip(";")):
                found.append(word)
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "pip install quiesce",
        'run: pip install "quiesce==0.1.0"',
        "`pip install 'quiesce[postgres]'`",
        "python3 -m pip install -U quiesce>=0.1",
        "pipx install quiesce",
        "uv tool install QUIESCE",
        "uv add quiesce",
    ],
)
def test_bare_install_is_detected(snippet: str) -> None:
    assert bare_installs(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "pip install .",
        "`pip install '.[postgres]'` adds",
        "pip install -e '.[test]' && quiesce --version",
        "pip install dist/quiesce-0.1.0-py3-none-any.whl",
        "pip install 'git+https://github.com/you/quiesce@0123456789abcdef0123456789abcdef01234567'",
        "pip install quiesce-helpers",
        "quiesce quiet --timeout 30",
    ],
)
def test_other_installs_are_not(snippet: str) -> None:
    assert not bare_installs(snippet), snippet


@pytest.mark.parametrize("name", DOCUMENTS)
def test_no_document_installs_quiesce_by_bare_name(name: str) -> None:
    text = (ROOT / name).read_text(errors="replace")
    assert not bare_installs(text), (
        f"{name} installs quiesce by bare name from a package index: {bare_installs(text)}; "
        "nothing named quiesce there is ours (docs/install.md says what to build and pin)"
    )


def test_docs_cover_what_is_published() -> None:
    assert "README.md" in DOCUMENTS and "docs/install.md" in DOCUMENTS
    install = (ROOT / "docs/install.md").read_text()
    assert "PyPI" in install
    for command in ("bin/build-image", "bin/build-binary", "release.yml", "@sha256:"):
        assert command in install, command
    assert "docs/install.md" in (ROOT / "README.md").read_text()


_USES = re.compile(r"^\s*(?:-\s+)?uses:\s*['\"]?([^\s'\"#]+)", re.MULTILINE)
_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def test_workflows_exist() -> None:
    assert "examples/github-actions/release.yml" in WORKFLOWS
    assert {"examples/github-actions/deploy.yml", "examples/github-actions/recover.yml"} <= set(
        WORKFLOWS
    )


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_action_is_pinned_by_commit_sha(name: str) -> None:
    text = (ROOT / name).read_text()
    for line in text.splitlines():
        match = _USES.match(line)
        if not match:
            continue
        ref = match.group(1)
        if ref.startswith("./") or re.match(r"^docker://\S+@sha256:[0-9a-f]{64}$", ref):
            continue
        assert _PINNED.match(ref), f"{name}: {ref} is not pinned by a 40-hex commit SHA"
        assert re.search(r"#\s*v?\d", line), f"{name}: {ref}: say which release the SHA is"


def _run_blocks(text: str) -> list[str]:
    """The text of every `run:` script (one-line or block) in a workflow."""
    blocks: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:-\s+)?run:\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2)
        if rest and rest[0] not in "|>":
            blocks.append(rest)
            continue
        body = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        blocks.append("\n".join(body))
    return blocks


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_scripts_expand_no_expressions(name: str) -> None:
    """Untrusted input (tag names, inputs, event fields) reaches scripts as env vars only."""
    blocks = _run_blocks((ROOT / name).read_text())
    assert blocks, f"{name}: no run: steps found"
    for block in blocks:
        assert "${{" not in block, f"{name}: an expression inside a run: script: {block!r}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_permissions_start_empty(name: str) -> None:
    text = (ROOT / name).read_text()
    assert re.search(r"^permissions: \{\}$", text, re.MULTILINE), name
    assert "persist-credentials: true" not in text
    # Secrets are step env, never job- or workflow-wide env.
    jobs_env = re.findall(r"^ {4}env:\n((?: {6}.*\n)+)", text, re.MULTILINE)
    for block in jobs_env:
        assert "secrets." not in block, f"{name}: a secret in a job-wide env"


@pytest.mark.parametrize(
    "name", ["examples/github-actions/deploy.yml", "examples/github-actions/recover.yml"]
)
def test_deploy_workflows_check_the_binary_they_fetch(name: str) -> None:
    text = (ROOT / name).read_text()
    assert "QUIESCE_SHA256:" in text and "sha256sum --strict -c" in text, name


def test_release_workflow_publishes_checksums_and_provenance() -> None:
    text = (ROOT / "examples/github-actions/release.yml").read_text()
    for needle in (
        "tags:",
        "actions/attest-build-provenance@",
        "SHA256SUMS",
        "ghcr.io/",
        "github.repository_owner",
        "id-token: write",
        "attestations: write",
        "push-to-registry: true",
        "@$DIGEST",
    ):
        assert needle in text, needle


def _dockerfile_instructions() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def test_dockerfile_fixes() -> None:
    instructions = _dockerfile_instructions()
    runs = [i for i in instructions if i.startswith("RUN ") and "apt-get install" in i]
    assert len(runs) == 2
    for run in runs:
        assert "apt-get clean" in run and "rm -rf /var/lib/apt/lists/*" in run, run
    assert instructions.count("ARG DEBIAN_FRONTEND=noninteractive") == 2
    assert any("groupadd --system --gid 10001" in i for i in instructions)
    assert any("useradd --uid 10001 --gid 10001" in i for i in instructions)
    assert "USER 10001:10001" in instructions
    assert "EXPOSE 10437" in instructions
    labels = " ".join(i for i in instructions if i.startswith("LABEL "))
    for key in ("source", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_build_binary_refuses_a_python_without_libpython(tmp_path: Path) -> None:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or sys.version_info[:2] != (3, 11):
        pytest.skip("needs a CPython 3.11 built with --enable-shared to pass the first check")
    # A sitecustomize that points LIBDIR at an empty directory: the same Python, no libpython.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sysconfig\n"
        "_get = sysconfig.get_config_var\n"
        f"sysconfig.get_config_var = lambda n: {str(tmp_path)!r} if n == 'LIBDIR' else _get(n)\n"
    )
    venv = tmp_path / "venv"
    result = subprocess.run(
        [str(ROOT / "bin/build-binary"), "--out", str(tmp_path / "out")],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHON": sys.executable,
            "PYTHONPATH": str(site),
            "BUILD_VENV": str(venv),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "libpython3.11" in result.stderr, result.stderr
    assert not venv.exists() and not (tmp_path / "out").exists()
