"""The model code a competent engineer writes for a peer: Pillow, NumPy, one ORT session.

Shared by the FastAPI and LitServe peers so both do exactly the same work per image:
Pillow decode with ``draft`` (JPEG scale-on-decode by halves), short side to 256 and a
centred 224 crop in one bicubic resize, EfficientNet-Lite0's normalisation, one ORT run
on one thread, softmax, and the same top-5 (class id, label, score) that dlaas answers.
Only the model file and labels come from dlaas, so the peers run the very same network.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from dlaas.model import ensure_model

RESIZE, CROP = 256, 224


class PeerModel:
    def __init__(self, model_dir: Path) -> None:
        spec = ensure_model(model_dir)
        self.labels = spec.labels
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(spec.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (RESIZE, RESIZE))
        image = image.convert("RGB")
        width, height = image.size
        side = min(width, height) * CROP / RESIZE
        left, top = (width - side) / 2, (height - side) / 2
        image = image.resize(
            (CROP, CROP), Image.Resampling.BICUBIC, (left, top, left + side, top + side)
        )
        array = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
        return array.transpose(2, 0, 1)

    def top5(self, batch: np.ndarray) -> list[list[dict[str, Any]]]:
        (logits,) = self.session.run(None, {self.input_name: batch})
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        out = []
        for row in probs:
            best = np.argsort(-row)[:5]
            out.append(
                [
                    {"class_id": int(i), "label": self.labels[i], "score": float(row[i])}
                    for i in best
                ]
            )
        return out
