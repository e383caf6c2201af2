"""fp32 vs int8 EfficientNet-Lite0: img/s on one thread, top-1 agreement, size on disk.

Both models run side by side in one process, configurations interleaved across repeats
and the median reported, because the machine is shared and noisy. Agreement is measured
on photos cut from scikit-image's samples with a seed the calibration does not use.

    .venv/bin/python bench/int8.py [--photos 400] [--seed 7] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common import (
    PHOTO_NAMES,
    cpu_count,
    end_to_end_rates,
    ensure_model_dir,
    interleaved_rates,
    photo_set,
)
from dlaas.model import Classifier, ModelSpec, ensure_quantized_model
from dlaas.model.cache import ensure_model

BATCH_SIZES = (1, 8)
# Sources that are photographs of everyday scenes, the kind ImageNet classes describe; the
# rest of photo_set's sources are microscopy, astronomy and a synthetic colour wheel,
# where fp32 itself is unsure (low top-1 margin) and any rounding flips its answer.
CAMERA_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "motorcycle_left")
IMAGES_PER_RUN = 48


def model_rates(
    classifiers: dict[str, Classifier], inputs: np.ndarray, repeats: int
) -> dict[tuple[str, int], float]:
    """images/s on prepared input, per (model, batch)."""
    runs = {name: clf.logits for name, clf in classifiers.items()}
    return interleaved_rates(runs, inputs[:IMAGES_PER_RUN], BATCH_SIZES, repeats)


def top1(clf: Classifier, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [clf.logits(inputs[i : i + 8]).argmax(axis=1) for i in range(0, len(inputs), 8)]
    )


def source_names() -> list[str]:
    """The photos photo_set cycles through, in its order (those this scikit-image ships)."""
    from skimage import data

    names = []
    for name in PHOTO_NAMES:
        try:
            if getattr(data, name)().ndim == 3:
                names.append(name)
        except Exception:  # as photo_set: a dataset that is not bundled is skipped
            continue
    return names


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    vnni = [f for f in ("avx512_vnni", "avx_vnni") if f in flags]
    have = [f for f in ("avx2", "avx512f") if f in flags]
    return ", ".join(have + (vnni or ["no VNNI"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=400, help="photos for the agreement")
    parser.add_argument("--seed", type=int, default=7, help="photo_set seed for the agreement")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    model_dir = ensure_model_dir()
    specs: dict[str, ModelSpec] = {
        "fp32": ensure_model(model_dir),
        "int8": ensure_quantized_model(model_dir),
    }
    classifiers = {name: Classifier(spec, intra_op_num_threads=1) for name, spec in specs.items()}
    print(
        f"{specs['fp32'].name} vs {specs['int8'].name}; onnxruntime {ort.__version__}; "
        f"{cpu_count()} CPUs usable; {platform.processor() or platform.machine()} "
        f"({cpu_flags()}); 1 thread; median of {args.repeats} repeats\n"
    )

    jpegs = photo_set(args.photos, seed=args.seed)
    prepared = np.stack([classifiers["fp32"].preprocess(b) for b in jpegs])
    rates = model_rates(classifiers, prepared, args.repeats)
    e2e = end_to_end_rates(classifiers, jpegs[:IMAGES_PER_RUN], args.repeats)
    expected = top1(classifiers["fp32"], prepared)
    agree = top1(classifiers["int8"], prepared) == expected
    sizes = {name: spec.onnx_path.stat().st_size / 1e6 for name, spec in specs.items()}

    header = f"{'':<12}{'size MB':>9}{'model b1':>10}{'model b8':>10}{'decode+model b8':>17}"
    print("images/s, one thread (model: prepared input; decode+model: 640x480 JPEG to top-5)")
    print(header + f"{'top-1 = fp32':>14}")
    for name in specs:
        cells = f"{sizes[name]:>9.1f}{rates[(name, 1)]:>10.1f}{rates[(name, 8)]:>10.1f}"
        same = "-" if name == "fp32" else f"{agree.mean():.1%}"
        print(f"{name:<12}{cells}{e2e[name]:>17.1f}{same:>14}")
    ratio = (
        f"{sizes['int8'] / sizes['fp32']:>8.2f}x"
        f"{rates[('int8', 1)] / rates[('fp32', 1)]:>9.2f}x"
        f"{rates[('int8', 8)] / rates[('fp32', 8)]:>9.2f}x"
        f"{e2e['int8'] / e2e['fp32']:>16.2f}x"
    )
    print(f"{'int8 / fp32':<12}{ratio}")

    names = source_names()
    print(
        f"\ntop-1 agreement on {len(agree)} photos (photo_set seed {args.seed}), by source photo:"
    )
    camera = np.zeros(len(agree), dtype=bool)
    for i, name in enumerate(names):
        mine = agree[i :: len(names)]
        kind = "camera photo" if name in CAMERA_PHOTOS else "not a camera photo"
        print(f"  {name:<22}{int(mine.sum()):>4} of {len(mine):<4} {kind}")
        camera[i :: len(names)] = name in CAMERA_PHOTOS
    print(
        f"  camera photos: {agree[camera].mean():.1%} of {camera.sum()}; the others"
        f" (microscopy, astronomy, a colour wheel): {agree[~camera].mean():.1%} of"
        f" {(~camera).sum()}"
    )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
