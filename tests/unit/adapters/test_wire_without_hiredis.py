"""The release binary leaves hiredis out (bin/build-binary): the pipeline exchange must
pack with redis-py then, to the same bytes on the wire."""

from __future__ import annotations

import pytest

from quiesce.adapters.redis import wire


def test_the_exchange_packs_the_same_without_hiredis(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[list[bytes]] = []

    class Connection:
        def pack_commands(self, commands: list[tuple[bytes, ...]]) -> list[bytes]:
            import redis.connection

            packer = redis.connection.Connection()  # type: ignore[no-untyped-call]
            return packer.pack_commands(commands)  # type: ignore[no-untyped-call, no-any-return]

        def send_packed_command(self, chunks: list[bytes]) -> None:
            sent.append(list(chunks))

        def read_response(self) -> str:
            return "OK"

        def disconnect(self) -> None:
            pass

    class Pool:
        def get_connection(self) -> Connection:
            return Connection()

        def release(self, connection: Connection) -> None:
            pass

    class Client:
        connection_pool = Pool()

    commands = [("SET", "k\udcff", 1), ("HMGET", "h", "a", "b")]
    with_hiredis = wire._exchange(Client(), commands)  # type: ignore[arg-type]
    monkeypatch.setattr(wire, "_hiredis_pack", None)
    without = wire._exchange(Client(), commands)  # type: ignore[arg-type]
    assert with_hiredis == without == ["OK", "OK"]
    assert b"".join(sent[0]) == b"".join(sent[1])
