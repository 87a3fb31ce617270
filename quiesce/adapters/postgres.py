"""PostgreSQL connection counts (optional): the only module that imports psycopg.

Installed with the ``postgres`` extra (``pip install '.[postgres]'`` from a checkout). One
query per read: client backends by ``application_name`` and ``max_connections``. quiesce's own
connection says ``application_name=quiesce`` and is left out of the counts.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import Any

from quiesce.errors import ConfigError, PostgresUnavailable
from quiesce.model.capacity import PostgresStats
from quiesce.settings import mask_url

log = logging.getLogger(__name__)

APPLICATION_NAME = "quiesce"

_QUERY = """
select coalesce(application_name, ''), count(*)::int,
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid()
group by 1
union all
select null, 0, current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
"""


class PostgresReader:
    """Keeps one connection between reads (reconnects after a failure)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "--postgres-url needs the postgres extra: pip install '.[postgres]' in a "
                "checkout of quiesce (docs/install.md)"
            ) from None
        self._psycopg: Any = psycopg
        self.url = url
        self.label = mask_url(url)
        self.timeout_s = timeout_s
        self._conn: Any = None

    def _connect(self) -> Any:
        ms = int(self.timeout_s * 1000)
        return self._psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, int(self.timeout_s)),
            application_name=APPLICATION_NAME,
            options=f"-c statement_timeout={ms}",
        )

    def read(self) -> PostgresStats:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            rows = self._conn.execute(_QUERY).fetchall()
        except self._psycopg.Error as exc:
            self.close()
            reason = _scrub(" ".join(str(exc).split()), self.url)[:200] or type(exc).__name__
            raise PostgresUnavailable(f"cannot read PostgreSQL ({self.label}): {reason}") from None
        backends = {str(name): int(n) for name, n, _, _ in rows if name is not None}
        _, _, max_connections, reserved = rows[-1]
        return PostgresStats(backends, int(max_connections), int(reserved))

    def read_once(self) -> PostgresStats:
        """One read, then the connection is closed (the release command's preflight)."""
        try:
            return self.read()
        finally:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection: nothing left to do
                log.debug("closing the PostgreSQL connection failed", exc_info=True)
            self._conn = None


_CONNINFO_PASSWORD = re.compile(r"password\s*=\s*'?([^\s'&]+)", re.IGNORECASE)


def _scrub(text: str, url: str) -> str:
    """libpq quotes the connection string it failed to parse (``missing "=" after
    "postgres:/u:pw@h"``, an unclosed IPv6 bracket): never its password."""
    text = text.replace(url, mask_url(url)) if url else text
    secrets = {m.group(1) for m in _CONNINFO_PASSWORD.finditer(url)}
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        password = None
    if password:
        secrets |= {password, urllib.parse.unquote(password)}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r'(missing "=" after )"[^"]*"', r'\1"***"', text)
