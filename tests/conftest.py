"""Shared pytest fixtures. Add new fixtures in their own section below.

Redis fixtures: ``redis_url`` is a Redis to use (flushed around each test), ``redis_server`` a
throwaway ``redis-server`` a test may stop, restart and pause. Tests that use either are marked
``redis`` automatically, so ``-m "not redis"`` runs everything else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# Many services start and stop in this one process; gc.freeze after each start would keep every
# predecessor's cyclic garbage for good. Its own test turns it on.
os.environ["NSX_GC_FREEZE"] = "false"

# --------------------------------------------------------------------------- redis

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"  # db 15: far from whatever a developer uses
REDIS_FIXTURES = frozenset({"redis_url", "redis_server", "durable_redis_server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


def free_port() -> int:
    """A port free right now. Racy by nature; RedisServer.start() retries on a clash."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int, timeout_s: float = 0.2) -> bool:
    # A raw PING rather than a client: it must tell "not yet listening" from "up" cheaply.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throwaway ``redis-server`` that keeps nothing on disk, and can be stopped and restarted
    on the same port, so clients holding its URL see an outage and a recovery."""

    def __init__(self, workdir: Path, port: int | None = None, *, appendonly: bool = False) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self.port = port or free_port()
        self.log_path = workdir / f"redis-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start (or restart) on ``self.port``; returns once it answers PING."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes" if self.appendonly else "no",
                    "--dir",
                    str(self.workdir),
                    "--loglevel",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _answers_ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not come up on port {self.port}:\n{tail}")

    def stop(self) -> None:
        """Stop it; clients see connection refused until start()."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections are accepted but never answered, like a hung host."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)


def _start_throwaway(workdir: Path, why: str, *, appendonly: bool = False) -> RedisServer:
    if shutil.which("redis-server") is None:
        pytest.skip(f"needs Redis: {why}, and redis-server is not on PATH to start one")
    last: Exception | None = None
    for _ in range(3):  # free_port() can race with another process
        server = RedisServer(workdir, appendonly=appendonly)
        try:
            server.start()
            return server
        except RuntimeError as e:
            last = e
    pytest.skip(f"needs Redis: {why}, and redis-server would not start: {last}")


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(scope="session")
def _redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """NSX_TEST_REDIS_URL if set, else the local Redis on db 15, else a throwaway server."""
    url = os.environ.get("NSX_TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL
    probe = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        probe.ping()
        reachable = True
    except (redis.RedisError, OSError):
        reachable = False
    finally:
        probe.close()
    if reachable:
        yield url
        return
    if os.environ.get("NSX_TEST_REDIS_URL"):
        pytest.skip(f"needs Redis: NSX_TEST_REDIS_URL={url} does not answer PING")
    server = _start_throwaway(tmp_path_factory.mktemp("redis"), f"{url} does not answer PING")
    try:
        yield f"redis://127.0.0.1:{server.port}/15"
    finally:
        server.stop()


@pytest.fixture
def redis_url(_redis_base_url: str) -> Iterator[str]:
    """A Redis URL whose database is empty at the start and flushed at the end of the test."""
    _flush(_redis_base_url)
    yield _redis_base_url
    _flush(_redis_base_url)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for this test, to stop/start/pause at will; killed at teardown."""
    server = _start_throwaway(tmp_path, "this test stops and restarts its own server")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def durable_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """``redis_server`` with an append-only file: what it was given survives its restarts."""
    server = _start_throwaway(tmp_path, "this test restarts a durable server of its own", appendonly=True)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- documented statuses

# Every status a test sees from a route must be one the route documents in its OpenAPI document.
# Recorded from every TestClient request of the session and checked when the session ends, so a
# new test that provokes an undocumented status fails the run, whichever file it is in.
_OBSERVED: set[tuple[int, str, str, int]] = set()
_APPS: dict[int, object] = {}


@pytest.fixture(autouse=True, scope="session")
def _record_statuses() -> Iterator[None]:
    from fastapi.testclient import TestClient

    original = TestClient.request

    def request(self: TestClient, method: str, url: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        response = original(self, method, url, *args, **kwargs)  # type: ignore[arg-type]
        _APPS[id(self.app)] = self.app
        _OBSERVED.add((id(self.app), method.upper(), response.request.url.path, response.status_code))
        if method.upper() == "POST" and response.request.url.path == "/v1/runs" and response.status_code == 200:
            _check_record(response.json())
        return response

    TestClient.request = request  # type: ignore[method-assign]
    yield
    TestClient.request = original  # type: ignore[method-assign]


_RECORD_PROBLEMS: list[str] = []


def _check_record(record: object) -> None:
    """Every run record any test gets from POST /v1/runs must fit the one RunRecord schema."""
    import jsonschema

    from app.records import RunRecord

    try:
        jsonschema.validate(record, RunRecord.model_json_schema(mode="serialization"))
    except jsonschema.ValidationError as e:
        _RECORD_PROBLEMS.append(f"a POST /v1/runs answer does not fit RunRecord: {e.message}")


def undocumented_statuses() -> list[str]:
    import re

    out = []
    docs: dict[int, dict] = {}
    for app_id, method, path, status in sorted(_OBSERVED):
        app = _APPS[app_id]
        if not hasattr(app, "openapi"):
            continue
        doc = docs.setdefault(app_id, app.openapi())  # type: ignore[attr-defined]
        for template, ops in doc["paths"].items():
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in ops:
                if str(status) not in ops[method.lower()]["responses"]:
                    out.append(f"{method} {template} answered {status}, which its OpenAPI entry does not document")
                break
    return sorted(set(out))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    bad = undocumented_statuses() + sorted(set(_RECORD_PROBLEMS))
    if bad:
        print("\nanswers the OpenAPI document does not describe:\n  " + "\n  ".join(bad))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
