"""Settings: one typed object from DLAAS_* and flags; bad values refused with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlaas.cli import build_parser
from dlaas.errors import ConfigError
from dlaas.settings import Settings, load_settings


def test_defaults_need_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("DLAAS_"):
            monkeypatch.delenv(key)
    s = load_settings()
    assert s.data_dir == Path(".dlaas")
    assert s.storage_url == f"file://{Path('.dlaas/objects').resolve()}"
    assert s.queue_url == f"sqlite://{Path('.dlaas/queue.db').resolve()}"
    assert (s.host, s.port, s.batch_size, s.max_upload_mb, s.max_pixels) == (
        "127.0.0.1", 8000, 8, 20.0, 40_000_000,
    )  # fmt: skip
    assert s.target_backlog_per_worker == 2


def test_environment_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLAAS_IDLE_TIMEOUT_S", "7.5")
    monkeypatch.setenv("DLAAS_BATCH_SIZE", "4")
    monkeypatch.setenv("DLAAS_QUEUE", "sqlite:///tmp/q.db")
    s = load_settings()
    assert (s.idle_timeout_s, s.batch_size, s.queue_url) == (7.5, 4, "sqlite:///tmp/q.db")


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLAAS_IDLE_TIMEOUT_S", "7.5")
    args = build_parser().parse_args(["worker", "--idle-timeout-s", "3"])
    s = load_settings(**{k: v for k, v in vars(args).items() if k in Settings.model_fields})
    assert s.idle_timeout_s == 3.0


def test_every_field_has_a_flag_on_serve() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {a.dest for a in serve._actions}
    assert set(Settings.model_fields) <= flags


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"storage": "ftp://host/x"}, "accepted: file://, memory://, s3://"),
        ({"queue": "amqp://localhost"}, "accepted: sqlite://"),
        ({"batch_size": "0"}, "--batch-size / DLAAS_BATCH_SIZE"),
        ({"port": "http"}, "--port / DLAAS_PORT"),
        ({"min_workers": "5", "max_workers": "2"}, "above --max-workers"),
        ({"mean": "1,2"}, "three comma-separated numbers"),
        ({"model": "m.onnx"}, "--model and --labels go together"),
    ],
)
def test_bad_values_are_refused_with_one_clear_line(overrides: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_cli_prints_one_line_and_exits_2_on_bad_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dlaas.cli import main

    assert main(["worker", "--queue", "kafka://x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("dlaas: error: invalid settings: ")
    assert "sqs://" in err


def test_to_env_renders_the_dlaas_twins_of_set_fields_only() -> None:
    s = load_settings(batch_size=4, idle_timeout_s=7.5)
    env = s.to_env(["batch_size", "idle_timeout_s", "worker_id", "queue_name"])
    assert env == {
        "DLAAS_BATCH_SIZE": "4",
        "DLAAS_IDLE_TIMEOUT_S": "7.5",
        "DLAAS_QUEUE_NAME": "dlaas-input",
    }  # worker_id is unset, so it does not travel
