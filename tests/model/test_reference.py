"""The converter against the reference PyTorch implementation (efficientnet-lite-pytorch),
for each built-in model: Lite0, Lite1 and Lite2.

Runs where torch and efficientnet_lite_pytorch are importable (CI installs both); skips
with a reason elsewhere, and fails under CI=true.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlaas.model import Classifier, ModelSpec
from dlaas.model.builtin import FP32_MODELS
from dlaas.model.cache import weights_path
from dlaas.model.calibration import bundled_photos, calibration_inputs
from dlaas.model.torchfile import load_legacy_state_dict
from tests.conftest import need

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field", "retina", "camera")
CROPS = 57  # random crops and flips of the shipped photos: 64 inputs with the 7 photos

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def torch() -> Any:
    have = all(importlib.util.find_spec(m) for m in ("torch", "efficientnet_lite_pytorch"))
    need(
        have,
        "torch and efficientnet-lite-pytorch are not installed; "
        "pip install torch==2.13.0 and efficientnet-lite-pytorch==0.1.0 --no-deps",
    )
    import torch

    return torch


def _reference(torch: Any, name: str) -> Any:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(name)
    net.load_state_dict(torch.load(weights_path(name), weights_only=True))
    return net.eval()


@pytest.mark.parametrize("name", list(FP32_MODELS))
def test_logits_match_the_reference_on_real_photos(
    torch: Any,
    name: str,
    builtin_spec: Callable[[str], ModelSpec],
    photo: Callable[[str], bytes],
    record_property: Callable[[str, object], None],
) -> None:
    # given whole photos and crops of other photos, prepared as serving prepares them
    ours_clf = Classifier(builtin_spec(name))
    prep = ours_clf.spec.preprocessing
    photos = np.stack([ours_clf.preprocess(photo(p)) for p in PHOTOS])
    crops = calibration_inputs(bundled_photos(), CROPS, prep, seed=11)
    batch = np.concatenate([photos, crops])

    ours = ours_clf.logits(batch)
    with torch.no_grad():
        theirs = _reference(torch, name)(torch.from_numpy(batch)).numpy()

    assert ours.shape == theirs.shape == (len(batch), 1000)
    diff = float(np.abs(ours - theirs).max())
    agree = int((ours.argmax(axis=1) == theirs.argmax(axis=1)).sum())
    record_property("top1_agreement", f"{agree}/{len(batch)}")
    record_property("max_abs_logit_diff", diff)
    print(f"{name}: top-1 agrees on {agree}/{len(batch)}, max abs logit difference {diff:.2e}")
    assert diff < 1e-3, f"max abs logit difference {diff}"
    assert agree == len(batch)


def test_our_reader_matches_torch_load_on_the_weights(torch: Any) -> None:
    ours = load_legacy_state_dict(weights_path())
    theirs = torch.load(weights_path(), weights_only=True)

    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


def test_our_reader_reads_what_torch_writes_in_legacy_format(torch: Any, tmp_path: Path) -> None:
    # given tensors torch itself saves the old way, including a transposed view of a storage
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "w": base,
        "wt": base.t(),
        "half": torch.ones(5, dtype=torch.float16),
        "count": torch.tensor(3),
    }
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)

    loaded = load_legacy_state_dict(path)

    for name, tensor in state.items():
        np.testing.assert_array_equal(loaded[name], tensor.numpy(), err_msg=name)
