"""``--json`` off a terminal: one compact line, the same document as ``json.dumps``, written
in pieces (orjson where it can, json where it refuses or is missing)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quiesce.cli import json_output as cli_app
from quiesce.cli.json_output import _json_chunks

DOCS: list[Any] = [
    {},
    [],
    "text",
    5,
    None,
    {"a": [], "b": {}},
    {"a": {}, "b": [1, {"c": [2, 3.5]}], 1: 2},
    {"x": {1: 2, "y": [None, True, "é\udcff\x1b", 2**70]}},
    [[[[1]]]],
    {"host\udcff": 1, "machines": [{"machine": "m\udcfe", "processes": [{"a": 1.25}]}]},
    {"version": 1, "machines": [{"machine": "m", "processes": [{"a": 1}]}, {"machine": "n"}]},
]


def _written(doc: Any, depth: int) -> str:
    return b"".join(_json_chunks(doc, depth)).decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("with_orjson", [True, False])
def test_chunks_hold_the_same_document(
    doc: Any, depth: int, with_orjson: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not with_orjson:
        monkeypatch.setattr(cli_app, "_orjson", None)
    text = _written(doc, depth)
    assert "\n" not in text
    assert json.loads(text) == json.loads(json.dumps(doc))


def test_without_orjson_it_is_json_dumps_compact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_app, "_orjson", None)
    for doc in DOCS:
        assert _written(doc, 2) == json.dumps(doc, separators=(",", ":"))


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_a_lazy_list_is_written_as_the_list(depth: int) -> None:
    doc = {"version": 1, "machines": [{"machine": "m", "n": [1, 2]}, {"machine": "n"}], "e": []}
    machines: list[dict[str, Any]] = [{"machine": "m", "n": [1, 2]}, {"machine": "n"}]
    lazy = {**doc, "machines": iter(machines), "e": iter([])}
    assert json.loads(_written(lazy, depth)) == doc


def test_anything_else_unknown_still_fails() -> None:
    with pytest.raises(TypeError):
        _written({"a": {1, 2}}, 2)


def test_a_text_only_stdout_gets_the_same_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    out = io.StringIO()  # no .buffer, not a terminal
    monkeypatch.setattr("sys.stdout", out)
    cli_app.echo_json({"version": 1, "machines": iter([{"machine": "é"}])})
    assert json.loads(out.getvalue()) == {"version": 1, "machines": [{"machine": "é"}]}
    assert out.getvalue().endswith("}\n")
