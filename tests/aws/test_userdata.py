"""The worker instances' user data: valid bash, the right settings, clear refusals."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlaas.aws.userdata import main, render_user_data
from dlaas.errors import ConfigError

S3 = "s3://dlaas-bucket/prod"
SQS = "sqs://dlaas-input"


def bash_n(script: str, tmp_path: Path) -> None:
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def section(script: str, marker: str) -> str:
    """The body of the heredoc ``<<'marker'`` that follows ``after``."""
    match = re.search(rf"<<'{marker}'\n(.*?)\n{marker}\n", script, re.S)
    assert match, f"no heredoc {marker}"
    return match.group(1)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"extra_env": {"DLAAS_IDLE_TIMEOUT_S": "120", "DLAAS_BATCH_SIZE": "32"}},
        {"poweroff_on_exit": False, "package_spec": "dlaas[aws]==0.1.0"},
        {"pip_args": ["--index-url", "https://mirror.example/simple", "--extra arg with 'quotes'"]},
        {"s3_endpoint_url": "http://10.0.0.5:8333", "sqs_endpoint_url": "http://10.0.0.6:9324"},
    ],
)
def test_rendered_script_is_valid_bash(options: dict[str, object], tmp_path: Path) -> None:
    script = render_user_data(storage_url=S3, queue_url=SQS, **options)  # type: ignore[arg-type]
    assert script.startswith("#!/bin/bash\n")
    assert "{{" not in script
    bash_n(script, tmp_path)
    # The hook that runs after the worker exits is bash too.
    bash_n(section(script, "DLAAS_HOOK"), tmp_path)


def test_the_worker_gets_the_clusters_settings() -> None:
    script = render_user_data(
        storage_url=S3,
        queue_url=SQS,
        aws_region="eu-west-1",
        extra_env={"DLAAS_IDLE_TIMEOUT_S": "300", "AWS_ENDPOINT_URL_SQS": "https://sqs.local"},
    )
    env = dict(line.split("=", 1) for line in section(script, "DLAAS_ENV").splitlines())
    assert env == {
        "DLAAS_STORAGE": f"'{S3}'",
        "DLAAS_QUEUE": f"'{SQS}'",
        "DLAAS_DATA_DIR": "'/var/lib/dlaas'",
        "DLAAS_AWS_REGION": "'eu-west-1'",
        "DLAAS_IDLE_TIMEOUT_S": "'300'",
        "AWS_ENDPOINT_URL_SQS": "'https://sqs.local'",
    }
    # The worker's ID is the instance ID, read through IMDSv2 (a session token first).
    assert 'echo "DLAAS_WORKER_ID=$INSTANCE_ID"' in script
    assert "INSTANCE_ID=$(imds instance-id)" in script
    assert "X-aws-ec2-metadata-token-ttl-seconds" in script


def test_the_systemd_unit_runs_the_worker_and_retires_the_instance_after() -> None:
    script = render_user_data(storage_url=S3, queue_url=SQS)
    unit = section(script, "DLAAS_UNIT")
    lines = set(unit.splitlines())
    assert "ExecStart=/opt/dlaas/venv/bin/dlaas worker" in lines
    assert "EnvironmentFile=/etc/dlaas/worker.env" in lines
    assert "ExecStopPost=+/opt/dlaas/bin/worker-exited" in lines
    assert "Restart=on-failure" in lines  # a crash restarts; a clean (idle) exit does not
    assert "KillSignal=SIGTERM" in lines  # the worker finishes the batch in hand
    assert "User=dlaas" in lines
    hook = section(script, "DLAAS_HOOK")
    assert "python -m dlaas.aws.instance retire" in hook
    assert "systemctl poweroff" in hook
    assert "systemctl enable --now dlaas-worker.service" in script


def test_keep_instance_disables_the_power_off() -> None:
    kept = render_user_data(storage_url=S3, queue_url=SQS, poweroff_on_exit=False)
    assert "POWEROFF_ON_EXIT=no" in kept
    assert "POWEROFF_ON_EXIT=yes" in render_user_data(storage_url=S3, queue_url=SQS)


def test_the_package_spec_is_quoted_for_the_shell() -> None:
    script = render_user_data(
        storage_url=S3, queue_url=SQS, package_spec="dlaas[aws] @ https://h/dlaas.whl"
    )
    assert "PACKAGE_SPEC='dlaas[aws] @ https://h/dlaas.whl'" in script


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"storage_url": "file:///srv/objects"}, "must be s3://"),
        ({"queue_url": "sqlite:///q.db"}, "must be sqs://"),
        ({"extra_env": {"DLAAS_NO_SUCH_SETTING": "1"}}, "is not a dlaas setting"),
        ({"extra_env": {"DLAAS_WORKER_ID": "x"}}, "set by the user-data script"),
        ({"extra_env": {"lower": "x"}}, "name 'lower' is invalid"),
        ({"extra_env": {"DLAAS_BATCH_SIZE": "1'; rm -rf /"}}, "contains a quote"),
        ({"extra_env": {"AWS_X": "a" * 20_000}}, "at most 16384"),
        ({"package_spec": " "}, "is empty"),
    ],
)
def test_bad_input_is_refused(options: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"storage_url": S3, "queue_url": SQS, **options}
    with pytest.raises(ConfigError, match=message):
        render_user_data(**args)  # type: ignore[arg-type]


def test_cli_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--storage", S3, "--queue", SQS, "--env", "DLAAS_IDLE_TIMEOUT_S=90"]) == 0
    printed = capsys.readouterr().out
    assert printed == render_user_data(
        storage_url=S3, queue_url=SQS, extra_env={"DLAAS_IDLE_TIMEOUT_S": "90"}
    )
    assert main(["--storage", S3, "--queue", SQS, "--base64"]) == 0
    encoded = capsys.readouterr().out.strip()
    assert base64.b64decode(encoded).decode() == render_user_data(storage_url=S3, queue_url=SQS)


def test_cli_reads_the_environment_twins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DLAAS_STORAGE", S3)
    monkeypatch.setenv("DLAAS_QUEUE", SQS)
    assert main([]) == 0
    assert f"DLAAS_STORAGE='{S3}'" in capsys.readouterr().out


def test_cli_refuses_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--storage", "file:///x", "--queue", SQS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlaas: error: ") and err.count("\n") == 1
    assert main(["--queue", SQS, "--env", "NOEQUALS"]) == 2


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_dlaas_aws_user_data_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dlaas", "aws", "user-data", "--storage", S3, "--queue", SQS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    bash_n(result.stdout, tmp_path)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    script = render_user_data(storage_url=S3, queue_url=SQS)
    units = re.findall(
        r"cat > /etc/systemd/system/(\S+) <<'DLAAS_UNIT'\n(.*?)\nDLAAS_UNIT\n", script, re.S
    )
    assert [name for name, _ in units] == ["dlaas-worker.service", "dlaas-worker-failed.service"]
    paths = []
    for name, body in units:
        (tmp_path / name).write_text(body + "\n")
        paths.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"},
    )
    # The programs exist only on an instance; anything else reported is a real problem.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]
    assert problems == []
