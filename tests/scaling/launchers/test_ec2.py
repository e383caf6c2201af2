"""Ec2Launcher against moto's server: tagged launches with user data, counting, draining.

moto's instances run nothing, so each test plays the worker by writing its heartbeat
(``workers/<instance-id>.json``) the way ``dlaas worker`` does.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dlaas.aws.userdata import render_user_data
from dlaas.jobs import layout
from dlaas.queue.memory import MemoryQueue
from dlaas.scaling.controller import Controller
from dlaas.scaling.launchers.base import WorkerState
from dlaas.scaling.launchers.ec2 import Ec2Launcher
from dlaas.scaling.launchers.fleet import Grace
from dlaas.scaling.policy import PolicyConfig
from dlaas.storage.memory import MemoryStorage

from ...aws.servers import (  # noqa: F401 - fixtures
    Endpoint,
    Server,
    fixture_aws_env,
    fixture_moto_server,
)

CLUSTER = "test-cluster"
IMAGE_ID = "ami-03cf127a"  # one of moto's stock images (listing them all takes a second)


@dataclass
class Fleet:
    """A launcher on moto, the storage its workers report to, and a clock to move."""

    launcher: Ec2Launcher
    storage: MemoryStorage
    ec2: Any
    user_data: str
    subnet_id: str
    security_group_id: str
    offset_s: float = 0.0

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds

    def age_to(self, instance_id: str, age_s: float) -> None:
        """Set the launcher's clock to ``age_s`` after the launch time EC2 recorded (whole
        seconds), whatever real time has passed since."""
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        launched_at = reservations[0]["Instances"][0]["LaunchTime"].timestamp()
        self.offset_s = launched_at + age_s - time.time()

    def heartbeat(self, worker_id: str, state: str, *, age_s: float = 0.0) -> None:
        now = time.time() + self.offset_s
        record = {"worker_id": worker_id, "state": state, "updated_at": now - age_s}
        self.storage.put_json(layout.worker_key(worker_id), {**record, "last_batch_at": None})

    def states(self) -> dict[str, tuple[WorkerState, bool | None]]:
        return {w.id: (w.state, w.busy) for w in self.launcher.list()}

    def ec2_state(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return str(reservations[0]["Instances"][0]["State"]["Name"])


@pytest.fixture
def fleet(moto_server: Server, aws_env: None, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    # No moto reset here: recreating the default VPC after one costs a second a test.
    # A cluster name of its own isolates each test instead.
    moto = Endpoint(moto_server.url)
    ec2: Any = moto.client("ec2")
    iam: Any = moto.client("iam")
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_instance_profile(InstanceProfileName="dlaas-worker")
    subnet_id = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    cluster = f"{CLUSTER}-{uuid.uuid4().hex[:8]}"
    group_id = ec2.create_security_group(GroupName=cluster, Description="workers")["GroupId"]
    storage = MemoryStorage(f"ec2-{request.node.name}")
    user_data = render_user_data(storage_url="s3://bucket/dlaas", queue_url="sqs://dlaas-input")
    holder: dict[str, Fleet] = {}
    launcher = Ec2Launcher(
        cluster=cluster,
        storage=storage,
        user_data=user_data,
        image_id=IMAGE_ID,
        instance_type="c7g.large",
        subnet_id=subnet_id,
        security_group_ids=[group_id],
        instance_profile="dlaas-worker",
        endpoint_url=moto.url,
        grace=Grace(boot_s=600, stop_s=60, drain_s=120),
        heartbeat_max_age_s=0.0,
        clock=lambda: time.time() + holder["fleet"].offset_s,
    )
    holder["fleet"] = Fleet(launcher, storage, ec2, user_data, subnet_id, group_id)
    yield holder["fleet"]
    launcher.close()
    storage.close()


# Launching ----------------------------------------------------------------------------


def test_launch_creates_tagged_instances_with_the_user_data(fleet: Fleet) -> None:
    ids = fleet.launcher.launch(3)
    assert len(ids) == len(set(ids)) == 3
    reservations = fleet.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    for instance in instances:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["dlaas:role"] == "worker"
        assert tags["dlaas:cluster"] == fleet.launcher.cluster
        assert instance["InstanceType"] == "c7g.large"
        assert instance["SubnetId"] == fleet.subnet_id
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [fleet.security_group_id]
        user_data = fleet.ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData"
        )
        script = base64.b64decode(user_data["UserData"]["Value"]).decode()
        assert script == fleet.user_data
        assert "DLAAS_STORAGE='s3://bucket/dlaas'" in script
        shutdown = fleet.ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
        )
        assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"


def test_launch_asks_for_the_workers_role_and_imdsv2(fleet: Fleet) -> None:
    # moto checks that the profile exists (see the next tests) but does not report it back.
    args = fleet.launcher.run_instances_args(2)
    assert args["IamInstanceProfile"] == {"Name": "dlaas-worker"}
    assert args["MetadataOptions"] == {"HttpTokens": "required", "HttpEndpoint": "enabled"}
    assert (args["MinCount"], args["MaxCount"]) == (2, 2)
    assert args["ClientToken"] != fleet.launcher.run_instances_args(2)["ClientToken"]


def test_launch_of_zero_starts_nothing(fleet: Fleet) -> None:
    assert fleet.launcher.launch(0) == []
    assert fleet.launcher.list() == []
    with pytest.raises(ValueError):
        fleet.launcher.launch(-1)


def test_a_failed_launch_says_what_to_check(fleet: Fleet) -> None:
    fleet.launcher.instance_profile = "no-such-profile"
    with pytest.raises(Exception, match=r"run_instances .* failed.*instance profile"):
        fleet.launcher.launch(1)


# Counting -----------------------------------------------------------------------------


def test_list_counts_only_this_clusters_workers(fleet: Fleet) -> None:
    mine = fleet.launcher.launch(2)
    image_id = fleet.launcher.image_id
    tags = [{"Key": "dlaas:role", "Value": "worker"}, {"Key": "dlaas:cluster", "Value": "other"}]
    fleet.ec2.run_instances(
        ImageId=image_id, MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )  # fmt: skip
    fleet.ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)  # untagged
    assert sorted(w.id for w in fleet.launcher.list()) == sorted(mine)


def test_state_follows_the_worker_heartbeat(fleet: Fleet) -> None:
    booting, idle, busy, leaving = fleet.launcher.launch(4)
    fleet.heartbeat(idle, "idle")
    fleet.heartbeat(busy, "busy")
    fleet.heartbeat(leaving, "stopped")  # exiting; its instance powers off next
    assert fleet.states() == {
        booting: (WorkerState.STARTING, None),  # running, but its worker has not started
        idle: (WorkerState.RUNNING, False),
        busy: (WorkerState.RUNNING, True),
        leaving: (WorkerState.DRAINING, False),
    }


def test_terminated_instances_are_not_counted_and_their_records_go(fleet: Fleet) -> None:
    gone, kept = fleet.launcher.launch(2)
    fleet.heartbeat(gone, "idle")
    fleet.heartbeat(kept, "idle")
    fleet.launcher.list()
    fleet.ec2.terminate_instances(InstanceIds=[gone])
    assert [w.id for w in fleet.launcher.list()] == [kept]
    assert not fleet.storage.exists(layout.worker_key(gone))
    assert fleet.storage.exists(layout.worker_key(kept))


# Draining and terminating --------------------------------------------------------------


def test_scaling_to_zero_terminates_only_idle_instances(fleet: Fleet) -> None:
    """Given an idle, a busy and a still-booting worker, when all three are drained,
    then the booting one goes at once, the idle one goes once its worker stops, and the
    busy one is left alone however long it takes."""
    idle, busy, booting = fleet.launcher.launch(3)
    fleet.heartbeat(idle, "idle")
    fleet.heartbeat(busy, "busy")

    fleet.launcher.drain([idle, busy, booting])

    for worker_id in (idle, busy, booting):
        assert fleet.storage.exists(layout.drain_key(worker_id))
    assert fleet.ec2_state(booting) == "terminated"
    assert fleet.ec2_state(idle) == "running"  # its worker exits by itself, in a second
    assert fleet.ec2_state(busy) == "running"
    assert fleet.states() == {
        idle: (WorkerState.DRAINING, False),
        busy: (WorkerState.DRAINING, True),
    }

    fleet.heartbeat(idle, "stopped")  # the worker saw its drain key and exited
    assert fleet.states() == {
        idle: (WorkerState.DRAINING, False),
        busy: (WorkerState.DRAINING, True),
    }
    assert fleet.ec2_state(idle) == "terminated"

    fleet.advance(3600)  # an hour-long batch: still never terminated
    fleet.heartbeat(busy, "busy")
    assert fleet.states() == {busy: (WorkerState.DRAINING, True)}
    assert fleet.ec2_state(busy) == "running"
    reasons = dict(fleet.launcher.terminated)
    assert set(reasons) == {booting, idle}


def test_a_drained_worker_that_stays_idle_is_terminated_after_the_grace(fleet: Fleet) -> None:
    (worker,) = fleet.launcher.launch(1)
    fleet.heartbeat(worker, "idle")
    fleet.launcher.drain([worker])
    fleet.advance(60)
    fleet.launcher.list()
    assert fleet.ec2_state(worker) == "running"
    fleet.advance(61)
    assert fleet.launcher.list()[0].state == WorkerState.DRAINING
    assert fleet.ec2_state(worker) == "terminated"
    assert fleet.launcher.terminated == [(worker, "still idle long after a drain request")]


def test_the_drain_request_survives_a_controller_restart(fleet: Fleet) -> None:
    (worker,) = fleet.launcher.launch(1)
    fleet.heartbeat(worker, "busy")
    fleet.launcher.drain([worker])
    restarted = Ec2Launcher(
        cluster=fleet.launcher.cluster,
        storage=fleet.storage,
        image_id=fleet.launcher.image_id,
        instance_type="t3.micro",
        client=fleet.ec2,
    )
    assert [(w.id, w.state, w.busy) for w in restarted.list()] == [
        (worker, WorkerState.DRAINING, True)
    ]


def test_a_worker_that_never_starts_is_terminated_after_the_boot_grace(fleet: Fleet) -> None:
    (stuck,) = fleet.launcher.launch(1)
    # Ages from EC2's own launch time: it is whole seconds, and a loaded machine takes
    # real seconds between calls, so "599 s after the call" was not always short of 600.
    fleet.age_to(stuck, 599)
    assert fleet.states() == {stuck: (WorkerState.STARTING, None)}
    fleet.age_to(stuck, 601)
    fleet.launcher.list()
    assert fleet.ec2_state(stuck) == "terminated"
    # It was told to drain first, so a worker starting at that moment takes nothing.
    assert fleet.storage.exists(layout.drain_key(stuck))


def test_a_late_heartbeat_saves_an_instance_past_the_boot_grace(fleet: Fleet) -> None:
    (slow,) = fleet.launcher.launch(1)
    fleet.advance(601)
    fleet.heartbeat(slow, "busy")  # its worker came up and took a batch after all
    assert fleet.states() == {slow: (WorkerState.RUNNING, True)}
    assert fleet.ec2_state(slow) == "running"


def test_an_instance_whose_worker_exited_is_terminated_after_the_stop_grace(fleet: Fleet) -> None:
    (worker,) = fleet.launcher.launch(1)
    fleet.heartbeat(worker, "stopped")  # exited idle, but the power-off failed
    assert fleet.states() == {worker: (WorkerState.DRAINING, False)}
    assert fleet.ec2_state(worker) == "running"  # systemd may be restarting it
    fleet.advance(61)
    fleet.launcher.list()
    assert fleet.ec2_state(worker) == "terminated"


def test_unreadable_heartbeat_counts_as_busy(fleet: Fleet) -> None:
    (worker,) = fleet.launcher.launch(1)
    fleet.storage.put(layout.worker_key(worker), b"{not json")
    fleet.launcher.drain([worker])
    fleet.advance(10_000)
    assert fleet.states() == {worker: (WorkerState.DRAINING, True)}
    assert fleet.ec2_state(worker) == "running"


# With the controller -------------------------------------------------------------------


def test_the_controller_follows_the_backlog_with_instances(fleet: Fleet) -> None:
    queue = MemoryQueue(f"ec2-{id(fleet)}", "input")
    config = PolicyConfig(
        target_backlog_per_worker=10, min_workers=0, max_workers=5,
        upscale_delay_s=0, downscale_delay_s=0,
    )  # fmt: skip
    controller = Controller(queue, fleet.launcher, config)

    queue.send_batch([f"task-{i}" for i in range(35)])
    decision = controller.step()
    assert len(decision.launched) == 4
    assert len(fleet.launcher.list()) == 4

    for worker in fleet.launcher.list():  # the workers boot and empty the queue
        fleet.heartbeat(worker.id, "idle")
    queue.purge()
    decision = controller.step()
    assert len(decision.drained) == 4
    for worker_id in decision.drained:
        fleet.heartbeat(worker_id, "stopped")  # each sees its drain key and exits
    assert {w.state for w in fleet.launcher.list()} == {WorkerState.DRAINING}  # terminating
    assert fleet.launcher.list() == []
    assert controller.step().desired == 0
