"""Workers on EC2 instances that this launcher starts itself with ``run_instances``.

Each instance is tagged ``dlaas:role=worker`` and ``dlaas:cluster=<cluster>``, boots
from the user data (``dlaas aws user-data``: install dlaas, run ``dlaas worker`` under
systemd) and is launched with ``InstanceInitiatedShutdownBehavior=terminate``, so the
worker's idle exit, which powers the machine off, also ends the bill. ``list`` counts
the cluster's instances with ``describe_instances`` filters; draining and termination
follow ``launchers.fleet``: a busy worker's instance is never terminated.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dlaas.aws.clients import describe_error, error_code, make_client
from dlaas.errors import ConfigError, ScalingError
from dlaas.scaling.launchers.fleet import (
    CLUSTER_TAG,
    DRAIN_TAG,
    ROLE,
    ROLE_TAG,
    FleetLauncher,
    Grace,
    Instance,
    Phase,
    parse_drain_tag,
    tag_value,
)
from dlaas.storage.base import Storage

_PHASES: dict[str, Phase] = {
    "pending": "pending",
    "running": "running",
    "stopping": "leaving",
    "shutting-down": "leaving",
}
MAX_IDS_PER_CALL = 500


class Ec2Launcher(FleetLauncher):
    """Starts worker instances directly; see the module docstring."""

    def __init__(
        self,
        *,
        cluster: str,
        storage: Storage,
        user_data: str | None = None,
        image_id: str | None = None,
        launch_template: str | None = None,
        launch_template_version: str = "$Default",
        instance_type: str | None = None,
        subnet_id: str | None = None,
        security_group_ids: Sequence[str] = (),
        instance_profile: str | None = None,
        key_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
        grace: Grace | None = None,
        heartbeat_max_age_s: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Give an AMI (``image_id``) with ``instance_type``, or a launch template
        (``lt-...`` ID or name) that supplies what is not given here.

        ``instance_profile`` is a profile name or ARN: the workers' IAM role.
        """
        if not cluster or len(cluster) > 128:
            raise ConfigError("the EC2 launcher needs a cluster name of 1-128 characters")
        if image_id is None and launch_template is None:
            raise ConfigError("the EC2 launcher needs an AMI (image_id) or a launch template")
        if launch_template is None and instance_type is None:
            raise ConfigError("the EC2 launcher needs an instance type when no launch template")
        super().__init__(
            storage=storage, grace=grace, heartbeat_max_age_s=heartbeat_max_age_s, clock=clock
        )
        self.cluster = cluster
        self.user_data = user_data
        self.image_id = image_id
        self.launch_template = launch_template
        self.launch_template_version = launch_template_version
        self.instance_type = instance_type
        self.subnet_id = subnet_id
        self.security_group_ids = list(security_group_ids)
        self.instance_profile = instance_profile
        self.key_name = key_name
        self.tags = dict(tags or {})
        self.client = client or make_client("ec2", region=region, endpoint_url=endpoint_url)

    def _launch(self, n: int) -> builtins.list[str]:
        """Start ``n`` instances, or as many as EC2 has capacity for when it has fewer."""
        args = self.run_instances_args(n)
        try:
            try:
                response = self.client.run_instances(**args)
            except ClientError as exc:
                if n == 1 or error_code(exc) != "InsufficientInstanceCapacity":
                    raise
                # Short of capacity for all n: take what EC2 can give now.
                response = self.client.run_instances(**{**args, "MinCount": 1})
        except (BotoCoreError, ClientError) as exc:
            raise ScalingError(
                f"run_instances for cluster {self.cluster!r} failed: {describe_error(exc)}; "
                "check the AMI or launch template, subnet, security groups, instance "
                "profile, and that the controller's role may call ec2:RunInstances"
            ) from exc
        ids = [str(i["InstanceId"]) for i in response.get("Instances", ())]
        return ids

    def run_instances_args(self, n: int) -> dict[str, Any]:
        """The ``run_instances`` request for ``n`` workers (public for review and tests)."""
        tags = {**self.tags, "Name": f"dlaas-worker-{self.cluster}", ROLE_TAG: ROLE}
        tags[CLUSTER_TAG] = self.cluster
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        args: dict[str, Any] = {
            "MinCount": n,
            "MaxCount": n,
            "ClientToken": uuid.uuid4().hex,  # a retried request never launches twice
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
        }
        if self.launch_template is not None:
            key = (
                "LaunchTemplateId"
                if self.launch_template.startswith("lt-")
                else "LaunchTemplateName"
            )
            args["LaunchTemplate"] = {
                key: self.launch_template,
                "Version": self.launch_template_version,
            }
        else:
            # IMDSv2 only: the user data reads the instance ID with a session token.
            args["MetadataOptions"] = {"HttpTokens": "required", "HttpEndpoint": "enabled"}
        if self.image_id is not None:
            args["ImageId"] = self.image_id
        if self.instance_type is not None:
            args["InstanceType"] = self.instance_type
        if self.user_data is not None:
            args["UserData"] = self.user_data  # boto3 base64-encodes it
        if self.subnet_id is not None:
            args["SubnetId"] = self.subnet_id
        if self.security_group_ids:
            args["SecurityGroupIds"] = self.security_group_ids
        if self.instance_profile is not None:
            key = "Arn" if self.instance_profile.startswith("arn:") else "Name"
            args["IamInstanceProfile"] = {key: self.instance_profile}
        if self.key_name is not None:
            args["KeyName"] = self.key_name
        return args

    # FleetLauncher ---------------------------------------------------------------

    def _describe(self) -> builtins.list[Instance]:
        filters = [
            {"Name": f"tag:{CLUSTER_TAG}", "Values": [self.cluster]},
            {"Name": f"tag:{ROLE_TAG}", "Values": [ROLE]},
            {"Name": "instance-state-name", "Values": sorted(_PHASES)},
        ]
        instances: builtins.list[Instance] = []
        try:
            for page in self.client.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", ()):
                    for raw in reservation.get("Instances", ()):
                        phase = _PHASES.get(raw["State"]["Name"])
                        if phase is None:
                            continue
                        instances.append(
                            Instance(
                                id=str(raw["InstanceId"]),
                                phase=phase,
                                launched_at=raw["LaunchTime"].timestamp(),
                                drain_requested_at=parse_drain_tag(
                                    tag_value(raw.get("Tags"), DRAIN_TAG)
                                ),
                            )
                        )
        except (BotoCoreError, ClientError) as exc:
            raise ScalingError(
                f"describe_instances for cluster {self.cluster!r} failed: {describe_error(exc)}"
            ) from exc
        return instances

    def _tag_drain(self, instance_ids: Sequence[str], at: float) -> None:
        try:
            for start in range(0, len(instance_ids), MAX_IDS_PER_CALL):
                self.client.create_tags(
                    Resources=list(instance_ids[start : start + MAX_IDS_PER_CALL]),
                    Tags=[{"Key": DRAIN_TAG, "Value": f"{at:.0f}"}],
                )
        except (BotoCoreError, ClientError) as exc:
            raise ScalingError(f"tagging drained instances failed: {describe_error(exc)}") from exc

    def _terminate(self, instance_ids: Sequence[str]) -> None:
        try:
            for start in range(0, len(instance_ids), MAX_IDS_PER_CALL):
                self.client.terminate_instances(
                    InstanceIds=list(instance_ids[start : start + MAX_IDS_PER_CALL])
                )
        except ClientError as exc:
            if error_code(exc) == "InvalidInstanceID.NotFound":
                return  # gone already
            raise ScalingError(f"terminate_instances failed: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise ScalingError(f"terminate_instances failed: {describe_error(exc)}") from exc
