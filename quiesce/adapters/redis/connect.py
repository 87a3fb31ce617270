"""Connecting to Redis: URLs, TLS, ACL users, timeouts, and the one place that turns a
redis-py exception into quiesce's own (``classify``): which server, which cause, which
exit code. Passwords never reach a message (targets carry masked labels).
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from quiesce.errors import (
    ConfigError,
    ProtocolError,
    QuiesceError,
    RedisProblem,
    RedisRefused,
    RedisUnavailable,
)
from quiesce.settings import RedisTarget, Settings

log = logging.getLogger(__name__)

try:  # redis-py 7.1+: no CLIENT SETINFO on connect (two round trips fewer, nothing written)
    from redis.driver_info import DriverInfo

    _NO_CLIENT_SETINFO: dict[str, Any] = {"driver_info": DriverInfo(name=None, lib_version=None)}
except ImportError:  # pragma: no cover - older redis-py
    _NO_CLIENT_SETINFO = {"lib_name": None, "lib_version": None}

Command = tuple[str | int | float, ...]


# -- error classification ---------------------------------------------------------
def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((c for c in _causes(exc) if isinstance(c, kind)), None)


# redis-py strips the code from the replies it maps to a class (OOM, NOPERM, ...) and
# keeps it on the others (WRONGTYPE): classes first, the code only where there is none.
_OutOfMemory: type[Exception] = getattr(rex, "OutOfMemoryError", rex.ResponseError)


def _reply_code(exc: BaseException) -> str:
    """The error code an unmapped Redis error reply starts with (``WRONGTYPE``)."""
    text = str(exc).strip()
    return text.split(" ", 1)[0] if text[:1].isupper() else ""


def _in_tls_handshake(exc: BaseException) -> bool:
    """Whether the failure was raised inside ``SSLSocket.do_handshake`` (by frame, not text)."""
    for cause in _causes(exc):
        tb = cause.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "do_handshake":
                return True
            tb = tb.tb_next
    return False


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: the connection failed or timed out, and not because of TLS
    or credentials (those do not fix themselves)."""
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return False
    if _first(exc, ssl.SSLError) is not None or _in_tls_handshake(exc):
        return False
    return isinstance(exc, rex.ConnectionError | rex.TimeoutError)


def classify(exc: BaseException, target: RedisTarget, read_timeout_s: float) -> QuiesceError:
    """A redis-py (or socket) failure as one of ours: the class from the exception types
    in the cause chain, then a one-line message. Never includes a password."""
    url = target.label
    if isinstance(exc, rex.AuthenticationError | rex.AuthenticationWrongNumberOfArgsError):
        return RedisRefused(f"Redis refused authentication: {one_line(exc)}", url=url)
    if is_noperm(exc):
        return RedisRefused(_acl_message(exc), url=url)
    tls = _first(exc, ssl.SSLError)
    if tls is not None:
        return RedisRefused(_tls_message(tls, target), url=url)
    if isinstance(exc, rex.BusyLoadingError):
        return RedisUnavailable("Redis is still loading its dataset", url=url)
    if target.is_tls and _in_tls_handshake(exc):
        # A TLS client at a plain-text port: the server waits for a command that never
        # comes, so the handshake times out. A refusal no retry fixes.
        return RedisRefused(
            "TLS handshake got no answer: is this a plain-text port? use redis://", url=url
        )
    if isinstance(exc, rex.TimeoutError) or _first(exc, TimeoutError) is not None:
        return RedisUnavailable(f"Redis did not answer within {read_timeout_s:g} s", url=url)
    if isinstance(exc, rex.ConnectionError):
        return _connection_problem(exc, target)
    if isinstance(exc, rex.ReadOnlyError):
        return RedisRefused("Redis is a read-only replica; point at the primary", url=url)
    if isinstance(exc, _OutOfMemory):
        return RedisRefused("Redis is out of memory (maxmemory reached)", url=url)
    if isinstance(exc, rex.ResponseError) and "DB index is out of range" in str(exc):
        return ConfigError(f"the database in the Redis URL does not exist on {url}")
    if _reply_code(exc) == "WRONGTYPE":
        return ProtocolError(
            "a Sidekiq key holds the wrong Redis type; is this Sidekiq's database?", url=url
        )
    return ProtocolError(f"Redis replied with an error: {one_line(exc)}", url=url)


def _connection_problem(exc: BaseException, target: RedisTarget) -> RedisProblem:
    url = target.label
    if _first(exc, ConnectionRefusedError) is not None:
        return RedisUnavailable("cannot connect to Redis: connection refused", url=url)
    if _first(exc, socket.gaierror) is not None:
        return RedisUnavailable("cannot connect to Redis: unknown host", url=url)
    if _first(exc, FileNotFoundError) is not None:
        return RedisUnavailable("cannot connect to Redis: no such unix socket", url=url)
    if isinstance(exc, rex.AuthorizationError):
        return RedisRefused(f"Redis refused the connection: {one_line(exc)}", url=url)
    reset = _first(exc, ConnectionResetError | BrokenPipeError)  # type: ignore[arg-type]
    if reset is not None or "closed by server" in str(exc):
        if not target.is_tls:
            # A TLS port cuts a plain-text client off before any reply: a refusal that no
            # retry fixes, unlike a server that went away (which refuses the reconnect).
            return RedisRefused(
                "Redis closed the connection before answering (does it require TLS? use rediss://)",
                url=url,
            )
        return RedisUnavailable("Redis closed the connection", url=url)
    return RedisUnavailable(f"cannot reach Redis: {one_line(exc).rstrip('.')}", url=url)


_ACL_COMMAND = re.compile(r"'([^']+)' command")


def _acl_message(exc: BaseException) -> str:
    """A NOPERM reply as the permission to grant: the command (``+lpush``) or the key.

    Redis names a refused command but never a refused key: the command quiesce sent is
    kept on the exception (``annotate``) so the message can name both.
    """
    command: Command | None = getattr(exc, "quiesce_command", None)
    sent = " ".join(str(a) for a in command[:1]).upper() if command else ""
    named = _ACL_COMMAND.search(str(exc))
    if named is not None:
        name = named.group(1).lower()
        return f"Redis ACL: the user may not run {name.replace('|', ' ').upper()} (grant +{name})"
    if "key" in str(exc).lower() and command is not None and len(command) > 1:
        key = str(command[1])
        key = key if len(key) <= 120 else key[:117] + "..."
        return (
            f"Redis ACL: the user may not use the key {key!r} with {sent} "
            "(grant a key pattern that matches it)"
        )
    return f"Redis ACL: the user may not run a command quiesce needs: {one_line(exc)}"


def is_noperm(exc: BaseException) -> bool:
    """An ACL refusal, also when Redis 7 reports a refused ``EXEC`` as the transaction's
    abort (``EXECABORT Transaction discarded because of: NOPERM ...``)."""
    if isinstance(exc, rex.NoPermissionError):
        return True
    return isinstance(exc, rex.ResponseError) and "NOPERM " in str(exc)


def annotate(exc: BaseException, command: Command | None) -> None:
    """Keep the command a NOPERM reply refused, for ``_acl_message``."""
    if command is not None and is_noperm(exc):
        exc.quiesce_command = command  # type: ignore[attr-defined]


def _tls_message(tls: BaseException, target: RedisTarget) -> str:
    if isinstance(tls, ssl.SSLCertVerificationError):
        detail = tls.verify_message or "certificate verify failed"
        if "hostname" in detail.lower() or "IP address mismatch" in detail:
            return f"TLS: the server certificate does not match the host ({detail})"
        return f"TLS: the server certificate is not trusted ({detail}; see --tls-ca-cert)"
    reason = getattr(tls, "reason", None) or one_line(tls)
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return f"TLS handshake failed: {reason}; is this a TLS port? use redis:// for plain text"
    if "PEM" in str(reason).upper() or reason in ("KEY_VALUES_MISMATCH", "NO_START_LINE"):
        return f"TLS: cannot load the client certificate or key (--tls-cert, --tls-key): {reason}"
    mine = "its" if target.tls.cert else "a"
    if isinstance(tls, ssl.SSLEOFError) or reason in _CLIENT_CERT_REFUSED:
        # A server that verifies clients hangs up mid-handshake, or alerts, when the
        # client sends no certificate or one it does not trust.
        return (
            f"TLS: the server ended the handshake ({reason}): does it require a client "
            f"certificate (--tls-cert, --tls-key) signed by {mine} CA it trusts?"
        )
    return f"TLS handshake failed: {reason}"


_CLIENT_CERT_REFUSED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "UNEXPECTED_EOF_WHILE_READING",
    }
)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def connect(target: RedisTarget, settings: Settings) -> redis.Redis:
    """A redis-py client for one target with quiesce's timeouts, TLS and RESP2.

    Raises ``ConfigError`` for a URL or option redis-py cannot use: found here, at
    start-up, not at the first command.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "encoding_errors": "surrogateescape",
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.read_timeout_s,
        # Retries are ours (quiesce.adapters.retry), bounded and only for transient errors.
        "retry": Retry(NoBackoff(), 0),
        # RESP2: no HELLO on connect, and Redis 4/5 (Sidekiq 5.2/6.x era) understand it.
        "protocol": 2,
    }
    if not target.is_tls:
        # Over TLS 1.3, redis-py 8 then finds the server's session tickets unread and
        # refuses the fresh connection ("Connection not ready"): keep SETINFO there.
        options.update(_NO_CLIENT_SETINFO)
    else:
        tls = target.tls
        # Verification said out loud: redis-py before 6.0 did not check the hostname by
        # default (a certificate for any host passed).
        options.update(ssl_ca_certs=tls.ca_cert, ssl_certfile=tls.cert, ssl_keyfile=tls.key)
        if tls.insecure or _query_skips(target, "ssl_cert_reqs", {"none", "cert_none"}):
            # The URL's own ssl_* query still wins; these keep the options consistent
            # (ssl refuses a hostname check without a certificate check).
            options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
        else:
            options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    if target.is_tls and _skips_verification(target):
        # Said on every run (not only with -v): a deploy that stopped checking who it
        # talks to must not look like one that checks.
        log.warning(
            "TLS certificate verification is OFF for %s (--tls-skip-verify or the URL's "
            "ssl_cert_reqs/ssl_check_hostname): anyone on the network path can pose as it",
            target.label,
        )
    try:
        client = redis.Redis.from_url(target.url, **options)
        # Builds (does not open) a connection: bad query options fail here, not mid-deploy.
        client.connection_pool.make_connection()
    except (ValueError, TypeError, rex.RedisError) as exc:
        raise ConfigError(f"cannot use the Redis URL {target.label}: {one_line(exc)}") from None
    return client


def _query_skips(target: RedisTarget, name: str, off: set[str]) -> bool:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target.url).query)
    return bool({v.strip().lower() for v in query.get(name, [])} & off)


def _skips_verification(target: RedisTarget) -> bool:
    """``--tls-skip-verify``, or a URL query that turns a check off (redis-py lets the
    query win over options: ``?ssl_cert_reqs=none``, ``?ssl_check_hostname=false``)."""
    return (
        target.tls.insecure
        or _query_skips(target, "ssl_cert_reqs", {"none", "cert_none"})
        or _query_skips(target, "ssl_check_hostname", {"false", "0", "no", "n", "f", "off"})
    )
