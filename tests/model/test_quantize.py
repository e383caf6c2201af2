"""The int8 model: built offline from the fp32 build, cached, rebuilt when stale, and close
to fp32 on real photos. The speed and the agreement figures are bench/int8.py's job."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from dlaas.errors import ModelError
from dlaas.model import INT8_NAME, Classifier, ModelSpec, ensure_quantized_model
from dlaas.model.cache import MODEL_NAME
from dlaas.model.calibration import find_calibration_photos
from dlaas.model.quantize import INT8_BUILDER_VERSION, load_quantized
from dlaas.settings import Settings

CALIBRATION_COUNT = 32  # enough for a sound model, and a build of seconds, not a minute


@pytest.fixture(scope="session")
def int8_cache(model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache with the fp32 build and an int8 build made from it, once."""
    cache = tmp_path_factory.mktemp("int8-cache")
    shutil.copytree(model_cache_dir / MODEL_NAME, cache / MODEL_NAME)
    ensure_quantized_model(cache, calibration_count=CALIBRATION_COUNT)
    return cache


@pytest.fixture()
def int8_spec(int8_cache: Path) -> ModelSpec:
    return ensure_quantized_model(int8_cache, calibration_count=CALIBRATION_COUNT)


def _manifest(cache: Path) -> dict[str, object]:
    data = json.loads((cache / INT8_NAME / "manifest.json").read_text())
    assert isinstance(data, dict)
    return data


def test_the_int8_build_is_smaller_and_records_its_recipe(
    int8_cache: Path, int8_spec: ModelSpec, lite0_spec: ModelSpec
) -> None:
    manifest = _manifest(int8_cache)

    assert int8_spec.name == INT8_NAME
    assert int8_spec.labels == lite0_spec.labels
    assert int8_spec.preprocessing == lite0_spec.preprocessing
    assert int8_spec.onnx_path.stat().st_size < 0.55 * lite0_spec.onnx_path.stat().st_size
    assert manifest["builder_version"] == INT8_BUILDER_VERSION
    calibration = manifest["calibration"]
    assert isinstance(calibration, dict)
    assert calibration["samples"] == CALIBRATION_COUNT
    assert calibration["photos"] == "the 7 public-domain photos that ship with dlaas"
    assert float(calibration["fp32_agreement"]) >= 0.8
    assert not list(int8_cache.glob(f".{INT8_NAME}-*"))  # no staging left behind


def test_int8_names_the_same_class_as_fp32_on_clear_photos(
    int8_spec: ModelSpec, lite0: Classifier, photo: Callable[[str], bytes]
) -> None:
    int8 = Classifier(int8_spec)
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        batch = lite0.preprocess(photo(name))[None]
        first, second = lite0.predict(batch, top_k=2)[0]
        int8_top = int8.predict(batch, top_k=1)[0][0]
        if first["score"] - second["score"] >= 0.05:  # a clear winner: the same class
            assert int8_top["class_id"] == first["class_id"], name
        else:  # chelsea: tiger cat 0.38 against Egyptian cat 0.37, a tie int8 may break
            assert int8_top["class_id"] in (first["class_id"], second["class_id"]), name
        assert abs(int8_top["score"] - first["score"]) < 0.15, name


def test_a_valid_int8_build_is_reused(int8_cache: Path) -> None:
    model_file = int8_cache / INT8_NAME / "model.onnx"
    before = model_file.stat().st_mtime_ns

    ensure_quantized_model(int8_cache, calibration_count=CALIBRATION_COUNT)

    assert model_file.stat().st_mtime_ns == before


def test_an_int8_build_from_another_fp32_model_is_stale(int8_cache: Path) -> None:
    manifest = _manifest(int8_cache)
    source = manifest["source"]
    assert isinstance(source, dict)

    assert load_quantized(int8_cache / INT8_NAME, "0" * 64, None) is None
    assert load_quantized(int8_cache / INT8_NAME, str(source["model_sha256"]), None) is not None


class _NoScikitImage(importlib.abc.MetaPathFinder):
    """Makes ``import skimage`` fail, as in an environment with only the runtime install."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] == "skimage":
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked)", name=fullname)
        return None


@pytest.fixture()
def no_scikit_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [_NoScikitImage(), *sys.meta_path])
    for name in [m for m in sys.modules if m.partition(".")[0] == "skimage"]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ModuleNotFoundError):
        import skimage  # noqa: F401


@pytest.mark.usefixtures("no_scikit_image")
def test_a_damaged_int8_model_is_rebuilt_without_scikit_image(
    int8_cache: Path, tmp_path: Path
) -> None:
    # given a damaged int8 build, scikit-image not importable and no --calibration-dir
    cache = tmp_path / "cache"
    shutil.copytree(int8_cache, cache)
    model_file = cache / INT8_NAME / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:1000])

    spec = ensure_quantized_model(cache, calibration_count=8)

    assert spec.onnx_path.stat().st_size > 1_000_000
    assert Classifier(spec).logits(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 1000)
    calibration = _manifest(cache)["calibration"]
    assert isinstance(calibration, dict)
    assert calibration["photos"] == "the 7 public-domain photos that ship with dlaas"
    assert calibration["photo_count"] == 7


def test_a_calibration_folder_is_used_and_its_changes_trigger_a_rebuild(
    int8_cache: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(int8_cache, cache)
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    for i, colour in enumerate([(200, 40, 40), (30, 160, 60), (20, 40, 200)]):
        Image.new("RGB", (300, 200), colour).save(photos / "nested" / f"{i}.png")
    (photos / "notes.txt").write_text("not an image")

    ensure_quantized_model(cache, calibration_dir=photos, calibration_count=8)
    first = _manifest(cache)["calibration"]
    assert isinstance(first, dict)
    assert first["photos"] == str(photos.resolve()) and first["photo_count"] == 3

    Image.new("RGB", (300, 200), (250, 250, 250)).save(photos / "3.png")
    ensure_quantized_model(cache, calibration_dir=photos, calibration_count=8)
    second = _manifest(cache)["calibration"]
    assert isinstance(second, dict)
    assert second["photo_count"] == 4


def test_calibration_folders_that_cannot_serve_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"does not exist.*--calibration-dir"):
        find_calibration_photos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"holds no images.*photos that ship with dlaas"):
        find_calibration_photos(tmp_path / "empty")


def test_the_int8_model_is_chosen_by_name() -> None:
    assert Settings().builtin_model == "efficientnet-lite0"
    int8 = Settings(model="efficientnet-lite0-int8")
    assert int8.builtin_model == INT8_NAME and int8.model_path is None
    own = Settings(model="mine.onnx", labels=Path("labels.txt"))
    assert own.builtin_model is None and own.model_path == Path("mine.onnx")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "mine.onnx"}, "needs its labels file"),
        ({"labels": Path("labels.txt")}, "--labels needs --model FILE"),
        ({"model": INT8_NAME, "labels": Path("labels.txt")}, "brings its own labels"),
    ],
)
def test_model_and_labels_mistakes_are_explained(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_rounded_weights_stay_on_the_grid_and_beat_round_to_nearest() -> None:
    """GPTQ's promise, checked on numbers: the layer's *outputs* on correlated inputs
    are closer to fp32 than with round-to-nearest, and every weight is a valid int8."""
    from dlaas.model import rounding

    rng = np.random.default_rng(0)
    d, rows, samples = 64, 32, 4096
    mixing = rng.normal(size=(d, d))
    x = rng.normal(size=(samples, d)) @ mixing  # correlated inputs, as in a real layer
    w = rng.normal(scale=0.05, size=(rows, d))
    moments = x.T @ x / samples
    scale = rounding.pair_safe_scale(w, pair_limit=rounding.PAIR_LIMIT)

    q = rounding.round_weights(w, moments, scale, pair_limit=rounding.PAIR_LIMIT)
    nearest = np.clip(np.rint(w / scale[:, None]), -127, 127)

    assert np.array_equal(q, np.rint(q)) and np.abs(q).max() <= 127
    pairs = np.abs(q[:, 0::2]) + np.abs(q[:, 1::2])
    assert pairs.max() <= rounding.PAIR_LIMIT
    reference = x @ w.T
    gptq_error = np.mean((x @ (q * scale[:, None]).T - reference) ** 2)
    nearest_error = np.mean((x @ (nearest * scale[:, None]).T - reference) ** 2)
    assert gptq_error < 0.7 * nearest_error


def test_pair_safe_scales_keep_neighbouring_weights_under_the_int16_limit() -> None:
    from dlaas.model import rounding

    w = np.array([[1.0, 1.0, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scale = rounding.pair_safe_scale(w, pair_limit=128)

    assert scale[0] == pytest.approx(2.0 / 128)  # the pair, not max |w| / 127, sets it
    assert scale[1] == 1.0  # an all-zero row: any scale is exact
    assert rounding.pair_safe_scale(w, pair_limit=None)[0] == pytest.approx(1.0 / 127)
