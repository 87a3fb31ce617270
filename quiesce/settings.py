"""Settings, built once from options and the environment (no env reads at import time)."""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence

from quiesce.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``: safe for output, logs and errors."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{user}:***@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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


def split_urls(values: Sequence[str]) -> list[str]:
    return [u.strip() for v in values for u in v.split(",") if u.strip()]


def redis_urls_from_env(environ: Mapping[str, str]) -> list[str]:
    """Sidekiq's own discovery: ``REDIS_PROVIDER`` names the variable, else ``REDIS_URL``."""
    provider = environ.get("REDIS_PROVIDER", "").strip()
    if provider:
        if "://" in provider:
            raise ConfigError("REDIS_PROVIDER must name a variable (e.g. REDISTOGO_URL), not a URL")
        value = environ.get(provider, "")
        if not value:
            raise ConfigError(f"REDIS_PROVIDER names {provider}, which is not set")
        return split_urls([value])
    return split_urls([environ.get("REDIS_URL", "")])


def validate_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"invalid Redis URL {mask_url(url)}: scheme must be redis://, rediss:// or unix://"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: no host")
    if port == 0:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: port 0")
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: database must be a number")
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
    resolved = split_urls(urls) or redis_urls_from_env(env) or [DEFAULT_REDIS_URL]
    for path in (tls.ca_cert, tls.cert, tls.key):
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS file not found: {path}")
    if connect_timeout_s <= 0 or read_timeout_s <= 0:
        raise ConfigError("timeouts must be positive")
    unique = list(dict.fromkeys(validate_url(u) for u in resolved))
    return Settings(
        redis=tuple(RedisTarget(u, tls) for u in unique),
        namespace=namespace.strip().rstrip(":"),
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
    )
