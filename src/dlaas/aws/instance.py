"""What a worker instance asks about itself: its identity (IMDSv2) and how to leave.

``python -m dlaas.aws.instance retire`` runs from the worker's systemd unit once the
worker has exited on its own (idle, or drained). In an Auto Scaling group the instance
leaves with the desired capacity lowered by one, so the group does not replace it;
elsewhere there is nothing to do, and the shutdown that follows terminates it.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("dlaas.aws")

IMDS_URL = "http://169.254.169.254"
INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")

# Exit codes of ``retire``, read by the user-data's stop hook.
LEAVING = 0  # power off: the instance is on its way out
KEEP = 3  # the group keeps this instance (at its minimum size): restart the worker


def is_instance_id(value: str | None) -> bool:
    return bool(value) and INSTANCE_ID.match(value or "") is not None


def metadata(path: str, *, timeout_s: float = 1.0) -> str | None:
    """Read ``/latest/meta-data/<path>`` with an IMDSv2 token; None when not on EC2."""
    try:
        token_request = urllib.request.Request(
            f"{IMDS_URL}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(token_request, timeout=timeout_s) as response:
            token = response.read().decode()
        request = urllib.request.Request(
            f"{IMDS_URL}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return str(response.read().decode().strip())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def auto_scaling_group_of(client: Any, instance_id: str) -> str | None:
    """The instance's Auto Scaling group, or None (autoscaling:DescribeAutoScalingInstances)."""
    response = client.describe_auto_scaling_instances(InstanceIds=[instance_id])
    for item in response.get("AutoScalingInstances", ()):
        return str(item["AutoScalingGroupName"])
    return None


def retire(
    *,
    instance_id: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    client: Any = None,
) -> int:
    """Leave the Auto Scaling group, if any, lowering its desired capacity. Returns an exit code."""
    from botocore.exceptions import BotoCoreError, ClientError

    from dlaas.aws.clients import describe_error, make_client

    instance_id = instance_id or metadata("instance-id")
    if not is_instance_id(instance_id):
        log.info("retire_not_on_ec2")
        return LEAVING
    assert instance_id is not None
    region = region or metadata("placement/region")
    client = client or make_client("autoscaling", region=region, endpoint_url=endpoint_url)
    try:
        group = auto_scaling_group_of(client, instance_id)
        if group is None:
            return LEAVING
        client.terminate_instance_in_auto_scaling_group(
            InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
        )
    except ClientError as exc:
        if "minimum" in str(exc).lower() or "min size" in str(exc).lower():
            log.info("retire_kept_by_group", extra={"error": str(exc)})
            return KEEP
        log.warning("retire_failed", extra={"error": describe_error(exc)})
        return LEAVING
    except BotoCoreError as exc:
        log.warning("retire_failed", extra={"error": describe_error(exc)})
        return LEAVING
    log.info("retire_left_group", extra={"instance_id": instance_id, "group": group})
    return LEAVING


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dlaas.aws.instance", description="helpers that run on a worker instance"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    retire_parser = sub.add_parser(
        "retire",
        help="leave the Auto Scaling group (lowering its desired capacity) before power-off; "
        f"exit {KEEP} if the group keeps this instance",
    )
    retire_parser.add_argument("--region", default=None)
    retire_parser.add_argument("--endpoint-url", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    return retire(region=args.region, endpoint_url=args.endpoint_url)


if __name__ == "__main__":
    sys.exit(main())
