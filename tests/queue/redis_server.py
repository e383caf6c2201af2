"""A real ``redis-server`` for tests, on 127.0.0.1 and a free port.

Persistence is off unless ``aof=True``; then every write is fsynced to an append-only
file in the server's own directory, so a restart (even after SIGKILL) keeps every
message. A missing binary skips locally and fails under CI=true.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support import free_port

START_TIMEOUT_S = 20.0


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    need(binary is not None, "redis-server is not installed (apt-get install redis-server)")
    assert binary is not None
    return binary


class RedisServer:
    def __init__(self, *, aof: bool = False) -> None:
        self.binary = redis_binary()
        self.port = free_port()
        self.aof = aof
        self.dir = Path(tempfile.mkdtemp(prefix="dlaas-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning", *persistence,
        ]  # fmt: skip
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited while starting:\n{self.log()}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server not ready after {START_TIMEOUT_S} s:\n{self.log()}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def admin(self) -> object:
        import redis

        return redis.Redis(port=self.port, decode_responses=True)

    def drop_clients(self) -> int:
        """Close every client connection, as a network blip or a proxy restart would."""
        import redis

        client = redis.Redis(port=self.port)
        try:
            return int(client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, as when the machine or the pod dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def started(*, aof: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(aof=aof)
    try:
        server.start()
    except RuntimeError as exc:
        server.cleanup()
        pytest.fail(f"redis-server failed to start: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(name="redis_server", scope="session")
def fixture_redis_server() -> Iterator[RedisServer]:
    """One server without persistence for the session; tests use fresh stream names."""
    yield from started()


@pytest.fixture(name="redis_aof")
def fixture_redis_aof() -> Iterator[RedisServer]:
    """A server of this test's own, with every write fsynced to its append-only file."""
    yield from started(aof=True)


@pytest.fixture(name="redis_fresh")
def fixture_redis_fresh() -> Iterator[RedisServer]:
    """A server of this test's own without persistence, for tests that restart it."""
    yield from started()
