"""The model alone: ONNX Runtime images/s by batch and threads, and decode cost by JPEG size.

Everything is measured side by side in one run, configurations interleaved across repeats,
and the median reported, because the machine is shared and noisy.

    .venv/bin/python bench/model.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

from common import cpu_count, ensure_model_dir, interleaved_rates
from dlaas.model import Classifier, ModelSpec, ensure_model
from dlaas.model.preprocess import prepare_image

BATCH_SIZES = (1, 8, 32)
IMAGES_PER_RUN = 64
JPEG_SIZES = ((640, 480), (1920, 1080), (4032, 3024))
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def model_rates(spec: ModelSpec, repeats: int) -> dict[tuple[str, int], float]:
    """images/s on preprocessed input for each (thread setting, batch)."""
    classifiers = {
        "1 thread": Classifier(spec, intra_op_num_threads=1),
        "2 threads": Classifier(spec, intra_op_num_threads=2),
        "2 + spin": Classifier(spec, intra_op_num_threads=2, allow_spinning=True),
    }
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (IMAGES_PER_RUN, 3, 224, 224)).astype(np.float32)
    runs = {name: clf.predict for name, clf in classifiers.items()}
    return interleaved_rates(runs, inputs, BATCH_SIZES, repeats)


def jpegs(size: tuple[int, int]) -> list[bytes]:
    from skimage import data

    out = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB").resize(size)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_ms(spec: ModelSpec, repeats: int) -> dict[tuple[tuple[int, int], bool], float]:
    """Milliseconds per image for decode + preprocess, per (JPEG size, draft on/off)."""
    sets = {size: jpegs(size) for size in JPEG_SIZES}
    for images in sets.values():  # warm-up: Pillow's decoders and first allocations
        prepare_image(images[0], spec.preprocessing)
    samples: dict[tuple[tuple[int, int], bool], list[float]] = {
        (size, draft): [] for size in JPEG_SIZES for draft in (True, False)
    }
    for _ in range(repeats):
        for (size, draft), values in samples.items():
            images = sets[size]
            started = time.perf_counter()
            for data in images:
                prepare_image(data, spec.preprocessing, use_draft=draft)
            values.append((time.perf_counter() - started) * 1000 / len(images))
    return {key: statistics.median(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    spec = ensure_model(ensure_model_dir())
    print(
        f"{spec.name}; onnxruntime {ort.__version__}; {cpu_count()} CPUs usable; "
        f"{platform.processor() or platform.machine()}; median of {args.repeats} repeats\n"
    )

    rates = model_rates(spec, args.repeats)
    print("ONNX Runtime, preprocessed input (images/s)")
    settings = ("1 thread", "2 threads", "2 + spin")
    print(f"{'batch':>6} " + " ".join(f"{s:>10}" for s in settings) + "   2 threads / 1")
    for b in BATCH_SIZES:
        row = " ".join(f"{rates[(s, b)]:>10.1f}" for s in settings)
        print(f"{b:>6} {row}   {rates[('2 threads', b)] / rates[('1 thread', b)]:.2f}x")

    costs = decode_ms(spec, args.repeats)
    print("\nDecode + preprocess (ms/image, 1 thread)")
    print(f"{'JPEG':>10} {'draft':>8} {'no draft':>9} {'speed-up':>9}")
    for size in JPEG_SIZES:
        with_draft, without = costs[(size, True)], costs[(size, False)]
        print(
            f"{size[0]:>5}x{size[1]:<4} {with_draft:>8.2f} {without:>9.2f} "
            f"{without / with_draft:>8.1f}x"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
