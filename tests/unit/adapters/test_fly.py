"""The Fly Machines API client: a local HTTP server answering the documented shapes, and
``httpx.MockTransport`` for the small cases."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
import tenacity

from quiesce.adapters.fly import FlyClient, FlyConfig, _retry_after, _Status, authorization
from quiesce.adapters.retry import FLY_ATTEMPTS, FLY_MAX_WAIT_S, _fly_wait
from quiesce.errors import FlyRefused, FlyUnavailable
from quiesce.model.machines import parse_machine
from quiesce.sim.fly import machine_json as sim_machine_json
from tests.support.fly import FakeFly, fake_fly

__all__ = ["FakeFly", "fake_fly"]  # the fixture, and the server other tests import
TOKEN = "FlyV1 fm2_secret-token-value"
APP = "my-app"
IMAGE = "registry.fly.io/my-app:deployment-01J9Z3F0ABCDEF0123456789XY"


def machine_json(mid: str, group: str = "worker", state: str = "started", **meta: str) -> Any:
    return sim_machine_json(
        mid, group=group, state=state, image=IMAGE, metadata={"fly_release_version": "63", **meta}
    )


def client_for(server: FakeFly, **kw: Any) -> FlyClient:
    return FlyClient(FlyConfig(app=APP, token=TOKEN, base_url=server.url), **kw)


LIST = f"/v1/apps/{APP}/machines"


def test_list_keeps_what_rejoin_needs_and_drops_release_console_canary(fake_fly: FakeFly) -> None:
    fake_fly.answer(
        "GET",
        LIST,
        200,
        [
            machine_json("3d8d413b29d089"),
            machine_json("release1", group="fly_app_release_command"),
            machine_json("console1", group="fly_app_console"),
            machine_json("canary1", fly_canary="true"),
            {"no": "id"},
        ],
    )
    with client_for(fake_fly) as fly:
        machines = fly.list_machines(process_group="worker")
    assert [m.id for m in machines] == ["3d8d413b29d089"]
    m = machines[0]
    assert (m.state, m.region, m.process_group, m.release_version) == (
        "started",
        "iad",
        "worker",
        "63",
    )
    assert m.image_ref == "registry.fly.io/my-app:deployment-01J9Z3F0ABCDEF0123456789XY"
    assert m.instance_id == "01J9Z3K8Q7V6T5R4P3N2M1L0KJ"
    assert m.updated_at == 1741105267.0
    method, path, headers = fake_fly.requests[0]
    assert (method, path) == ("GET", f"{LIST}?metadata.fly_process_group=worker")
    assert headers["Authorization"] == TOKEN  # a FlyV1 token goes as is
    assert fly.calls == 1


def test_get_and_restart_one_machine(fake_fly: FakeFly) -> None:
    fake_fly.answer("GET", f"{LIST}/abc", 200, machine_json("abc", state="stopped"))
    fake_fly.answer("POST", f"{LIST}/abc/restart", 200, {"ok": True})
    with client_for(fake_fly) as fly:
        assert fly.get_machine("abc").stopped
        fly.restart_machine("abc")
    assert fake_fly.requests[-1][:2] == ("POST", f"{LIST}/abc/restart")


def test_401_is_one_line_naming_the_token_without_showing_it(fake_fly: FakeFly) -> None:
    # An API that echoes the header back must not make us print it.
    fake_fly.answer("GET", LIST, 401, {"error": f"Authenticate: token validation error {TOKEN}"})
    with client_for(fake_fly) as fly, pytest.raises(FlyRefused) as caught:
        fly.list_machines()
    text = str(caught.value)
    assert "FLY_API_TOKEN" in text and "401" in text and "\n" not in text
    assert "secret-token-value" not in text
    assert len(fake_fly.requests) == 1  # not retried


def test_404_names_the_app(fake_fly: FakeFly) -> None:
    fake_fly.answer("GET", LIST, 404, {"error": "app not found"})
    with client_for(fake_fly) as fly, pytest.raises(FlyRefused) as caught:
        fly.list_machines()
    assert "my-app" in str(caught.value) and "FLY_APP_NAME" in str(caught.value)
    assert len(fake_fly.requests) == 1


def test_429_waits_for_retry_after_then_succeeds(fake_fly: FakeFly) -> None:
    fake_fly.answer("GET", LIST, 429, {"error": "rate limited"}, {"Retry-After": "0.2"})
    fake_fly.answer("GET", LIST, 200, [machine_json("m1")])
    with client_for(fake_fly) as fly:
        assert [m.id for m in fly.list_machines()] == ["m1"]
    assert len(fake_fly.requests) == 2


def test_retry_after_is_honoured_and_capped() -> None:
    def status(headers: dict[str, str]) -> _Status:
        return _Status(httpx.Response(429, headers=headers))

    assert _retry_after(status({"Retry-After": "7"})) == 7.0
    assert _retry_after(status({})) is None
    assert _retry_after(ValueError()) is None
    wait = _fly_wait(_retry_after)
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.set_exception((_Status, status({"Retry-After": "7"}), None))
    assert wait(state) == 7.0
    state.set_exception((_Status, status({"Retry-After": "3600"}), None))
    assert wait(state) == FLY_MAX_WAIT_S


def test_503_is_retried_a_bounded_number_of_times(fake_fly: FakeFly) -> None:
    fake_fly.answer("GET", LIST, 503, b"upstream unavailable", {"Retry-After": "0"})
    with client_for(fake_fly) as fly, pytest.raises(FlyUnavailable) as caught:
        fly.list_machines()
    assert "503" in str(caught.value) and "upstream unavailable" in str(caught.value)
    assert len(fake_fly.requests) == FLY_ATTEMPTS


def test_a_budget_caps_retry_after_and_stops_the_retries(fake_fly: FakeFly) -> None:
    # Retry-After 9 s would hold the call for up to 3 x 9 s; the budget ends it instead.
    fake_fly.answer("GET", LIST, 429, {"error": "rate limited"}, {"Retry-After": "9"})
    started = time.monotonic()
    with client_for(fake_fly) as fly, pytest.raises(FlyUnavailable) as caught:
        fly.list_machines(budget_s=1.5)
    took = time.monotonic() - started
    assert "429" in str(caught.value)
    assert len(fake_fly.requests) == 2  # the first, then one after the wait cut to 1.5 s
    assert took < 5.0, took  # a bound on a hang, not a measurement


def test_503_then_success(fake_fly: FakeFly) -> None:
    fake_fly.answer("GET", LIST, 503, {"error": "busy"})
    fake_fly.answer("GET", LIST, 200, [])
    with client_for(fake_fly) as fly:
        assert fly.list_machines() == []
    assert len(fake_fly.requests) == 2


def test_slow_response_times_out_and_is_retried(fake_fly: FakeFly) -> None:
    fake_fly.answer("GET", LIST, 200, [], delay_s=2.0)
    with client_for(fake_fly, timeout_s=0.2, attempts=2) as fly, pytest.raises(FlyUnavailable) as c:
        fly.list_machines()
    assert "did not answer within 0.2 s" in str(c.value)
    assert len(fake_fly.requests) == 2


def test_a_failed_restart_is_not_repeated_unless_refused_with_429(fake_fly: FakeFly) -> None:
    fake_fly.answer("POST", f"{LIST}/m1/restart", 503, {"error": "boom"})
    with client_for(fake_fly) as fly, pytest.raises(FlyUnavailable):
        fly.restart_machine("m1")
    assert len(fake_fly.requests) == 1  # it may have happened: no blind repeat


# -- MockTransport: the small cases ---------------------------------------------------------


def mock_client(handler: Any, token: str = TOKEN, **kw: Any) -> FlyClient:
    return FlyClient(
        FlyConfig(app=APP, token=token, base_url="https://api.machines.dev"),
        transport=httpx.MockTransport(handler),
        **kw,
    )


def test_token_never_in_logs_or_repr(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json=[machine_json("m1")])

    caplog.set_level(logging.DEBUG)
    with mock_client(handler, token="plain-token-123") as fly:
        fly.list_machines()
        assert "plain-token-123" not in repr(fly)
    assert seen == ["Bearer plain-token-123"]
    assert "plain-token-123" not in caplog.text
    assert "plain-token-123" not in repr(FlyConfig(app=APP, token="plain-token-123"))


def test_authorization_header_forms() -> None:
    assert authorization("FlyV1 fm2_abc") == "FlyV1 fm2_abc"
    assert authorization("fm2_abc") == "FlyV1 fm2_abc"
    assert authorization("Bearer xyz") == "Bearer xyz"
    assert authorization("xyz") == "Bearer xyz"


def test_config_from_env_says_why_fly_is_not_used() -> None:
    assert FlyConfig.from_env({})[1] == "no FLY_API_TOKEN and no app (--app, FLY_APP_NAME)"
    assert FlyConfig.from_env({"FLY_APP_NAME": "a"})[1] == "no FLY_API_TOKEN"
    assert FlyConfig.from_env({"FLY_API_TOKEN": "t"})[1] == "no app (--app, FLY_APP_NAME)"
    config, why = FlyConfig.from_env(
        {"FLY_API_TOKEN": "t", "FLY_APP_NAME": "a", "FLY_API_HOSTNAME": "http://_api.internal:4280"}
    )
    assert why is None and config is not None
    assert config.base_url == "http://_api.internal:4280"
    config, _ = FlyConfig.from_env({"FLY_API_TOKEN": "t"}, app="b")
    assert (
        config is not None and config.base_url == "https://api.machines.dev" and config.app == "b"
    )


def test_restarts_are_paced() -> None:
    sleeps: list[float] = []
    now = [100.0]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True})

    fly = mock_client(handler, clock=lambda: now[0], sleep=sleeps.append, restart_interval_s=1.0)
    fly.restart_machine("a")
    now[0] += 0.25
    fly.restart_machine("b")
    assert sleeps == [0.75]


def test_non_json_and_not_a_list_are_unavailable() -> None:
    with (
        mock_client(lambda r: httpx.Response(200, text="<html>")) as fly,
        pytest.raises(FlyUnavailable, match="not JSON"),
    ):
        fly.list_machines()
    with (
        mock_client(lambda r: httpx.Response(200, json={"machines": []})) as fly,
        pytest.raises(FlyUnavailable, match="not a JSON array"),
    ):
        fly.list_machines()


def test_parse_machine_is_tolerant() -> None:
    m = parse_machine({"id": "x", "state": 3, "config": "nope", "updated_at": "garbage"})
    assert m is not None and (m.state, m.process_group, m.updated_at) == ("", "", None)
    assert parse_machine({"id": ""}) is None
    legacy = parse_machine({"id": "y", "config": {"metadata": {"process_group": "app"}}})
    assert legacy is not None and legacy.process_group == "app"
