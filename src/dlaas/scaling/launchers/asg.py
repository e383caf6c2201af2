"""Workers in an existing EC2 Auto Scaling group: the AWS-native path.

Scale-out is ``set_desired_capacity`` (``HonorCooldown=False``: the controller already
paces itself). The group launches from its launch template, replaces unhealthy
instances and spreads them over zones. Scale-in never leaves the choice of instance to
the group: ``drain`` asks the chosen workers to finish their batch, and an instance
leaves with ``terminate_instance_in_auto_scaling_group(ShouldDecrementDesiredCapacity)``,
called by this launcher for an instance that holds nothing (``launchers.fleet``) or by
the instance itself when its worker exits (``dlaas.aws.instance``). Workers also set
instance scale-in protection while they hold messages (``dlaas.aws.protection``), so
a desired capacity lowered by hand or by a scaling policy never removes a busy worker.

Requests are made idempotent for a controller that asks every second: the new desired
capacity is computed from the instances the group has, not added to the last value,
so a launch repeated while the group is still creating instances asks for nothing more.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dlaas.aws.clients import describe_error, error_code, make_client
from dlaas.errors import ConfigError, ScalingError
from dlaas.scaling.launchers.fleet import (
    DRAIN_TAG,
    FleetLauncher,
    Grace,
    Instance,
    Phase,
    parse_drain_tag,
    tag_value,
)
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.scaling")

_PHASES: dict[str, Phase] = {
    "Pending": "pending",
    "Pending:Wait": "pending",
    "Pending:Proceed": "pending",
    "InService": "running",
    "Terminating": "leaving",
    "Terminating:Wait": "leaving",
    "Terminating:Proceed": "leaving",
}  # Standby, Detaching and warm-pool states serve no messages: not part of the fleet


class AsgLauncher(FleetLauncher):
    """Drives the desired capacity of the group ``group_name``; see the module docstring."""

    def __init__(
        self,
        *,
        group_name: str,
        storage: Storage,
        region: str | None = None,
        endpoint_url: str | None = None,
        autoscaling_client: Any = None,
        ec2_client: Any = None,
        grace: Grace | None = None,
        heartbeat_max_age_s: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``endpoint_url`` is for both services (an emulator); usually leave it unset."""
        if not group_name:
            raise ConfigError("the Auto Scaling launcher needs the group's name")
        super().__init__(
            storage=storage, grace=grace, heartbeat_max_age_s=heartbeat_max_age_s, clock=clock
        )
        self.group_name = group_name
        self.autoscaling = autoscaling_client or make_client(
            "autoscaling", region=region, endpoint_url=endpoint_url
        )
        self.ec2 = ec2_client or make_client("ec2", region=region, endpoint_url=endpoint_url)
        self._group()  # a missing group or a missing permission fails at start

    def _launch(self, n: int) -> builtins.list[str]:
        """Raise the desired capacity so the group holds ``n`` more instances.

        Returns the IDs of instances that appeared at once (often none: the group
        creates them within seconds, and ``list`` shows them from then on).
        """
        group = self._group()
        present = [i for i in group.get("Instances", ()) if i["LifecycleState"] in _PHASES]
        staying = [i for i in present if _PHASES[i["LifecycleState"]] != "leaving"]
        target = max(int(group["DesiredCapacity"]), len(staying) + n)
        if target > int(group["MaxSize"]):
            log.warning(
                "asg_max_size_reached",
                extra={"group": self.group_name, "wanted": target, "max_size": group["MaxSize"]},
            )
            target = int(group["MaxSize"])
        if target == int(group["DesiredCapacity"]):
            return []
        try:
            self.autoscaling.set_desired_capacity(
                AutoScalingGroupName=self.group_name, DesiredCapacity=target, HonorCooldown=False
            )
        except (BotoCoreError, ClientError) as exc:
            raise ScalingError(
                f"set_desired_capacity({target}) on Auto Scaling group {self.group_name!r} "
                f"failed: {describe_error(exc)}"
            ) from exc
        log.info(
            "asg_desired_capacity",
            extra={"group": self.group_name, "from": group["DesiredCapacity"], "to": target},
        )
        before = {i["InstanceId"] for i in present}
        after = self._group().get("Instances", ())
        return [str(i["InstanceId"]) for i in after if i["InstanceId"] not in before]

    # FleetLauncher ---------------------------------------------------------------

    def _describe(self) -> builtins.list[Instance]:
        members = [i for i in self._group().get("Instances", ()) if i["LifecycleState"] in _PHASES]
        if not members:
            return []
        details = self._instance_details([str(i["InstanceId"]) for i in members])
        instances = []
        for member in members:
            instance_id = str(member["InstanceId"])
            # Just launched and not yet visible to EC2's API: it started about now.
            launched_at, tags = details.get(instance_id, (self.clock(), []))
            instances.append(
                Instance(
                    id=instance_id,
                    phase=_PHASES[member["LifecycleState"]],
                    launched_at=launched_at,
                    drain_requested_at=parse_drain_tag(tag_value(tags, DRAIN_TAG)),
                    protected=bool(member.get("ProtectedFromScaleIn", False)),
                )
            )
        return instances

    def _tag_drain(self, instance_ids: Sequence[str], at: float) -> None:
        try:
            self.ec2.create_tags(
                Resources=list(instance_ids), Tags=[{"Key": DRAIN_TAG, "Value": f"{at:.0f}"}]
            )
        except (BotoCoreError, ClientError) as exc:
            raise ScalingError(f"tagging drained instances failed: {describe_error(exc)}") from exc

    def _terminate(self, instance_ids: Sequence[str]) -> None:
        """Each leaves the group with the desired capacity lowered by one, so the group
        does not replace it."""
        failures = []
        for instance_id in instance_ids:
            try:
                self.autoscaling.terminate_instance_in_auto_scaling_group(
                    InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
                )
            except (BotoCoreError, ClientError) as exc:
                # Typically the group is at its MinSize: it keeps the instance.
                failures.append(f"{instance_id}: {describe_error(exc)}")
        if failures:
            raise ScalingError(
                f"Auto Scaling group {self.group_name!r} kept instance(s): {'; '.join(failures)}; "
                "if the group is at its minimum size, lower MinSize or --min-workers to match"
            )

    # Internals ---------------------------------------------------------------------

    def _group(self) -> dict[str, Any]:
        try:
            response = self.autoscaling.describe_auto_scaling_groups(
                AutoScalingGroupNames=[self.group_name]
            )
        except (BotoCoreError, ClientError) as exc:
            raise ScalingError(
                f"describe_auto_scaling_groups({self.group_name!r}) failed: {describe_error(exc)}"
            ) from exc
        groups = response.get("AutoScalingGroups", [])
        if not groups:
            raise ScalingError(
                f"Auto Scaling group {self.group_name!r} does not exist in this region; "
                "create it (deploy/aws/dlaas.yaml does) or fix the group name"
            )
        group: dict[str, Any] = groups[0]
        return group

    def _instance_details(self, instance_ids: list[str]) -> dict[str, tuple[float, list[Any]]]:
        details: dict[str, tuple[float, list[Any]]] = {}
        try:
            paginator = self.ec2.get_paginator("describe_instances")
            for page in paginator.paginate(InstanceIds=instance_ids):
                for reservation in page.get("Reservations", ()):
                    for raw in reservation.get("Instances", ()):
                        details[str(raw["InstanceId"])] = (
                            raw["LaunchTime"].timestamp(),
                            list(raw.get("Tags", [])),
                        )
        except ClientError as exc:
            if error_code(exc) == "InvalidInstanceID.NotFound":
                return details  # EC2's view lags the group's by a moment
            raise ScalingError(f"describe_instances failed: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise ScalingError(f"describe_instances failed: {describe_error(exc)}") from exc
        return details
