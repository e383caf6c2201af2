"""The model repository on disk and the index of served versions: no service, no ORT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlaas.errors import ModelError, ModelNotFound, ModelUnavailable
from dlaas.model import build_tiny_model
from dlaas.model.index import ModelIndex
from dlaas.model.repository import (
    CONFIG_FILE,
    ModelConfig,
    add_model,
    find_entry,
    publish_builtin,
    read_entry,
    scan,
)
from dlaas.model.spec import ModelSpec, Preprocessing


@pytest.fixture(scope="module")
def three_class(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return build_tiny_model(tmp_path_factory.mktemp("three"), num_classes=3)


def config() -> ModelConfig:
    return ModelConfig(Preprocessing(), max_batch_size=4)


def test_add_writes_config_labels_and_numbered_versions(
    tmp_path: Path, three_class: ModelSpec
) -> None:
    labels = three_class.onnx_path.parent / "labels.txt"
    entry, version = add_model(tmp_path, "my-classifier", three_class.onnx_path, labels, config())
    assert version == 1 and entry.versions == (1,)
    assert entry.spec(1).labels == ("class 0", "class 1", "class 2")
    saved = json.loads((tmp_path / "my-classifier" / CONFIG_FILE).read_text())
    assert saved["max_batch_size"] == 4 and saved["input_size"] == 224
    assert saved["version_policy"] == "latest" and saved["labels_file"] == "labels.txt"

    entry, version = add_model(tmp_path, "my-classifier", three_class.onnx_path, labels, config())
    assert version == 2 and read_entry(tmp_path / "my-classifier").versions == (1, 2)
    with pytest.raises(ModelError, match="exists already"):
        add_model(tmp_path, "my-classifier", three_class.onnx_path, labels, config(), version=2)


def test_add_refuses_what_load_custom_model_refuses(tmp_path: Path, three_class: ModelSpec) -> None:
    four = tmp_path / "four.txt"
    four.write_text("a\nb\nc\nd\n")
    with pytest.raises(ModelError, match="outputs 3 classes but"):
        add_model(tmp_path / "r", "m", three_class.onnx_path, four, config())
    with pytest.raises(ModelError, match="model name"):
        add_model(tmp_path / "r", "Bad Name", three_class.onnx_path, four, config())
    nhwc = ModelConfig(Preprocessing(layout="NHWC"))
    labels = three_class.onnx_path.parent / "labels.txt"
    with pytest.raises(ModelError, match="--layout"):
        add_model(tmp_path / "r", "m", three_class.onnx_path, labels, nhwc)
    assert not (tmp_path / "r" / "m" / "1").exists()


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / CONFIG_FILE).write_text(json.dumps({"input_size": 224, "colour": "blue"}))
    with pytest.raises(ModelError, match=r"unknown field\(s\) colour"):
        read_entry(folder)
    (folder / CONFIG_FILE).write_text(json.dumps({"input_size": 300, "resize_size": 256}))
    with pytest.raises(ModelError, match="resize_size"):
        read_entry(folder)
    (tmp_path / "other").mkdir()  # no config: not a model folder
    ((found_name, reason),) = scan(tmp_path)  # type: ignore[misc]
    assert found_name == "m" and "resize_size" in reason


def test_a_builtin_build_becomes_an_entry_with_version_1(
    tmp_path: Path, three_class: ModelSpec
) -> None:
    folder = tmp_path / "efficientnet-lite0"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(three_class.onnx_path.read_bytes())
    spec = ModelSpec("efficientnet-lite0", folder / "model.onnx", (), Preprocessing())
    publish_builtin(spec, folder)
    publish_builtin(spec, folder)  # idempotent
    entry = find_entry(tmp_path, "efficientnet-lite0")
    assert entry is not None and entry.versions == (1,)
    assert entry.onnx_path(1).samefile(folder / "model.onnx")


def test_index_swaps_versions_only_after_warm_up_and_flags_broken_files(
    tmp_path: Path, three_class: ModelSpec
) -> None:
    labels = three_class.onnx_path.parent / "labels.txt"
    add_model(tmp_path, "good", three_class.onnx_path, labels, config())
    add_model(tmp_path, "broken", three_class.onnx_path, labels, config())
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    index = ModelIndex(tmp_path, "good")
    index.scan_all()
    assert [m.name for m in index.models()] == ["good", "broken"]  # the default first
    assert index.get("broken").state == "UNAVAILABLE"
    assert "not a readable ONNX model" in index.get("broken").versions[1].reason
    with pytest.raises(ModelUnavailable):
        index.resolve("broken")
    with pytest.raises(ModelNotFound, match="serves 'good', 'broken'"):
        index.resolve("nope")
    assert index.resolve(None).version == 1

    add_model(tmp_path, "good", three_class.onnx_path, labels, config())
    model, staged = index.stage("good")
    assert staged == [2] and model.versions[2].state == "LOADING"
    assert index.resolve("good").version == 1  # the old one serves while 2 warms up
    with pytest.raises(ModelUnavailable, match="LOADING"):
        index.resolve("good", "2")
    index.finish("good", {2: None})
    assert index.resolve("good").version == 2
    assert index.get("good").versions[1].reason.startswith("unloaded")

    add_model(tmp_path, "good", three_class.onnx_path, labels, config())
    index.stage("good")
    index.finish("good", {3: "model good failed to run"})
    assert index.resolve("good").version == 2  # a failed warm-up leaves 2 serving
    assert "warm-up failed" in index.get("good").versions[3].reason

    index.unload("good")
    with pytest.raises(ModelUnavailable, match="unloaded"):
        index.resolve("good")
