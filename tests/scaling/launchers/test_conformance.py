"""The launcher conformance suite on every launcher: memory, local, EC2 and Auto Scaling.

The local launcher runs a stand-in worker (no model): it exits 0 a moment after SIGTERM,
as the real one does once its batch is done. EC2 and Auto Scaling run on moto's server.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlaas.jobs import layout, records
from dlaas.scaling.launchers.asg import AsgLauncher
from dlaas.scaling.launchers.ec2 import Ec2Launcher
from dlaas.scaling.launchers.local import LocalLauncher, health_probe
from dlaas.scaling.launchers.memory import MemoryLauncher
from dlaas.storage.memory import MemoryStorage

from ...aws.servers import (  # noqa: F401 - fixtures
    Endpoint,
    fixture_aws_env,
    fixture_moto,
    fixture_moto_server,
)
from .conformance import Harness, LauncherConformance, Report
from .test_asg import IMAGE_ID, make_group

STAND_IN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.0), sys.exit(0)))
open(os.path.join(os.environ["READY_DIR"], os.environ["DLAAS_WORKER_ID"]), "w").close()
time.sleep(120)
"""


def storage_report(storage: MemoryStorage) -> Report:
    def report(worker_id: str, state: records.WorkerHealth) -> None:
        record = {"worker_id": worker_id, "state": state, "updated_at": time.time()}
        storage.put_json(layout.worker_key(worker_id), record)

    return report


def memory_harness() -> Iterator[Harness]:
    launcher = MemoryLauncher()

    def report(worker_id: str, state: records.WorkerHealth) -> None:
        launcher.set_running(worker_id, busy=state == "busy")

    yield Harness(launcher, report)


def local_harness(storage: MemoryStorage, ready_dir: Path) -> Iterator[Harness]:
    launcher = LocalLauncher(
        [sys.executable, "-S", "-c", STAND_IN],
        env={"READY_DIR": str(ready_dir)},
        probe=health_probe(storage),
        stop_timeout_s=5.0,
    )

    def report(worker_id: str, state: records.WorkerHealth) -> None:
        # The real worker reports once it has loaded its model and handles SIGTERM.
        deadline = time.monotonic() + 15
        while not (ready_dir / worker_id).exists():
            assert time.monotonic() < deadline, f"stand-in worker {worker_id} never started"
            time.sleep(0.01)
        storage_report(storage)(worker_id, state)

    yield Harness(launcher, report, stops_workers_on_close=True)
    launcher.close()


def ec2_harness(moto: Endpoint, storage: MemoryStorage) -> Iterator[Harness]:
    launcher = Ec2Launcher(
        cluster=f"conformance-{uuid.uuid4().hex[:8]}",
        storage=storage,
        image_id=IMAGE_ID,
        instance_type="c7g.large",
        endpoint_url=moto.url,
        heartbeat_max_age_s=0.0,
    )
    yield Harness(launcher, storage_report(storage))
    launcher.close()


def asg_harness(moto: Endpoint, storage: MemoryStorage) -> Iterator[Harness]:
    name, _, _ = make_group(moto)
    launcher = AsgLauncher(
        group_name=name, storage=storage, endpoint_url=moto.url, heartbeat_max_age_s=0.0
    )
    yield Harness(launcher, storage_report(storage))
    launcher.close()


@pytest.fixture(params=["memory", "local", "ec2", "asg"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    storage = MemoryStorage(f"conformance-{uuid.uuid4().hex}")
    if request.param == "memory":
        yield from memory_harness()
    elif request.param == "local":
        yield from local_harness(storage, tmp_path)
    elif request.param == "ec2":
        yield from ec2_harness(request.getfixturevalue("moto"), storage)
    else:
        yield from asg_harness(request.getfixturevalue("moto"), storage)
    storage.close()


class TestLauncherConformance(LauncherConformance):
    pass
