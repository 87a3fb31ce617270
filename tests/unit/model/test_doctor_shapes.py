"""Whatever TOML values a fly.toml holds, doctor's checks answer with findings or one
ConfigError line, never a crash (issue 16: ``release_command = 42`` was an AttributeError)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quiesce.errors import ConfigError
from quiesce.model.doctor import check_config, read_deploy
from quiesce.model.release_command import quiesce_calls

scalars = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = ("kill_timeout", "kill_signal", "processes", "deploy", "checks", "services", "http_service")
DEPLOY_KEYS = ("release_command", "release_command_timeout", "strategy")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(KEYS), values, max_size=4),
    st.dictionaries(st.sampled_from(DEPLOY_KEYS), values, max_size=3),
)
def test_any_shape_is_findings_or_one_config_error(top: dict[str, Any], deploy: Any) -> None:
    config = dict(top)
    if deploy and "deploy" not in config:
        config["deploy"] = deploy
    try:
        d = read_deploy(config)
        check_config(d, config, parse=lambda argv: None)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_release_command_string_splits_or_is_skipped(command: str) -> None:
    for call in quiesce_calls(command):
        assert isinstance(call.argv, tuple)
