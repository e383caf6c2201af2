"""deploy/k8s as data: the documents ``kubectl apply -k`` would apply, and what a container
sees of them. Both the offline checks (test_kubernetes.py) and the pods (test_pods.py)
start from this rendering, so they test the same manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"


def render(directory: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl apply -k directory`` applies."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "namespace"}
    assert not unknown, f"{directory}: kustomize features this test does not render: {unknown}"
    docs: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = directory / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def environment(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    """The container's DLAAS_* and AWS_* variables, as the kubelet would set them."""
    maps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    env: dict[str, str] = {}
    for source in container(deployment).get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
        else:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    for item in container(deployment).get("env", []):
        env[item["name"]] = item.get("value", "<from the pod>")
    return env
