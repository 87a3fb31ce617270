"""Settings, built once from options and the environment (no env reads at import time)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence

from quiesce.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MAX_TIMEOUT_S = 86_400.0
EXPORTER_PORT = 10437
"""The exporter's port. No other Sidekiq exporter uses it (9292, 9359, 9394, 9168, 9726, 7433,
9090 are taken, and the 9100-9999 range is allocated): see docs/metrics.md."""
"""Upper bound of every timeout and interval option (a day): beyond it the OS rejects
socket and sleep timeouts, and a deploy step would never end."""
_SCHEMES = ("redis", "rediss", "unix")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&#]*")
_CUT = re.compile(r"[/?#]")
_AUTHORITY = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//")
_UNPRINTABLE = re.compile(r"[\x00-\x20\x7f-\x9f]")


def _authority_cut(url: str) -> bool:
    """A raw ``/``, ``?`` or ``#`` before the last ``@`` (``redis://:pa/ss@host``): the URL
    parser ends the host part there, so the password's tail would be read as a path,
    query or fragment and the host from what precedes it."""
    match = _AUTHORITY.match(url)
    rest = url[match.end() :] if match else ""
    if not match or rest.startswith("/"):  # no authority (unix:///path): no password either
        return False
    return "@" in rest and _CUT.search(rest.rpartition("@")[0]) is not None


def _parses_cleanly(url: str) -> bool:
    if _authority_cut(url) or _UNPRINTABLE.search(url):
        return False
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - a bad port raises only when read
    except ValueError:
        return False
    return True


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: safe for output, logs and errors.

    Total (never raises) and never shows a password, whatever the input: when the URL does
    not parse cleanly, everything between ``//`` and the last ``@`` is masked (or, with no
    ``@``, the whole host part), as is any ``password=`` query parameter.
    """
    try:
        return _mask(url)
    except Exception:  # pragma: no cover - defensive: a mask must never fail
        return "<unprintable URL>"


def _mask(url: str) -> str:
    match = _AUTHORITY.match(url)
    if not match:  # no authority; an '@' still hints at credentials typed without '//'
        return "***@" + _mask_query(url.rpartition("@")[2]) if "@" in url else _mask_query(url)
    head, rest = match.group(), url[match.end() :]
    clean = _parses_cleanly(url)
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        if clean:
            return head + _mask_query(rest)
        # `redis://:secret/0` (the '@' forgotten): the host part itself may be the password
        cut = _CUT.search(rest)
        return head + "***" + _mask_query(rest[cut.start() :] if cut else "")
    if clean:
        user, colon, _ = userinfo.partition(":")
        masked = f"{user}:***" if colon else user
    else:
        masked = "***"
    return f"{head}{masked}@{_mask_query(hostpart)}"


def _mask_query(text: str) -> str:
    return _QUERY_PASSWORD.sub(r"\1***", text)


@dataclasses.dataclass(frozen=True, slots=True)
class Tls:
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RedisTarget:
    url: str = dataclasses.field(repr=False)
    tls: Tls = Tls()

    @property
    def label(self) -> str:
        return mask_url(self.url)

    @property
    def is_tls(self) -> bool:
        return self.url.startswith("rediss://")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    redis: tuple[RedisTarget, ...]
    namespace: str = ""
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    default_url: str | None = None
    """Set when neither an option nor the environment named a Redis: the default used."""


def split_urls(values: Sequence[str]) -> list[str]:
    return [u.strip() for v in values for u in v.split(",") if u.strip()]


def redis_urls_from_env(environ: Mapping[str, str]) -> list[str]:
    """Sidekiq's own discovery: ``REDIS_PROVIDER`` names the variable, else ``REDIS_URL``."""
    provider = environ.get("REDIS_PROVIDER", "").strip()
    if provider:
        if not _ENV_NAME.fullmatch(provider):  # never echoed: it may be a URL with a password
            raise ConfigError("REDIS_PROVIDER must name a variable (e.g. REDISTOGO_URL), not a URL")
        value = environ.get(provider, "")
        if not value:
            raise ConfigError(f"REDIS_PROVIDER names {provider}, which is not set")
        return split_urls([value])
    return split_urls([environ.get("REDIS_URL", "")])


def validate_url(url: str) -> str:
    """``url`` if it is a Redis URL quiesce can use; the error never quotes it unmasked (nor
    the URL parser's message, which quotes the text it failed on)."""

    def invalid(why: str) -> ConfigError:
        return ConfigError(f"invalid Redis URL {mask_url(url)}: {why}")

    if _UNPRINTABLE.search(url):
        raise invalid("it contains a space or a control character")
    if _authority_cut(url):
        raise invalid(
            "'/', '?' or '#' before the '@': percent-encode them in the password (%2F, %3F, %23)"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise invalid("bad port or IPv6 address") from None
    if parts.scheme not in _SCHEMES:
        raise invalid("scheme must be redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise invalid("no host")
    if port == 0:
        raise invalid("port 0")
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise invalid("database must be a number")
    return url


def build_settings(
    *,
    urls: Sequence[str],
    environ: Mapping[str, str] | None = None,
    namespace: str = "",
    tls: Tls = Tls(),
    connect_timeout_s: float = 3.0,
    read_timeout_s: float = 5.0,
) -> Settings:
    env = os.environ if environ is None else environ
    given = split_urls(urls)
    if urls and not given:  # `-r ""` must not quietly fall back to $REDIS_URL or localhost
        raise ConfigError("empty --redis-url")
    from_env = redis_urls_from_env(env)
    resolved = given or from_env or [DEFAULT_REDIS_URL]
    for path in (tls.ca_cert, tls.cert, tls.key):
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS file not found: {path}")
    for name, value in (("connect", connect_timeout_s), ("read", read_timeout_s)):
        if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
            raise ConfigError(f"--{name}-timeout must be above 0 and at most {MAX_TIMEOUT_S:g}")
    unique = list(dict.fromkeys(validate_url(u) for u in resolved))
    return Settings(
        redis=tuple(RedisTarget(u, tls) for u in unique),
        namespace=namespace.strip().rstrip(":"),
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
        default_url=None if given or from_env else DEFAULT_REDIS_URL,
    )
