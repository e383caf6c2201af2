"""deploy/aws/dlaas.yaml: cfn-lint clean, least privilege, user data in step with
``dlaas aws user-data``, and the stack deployed on moto's server works with dlaas."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dlaas.aws.userdata import render_user_data
from dlaas.queue import open_queue
from dlaas.queue.sqs import SqsQueue
from dlaas.scaling.launchers.asg import AsgLauncher
from dlaas.settings import Settings
from dlaas.storage import open_storage

from ..aws.servers import (  # noqa: F401 - fixtures
    Endpoint,
    fixture_aws_env,
    fixture_moto,
    fixture_moto_server,
)
from ..conftest import need

TEMPLATE = Path(__file__).parents[2] / "deploy" / "aws" / "dlaas.yaml"
SAMPLE = {
    "Bucket": "dlaas-bucket-abc123",
    "InputQueue.QueueName": "dlaas-input",
    "AWS::Region": "eu-west-1",
    "PackageSpec": "dlaas[aws]",
    "WorkerIdleTimeout": "300",
    "ClusterName": "dlaas",
    "WebPort": "8000",
    "MaxWorkers": "10",
    "RetentionDays": "7",
    "ApiKeysParameter": "/dlaas/api-keys",
}


def load_template() -> dict[str, Any]:
    from cfnlint.decode import decode_str

    template, problems = decode_str(TEMPLATE.read_text())
    assert not problems and template is not None
    return dict(template)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def substitute(text: str, values: dict[str, str]) -> str:
    """What CloudFormation's Fn::Sub does: ${Name} -> value, ${!Name} -> ${Name}."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        return "${" + name[1:] + "}" if name.startswith("!") else values[name]

    return re.sub(r"\$\{([^}]*)\}", one, text)


def user_data_sub(block: dict[str, Any]) -> str:
    sub = block["Fn::Base64"]["Fn::Sub"]
    return str(sub if isinstance(sub, str) else sub[0])


def test_cfn_lint_is_clean() -> None:
    binary = shutil.which("cfn-lint") or str(Path(sys.executable).parent / "cfn-lint")
    need(Path(binary).exists(), "cfn-lint is not installed (pip install cfn-lint)")
    result = subprocess.run([binary, str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_user_data_is_what_dlaas_aws_user_data_renders(tmp_path: Path) -> None:
    template = load_template()
    (launch_template,) = [
        r for name, r in resources(template, "AWS::EC2::LaunchTemplate").items() if "Worker" in name
    ]
    data = launch_template["Properties"]["LaunchTemplateData"]
    script = substitute(user_data_sub(data["UserData"]), SAMPLE)
    expected = render_user_data(
        storage_url="s3://dlaas-bucket-abc123/dlaas",
        queue_url="sqs://dlaas-input",
        package_spec="dlaas[aws]",
        aws_region="eu-west-1",
        extra_env={"DLAAS_IDLE_TIMEOUT_S": "300"},
    )
    assert script == expected, "regenerate the template's UserData from `dlaas aws user-data`"
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["MetadataOptions"]["HttpTokens"] == "required"


def test_web_user_data_is_valid_bash(tmp_path: Path) -> None:
    (web,) = resources(load_template(), "AWS::EC2::Instance").values()
    script = substitute(user_data_sub(web["Properties"]["UserData"]), SAMPLE)
    path = tmp_path / "web.sh"
    path.write_text(script)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ExecStart=/opt/dlaas/venv/bin/dlaas serve" in script
    assert "DLAAS_QUEUE='sqs://dlaas-input'" in script


def test_iam_allows_no_wildcard_actions_and_wildcard_resources_only_to_describe() -> None:
    template = load_template()
    roles = resources(template, "AWS::IAM::Role")
    assert set(roles) == {"WebRole", "WorkerRole"}
    for name, role in roles.items():
        for policy in role["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                assert statement["Effect"] == "Allow"
                actions = statement["Action"]
                actions = [actions] if isinstance(actions, str) else actions
                for action in actions:
                    assert "*" not in action, f"{name}: wildcard action {action}"
                if statement["Resource"] == "*":
                    verbs = {a.split(":")[1] for a in actions}
                    assert all(v.startswith("Describe") for v in verbs), f"{name}: {actions}"


def test_workers_cannot_create_queues_or_scale_the_group() -> None:
    worker = load_template()["Resources"]["WorkerRole"]
    actions = {
        action
        for policy in worker["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        for action in (
            [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        )
    }
    assert not actions & {"sqs:CreateQueue", "sqs:DeleteQueue", "autoscaling:SetDesiredCapacity"}
    assert not any(a.startswith(("iam:", "ec2:")) for a in actions)


def test_bucket_is_private_encrypted_and_expires_inputs() -> None:
    (bucket,) = resources(load_template(), "AWS::S3::Bucket").values()
    props = bucket["Properties"]
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    prefixes = {r.get("Prefix") for r in props["LifecycleConfiguration"]["Rules"]}
    assert "dlaas/inputs/" in prefixes


def test_the_bucket_rule_and_the_janitor_share_the_default_retention(tmp_path: Path) -> None:
    template = load_template()
    (bucket,) = resources(template, "AWS::S3::Bucket").values()
    rules = {r["Id"]: r for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    rule = rules["expire-jobs"]
    assert rule["Prefix"] == "dlaas/"  # the whole store: inputs, results, manifests, markers
    assert rule["ExpirationInDays"] == {"Ref": "RetentionDays"}
    days = int(template["Parameters"]["RetentionDays"]["Default"])
    assert days * 24 == Settings.model_fields["retention_h"].default
    # the web instance's controller gets the same retention, in hours
    (web,) = resources(template, "AWS::EC2::Instance").values()
    script = substitute(user_data_sub(web["Properties"]["UserData"]), SAMPLE)
    env = tmp_path / "web.env"
    line = next(x for x in script.splitlines() if "DLAAS_RETENTION_H" in x).strip()
    shell = line.replace("/etc/dlaas/web.env", str(env))
    subprocess.run(["bash", "-c", shell], check=True)
    assert env.read_text().strip() == "DLAAS_RETENTION_H=168"


def test_worker_group_starts_at_zero_and_leaves_desired_capacity_to_the_controller() -> None:
    (group,) = resources(load_template(), "AWS::AutoScaling::AutoScalingGroup").values()
    assert group["Properties"]["MinSize"] == "0"
    assert "DesiredCapacity" not in group["Properties"]


# The stack on moto's server, then dlaas pointed at its outputs ---------------------------


def deploy(moto: Endpoint) -> dict[str, str]:
    ec2: Any = moto.client("ec2")
    cfn: Any = moto.client("cloudformation")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] == vpc]
    cfn.create_stack(
        StackName="dlaas",
        TemplateBody=TEMPLATE.read_text(),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[
            {"ParameterKey": "VpcId", "ParameterValue": vpc},
            {"ParameterKey": "SubnetIds", "ParameterValue": ",".join(subnets[:2])},
            {"ParameterKey": "AllowedCidr", "ParameterValue": "203.0.113.0/24"},
        ],
    )
    deadline = time.monotonic() + 60
    while True:
        stack = cfn.describe_stacks(StackName="dlaas")["Stacks"][0]
        if not stack["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def test_the_stack_on_moto_is_what_dlaas_expects(moto: Endpoint) -> None:
    outputs = deploy(moto)

    # Storage and queue open as the stack made them: dlaas creates neither.
    storage = open_storage(outputs["StorageUrl"], endpoint_url=moto.url)
    storage.put("inputs/job/image", b"jpeg")
    assert storage.get("inputs/job/image") == b"jpeg"
    raw = moto.client("s3").list_objects_v2(Bucket=outputs["BucketName"])  # type: ignore[attr-defined]
    assert [o["Key"] for o in raw["Contents"]] == ["dlaas/inputs/job/image"]
    queue = open_queue(outputs["QueueUrl"], endpoint_url=moto.url, max_receives=5)
    assert isinstance(queue, SqsQueue)
    assert queue.max_receives == 5
    assert queue.dead_letter().name == "dlaas-input-dlq"

    # The controller sizes the worker group; each worker boots with the user data.
    launcher = AsgLauncher(
        group_name=outputs["WorkerGroupName"], storage=storage, endpoint_url=moto.url
    )
    assert launcher.list() == []
    ids = launcher.launch(2)
    assert len(ids) == 2
    ec2: Any = moto.client("ec2")
    user_data = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="userData")
    script = base64.b64decode(user_data["UserData"]["Value"]).decode()
    assert script == render_user_data(
        storage_url=outputs["StorageUrl"],
        queue_url=outputs["QueueUrl"],
        aws_region=moto.region,
        extra_env={"DLAAS_IDLE_TIMEOUT_S": "300"},
    )
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    tags = {t["Key"]: t["Value"] for t in reservations[0]["Instances"][0]["Tags"]}
    assert (tags["dlaas:role"], tags["dlaas:cluster"]) == ("worker", "dlaas")

    # Tear down: the queues go with the stack; the bucket is kept (DeletionPolicy: Retain).
    launcher.drain(ids)  # never booted a worker: they leave at once
    assert launcher.list() == []
    moto.client("cloudformation").delete_stack(StackName="dlaas")  # type: ignore[attr-defined]
    queues = moto.client("sqs").list_queues().get("QueueUrls", [])  # type: ignore[attr-defined]
    assert not [q for q in queues if q.rsplit("/", 1)[-1].startswith("dlaas-input")]
