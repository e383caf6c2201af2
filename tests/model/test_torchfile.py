"""The legacy .pth reader: real weights, round trips, and hostile or broken files."""

from __future__ import annotations

import collections
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlaas.errors import ModelError
from dlaas.model.cache import weights_path
from dlaas.model.torchfile import load_legacy_state_dict
from tests.model.legacy_writer import (
    Global,
    Storage,
    Tensor,
    dumps,
    header,
    legacy_bytes,
    save_arrays,
)


def test_reads_the_shipped_lite0_weights() -> None:
    state = load_legacy_state_dict(weights_path())

    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].shape == ()
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    # variances are never negative (dead ReLU6 channels have exactly 0; eps covers them)
    assert all((v >= 0).all() for k, v in state.items() if k.endswith("running_var"))
    assert all(np.isfinite(v).all() for v in state.values())


def test_round_trips_dtypes_and_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "scalar": np.array(7, dtype=np.int64),
        "half": rng.normal(size=5).astype(np.float16),
        "double": rng.normal(size=(2, 2)),
        "mask": np.array([True, False, True]),
        "bytes": np.arange(10, dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    path = tmp_path / "w.pth"
    save_arrays(path, arrays)

    state = load_legacy_state_dict(path)

    assert list(state) == list(arrays)
    for name, array in arrays.items():
        assert state[name].dtype == array.dtype, name
        np.testing.assert_array_equal(state[name], array, err_msg=name)
        assert state[name].flags.writeable and state[name].flags.owndata


def test_tensors_that_share_a_storage_with_offsets_and_strides(tmp_path: Path) -> None:
    # given one storage 0..11 and two views of it: a transposed 3x4 and a slice at offset 5
    storage = Storage("s", np.arange(12, dtype=np.float32))
    state = {
        "transposed": Tensor(storage, 0, (4, 3), (1, 4)),
        "slice": Tensor(storage, 5, (3,), (2,)),
    }
    path = tmp_path / "views.pth"
    path.write_bytes(legacy_bytes(state, [storage]))

    loaded = load_legacy_state_dict(path)

    np.testing.assert_array_equal(loaded["transposed"], np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(loaded["slice"], [5, 7, 9])


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_would_run_a_shell_command(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(header() + pickle.dumps({"x": _RunsShell(marker)}, protocol=2))

    with pytest.raises(ModelError, match=r"refusing to load .*(posix|os)\.system"):
        load_legacy_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "load"),
        ("collections", "Counter"),
    ],
)
def test_refuses_every_global_outside_the_allow_list(
    tmp_path: Path, module: str, name: str
) -> None:
    storage = Storage("s", np.zeros(2, dtype=np.float32))
    hostile = Tensor(storage, 0, (2,), (1,), rebuild=Global(module, name))
    path = tmp_path / "hostile.pth"
    path.write_bytes(legacy_bytes({"w": hostile}, [storage]))

    with pytest.raises(ModelError, match=f"references {module}.{name}"):
        load_legacy_state_dict(path)


def test_refuses_globals_even_in_the_header_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil-magic.pth"
    path.write_bytes(pickle.dumps(_RunsShell(tmp_path / "pwned"), protocol=2))

    with pytest.raises(ModelError, match="refusing to load"):
        load_legacy_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def _valid_file(tmp_path: Path) -> bytes:
    path = tmp_path / "ok.pth"
    save_arrays(path, {"a": np.arange(4, dtype=np.float32), "b": np.ones(3, dtype=np.float32)})
    return path.read_bytes()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"extra", "unexpected bytes"),
        (lambda b: b"PK\x03\x04" + b[4:], "zip format"),
        (lambda b: b"", "not a readable weights file"),
        (lambda b: dumps(123) + b[len(dumps(0x1950A86A20F9469CFC6C)) :], "magic"),
        (lambda b: b"this is not a pickle at all", "not a readable weights file"),
    ],
    ids=["truncated", "trailing", "zip", "empty", "magic", "garbage"],
)
def test_broken_files_raise_model_error(tmp_path: Path, mangle: Any, message: str) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(mangle(_valid_file(tmp_path)))

    with pytest.raises(ModelError, match=message):
        load_legacy_state_dict(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    storage = Storage("s", np.zeros(4, dtype=np.float32))
    path = tmp_path / "oob.pth"
    path.write_bytes(legacy_bytes({"w": Tensor(storage, 2, (3,), (1,))}, [storage]))

    with pytest.raises(ModelError, match="past the end"):
        load_legacy_state_dict(path)


def test_storage_count_header_must_match_the_reference(tmp_path: Path) -> None:
    storage = Storage("s", np.zeros(4, dtype=np.float32))
    data = legacy_bytes({"w": Tensor(storage, 0, (4,), (1,))}, [storage])
    count_at = len(data) - 4 * 4 - 8
    data = data[:count_at] + struct.pack("<q", 1 << 40) + data[count_at + 8 :]
    path = tmp_path / "count.pth"
    path.write_bytes(data)

    with pytest.raises(ModelError, match="holds 1099511627776 elements, expected 4"):
        load_legacy_state_dict(path)


def test_a_state_dict_of_non_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    path.write_bytes(header() + dumps(collections.OrderedDict(w=[1, 2])) + dumps([]))

    with pytest.raises(ModelError, match="does not hold a state dict"):
        load_legacy_state_dict(path)
