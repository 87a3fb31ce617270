"""rediss:// against a real TLS redis-server (certificate made with openssl per session)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quiesce.cli import app
from tests.support import RedisServer, free_port


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Path]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (bin/setup installs it)")
    certs = tmp_path_factory.mktemp("tls")
    cert, key = certs / "cert.pem", certs / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    with RedisServer(
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        port=port,
    ) as server:  # fmt: skip
        yield server, cert


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_tls_with_ca_certificate(tls_server: tuple[RedisServer, Path]) -> None:
    server, cert = tls_server
    url = f"rediss://127.0.0.1:{server.port}/0"
    code, out, err = run("--redis-url", url, "--tls-ca-cert", str(cert), "status")
    assert code == 0, err
    assert "no Sidekiq processes registered" in out
    code, out, err = run("--redis-url", url, "--tls-ca-cert", str(cert), "quiet", "--release", "t")
    assert code == 0, err


def test_tls_insecure_skips_verification(tls_server: tuple[RedisServer, Path]) -> None:
    server, _ = tls_server
    code, _, err = run(
        "--redis-url", f"rediss://127.0.0.1:{server.port}/0", "--tls-insecure", "status"
    )
    assert code == 0, err


def test_tls_unknown_certificate_exit_5(tls_server: tuple[RedisServer, Path]) -> None:
    server, _ = tls_server
    code, _, err = run("--redis-url", f"rediss://127.0.0.1:{server.port}/0", "status")
    assert code == 5
    assert "certificate is not trusted" in err and len(err.strip().splitlines()) == 1


def test_plain_text_to_a_tls_port_exit_5(tls_server: tuple[RedisServer, Path]) -> None:
    server, _ = tls_server
    code, _, err = run("--redis-url", f"redis://127.0.0.1:{server.port}/0", "status")
    assert code == 5
    assert "use rediss://" in err and len(err.strip().splitlines()) == 1
