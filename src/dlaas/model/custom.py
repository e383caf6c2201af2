"""Bring your own ONNX classifier: check it against its labels and preprocessing up front."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dlaas.errors import ModelError
from dlaas.model.labels import read_labels
from dlaas.model.spec import ModelSpec, Preprocessing

if TYPE_CHECKING:
    from onnx import ValueInfoProto


def load_custom_model(
    onnx_path: Path, labels_path: Path, preprocessing: Preprocessing
) -> ModelSpec:
    """A spec for the user's model, or a ModelError that says what does not fit.

    Checked: both files exist, the model has one image input whose fixed dimensions match
    the preprocessing, and its fixed output width equals the number of labels. Dimensions
    the model leaves symbolic are checked when it first runs.
    """
    onnx_path, labels_path = Path(onnx_path), Path(labels_path)
    if not onnx_path.is_file():
        raise ModelError(f"model file {onnx_path} not found; pass --model an existing .onnx file")
    labels = read_labels(labels_path)
    try:
        import onnx  # only bring-your-own models need it, and only at start

        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf's decode errors have no common base
        raise ModelError(f"{onnx_path} is not a readable ONNX model: {exc}") from exc

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"model {onnx_path} must take exactly one image input, not {len(inputs)}")
    expected = preprocessing.input_shape(1)[1:]
    dims = _dims(inputs[0])
    if len(dims) != 4:
        raise ModelError(
            f"model {onnx_path} takes a rank-{len(dims)} input; a {preprocessing.layout} "
            "image batch is rank 4"
        )
    for axis, (have, want) in enumerate(zip(dims[1:], expected, strict=True), start=1):
        if have is not None and have != want:
            raise ModelError(
                f"model {onnx_path} wants input shape {_show(dims)} but preprocessing gives "
                f"[batch, {', '.join(map(str, expected))}] (axis {axis}); check --input-size "
                "and --layout"
            )
    if not model.graph.output:
        raise ModelError(f"model {onnx_path} has no output")
    out_dims = _dims(model.graph.output[0])
    width = out_dims[-1] if out_dims else None
    if width is not None and width != len(labels):
        raise ModelError(
            f"model {onnx_path} outputs {width} classes but {labels_path} has {len(labels)} "
            "labels; the labels file needs one line per output, in output order"
        )
    return ModelSpec(
        name=onnx_path.stem, onnx_path=onnx_path, labels=labels, preprocessing=preprocessing
    )


def _dims(value: ValueInfoProto) -> list[int | None]:
    """A value's dimensions; ``None`` where symbolic or unknown."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _show(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
