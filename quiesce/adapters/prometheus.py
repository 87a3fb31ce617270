"""``quiesce exporter``: a Prometheus collector over Sidekiq's Redis, and its HTTP server.

Each scrape reads fresh data in two Redis round trips whatever the fleet and queue count
(``SSCAN processes``, ``TIME`` and ``SMEMBERS queues``; then one pipeline with every
process's ``HMGET``/``PTTL``/``LRANGE`` signals, every queue's ``LLEN``/``LINDEX -1``, the
due counts, Pro's paused set, INFO, the deploy record and ``CLIENT LIST``), over a
connection kept between scrapes. Nothing is cached and nothing
is written, so any number of exporters can watch one Redis.

The collector never raises: a failed read exports ``quiesce_up 0`` (and what could
still be said), and the scrape succeeds. A read that outlives Prometheus' scrape
timeout (``X-Prometheus-Scrape-Timeout-Seconds``, less a margin) is abandoned the same
way. ``describe()`` returns nothing, so registering touches no Redis.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from quiesce import __version__
from quiesce.errors import ConfigError, QuiesceError
from quiesce.model.capacity import PostgresStats
from quiesce.model.decode import decode_snapshot
from quiesce.model.metrics import Family, ScrapeData, families
from quiesce.settings import EXPORTER_PORT, Settings
from quiesce.sidekiq.rows import RawQueues, RawSnapshot

log = logging.getLogger(__name__)

DEFAULT_PORT = EXPORTER_PORT

DEFAULT_TIMEOUT_S = 10.0
"""Prometheus' default scrape timeout, used when a scrape does not send its own."""

TIMEOUT_MARGIN_S = 0.5
"""Answer this long before Prometheus gives up, so the reply still arrives."""

HEALTH_MAX_AGE_S = 30.0
"""``/healthz`` reads Redis itself when no scrape has in this long."""

HANDLER_IDLE_TIMEOUT_S = 5.0
"""An accepted connection idle this long is closed: a keep-alive connection Prometheus
holds between scrapes must never keep a stopping exporter alive."""


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "quiesce_scrape_deadline", default=None
)


class SidekiqSource(Protocol):
    """What the collector reads; ``quiesce.adapters.redis.store.SidekiqStore`` implements it."""

    round_trips: int

    def read_scrape(
        self, *, client_list: bool = True, deadline: float | None = None, scope: str | None = None
    ) -> tuple[RawSnapshot, RawQueues]: ...


class PostgresSource(Protocol):
    def read(self) -> PostgresStats: ...


@dataclasses.dataclass(slots=True)
class _Read:
    data: ScrapeData
    error: str | None
    round_trips: int
    metrics: list[Metric] | None = None
    """The families derived from ``data`` once, shared by every scrape that waited for it."""


class _Flight:
    """One Redis read in progress: scrapes arriving meanwhile wait for it and share it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: _Read | None = None


class QuiesceCollector:
    """A client_python collector (``collect``/``describe``) for one Redis database."""

    def __init__(
        self,
        store: SidekiqSource,
        *,
        postgres: PostgresSource | None = None,
        per_machine: bool = False,
        allow_newer: bool = False,
        clock: Callable[[], float] = time.monotonic,
        scope: str | None = None,
    ) -> None:
        self.store = store
        self.scope = scope
        """Whose deploy history the deploy and rejoin metrics follow (the Fly app): two
        apps sharing a Redis each get their own exporter's view."""
        self.postgres = postgres
        self.per_machine = per_machine
        self.allow_newer = allow_newer
        self.clock = clock
        self._lock = threading.Lock()
        self._flight: _Flight | None = None
        self.last_ok: bool | None = None
        """Whether the last Redis read worked (None: none yet)."""
        self.last_read_at: float | None = None
        self.last_error: str | None = None

    def describe(self) -> list[Metric]:
        """Nothing: so ``registry.register`` never calls ``collect`` (no Redis at start-up)."""
        return []

    @contextlib.contextmanager
    def deadline(self, timeout_s: float | None) -> Iterator[None]:
        """Scrapes inside this block give up ``timeout_s`` (less a margin) from now."""
        budget = max(0.1, (timeout_s or DEFAULT_TIMEOUT_S) - TIMEOUT_MARGIN_S)
        token = _deadline.set(self.clock() + budget)
        try:
            yield
        finally:
            _deadline.reset(token)

    def collect(self) -> Iterator[Metric]:
        started = self.clock()
        deadline = _deadline.get() or started + DEFAULT_TIMEOUT_S - TIMEOUT_MARGIN_S
        read = self._read_in_time(deadline)
        yield from read.metrics or []
        yield _gauge("quiesce_up", "1 when the last Redis read worked, else 0.", read.error is None)
        yield _gauge(
            "quiesce_scrape_duration_seconds",
            "How long this scrape took (reading Redis and deriving the metrics).",
            self.clock() - started,
            unit="seconds",
        )
        yield _gauge(
            "quiesce_scrape_redis_round_trips",
            "Redis round trips this scrape used (2 whatever the fleet and queue count).",
            read.round_trips,
        )
        info = GaugeMetricFamily(
            "quiesce_build_info", "The quiesce version serving these metrics.", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        yield info

    # -- reading ------------------------------------------------------------------------
    def read(self, deadline: float | None = None) -> _Read:
        """One scrape's reads; never raises. Single flight: a scrape that arrives while
        another is reading Redis waits for that read and answers with its result (20
        Prometheus servers scraping at once cost Redis one read, and none is refused)."""
        with self._lock:
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = _Flight()
        if leader:
            result = _Read(ScrapeData(None, None), "reading Redis failed", 0)
            try:
                result = self._read_locked()
            finally:
                with self._lock:
                    self._flight = None
                flight.result = result
                flight.done.set()
            return result
        wait = None if deadline is None else max(0.0, deadline - self.clock())
        if not flight.done.wait(wait) or flight.result is None:
            return _Read(
                ScrapeData(None, None), "Redis did not answer within the scrape timeout", 0
            )
        return flight.result

    def _read_locked(self) -> _Read:
        before = self.store.round_trips
        error: str | None = None
        fleet = queues = None
        try:
            raw, queues = self.store.read_scrape(scope=self.scope)
            fleet = decode_snapshot(raw, allow_newer=self.allow_newer)
        except QuiesceError as exc:
            error = str(exc)
        except Exception as exc:  # never let a scrape fail: report it as a failed read
            log.exception("reading Redis failed")
            error = f"unexpected {type(exc).__name__}"
        stats = None
        if self.postgres is not None:
            try:
                stats = self.postgres.read()
            except QuiesceError as exc:
                log.warning("%s", exc)
        self.last_ok, self.last_error = error is None, error
        self.last_read_at = self.clock()
        if error is not None:
            log.warning("scrape: %s", error)
        data = ScrapeData(fleet, queues, stats, self.postgres is not None)
        try:
            metrics = [_to_metric(f) for f in families(data, per_machine=self.per_machine)]
        except Exception as exc:  # a bug must not cost the whole scrape: say so in the log
            log.exception("deriving metrics failed")
            error = f"metrics could not be derived ({type(exc).__name__})"
            metrics = []
        return _Read(data, error, self.store.round_trips - before, metrics)

    def _read_in_time(self, deadline: float) -> _Read:
        """The read in a worker thread: a Redis that hangs costs this scrape its data,
        never its answer. The worker ends by itself (socket timeouts bound it)."""
        box: list[_Read] = []
        worker = threading.Thread(target=lambda: box.append(self.read(deadline)), daemon=True)
        worker.start()
        worker.join(timeout=max(0.0, deadline - self.clock()))
        if box:
            return box[0]
        self.last_ok, self.last_error = False, "Redis did not answer within the scrape timeout"
        return _Read(ScrapeData(None, None), self.last_error, 0)

    def healthy(self) -> tuple[bool, str]:
        """For ``/healthz``: the last read's result, reading afresh when it is old."""
        now = self.clock()
        if self.last_read_at is None or now - self.last_read_at > HEALTH_MAX_AGE_S:
            self._read_in_time(now + DEFAULT_TIMEOUT_S - TIMEOUT_MARGIN_S)
        if self.last_ok:
            return True, "ok"
        return False, self.last_error or "Redis not read"


def _gauge(name: str, doc: str, value: float | bool, *, unit: str = "") -> Metric:
    return GaugeMetricFamily(name, doc, value=float(value), unit=unit)


def _to_metric(family: Family) -> Metric:
    metric = GaugeMetricFamily(family.name, family.help, labels=family.labels, unit=family.unit)
    for values, value in family.samples:
        metric.add_metric(list(values), value)
    return metric


def make_registry(collector: QuiesceCollector) -> CollectorRegistry:
    """A private registry (never the global one: no process/GC metrics of ours mixed in)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# -- HTTP ---------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"
    timeout = HANDLER_IDLE_TIMEOUT_S

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            ok, text = self.server.collector.healthy()
            self._send(200 if ok else 503, "text/plain; charset=utf-8", f"{text}\n".encode())
        elif path == "/":
            body = b'<html><body><a href="/metrics">/metrics</a> <a href="/healthz">/healthz'
            self._send(200, "text/html; charset=utf-8", body + b"</a></body></html>\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        timeout = _timeout(self.headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
        collector = self.server.collector
        with collector.deadline(timeout):
            body = encoder(self.server.registry)
        self._send(200, content_type, body)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def _timeout(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds < 3600 else None


class ExporterServer(http.server.ThreadingHTTPServer):
    # Handler threads never block shutdown or exit: TERM stops the exporter within a
    # poll interval whatever connections are open (a scrape in flight is abandoned; the
    # next one goes to the new exporter).
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], collector: QuiesceCollector) -> None:
        self.collector = collector
        self.registry = make_registry(collector)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        address, port = self.server_address[:2]
        host = address.decode() if isinstance(address, bytes) else str(address)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``port``; ``[::1]:port`` for IPv6."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "0.0.0.0", text
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not a port: {port!r}")
    return host, int(port)


def serve(server: ExporterServer, stop: threading.Event) -> None:
    """Serve until ``stop`` is set, then close; open connections do not delay it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    try:
        stop.wait()
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class BackgroundExporter:
    """An exporter serving from a thread of its own (``quiesce demo``): ``close()`` stops
    it, finishes the requests in flight and closes its Redis connection."""

    def __init__(self, server: ExporterServer, close_source: Callable[[], None]) -> None:
        self.server = server
        self._close_source = close_source
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="quiesce-exporter",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.server.url}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self._thread.join(timeout=5)
        self.server.server_close()
        self._close_source()


def serve_in_background(settings: Settings, *, host: str, port: int) -> BackgroundExporter:
    """The same collector and server as ``quiesce exporter``, for the first Redis of
    ``settings``, in a background thread."""
    from quiesce.adapters.redis.store import SidekiqStore

    store = SidekiqStore(settings.redis[0], settings)
    try:
        server = ExporterServer((host, port), QuiesceCollector(store))
    except OSError as exc:  # the port is taken, or not ours to bind: a usage problem
        store.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        store.close()
        raise
    return BackgroundExporter(server, store.close)
