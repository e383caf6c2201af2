"""One ONNX Runtime session per process: prepared images in, top-k softmax scores out."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from dlaas.errors import ModelError
from dlaas.model.preprocess import prepare_image
from dlaas.model.spec import ModelSpec, Prediction


class Classifier:
    """Runs a ModelSpec on the CPU.

    ``intra_op_num_threads`` defaults to 1 because one worker process per core scales better
    than threads inside one process; inter-op parallelism is off for the same reason. With
    more than one thread, ``allow_spinning`` lets idle threads busy-wait for the next op:
    a little faster on a dedicated machine, but it steals CPU from the worker processes and
    the web tier that share the cores, so it is off by default.
    """

    def __init__(
        self, spec: ModelSpec, *, intra_op_num_threads: int = 1, allow_spinning: bool = False
    ) -> None:
        if intra_op_num_threads < 1:
            raise ModelError(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}")
        self.spec = spec
        self.name = spec.name
        self.labels = spec.labels
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT's warnings are not actionable here
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        try:
            self._session = ort.InferenceSession(
                str(spec.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            raise ModelError(f"cannot load model {spec.onnx_path}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model {spec.onnx_path} must take one input, it takes {len(inputs)}")
        self._input_name = inputs[0].name
        self._output_name = self._session.get_outputs()[0].name

    def preprocess(self, data: bytes) -> np.ndarray:
        """One encoded image -> its model input; ImageError carries a user-readable reason."""
        return prepare_image(data, self.spec.preprocessing)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The raw model output for a stacked batch, shape ``(batch, classes)``."""
        expected = self.spec.preprocessing.input_shape(len(batch))
        if batch.shape != expected:
            raise ModelError(f"batch has shape {batch.shape}, the model needs {expected}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            (scores,) = self._session.run([self._output_name], {self._input_name: batch})
        except Exception as exc:
            raise ModelError(f"model {self.name} failed to run: {exc}") from exc
        scores = np.asarray(scores, dtype=np.float32).reshape(len(batch), -1)
        if scores.shape[1] != len(self.labels):
            raise ModelError(
                f"model {self.name} outputs {scores.shape[1]} scores but has "
                f"{len(self.labels)} labels; the labels file must have one line per output"
            )
        return scores

    def predict(self, batch: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """Top-k classes per image, best first, with softmax scores."""
        return self.predict_with_scores(batch, top_k)[0]

    def predict_with_scores(
        self, batch: np.ndarray, top_k: int = 5
    ) -> tuple[list[list[Prediction]], np.ndarray]:
        """``predict``'s answer and every class's softmax score, ``(batch, classes)`` float32,
        from the one forward pass (the Open Inference Protocol's probabilities output)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if len(batch) == 0:
            return [], np.zeros((0, len(self.labels)), dtype=np.float32)
        probabilities = softmax(self.logits(batch))
        k = min(top_k, probabilities.shape[1])
        top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
        results = []
        for row, ids in zip(probabilities, top, strict=True):
            ranked = ids[np.argsort(-row[ids], kind="stable")]
            results.append([Prediction(int(i), self.labels[int(i)], float(row[i])) for i in ranked])
        return results, probabilities.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result
