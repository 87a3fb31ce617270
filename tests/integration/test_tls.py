"""rediss:// against a real TLS redis-server (certificate made with openssl per session)."""

from __future__ import annotations

import gc
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from quiesce.cli.app import app
from tests.support import RedisServer, free_port

# redis-py before 5.1 (5.0 is the declared floor) does not close the socket when the TLS
# handshake or the loading of a client key fails; 5.1 added the close (SSLConnection._connect).
# The garbage collector closes it later, with a ResourceWarning: ``run`` collects at once, so
# the warning lands in this module's test. The behaviour under test is the same either way.
if tuple(int(part) for part in redis.__version__.split(".")[:2]) < (5, 1):
    pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


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
    gc.collect()  # any socket an old redis-py left behind is closed here, in this module
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


# -- a CA, certificates it signs, mutual TLS, and each mismatch named -------------------------


class Pki:
    """A test CA and what it signed: the server (127.0.0.1, localhost), a client (mutual
    TLS), a server certificate for another host; plus a client signed by a stranger CA."""

    def __init__(self, root: Path) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("openssl is not installed (bin/setup installs it)")
        self.openssl, self.root = openssl, root
        self.ca, self.ca_key = self._ca("ca")
        self.server = self._issue(
            "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost"
        )
        self.client = self._issue("client", "quiesce", "extendedKeyUsage=clientAuth")
        self.wrong_host = self._issue("wrong", "wrong.example", "subjectAltName=DNS:wrong.example")
        stranger, stranger_key = self._ca("stranger")
        self.stranger_client = self._issue(
            "stranger-client", "quiesce", "extendedKeyUsage=clientAuth", ca=(stranger, stranger_key)
        )

    def _run(self, *args: str) -> None:
        subprocess.run([self.openssl, *args], check=True, capture_output=True)

    def _ca(self, name: str) -> tuple[Path, Path]:
        cert, key = self.root / f"{name}.pem", self.root / f"{name}.key"
        self._run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN=quiesce test {name}",
        )
        return cert, key

    def _issue(
        self, name: str, cn: str, extension: str, ca: tuple[Path, Path] | None = None
    ) -> tuple[Path, Path]:
        ca_cert, ca_key = ca or (self.ca, self.ca_key)
        cert, key = self.root / f"{name}.pem", self.root / f"{name}.key"
        csr, ext = self.root / f"{name}.csr", self.root / f"{name}.ext"
        ext.write_text(extension + "\n")
        self._run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={cn}",
        )
        self._run(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_cert),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            str(cert),
            "-extfile",
            str(ext),
        )
        return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_redis(cert: tuple[Path, Path], ca: Path, *, clients: str) -> RedisServer:
    """A plain port (``.port``: the simulated fleet and the checks use it) and a TLS port
    (``.tls_port``: quiesce uses it)."""
    tls_port = free_port()
    server = RedisServer(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert[0]),
        "--tls-key-file",
        str(cert[1]),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        clients,
    )
    server.tls_port = tls_port  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="module")
def mtls(pki: Pki) -> Iterator[RedisServer]:
    """Mutual TLS: the server verifies the client's certificate against the CA."""
    with tls_redis(pki.server, pki.ca, clients="yes") as server:
        yield server


@pytest.fixture(scope="module")
def wrong_host(pki: Pki) -> Iterator[RedisServer]:
    with tls_redis(pki.wrong_host, pki.ca, clients="no") as server:
        yield server


def tls_url(server: RedisServer, host: str = "127.0.0.1") -> str:
    return f"rediss://{host}:{server.tls_port}/0"  # type: ignore[attr-defined]


def one_error(code: int, err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.startswith("quiesce: error:")]
    assert code == 5 and len(lines) == 1, (code, err)
    return lines[0]


def test_every_command_over_mutual_tls(mtls: RedisServer, pki: Pki, tmp_path: Path) -> None:
    """Verification on (the CA given, no skip), a client certificate, every command."""
    from quiesce.sim.simulator import make_processes
    from tests.support import simulated_fleet
    from tests.support.processes import FLY_TOML, cli, scrape_exporter

    mtls.client().flushall()
    url = tls_url(mtls)
    tls = [
        "--tls-ca-cert",
        str(pki.ca),
        "--tls-cert",
        str(pki.client[0]),
        "--tls-key",
        str(pki.client[1]),
    ]
    fleet = simulated_fleet(mtls.url, make_processes(2, seed=61), beat_interval_s=0.3)
    fleet.start()
    try:
        for args in (["status"], ["status", "--json"], ["status", "--jobs"]):
            code, out, err = cli(url, *tls, *args)
            assert code == 0 and "WARNING" not in err, (args, out, err)
        code, out, err = cli(url, *tls, "quiet", "--timeout", "30", "--release", "tls1")
        assert code == 0 and "2 confirmed" in out, out + err
        code, out, err = cli(url, "rejoin", "--no-fly", *tls)  # options after the command
        assert code == 7, out + err
        time.sleep(0.2)
        code, out, err = cli(url, *tls, "recover", "--after", "0.1s")
        assert code == 0 and "dry run" in out, out + err
        toml = tmp_path / "fly.toml"
        toml.write_text(FLY_TOML)
        code, out, err = cli(url, *tls, "doctor", str(toml), "--json")
        assert code in (0, 3) and '"fleet_checked":true' in out, out + err
        env = {
            "REDIS_TLS_CA_CERT": str(pki.ca),
            "REDIS_TLS_CERT": str(pki.client[0]),
            "REDIS_TLS_KEY": str(pki.client[1]),
        }
        body, health, logs = scrape_exporter(url, env=env)
        assert health.startswith("200") and "quiesce_up 1.0" in body, (health, logs)
        code, out, err = cli(url, *tls, "recover", "--after", "0.1s", "--yes", "--stop")
        assert code == 0 and out.count("stopped (TERM sent)") == 2, out + err
    finally:
        fleet.stop()
        fleet.client.close()


def test_tls_client_against_a_plain_port_says_so(mtls: RedisServer, pki: Pki) -> None:
    code, _, err = run(
        "--redis-url",
        f"rediss://127.0.0.1:{mtls.port}/0",
        "--tls-ca-cert",
        str(pki.ca),
        "--connect-timeout",
        "1",
        "--read-timeout",
        "1",
        "status",
    )
    assert "is this a plain-text port? use redis://" in one_error(code, err)


def test_plain_client_against_a_tls_port_says_so(mtls: RedisServer) -> None:
    code, _, err = run("--redis-url", f"redis://127.0.0.1:{mtls.tls_port}/0", "status")  # type: ignore[attr-defined]
    assert "does it require TLS? use rediss://" in one_error(code, err)


def test_unknown_ca_says_so(mtls: RedisServer, pki: Pki) -> None:
    code, _, err = run(
        "--redis-url",
        tls_url(mtls),
        "--tls-cert",
        str(pki.client[0]),
        "--tls-key",
        str(pki.client[1]),
        "status",
    )
    assert "certificate is not trusted" in one_error(code, err)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_wrong_hostname_says_so(wrong_host: RedisServer, pki: Pki, host: str) -> None:
    code, _, err = run(
        "--redis-url", tls_url(wrong_host, host), "--tls-ca-cert", str(pki.ca), "status"
    )
    line = one_error(code, err)
    assert "does not match the host" in line and host in line, line


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_a_missing_or_untrusted_client_certificate_says_so(
    mtls: RedisServer, pki: Pki, client: str
) -> None:
    cert = (
        []
        if client == "none"
        else ["--tls-cert", str(pki.stranger_client[0]), "--tls-key", str(pki.stranger_client[1])]
    )
    code, _, err = run("--redis-url", tls_url(mtls), "--tls-ca-cert", str(pki.ca), *cert, "status")
    assert "require a client certificate (--tls-cert, --tls-key)" in one_error(code, err)


def test_an_unloadable_client_key_says_so(mtls: RedisServer, pki: Pki) -> None:
    code, _, err = run(
        "--redis-url",
        tls_url(mtls),
        "--tls-ca-cert",
        str(pki.ca),
        "--tls-cert",
        str(pki.ca_key),
        "--tls-key",
        str(pki.client[1]),
        "status",
    )
    assert "cannot load the client certificate or key" in one_error(code, err)


@pytest.mark.parametrize(
    ("option", "env"),
    [
        (["--tls-skip-verify"], {}),
        (["--tls-insecure"], {}),  # the old name, hidden, still works
        ([], {"REDIS_TLS_SKIP_VERIFY": "1"}),
        ([], {"REDIS_TLS_INSECURE": "true"}),
    ],
)
def test_skipping_verification_works_and_warns_every_time(
    wrong_host: RedisServer, option: list[str], env: dict[str, str]
) -> None:
    result = CliRunner().invoke(
        app, ["--redis-url", tls_url(wrong_host), *option, "status"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "TLS certificate verification is OFF" in result.stderr


def test_a_url_query_that_turns_verification_off_warns_too(
    wrong_host: RedisServer, pki: Pki
) -> None:
    """redis-py lets ``?ssl_*`` in the URL win over options: allowed (the README documents
    it), but said like --tls-skip-verify."""
    for query in ("ssl_cert_reqs=none", "ssl_check_hostname=false"):
        url = f"{tls_url(wrong_host)}?{query}"
        code, _, err = run("--redis-url", url, "--tls-ca-cert", str(pki.ca), "status")
        assert code == 0 and "TLS certificate verification is OFF" in err, (query, err)


def test_help_names_the_skip_option_plainly_and_hides_the_old_one() -> None:
    result = CliRunner().invoke(app, ["status", "--help"])
    assert "--tls-skip-verify" in result.stdout and "Do NOT verify" in result.stdout
    assert "--tls-insecure" not in result.stdout
