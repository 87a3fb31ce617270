"""The Fly Machines API client: the only module that imports httpx.

Three calls: list an app's Machines (one request for the whole app; the API has no
pagination and answers a JSON array), get one Machine, restart one Machine. Results are
``quiesce.model.machines.FlyMachine``. Reads are retried on timeouts, connection failures,
408, 429 (after its ``Retry-After``) and 5xx, a bounded number of times
(``retry.fly_retry``). A restart is retried only when the request cannot have taken
effect: the connection was never made, or 429. 401/403/404 fail at once, in one line
naming the likely cause (bad token, wrong app). The token goes into the
``Authorization`` header and nowhere else: not in messages, not in ``repr``, not in logs.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from quiesce.adapters.retry import fly_retry
from quiesce.errors import ConfigError, FlyProblem, FlyRefused, FlyUnavailable
from quiesce.model.machines import FlyMachine, parse_machine, parse_machines

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.machines.dev"
"""The public Machines API; inside Fly's network ``http://_api.internal:4280`` also works."""

TIMEOUT_S = 10.0
"""Per request: the list of 500 Machines is a large JSON body."""

MIN_REQUEST_S = 1.0
"""The shortest timeout an attempt gets when a call's budget is nearly spent."""

RESTART_INTERVAL_S = 1.0
"""Between two restarts: Fly allows 1 request/s per action and Machine (burst 3); one a
second across the app also keeps a recovery from restarting the whole fleet at once."""

_MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")


@dataclasses.dataclass(frozen=True, slots=True)
class FlyConfig:
    app: str
    token: str = dataclasses.field(repr=False)
    base_url: str = DEFAULT_BASE_URL

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, app: str | None = None
    ) -> tuple[FlyConfig | None, str | None]:
        """``(config, None)``, or ``(None, why)`` when the Fly API cannot be used (rejoin
        then works from heartbeats alone and says so)."""
        app = (app or environ.get("FLY_APP_NAME") or "").strip()
        token = (environ.get("FLY_API_TOKEN") or "").strip()
        base = (environ.get("FLY_API_HOSTNAME") or "").strip() or DEFAULT_BASE_URL
        if not token and not app:
            return None, "no FLY_API_TOKEN and no app (--app, FLY_APP_NAME)"
        if not token:
            return None, "no FLY_API_TOKEN"
        if not app:
            return None, "no app (--app, FLY_APP_NAME)"
        if "://" not in base:
            base = f"https://{base}"
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"FLY_API_HOSTNAME must be an http(s) URL: {base[:80]!r}")
        return cls(app=app, token=token, base_url=base.rstrip("/")), None


def authorization(token: str) -> str:
    """``FlyV1 ...`` as given; a bare macaroon gets ``FlyV1``; anything else is Bearer."""
    token = token.strip()
    if token.startswith("FlyV1 "):
        return token
    bare = token.removeprefix("Bearer ").strip()
    if bare.startswith(_MACAROON_PREFIXES):
        return f"FlyV1 {bare}"
    return f"Bearer {bare}"


class _Status(Exception):
    """An HTTP error reply, kept until the retries are over."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _retry_after(exc: BaseException) -> float | None:
    if not isinstance(exc, _Status):
        return None
    value = exc.response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _read_transient(exc: BaseException) -> bool:
    if isinstance(exc, _Status):
        code = exc.response.status_code
        return code in (408, 429) or code >= 500
    return isinstance(exc, httpx.TimeoutException | httpx.TransportError)


def _write_transient(exc: BaseException) -> bool:
    """Only where the restart cannot have happened: no connection, or 429 (refused)."""
    if isinstance(exc, _Status):
        return exc.response.status_code == 429
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


class FlyClient:
    """One app's Machines. ``transport`` replaces the network (tests pass
    ``httpx.MockTransport``); ``sleep``/``clock`` pace the restarts."""

    def __init__(
        self,
        config: FlyConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = TIMEOUT_S,
        attempts: int | None = None,
        restart_interval_s: float = RESTART_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.app = config.app
        self.base_url = config.base_url
        self.calls = 0
        """HTTP requests sent (retries included): the benchmark's round trips."""
        self._token = config.token
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._interval_s = restart_interval_s
        self._clock, self._sleep = clock, sleep
        self._last_write: float | None = None
        self._http = httpx.Client(
            base_url=config.base_url,
            headers={"Authorization": authorization(config.token), "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"FlyClient(app={self.app!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FlyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------------
    def list_machines(
        self, process_group: str | None = None, *, budget_s: float | None = None
    ) -> list[FlyMachine]:
        """Every Machine of the app in one request (release-command, console and canary
        Machines dropped); ``process_group`` filters server side. ``budget_s`` bounds the
        whole call, retries included (at least ``MIN_REQUEST_S``): a wait with a deadline
        must not be held past it by a hung API."""
        params = {"metadata.fly_process_group": process_group} if process_group else None
        data = self._json(
            "GET", self._path(), params=params, what=f"app {self.app!r}", budget_s=budget_s
        )
        machines, bad = parse_machines(data)
        if not isinstance(data, list):
            raise FlyUnavailable("Fly API: the Machine list is not a JSON array")
        if bad:
            log.warning("Fly API: %d Machine entries without an id were ignored", bad)
        return machines

    def get_machine(self, machine_id: str, *, budget_s: float | None = None) -> FlyMachine:
        """One Machine; ``budget_s`` bounds the call, retries included (as ``list_machines``)."""
        data = self._json(
            "GET", self._path(machine_id), what=f"Machine {machine_id}", budget_s=budget_s
        )
        machine = parse_machine(data)
        if machine is None:
            raise FlyUnavailable(f"Fly API: Machine {machine_id} came back without an id")
        return machine

    def restart_machine(self, machine_id: str) -> None:
        """``POST .../restart``, at most one every ``restart_interval_s``."""
        if self._last_write is not None:
            wait = self._last_write + self._interval_s - self._clock()
            if wait > 0:
                self._sleep(wait)
        try:
            path = self._path(machine_id) + "/restart"
            self._json("POST", path, what=f"Machine {machine_id}", write=True)
        finally:
            self._last_write = self._clock()

    # -- plumbing -----------------------------------------------------------------
    def _path(self, machine_id: str | None = None) -> str:
        base = f"/v1/apps/{quote(self.app, safe='')}/machines"
        return f"{base}/{quote(machine_id, safe='')}" if machine_id else base

    def _json(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        write: bool = False,
        budget_s: float | None = None,
    ) -> Any:
        deadline = None
        if budget_s is not None:
            deadline = time.monotonic() + max(budget_s, MIN_REQUEST_S)
        policy = fly_retry(
            _write_transient if write else _read_transient,
            _retry_after,
            **({"attempts": self._attempts} if self._attempts else {}),
            deadline=deadline,
        )
        timeout_s = self._timeout_s
        try:
            for attempt in policy:
                with attempt:
                    self.calls += 1
                    if deadline is not None:
                        left = max(deadline - time.monotonic(), MIN_REQUEST_S)
                        timeout_s = min(self._timeout_s, left)
                    response = self._http.request(
                        method,
                        path,
                        params=params,
                        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
                    )
                    log.debug(
                        "Fly API %s %s: %d (fly-request-id %s)",
                        method,
                        path,
                        response.status_code,
                        response.headers.get("fly-request-id", "-"),
                    )
                    if response.status_code >= 400:
                        raise _Status(response)
                    if not response.content:
                        return None
                    return response.json()
        except _Status as exc:
            raise self._status_error(exc.response, what) from None
        except httpx.TimeoutException:
            raise FlyUnavailable(
                f"Fly API did not answer within {timeout_s:.3g} s ({self.base_url})"
            ) from None
        except httpx.HTTPError as exc:
            raise FlyUnavailable(
                f"cannot reach the Fly API at {self.base_url}: {self._clean(str(exc))}"
            ) from None
        except ValueError:
            raise FlyUnavailable(f"Fly API: {what}: the reply is not JSON") from None
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _status_error(self, response: httpx.Response, what: str) -> FlyProblem:
        code = response.status_code
        detail = self._clean(_error_text(response))
        said = f": {detail}" if detail else ""
        if code in (401, 403):
            return FlyRefused(
                f"Fly API refused the token ({code}{said}); check FLY_API_TOKEN "
                f"(a deploy token of app {self.app!r})",
                status=code,
            )
        if code == 404:
            return FlyRefused(
                f"Fly API: {what} not found (404{said}); check --app / FLY_APP_NAME", status=code
            )
        if code == 409:
            # A lease: flyctl holds one on every Machine it is updating.
            return FlyUnavailable(
                f"Fly API: {what} is leased by someone else (409{said}): a deploy may be "
                "updating it",
                status=code,
            )
        if code == 429:
            return FlyUnavailable(
                f"Fly API rate limit still hit after retries (429{said})", status=code
            )
        return FlyUnavailable(f"Fly API error {code} for {what}{said}", status=code)

    def _clean(self, text: str) -> str:
        """One line, short, and never the token (an echoing proxy must not leak it):
        masked before the cut, so no prefix of it survives at the end either."""
        return _mask_token(" ".join(text.split()), self._token)[:200]


_MACAROON = re.compile(r"\bfm[0-9][a-z]?_[A-Za-z0-9_+/=\-]+")
"""Anything shaped like a Fly macaroon, ours or not (a token is several, comma-separated)."""


def _mask_token(text: str, token: str) -> str:
    bare = token.strip().removeprefix("FlyV1 ").removeprefix("Bearer ").strip()
    parts = {token, token.strip(), authorization(token), bare, *bare.split(",")}
    for secret in sorted((p.strip() for p in parts if len(p.strip()) >= 8), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _MACAROON.sub("***", text)


def _error_text(response: httpx.Response) -> str:
    """Fly's ``{"error": ..., "status": ...}`` body, or the start of a non-JSON one."""
    try:
        data = response.json()
    except (ValueError, json.JSONDecodeError):
        return response.text[:200]
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return ""
