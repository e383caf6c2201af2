"""The built-in models by name: Lite0, Lite1 and Lite2 on a real photo, how a configuration
and ``dlaas model build NAME`` pick one, and the names kept in step across layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dlaas.cli import main
from dlaas.model import INT8_NAME, Classifier, ModelSpec
from dlaas.model.builtin import FP32_MODELS
from dlaas.model.select import model_spec_from
from dlaas.setting_groups import BUILTIN_MODELS
from dlaas.settings import Settings

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("name", list(FP32_MODELS))
def test_each_built_in_model_sees_the_cat(
    name: str, builtin_spec: Callable[[str], ModelSpec], photo: Callable[[str], bytes]
) -> None:
    clf = Classifier(builtin_spec(name))

    (preds,) = clf.predict(clf.preprocess(photo("chelsea"))[None], top_k=1)

    assert preds[0]["class_id"] in CAT_CLASSES, f"{name}: {preds[0]}"
    assert preds[0]["score"] > 0.3


def test_the_settings_list_every_built_in_model() -> None:
    assert set(BUILTIN_MODELS) == {*FP32_MODELS, INT8_NAME}
    assert BUILTIN_MODELS[0] == "efficientnet-lite0"  # the default


@pytest.mark.parametrize(
    ("name", "size"), [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)]
)
def test_model_names_a_built_in_model_to_serve(model_cache_dir: Path, name: str, size: int) -> None:
    settings = Settings(model=name, model_dir=model_cache_dir)

    spec = model_spec_from(settings)

    assert settings.model_path is None and settings.builtin_model == name
    assert spec.name == name and spec.onnx_path.parent == model_cache_dir / name
    assert spec.preprocessing.input_size == size


def test_model_build_name_builds_that_model(
    model_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["model", "build", "efficientnet-lite2", "--model-dir", str(model_cache_dir)])

    assert code == 0
    model_file = model_cache_dir / "efficientnet-lite2" / "model.onnx"
    assert f"model efficientnet-lite2 ready at {model_file}" in capsys.readouterr().out
    assert (model_cache_dir / "efficientnet-lite2" / "manifest.json").is_file()


def test_model_build_name_wins_over_the_environment(
    model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a serving environment that names another model
    monkeypatch.setenv("DLAAS_MODEL", "efficientnet-lite2")

    code = main(["model", "build", "efficientnet-lite1", "--model-dir", str(model_cache_dir)])

    assert code == 0
    assert "model efficientnet-lite1 ready" in capsys.readouterr().out


def test_model_build_without_a_name_builds_lite0_alone(tmp_path: Path) -> None:
    assert main(["model", "build", "--model-dir", str(tmp_path)]) == 0

    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "efficientnet-lite0"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["efficientnet-lite1", "--quantize", "int8"], "int8 builds efficientnet-lite0-int8 only"),
        (["efficientnet-lite1", "--model", "efficientnet-lite2"], "name the model once"),
        (["efficientnet-lite9"], "invalid choice: 'efficientnet-lite9'"),
    ],
)
def test_model_build_mistakes_are_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(["model", "build", *argv, "--model-dir", str(tmp_path)]))

    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was built
