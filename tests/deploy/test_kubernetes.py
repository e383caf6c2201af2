"""deploy/k8s, offline: core kinds against Kubernetes' own schemas (kubernetes-validate),
KEDA's kinds against a schema written from KEDA's documented spec (tests/deploy/keda),
and the references between the manifests and dlaas's settings.

Both variants are rendered the way ``kubectl apply -k`` would for what they use:
``resources`` (files and directories) and ``namespace``; any other kustomize feature in a
kustomization fails the test, so the rendering here never silently differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import pytest
from kubernetes_validate import utils as k8s

from dlaas.settings import Settings, load_settings

from .manifests import K8S, ROOT, by_kind, container, environment, render

VARIANTS = {"redis": K8S, "sqs": K8S / "sqs"}
KUBERNETES_VERSION = "1.30.0"  # the oldest that KEDA 2.17 supports
SCHEMAS = Path(__file__).parent / "keda"
KEDA = {
    kind: json.loads((SCHEMAS / f"{kind.lower()}.schema.json").read_text())
    for kind in ("ScaledObject", "TriggerAuthentication")
}
MADE_BY_HAND = {"dlaas-api-keys"}  # a Secret the operator creates (docs/kubernetes.md)


@pytest.fixture(params=sorted(VARIANTS))
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(VARIANTS[request.param])


# Schemas --------------------------------------------------------------------------------


def test_core_kinds_pass_kubernetes_validate(docs: list[dict[str, Any]]) -> None:
    core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in core} == {
        "Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
    }  # fmt: skip
    for doc in core:
        k8s.validate(doc, KUBERNETES_VERSION, strict=True)


def test_keda_kinds_match_keda_documented_spec(docs: list[dict[str, Any]]) -> None:
    keda = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    assert sorted(d["kind"] for d in keda) == ["ScaledObject", "TriggerAuthentication"]
    for doc in keda:
        jsonschema.Draft202012Validator(KEDA[doc["kind"]]).validate(doc)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda so: so["spec"].update(minReplicas=0), "'minReplicas' was unexpected"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].pop("stream"), "'stream' is a required"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].update(streamLength=16), "not of type"),
        (lambda so: so["spec"]["scaleTargetRef"].pop("name"), "'name' is a required"),
    ],
)
def test_the_keda_schema_catches_mistakes(change: Any, match: str) -> None:
    scaled = by_kind(render(K8S), "ScaledObject")["dlaas-worker"]
    change(scaled)
    with pytest.raises(jsonschema.ValidationError, match=match):
        jsonschema.Draft202012Validator(KEDA["ScaledObject"]).validate(scaled)


def test_kubernetes_validate_catches_a_misspelt_field() -> None:
    web = by_kind(render(K8S), "Deployment")["dlaas-web"]
    container(web)  # one container, as the manifests promise
    web["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(k8s.ValidationError, match="'readinesProbe' was unexpected"):
        k8s.validate(web, KUBERNETES_VERSION, strict=True)


# References -----------------------------------------------------------------------------


def test_every_reference_resolves(docs: list[dict[str, Any]]) -> None:
    secrets, maps = by_kind(docs, "Secret"), by_kind(docs, "ConfigMap")
    auths, deployments = by_kind(docs, "TriggerAuthentication"), by_kind(docs, "Deployment")
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= pod["metadata"]["labels"].items()
        )
        for source in container(deployment)["envFrom"]:
            ref = source.get("configMapRef") or source["secretRef"]
            assert ref["name"] in (maps if "configMapRef" in source else secrets)
        for volume in pod["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in {*secrets, *MADE_BY_HAND}
    for scaled in by_kind(docs, "ScaledObject").values():
        assert scaled["spec"]["scaleTargetRef"]["name"] == "dlaas-worker"
        for trigger in scaled["spec"]["triggers"]:
            auth = auths[trigger["authenticationRef"]["name"]]
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["key"] in secrets[ref["name"]]["stringData"]
    selecting_kinds = ("Service", "PodDisruptionBudget")
    for selecting in [d for d in docs if d["kind"] in selecting_kinds]:
        selector = selecting["spec"]["selector"]
        labels = selector.get("matchLabels", selector)
        assert any(
            labels.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        ), f"{selecting['kind']} {selecting['metadata']['name']} selects no pods"
    assert all(d["metadata"].get("namespace") == "dlaas" for d in docs if d["kind"] != "Namespace")


def test_containers_read_valid_dlaas_settings(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every DLAAS_* variable is a setting, and the web tier and workers load them."""
    for deployment in by_kind(docs, "Deployment").values():
        env = environment(docs, deployment)
        names = {k.removeprefix("DLAAS_").lower() for k in env if k.startswith("DLAAS_")}
        assert names <= set(Settings.model_fields), names - set(Settings.model_fields)
        for key in env:
            assert key.startswith(("DLAAS_", "AWS_", "REDIS_", "SQS_")), key
            if key.startswith("DLAAS_") and not env[key].startswith("<from"):
                monkeypatch.setenv(key, env[key])
        settings = load_settings()
        assert settings.queue_url.startswith(("redis://", "sqs://"))
        monkeypatch.undo()


def test_the_web_tier_is_web_only_with_probes() -> None:
    web = container(by_kind(render(K8S), "Deployment")["dlaas-web"])
    assert web["command"] == ["dlaas", "serve", "--workers", "0"]
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_workers_scale_from_zero_and_drain_a_batch_on_scale_in(
    docs: list[dict[str, Any]],
) -> None:
    worker = by_kind(docs, "Deployment")["dlaas-worker"]
    assert "replicas" not in worker["spec"]  # KEDA owns the count
    assert container(worker)["command"] == ["dlaas", "worker"]
    (scaled,) = by_kind(docs, "ScaledObject").values()
    assert scaled["spec"]["minReplicaCount"] == 0
    # SIGTERM's drain finishes the batch in hand; a batch outlasting a visibility timeout
    # is already a problem (its messages are heartbeated, but never so slow in practice).
    visibility_s = float(environment(docs, worker)["DLAAS_VISIBILITY_TIMEOUT_S"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 2 * visibility_s
    assert environment(docs, worker)["DLAAS_IDLE_TIMEOUT_S"] == "1000000000"
    assert by_kind(docs, "PodDisruptionBudget")["dlaas-worker"]["spec"]["maxUnavailable"] == 1


def test_the_redis_scaler_watches_the_stream_dlaas_uses() -> None:
    docs = render(K8S)
    (trigger,) = by_kind(docs, "ScaledObject")["dlaas-worker"]["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    url = urlparse(by_kind(docs, "Secret")["dlaas-queue"]["stringData"]["DLAAS_QUEUE"])
    metadata = trigger["metadata"]
    assert metadata["address"] == f"{url.hostname}:{url.port}"
    assert metadata["databaseIndex"] == url.path.strip("/")
    assert [metadata["stream"]] == parse_qs(url.query)["stream"]
    # XLEN is the backlog only because dlaas deletes done messages; no consumerGroup
    # means the scaler reads the stream length.
    assert "streamLength" in metadata and "consumerGroup" not in metadata
    password = by_kind(docs, "Secret")["dlaas-queue"]["stringData"]["REDIS_PASSWORD"]
    assert url.password == password


def test_the_sqs_scaler_counts_in_flight_messages() -> None:
    docs = render(K8S / "sqs")
    (trigger,) = by_kind(docs, "ScaledObject")["dlaas-worker"]["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"]["scaleOnInFlight"] == "true"
    queue_url = by_kind(docs, "Secret")["dlaas-queue"]["stringData"]["DLAAS_QUEUE"]
    assert queue_url == f"sqs://{trigger['metadata']['queueURL']}"


def test_the_docs_walk_through_the_manifests() -> None:
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    for needle in ("kubectl apply -k deploy/k8s", "deploy/k8s/sqs", "dlaas-api-keys", "KEDA"):
        assert needle in doc


def test_the_containerfile_matches_the_manifests() -> None:
    """Offline, and quick: the image copies what exists and agrees with the manifests
    (test_pods.py builds it and runs the manifests on it)."""
    text = (ROOT / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    config = by_kind(render(K8S), "ConfigMap")["dlaas-config"]["data"]
    assert f"dlaas model build --model-dir {config['DLAAS_MODEL_DIR']}" in text
    assert f"DLAAS_MODEL_DIR={config['DLAAS_MODEL_DIR']}" in text
    pod = by_kind(render(K8S), "Deployment")["dlaas-web"]["spec"]["template"]["spec"]
    assert f"USER {pod['securityContext']['runAsUser']}:" in text
    assert ".[aws,redis]" in text
