"""Commands on the wire and replies off it: hiredis-packed pipelines, arguments encoded
with ``surrogateescape`` (a key built from a non-UTF-8 name goes back as the same
bytes), and the parsers of the few replies that are not plain values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis
import redis.exceptions as rex

from quiesce.adapters.redis.connect import (
    Command,
)
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import (
    LedgerWrite,
)


def _ledger_commands(writes: Sequence[LedgerWrite]) -> list[Command]:
    """``HSET`` the record, ``HDEL`` what the history no longer keeps, ``EXPIRE`` the hash
    (a scope that stops deploying loses its history 14 days after its last deploy)."""
    commands: list[Command] = []
    for w in writes:
        commands.append(("HSET", w.key, w.deploy_id, w.body))
        drop = [d for d in w.drop if d != w.deploy_id]
        if drop:
            commands.append(("HDEL", w.key, *drop))
        commands.append(("EXPIRE", w.key, w.ttl_s))
    return commands


def _queue(pipe: Any, *command: str | int | float) -> None:
    """Queue one command on a pipeline (redis-py leaves ``execute_command`` untyped).

    Strings go out as bytes we encode: hiredis' packer ignores ``encoding_errors``, and a
    key built from a non-UTF-8 identity must reach Redis as the bytes Sidekiq wrote.
    """
    # Inlined _wire: a 10,000-process read queues 150,000 arguments.
    pipe.execute_command(
        *[
            arg.encode("utf-8", "surrogateescape") if isinstance(arg, str) else arg
            for arg in command
        ]
    )


def _summary(commands: Sequence[Command], transaction: bool) -> str:
    """``pipeline of 12 commands (HMGET x4, PTTL x4, ...)``: names only, for ``-v``."""
    counts: dict[str, int] = {}
    for command in commands:
        name = str(command[0]).upper()
        counts[name] = counts.get(name, 0) + 1
    shown = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in list(counts.items())[:8])
    more = ", ..." if len(counts) > 8 else ""
    kind = "transaction" if transaction else "pipeline"
    return f"{kind} of {len(commands)} commands ({shown}{more})"


_hiredis_pack: Any  # hiredis.pack_command (its stub types a 1-tuple), or None
try:
    import hiredis

    _hiredis_pack = hiredis.pack_command
except ImportError:  # the release binary leaves hiredis out (bin/build-binary)
    _hiredis_pack = None


def _exchange(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """What a non-transactional ``pipeline().execute(raise_on_error=False)`` does, minus
    its Python packing: hiredis packs each command (a 10,000-process read is ~30,000
    commands; redis-py's packer cost as much as decoding them all). Error replies come
    back in place. No reply callbacks either way: our command names go out as bytes,
    which redis-py's callback table never matched."""
    if not commands:  # as an empty pipeline: no connection, nothing sent
        return []
    args = [tuple(map(_arg_bytes, command)) for command in commands]
    pool = client.connection_pool
    connection: Any  # redis-py leaves send_packed_command and disconnect untyped
    try:
        connection = pool.get_connection()
    except TypeError:  # pragma: no cover - redis-py before 5.3 wants a command name
        connection = pool.get_connection("PIPELINE")
    try:
        if _hiredis_pack is not None:
            connection.send_packed_command([b"".join([_hiredis_pack(a) for a in args])])
        else:  # redis-py's own packer: slower, same bytes
            connection.send_packed_command(connection.pack_commands(args))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except rex.ResponseError as exc:
                replies.append(exc)
    except BaseException:
        # A reply left unread would answer the next command on this connection.
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    return replies


def _arg_bytes(arg: str | int | float | bytes) -> bytes:
    """One argument as redis-py's encoder sends it (numbers as their ``repr``), strings
    with ``surrogateescape`` (see ``_queue``)."""
    if isinstance(arg, str):
        return arg.encode("utf-8", "surrogateescape")
    if isinstance(arg, bytes):
        return arg
    return repr(arg).encode("ascii")


def _wire(arg: str | int | float) -> bytes | int | float:
    return arg.encode("utf-8", "surrogateescape") if isinstance(arg, str) else arg


def _work_hashes(
    replies: Sequence[Any], suffixes: Sequence[str] = k.WORK_SUFFIXES
) -> dict[str, dict[str, str]]:
    """``HGETALL`` replies for ``suffixes``, by suffix (an error reply reads as absent)."""
    out: dict[str, dict[str, str]] = {}
    for suffix, reply in zip(suffixes, replies, strict=True):
        if isinstance(reply, Mapping):
            out[suffix] = {str(f): str(v) for f, v in reply.items()}
        elif isinstance(reply, list | tuple):  # the raw RESP2 reply: field, value, ...
            out[suffix] = {str(f): str(v) for f, v in zip(reply[::2], reply[1::2], strict=True)}
    return out


def _parse_info(reply: Any) -> dict[str, str]:
    """An ``INFO`` reply as ``key -> value``; {} if it was refused or renamed away.

    redis-py parses INFO itself when it recognises the command: accept both shapes.
    """
    if isinstance(reply, Mapping):
        return {str(key): str(value) for key, value in reply.items()}
    if not isinstance(reply, str):
        return {}
    pairs = (line.split(":", 1) for line in reply.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _scanned(reply: Any) -> list[str]:
    """Sidekiq process sets in one ``SCAN`` page (``processes``, ``<namespace>:processes``)."""
    if not (isinstance(reply, list | tuple) and len(reply) == 2):
        return []
    keys = sorted(str(x) for x in reply[1])
    return [key for key in keys if key == "processes" or key.endswith(":processes")]


def _keyspace(reply: Any) -> dict[int, int] | None:
    """``INFO keyspace`` as db -> key count (``db3:keys=12,expires=0,...``); None: refused."""
    if isinstance(reply, Exception) or reply is None:
        return None
    dbs: dict[int, int] = {}
    parsed = reply.items() if isinstance(reply, Mapping) else _parse_info(reply).items()
    for name, value in parsed:
        name = str(name)
        if not (name.startswith("db") and name[2:].isdigit()):
            continue
        if isinstance(value, Mapping):  # redis-py parsed it: {"keys": 12, ...}
            count = str(value.get("keys", ""))
        else:
            count = str(value).split(",", 1)[0].removeprefix("keys=")
        if count.isdigit():
            dbs[int(name[2:])] = int(count)
    return dbs


def _hash_reply(reply: Any) -> dict[str, str]:
    """An ``HGETALL`` reply as field -> value (a dict, or RESP2's flat list)."""
    if isinstance(reply, Mapping):
        return {str(f): str(v) for f, v in reply.items()}
    if isinstance(reply, list | tuple):
        return {str(f): str(v) for f, v in zip(reply[::2], reply[1::2], strict=False)}
    return {}


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
