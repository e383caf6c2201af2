"""The built-in models side by side: size on disk and img/s on one thread.

Every model runs in one process, configurations interleaved across repeats and the median
reported, because the machine is shared and noisy. Each model gets the same photos,
prepared at its own resolution.

    .venv/bin/python bench/builtin.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import onnxruntime as ort

from common import cpu_count, end_to_end_rates, ensure_model_dir, interleaved_rates, photo_set
from dlaas.model import Classifier, ModelSpec, ensure_model, ensure_quantized_model

BATCH_SIZES = (1, 8)
IMAGES_PER_RUN = 48


def model_rates(
    classifiers: dict[str, Classifier], jpegs: list[bytes], repeats: int
) -> dict[tuple[str, int], float]:
    """images/s on prepared input, per (model, batch); each model has inputs of its size."""
    prepared = {
        name: np.stack([clf.preprocess(b) for b in jpegs]) for name, clf in classifiers.items()
    }

    def run(name: str) -> object:
        clf, inputs = classifiers[name], prepared[name]
        # interleaved_rates slices one shared array; here it is the image index
        return lambda idx: clf.logits(inputs[int(idx[0]) : int(idx[-1]) + 1])

    runs = {name: run(name) for name in classifiers}
    return interleaved_rates(runs, np.arange(len(jpegs)), BATCH_SIZES, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    model_dir = ensure_model_dir()
    specs: dict[str, ModelSpec] = {
        "efficientnet-lite0": ensure_model(model_dir),
        "efficientnet-lite0-int8": ensure_quantized_model(model_dir),
        "efficientnet-lite1": ensure_model(model_dir, "efficientnet-lite1"),
        "efficientnet-lite2": ensure_model(model_dir, "efficientnet-lite2"),
    }
    classifiers = {name: Classifier(spec, intra_op_num_threads=1) for name, spec in specs.items()}
    print(
        f"onnxruntime {ort.__version__}; {cpu_count()} CPUs usable; "
        f"{platform.processor() or platform.machine()}; 1 thread; "
        f"median of {args.repeats} repeats\n"
    )

    jpegs = photo_set(IMAGES_PER_RUN, seed=3)
    rates = model_rates(classifiers, jpegs, args.repeats)
    e2e = end_to_end_rates(classifiers, jpegs, args.repeats)
    print("images/s, one thread (model: prepared input; decode+model: 640x480 JPEG to top-5)")
    print(
        f"{'':<25}{'input':>6}{'size MB':>9}{'model b1':>10}{'model b8':>10}"
        f"{'ms/img b1':>11}{'decode+model b8':>17}"
    )
    for name, spec in specs.items():
        size_mb = spec.onnx_path.stat().st_size / 1e6
        b1, b8 = rates[(name, 1)], rates[(name, 8)]
        print(
            f"{name:<25}{spec.preprocessing.input_size:>6}{size_mb:>9.1f}{b1:>10.1f}{b8:>10.1f}"
            f"{1000 / b1:>11.1f}{e2e[name]:>17.1f}"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
