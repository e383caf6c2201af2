"""EfficientNet-Lite0 in int8: ONNX Runtime static quantization, cached beside the fp32 model.

``ensure_quantized_model`` builds ``<cache_dir>/efficientnet-lite0-int8/`` from the fp32
build, with the same files, lock and atomic rename as ``ensure_model``, and reuses it
while the fp32 model it came from is unchanged. The recipe, and the measurements behind
each choice, are in docs/model.md ("int8 model").
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlaas.errors import DlaasError, ModelError
from dlaas.model.cache import (
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ensure_model,
    exclusive_lock,
    fingerprint,
    sha256_file,
    staged_build,
    unchanged,
)
from dlaas.model.calibration import CalibrationSource, calibration_inputs, find_calibration_photos
from dlaas.model.labels import read_labels, write_labels
from dlaas.model.spec import ModelSpec, Preprocessing

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("dlaas.model")

INT8_NAME = "efficientnet-lite0-int8"
INT8_BUILDER_VERSION = 2  # bump when the recipe changes: old int8 caches rebuild
FP32_BLOCKS = 1  # the stem and MBConv block 0 stay fp32: see docs/model.md ("int8 model")
CALIBRATION_COUNT = 128  # crops; more moves the activation ranges by less than 1%
CALIBRATION_SEED = 20240611
BATCH = 16
MOMENT_POSITIONS = 256  # output pixels sampled per image and layer for the rounding
PERCENTILE = 99.99  # activation ranges clip the rarest 0.01%; plain min/max costs ~1 dB
MIN_SELF_AGREEMENT = 0.8  # on the calibration crops; a broken build lands far below


def ensure_quantized_model(
    cache_dir: Path,
    *,
    calibration_dir: Path | None = None,
    calibration_count: int = CALIBRATION_COUNT,
    force: bool = False,
) -> ModelSpec:
    """The int8 model from ``cache_dir``, built there first if missing, stale or forced.

    Without ``calibration_dir`` any valid build is reused; with it, only a build that was
    calibrated on that folder's current photos.
    """
    cache_dir = Path(cache_dir)
    fp32 = ensure_model(cache_dir)
    target = cache_dir / INT8_NAME
    source_sha = _model_sha256(fp32)
    wanted = None if calibration_dir is None else find_calibration_photos(calibration_dir)
    if not force:
        spec = load_quantized(target, source_sha, wanted)
        if spec is not None:
            return spec
    source = wanted or find_calibration_photos(None)
    with exclusive_lock(cache_dir / f".{INT8_NAME}.lock"):
        spec = None if force else load_quantized(target, source_sha, wanted)
        if spec is None:
            build_quantized(target, fp32, source, calibration_count)
    spec = load_quantized(target, source_sha, wanted)
    if spec is None:
        raise ModelError(f"the int8 model built into {target} does not validate; see the log")
    return spec


def load_quantized(
    target: Path, source_sha: str, wanted: CalibrationSource | None
) -> ModelSpec | None:
    """The spec of a valid int8 build in ``target``; None (and a log line saying why) if not."""
    if not (target / MANIFEST_FILE).is_file():
        return None
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
        reason = _stale_reason(target, manifest, source_sha, wanted)
        if reason is None:
            return ModelSpec(
                name=INT8_NAME,
                onnx_path=target / MODEL_FILE,
                labels=read_labels(target / LABELS_FILE),
                preprocessing=Preprocessing.from_dict(manifest["preprocessing"]),
            )
    except (ValueError, KeyError, TypeError, OSError, DlaasError) as exc:
        reason = f"unreadable manifest or labels ({exc})"
    log.info("model_cache_stale", extra={"model_dir": str(target), "reason": reason})
    return None


def _stale_reason(
    target: Path, manifest: dict[str, Any], source_sha: str, wanted: CalibrationSource | None
) -> str | None:
    if manifest.get("builder_version") != INT8_BUILDER_VERSION:
        return (
            f"built by int8 builder {manifest.get('builder_version')}, not {INT8_BUILDER_VERSION}"
        )
    if manifest["source"]["model_sha256"] != source_sha:
        return "the fp32 model it was quantized from has changed"
    if wanted is not None and manifest["calibration"]["fingerprint"] != wanted.fingerprint():
        return f"calibrated on other photos than those in {wanted.description}"
    model_file = target / MODEL_FILE
    if not model_file.is_file() or not unchanged(
        model_file, manifest["model_sha256"], manifest["fingerprints"]["model"]
    ):
        return "model.onnx is missing or changed since the build"
    if len(read_labels(target / LABELS_FILE)) != manifest["num_classes"]:
        return f"labels.txt does not have {manifest['num_classes']} lines"
    return None


def _model_sha256(fp32: ModelSpec) -> str:
    manifest = json.loads((fp32.onnx_path.parent / MANIFEST_FILE).read_text(encoding="utf-8"))
    return str(manifest["model_sha256"])


def build_quantized(target: Path, fp32: ModelSpec, source: CalibrationSource, count: int) -> None:
    """Quantize ``fp32`` into ``target`` on ``count`` crops of ``source``, atomically."""
    import onnx  # build-time only, like the fp32 converter

    with staged_build(target, photos=source.description) as build:
        staging = build.staging
        model = onnx.load(str(fp32.onnx_path))
        inputs = calibration_inputs(source, count, fp32.preprocessing, seed=CALIBRATION_SEED)
        kept = fp32_nodes(model)
        overrides = _round_weights(model, inputs, kept)
        rounded = staging / "rounded.onnx"
        onnx.save(model, str(rounded))
        _quantize(rounded, staging / MODEL_FILE, inputs, kept, overrides)
        rounded.unlink()
        agreement = _agreement(fp32, staging / MODEL_FILE, inputs[: 2 * BATCH])
        if agreement < MIN_SELF_AGREEMENT:
            raise ModelError(
                f"the int8 model agrees with fp32 on only {agreement:.0%} of its calibration "
                "crops; rebuild with --force, and report it if it happens again"
            )
        write_labels(staging / LABELS_FILE, fp32.labels)
        manifest = {
            "name": INT8_NAME,
            "builder_version": INT8_BUILDER_VERSION,
            "source": {"model": fp32.name, "model_sha256": _model_sha256(fp32)},
            "calibration": {
                "photos": source.description,
                "photo_count": len(source.paths),
                "fingerprint": source.fingerprint(),
                "samples": count,
                "seed": CALIBRATION_SEED,
                "fp32_agreement": round(agreement, 4),
            },
            "recipe": {
                "format": "QDQ",
                "activations": f"uint8 per tensor, {PERCENTILE}th percentile ranges",
                "weights": "int8 per channel, symmetric, GPTQ rounding, pairs capped at 128",
                "fp32_nodes": kept,
            },
            "onnxruntime": metadata.version("onnxruntime"),
            "model_sha256": sha256_file(staging / MODEL_FILE),
            "fingerprints": {"model": fingerprint(staging / MODEL_FILE)},
            "num_classes": len(fp32.labels),
            "preprocessing": fp32.preprocessing.to_dict(),
        }
        build.publish(manifest)


def fp32_nodes(model: onnx.ModelProto, blocks: int | None = None) -> list[str]:
    """Nodes left in fp32: the stem, the first ``blocks`` MBConv blocks (default
    FP32_BLOCKS), pooling and the classifier (names as efficientnet.py gives them)."""
    count = FP32_BLOCKS if blocks is None else blocks
    prefixes = ("_conv_stem", *(f"_blocks.{i}." for i in range(count)))
    return [
        node.name
        for node in model.graph.node
        if node.name.startswith(prefixes)
        or node.op_type in ("GlobalAveragePool", "Flatten", "Gemm")
    ]


def _round_weights(
    model: onnx.ModelProto, inputs: np.ndarray, kept: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Replace each int8 conv's weights by their rounded values, in place; return the
    per-channel scales for the quantizer, so that it reproduces exactly these integers."""
    from onnx import numpy_helper

    from dlaas.model import rounding

    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in kept]
    moments = rounding.input_moments(
        model,
        (inputs[i : i + BATCH] for i in range(0, len(inputs), BATCH)),
        convs,
        positions=MOMENT_POSITIONS,
        seed=CALIBRATION_SEED,
    )
    initializers = {t.name: t for t in model.graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in convs:
        tensor = initializers[node.input[1]]
        weights = numpy_helper.to_array(tensor)
        rows = weights.reshape(weights.shape[0], -1)
        pair_limit = None if rounding.is_depthwise(node) else rounding.PAIR_LIMIT
        scale = rounding.pair_safe_scale(rows, pair_limit=pair_limit)
        q = rounding.round_weights(rows, moments[node.name], scale, pair_limit=pair_limit)
        rounded = (q * scale[:, None]).reshape(weights.shape).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
        overrides[tensor.name] = [
            {"axis": 0, "scale": np.float32(s), "zero_point": np.int8(0)} for s in scale
        ]
    return overrides


def _quantize(
    source: Path,
    target: Path,
    inputs: np.ndarray,
    kept: list[str],
    overrides: dict[str, list[dict[str, Any]]],
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
        def __init__(self) -> None:
            self._batches = iter(range(0, len(inputs), BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._batches, None)
            return None if start is None else {"input": inputs[start : start + BATCH]}

    with _quiet_quantizer():
        quantize_static(
            str(source),
            str(target),
            Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=kept,
            calibrate_method=CalibrationMethod.Percentile
            if PERCENTILE
            else CalibrationMethod.MinMax,
            extra_options={"TensorQuantOverrides": overrides, "CalibPercentile": PERCENTILE},
        )


def _agreement(fp32: ModelSpec, int8_path: Path, inputs: np.ndarray) -> float:
    from dlaas.model.classifier import Classifier

    int8 = ModelSpec(INT8_NAME, int8_path, fp32.labels, fp32.preprocessing)
    expected = Classifier(fp32).logits(inputs).argmax(axis=1)
    got = Classifier(int8).logits(inputs).argmax(axis=1)
    return float(np.mean(expected == got))


class _DropQuantizerAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantizer prints progress and logs generic advice on the root logger."""
    root = logging.getLogger()
    advice = _DropQuantizerAdvice()
    root.addFilter(advice)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(advice)
