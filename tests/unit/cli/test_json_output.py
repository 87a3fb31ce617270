"""``--json`` off a terminal: one line, byte for byte what ``json.dumps`` writes, in pieces."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quiesce.cli.app import _json_chunks

DOCS: list[Any] = [
    {},
    [],
    "text",
    5,
    None,
    {"a": [], "b": {}},
    {"a": {}, "b": [1, {"c": [2, 3.5]}], 1: 2},
    {"x": {1: 2, "y": [float("nan"), None, True, "é\udcff\x1b"]}},
    [[[[1]]]],
    {"version": 1, "machines": [{"machine": "m", "processes": [{"a": 1}]}, {"machine": "n"}]},
]


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_chunks_join_to_json_dumps(doc: Any, depth: int) -> None:
    assert "".join(_json_chunks(doc, depth)) == json.dumps(doc)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_a_lazy_list_is_written_as_the_list(depth: int) -> None:
    doc = {"version": 1, "machines": [{"machine": "m", "n": [1, 2]}, {"machine": "n"}], "e": []}
    machines: list[dict[str, Any]] = [{"machine": "m", "n": [1, 2]}, {"machine": "n"}]
    lazy = {**doc, "machines": iter(machines), "e": iter([])}
    assert "".join(_json_chunks(lazy, depth)) == json.dumps(doc)


def test_anything_else_unknown_still_fails() -> None:
    with pytest.raises(TypeError):
        "".join(_json_chunks({"a": {1, 2}}, 2))
