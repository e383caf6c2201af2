"""One ONNX Runtime session per process: prepared images in, top-k softmax scores out."""

from __future__ import annotations

import contextlib
import ctypes
import statistics
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from dlaas.errors import ModelError
from dlaas.model.preprocess import prepare_image
from dlaas.model.spec import ModelSpec, Prediction

# The batch run must cost under this fraction of as many single runs to be chosen, in the
# median of this many timed pairs (see ``batching_pays``).
BATCH_MUST_SAVE = 0.90
PROBE_PAIRS = 5  # 1.4 s at each model load here; 7 took 1.9 s and the margin does the work


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
        self._threads = intra_op_num_threads
        self.name = spec.name
        self.labels = spec.labels
        self._spinning = allow_spinning
        self._session = self._new_session()
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model {spec.onnx_path} must take one input, it takes {len(inputs)}")
        self._input_name = inputs[0].name
        self._output_name = self._session.get_outputs()[0].name
        self.run_batch_size = 0  # images per session run; 0: the whole batch at once

    def _new_session(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT's warnings are not actionable here
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self._spinning else "0"
        )
        path = self.spec.onnx_path
        try:
            return ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            raise ModelError(f"cannot load model {path}: {exc}") from exc

    def set_run_batch_size(self, requested: int, largest: int) -> int:
        """``requested`` images per session run, or (0) whichever of 1 and ``largest`` the
        CPU runs cheaper per image; returns the size in use."""
        if requested > 0:
            self.run_batch_size = requested
            return requested
        return self.choose_run_batch_size(largest)

    def choose_run_batch_size(self, largest: int, rounds: int = PROBE_PAIRS) -> int:
        """Time runs of ``largest`` images against as many runs of one, keep the cheaper per
        image, and use it from now on; returns it.

        Whether batching pays depends on the CPU: on a GPU or with VNNI it saves much, on
        AVX2 without VNNI nothing (``batching_pays`` says how clearly it must pay).
        The worker still receives and replies per batch; only the forward pass is split.
        The two are timed in pairs and the median pair decides, in CPU time of this thread
        (where a one-thread session runs), so a busy machine skews it less. The timing runs
        on a session of its own, dropped after: a session's arena keeps the activations of
        the largest batch it ran (~95 MB for 8), which a worker running 1 would never use.
        """
        if largest <= 1:
            self.run_batch_size = 1
            return 1
        shape = self.spec.preprocessing.input_shape(largest)
        sample = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        clock = time.thread_time if self._threads == 1 else time.perf_counter
        probe = self._new_session()
        feeds = [{self._input_name: sample[i : i + 1]} for i in range(largest)]
        whole = {self._input_name: sample}
        probe.run(None, feeds[0])  # both shapes warmed before timing
        probe.run(None, whole)
        ratios = []
        for _ in range(rounds):
            started = clock()
            for feed in feeds:
                probe.run(None, feed)
            singles = clock() - started
            started = clock()
            probe.run(None, whole)
            ratios.append((clock() - started) / max(singles, 1e-9))
        del probe
        _release_free_heap()
        self.run_batch_size = largest if batching_pays(ratios) else 1
        return self.run_batch_size

    def preprocess(self, data: bytes) -> np.ndarray:
        """One encoded image -> its model input; ImageError carries a user-readable reason."""
        return prepare_image(data, self.spec.preprocessing)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The raw model output for a stacked batch, shape ``(batch, classes)``."""
        expected = self.spec.preprocessing.input_shape(len(batch))
        if batch.shape != expected:
            raise ModelError(f"batch has shape {batch.shape}, the model needs {expected}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = self.run_batch_size or len(batch)
        if step >= len(batch):
            scores = self._run(batch)
        else:
            scores = np.concatenate(
                [self._run(batch[i : i + step]) for i in range(0, len(batch), step)]
            )
        if scores.shape[1] != len(self.labels):
            raise ModelError(
                f"model {self.name} outputs {scores.shape[1]} scores but has "
                f"{len(self.labels)} labels; the labels file must have one line per output"
            )
        return scores

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            (scores,) = self._session.run([self._output_name], {self._input_name: batch})
        except Exception as exc:
            raise ModelError(f"model {self.name} failed to run: {exc}") from exc
        return np.asarray(scores, dtype=np.float32).reshape(len(batch), -1)

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
            results.append(
                [
                    Prediction(class_id=int(i), label=self.labels[int(i)], score=float(row[i]))
                    for i in ranked
                ]
            )
        return results, probabilities.astype(np.float32)


def batching_pays(ratios: Sequence[float]) -> bool:
    """Whether the probe's pairs (a batch run's cost over as many single runs') say batch.

    Batching must pay clearly. A batch run keeps a larger arena (~95 MB for 8) and makes
    every image wait for the slowest; and the probe runs ORT alone, while a worker
    decodes between runs, which evicts what a batch run needs from the cache: on an AVX2
    CPU without VNNI the probe's pairs centre on 1.0 (medians of 5 pairs 0.96 to 1.06),
    while the decode+ORT loop runs batch 8 at 0.92 to 1.0x the speed of batch 1. With a
    5% margin a noisy probe chose 8 in about one start in ten, and that start ran 8%
    slower; on a GPU or with VNNI batching saves far more than 10%.
    """
    return bool(ratios) and statistics.median(ratios) < BATCH_MUST_SAVE


def _release_free_heap() -> None:
    """Hand the heap that a dropped session freed back to the system (glibc keeps it
    otherwise: ~40 MB after the batch-size probe, in every worker forked after it)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result
