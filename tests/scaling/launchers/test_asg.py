"""AsgLauncher, scale-in protection and the instance's own retirement, on moto's server."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.stub import Stubber

from dlaas.aws import instance as instance_module
from dlaas.aws.protection import ScaleInProtection
from dlaas.aws.userdata import render_user_data
from dlaas.errors import ScalingError
from dlaas.jobs import layout
from dlaas.scaling.launchers.asg import AsgLauncher
from dlaas.scaling.launchers.base import WorkerState
from dlaas.scaling.launchers.fleet import Grace
from dlaas.storage.memory import MemoryStorage

from ...aws.servers import (  # noqa: F401 - fixtures
    Endpoint,
    fixture_aws_env,
    fixture_moto,
    fixture_moto_server,
)

IMAGE_ID = "ami-03cf127a"  # one of moto's stock images


@dataclass
class Group:
    launcher: AsgLauncher
    storage: MemoryStorage
    autoscaling: Any
    ec2: Any
    name: str

    def heartbeat(self, worker_id: str, state: str) -> None:
        record = {"worker_id": worker_id, "state": state, "updated_at": time.time()}
        self.storage.put_json(layout.worker_key(worker_id), record)

    def desired(self) -> int:
        groups = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])
        return int(groups["AutoScalingGroups"][0]["DesiredCapacity"])

    def members(self) -> list[str]:
        groups = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])
        return sorted(i["InstanceId"] for i in groups["AutoScalingGroups"][0]["Instances"])

    def states(self) -> dict[str, tuple[WorkerState, bool | None]]:
        return {w.id: (w.state, w.busy) for w in self.launcher.list()}


def make_group(moto: Endpoint, *, min_size: int = 0, max_size: int = 10) -> tuple[str, Any, Any]:
    ec2: Any = moto.client("ec2")
    autoscaling: Any = moto.client("autoscaling")
    name = f"dlaas-workers-{uuid.uuid4().hex[:6]}"
    user_data = render_user_data(storage_url="s3://bucket/dlaas", queue_url="sqs://dlaas-input")
    ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={
            "ImageId": IMAGE_ID,
            "InstanceType": "c7g.large",
            "UserData": base64.b64encode(user_data.encode()).decode(),
            "InstanceInitiatedShutdownBehavior": "terminate",
        },
    )
    subnet_id = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=min_size,
        MaxSize=max_size,
        DesiredCapacity=min_size,
        VPCZoneIdentifier=subnet_id,
    )
    return name, autoscaling, ec2


@pytest.fixture
def group(moto: Endpoint, request: pytest.FixtureRequest) -> Iterator[Group]:
    name, autoscaling, ec2 = make_group(moto)
    storage = MemoryStorage(f"asg-{request.node.name}")
    launcher = AsgLauncher(
        group_name=name,
        storage=storage,
        endpoint_url=moto.url,
        grace=Grace(boot_s=600, stop_s=60, drain_s=120),
        heartbeat_max_age_s=0.0,
    )
    yield Group(launcher, storage, autoscaling, ec2, name)
    storage.close()


# Launching ------------------------------------------------------------------------------


def test_launch_raises_the_desired_capacity(group: Group) -> None:
    ids = group.launcher.launch(3)
    assert group.desired() == 3
    assert sorted(ids) == group.members()  # moto creates them at once; AWS within seconds
    assert {s for s, _ in group.states().values()} == {WorkerState.STARTING}
    more = group.launcher.launch(2)
    assert group.desired() == 5 and len(more) == 2


def test_launch_is_idempotent_while_the_group_is_still_creating(group: Group) -> None:
    """The controller asks every second; until the instances show up it asks again. The
    request is for a total, so the repeat adds nothing."""
    real = group.autoscaling.describe_auto_scaling_groups

    def lagging(**kwargs: Any) -> Any:
        response = real(**kwargs)
        for g in response["AutoScalingGroups"]:
            g["Instances"] = []  # AWS has not created them yet
        return response

    group.launcher.autoscaling.describe_auto_scaling_groups = lagging
    try:
        group.launcher.launch(2)
        group.launcher.launch(2)
        group.launcher.launch(1)
    finally:
        group.launcher.autoscaling.describe_auto_scaling_groups = real
    assert group.desired() == 2


def test_launch_stops_at_the_groups_max_size(group: Group) -> None:
    group.launcher.launch(25)
    assert group.desired() == 10


def test_a_missing_group_is_refused_at_start(moto: Endpoint) -> None:
    with pytest.raises(ScalingError, match=r"'nope' does not exist.*create it"):
        AsgLauncher(group_name="nope", storage=MemoryStorage("x"), endpoint_url=moto.url)


# Counting and draining --------------------------------------------------------------------


def test_state_follows_the_heartbeat_and_the_protection(group: Group) -> None:
    booting, idle, busy = group.launcher.launch(3)
    group.heartbeat(idle, "idle")
    group.heartbeat(busy, "idle")  # its heartbeat lags, but it protected itself
    group.autoscaling.set_instance_protection(
        InstanceIds=[busy], AutoScalingGroupName=group.name, ProtectedFromScaleIn=True
    )
    assert group.states() == {
        booting: (WorkerState.STARTING, None),
        idle: (WorkerState.RUNNING, False),
        busy: (WorkerState.RUNNING, True),
    }


def test_scaling_to_zero_leaves_busy_and_protected_workers_alone(group: Group) -> None:
    idle, busy, protected, booting = group.launcher.launch(4)
    group.heartbeat(idle, "idle")
    group.heartbeat(busy, "busy")
    group.heartbeat(protected, "idle")
    group.autoscaling.set_instance_protection(
        InstanceIds=[protected], AutoScalingGroupName=group.name, ProtectedFromScaleIn=True
    )

    group.launcher.drain([idle, busy, protected, booting])

    # The booting one left the group at once, lowering the desired capacity with it.
    assert group.members() == sorted([idle, busy, protected])
    assert group.desired() == 3
    assert all(group.storage.exists(layout.drain_key(w)) for w in (idle, busy, protected))

    group.heartbeat(idle, "stopped")  # the idle worker exits on its drain key
    group.launcher.list()
    assert group.members() == sorted([busy, protected])
    assert group.desired() == 2
    assert group.states() == {
        busy: (WorkerState.DRAINING, True),
        protected: (WorkerState.DRAINING, True),
    }


def test_a_lower_desired_capacity_never_takes_a_protected_worker(group: Group) -> None:
    """Scale-in by the group itself (by hand, or a scaling policy) skips protected ones."""
    ids = group.launcher.launch(3)
    protection = ScaleInProtection.for_worker(ids[0], client=group.autoscaling, release_after_s=0)
    protection.set(True)
    group.autoscaling.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=1)
    assert group.members() == [ids[0]]


# Scale-in protection -----------------------------------------------------------------------


def protected_flags(group: Group) -> dict[str, bool]:
    groups = group.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group.name])
    return {
        i["InstanceId"]: i["ProtectedFromScaleIn"]
        for i in groups["AutoScalingGroups"][0]["Instances"]
    }


def test_protection_is_set_while_busy_and_lifted_once_idle(group: Group) -> None:
    (worker,) = group.launcher.launch(1)
    protection = ScaleInProtection.for_worker(worker, client=group.autoscaling, release_after_s=0.3)
    assert protection.enabled and protection.group_name == group.name
    protection.set(True)
    assert protected_flags(group) == {worker: True}
    protection.set(False)
    protection.set(True)  # the next batch came before the release: no call at all
    protection.set(False)
    assert protected_flags(group) == {worker: True}
    assert protection.calls == 1
    deadline = time.monotonic() + 5
    while protected_flags(group)[worker] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert protected_flags(group) == {worker: False}
    assert protection.calls == 2


def test_close_lifts_the_protection_at_once(group: Group) -> None:
    (worker,) = group.launcher.launch(1)
    protection = ScaleInProtection.for_worker(worker, client=group.autoscaling, release_after_s=60)
    protection.set(True)
    protection.set(False)
    protection.close()
    assert protected_flags(group) == {worker: False}


def test_protection_is_a_no_op_off_an_auto_scaling_group(moto: Endpoint) -> None:
    autoscaling: Any = moto.client("autoscaling")
    local = ScaleInProtection.for_worker("local-abc123-1", client=autoscaling)
    ec2: Any = moto.client("ec2")
    (alone,) = ec2.run_instances(ImageId=IMAGE_ID, MinCount=1, MaxCount=1)["Instances"]
    plain = ScaleInProtection.for_worker(alone["InstanceId"], client=autoscaling)
    for protection in (local, plain):
        assert not protection.enabled
        protection.set(True)
        protection.set(False)
        protection.close()
        assert protection.calls == 0


def test_protection_failures_never_reach_the_worker(group: Group) -> None:
    (worker,) = group.launcher.launch(1)
    protection = ScaleInProtection(
        instance_id=worker, group_name="not-this-group", client=group.autoscaling
    )
    protection.set(True)  # refused by the service: logged, not raised
    assert not protection.protected
    assert protection.calls == 1


# The instance retiring itself --------------------------------------------------------------


def test_retire_leaves_the_group_and_lowers_its_desired_capacity(group: Group) -> None:
    stays, leaves = group.launcher.launch(2)
    code = instance_module.retire(instance_id=leaves, client=group.autoscaling)
    assert code == instance_module.LEAVING
    assert group.members() == [stays]
    assert group.desired() == 1


def test_retire_outside_a_group_just_powers_off(moto: Endpoint) -> None:
    ec2: Any = moto.client("ec2")
    (alone,) = ec2.run_instances(ImageId=IMAGE_ID, MinCount=1, MaxCount=1)["Instances"]
    code = instance_module.retire(
        instance_id=alone["InstanceId"], client=moto.client("autoscaling")
    )
    assert code == instance_module.LEAVING
    assert instance_module.retire(instance_id="not-an-instance") == instance_module.LEAVING


def test_retire_at_the_groups_minimum_keeps_the_instance(moto: Endpoint) -> None:
    """moto does not enforce MinSize here; AWS answers with this error, so it is stubbed."""
    autoscaling: Any = moto.client("autoscaling")
    with Stubber(autoscaling) as stub:
        stub.add_response(
            "describe_auto_scaling_instances",
            {
                "AutoScalingInstances": [
                    {
                        "InstanceId": "i-0123456789abcdef0",
                        "AutoScalingGroupName": "workers",
                        "AvailabilityZone": "us-east-1a",
                        "LifecycleState": "InService",
                        "HealthStatus": "HEALTHY",
                        "ProtectedFromScaleIn": False,
                    }
                ]
            },
        )
        stub.add_client_error(
            "terminate_instance_in_auto_scaling_group",
            service_error_code="ValidationError",
            service_message=(
                "Currently, desiredSize equals minSize (1). Terminating instance without "
                "replacement will violate group's min size constraint."
            ),
            http_status_code=400,
        )
        code = instance_module.retire(instance_id="i-0123456789abcdef0", client=autoscaling)
    assert code == instance_module.KEEP
