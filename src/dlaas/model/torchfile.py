"""Read a state dict saved in torch's legacy (non-zip) format, with numpy and without torch.

The file is a run of pickles followed by raw storage bytes:

1. the magic number, 2. the protocol version, 3. a dict describing the writer's machine,
4. the state dict, whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset,
   size, stride, ...)`` calls and whose storages are persistent ids
   ``('storage', torch.FloatStorage, key, location, numel[, view_metadata])``,
5. the list of storage keys, then for each key an int64 element count and the raw data.

Unpickling runs code named by the file, so the unpickler here resolves only the handful of
globals a state dict needs, to inert stand-ins; anything else is refused.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlaas.errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only its dtype matters."""

    name: str
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ModelError(f"malformed tensor {what} {value!r} in weights file")
    return value


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    """Records where a tensor lives; the bytes are read after the pickles."""
    if not isinstance(storage, _StorageRef):
        raise ModelError("malformed tensor in weights file: its storage is not a storage")
    if (
        not isinstance(storage_offset, int)
        or isinstance(storage_offset, bool)
        or storage_offset < 0
    ):
        raise ModelError(f"malformed tensor offset {storage_offset!r} in weights file")
    shape = _int_tuple(size, "size")
    strides = _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise ModelError(f"tensor size {shape} and stride {strides} disagree in weights file")
    return _TensorRef(storage, storage_offset, shape, strides)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a plain state dict needs; refuses everything else."""

    def __init__(self, file: io.BytesIO, source: str) -> None:
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise ModelError(
            f"refusing to load {self.source}: it references {module}.{name}, and a weights "
            "file may only hold tensors in ordered dicts (it could run arbitrary code)"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and not isinstance(pid[4], bool)
            and pid[4] >= 0
        ):
            raise ModelError(f"malformed storage reference {pid!r} in {self.source}")
        if len(pid) == 6 and pid[5] is not None:
            raise ModelError(f"storage views are not supported in {self.source}")
        ref = _StorageRef(key=pid[2], dtype=pid[1].dtype, numel=pid[4])
        known = self.storages.setdefault(ref.key, ref)
        if known != ref:
            raise ModelError(f"storage {ref.key} is described twice, differently, in {self.source}")
        return ref


def _load_pickle(unpickler: _RestrictedUnpickler) -> Any:
    try:
        return unpickler.load()
    except ModelError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise ModelError(f"{unpickler.source} is not a readable weights file: {exc}") from exc


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy ``.pth`` state dict, as owned numpy arrays, in file order."""
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    if data.startswith(b"PK\x03\x04"):
        raise ModelError(
            f"{path} uses torch's zip format; only the legacy format is supported here"
        )
    stream = io.BytesIO(data)
    unpickler = _RestrictedUnpickler(stream, source)

    if _load_pickle(unpickler) != LEGACY_MAGIC:
        raise ModelError(f"{path} is not a legacy torch file (wrong magic number)")
    protocol = _load_pickle(unpickler)
    if protocol != LEGACY_PROTOCOL:
        raise ModelError(f"{path} has torch protocol {protocol!r}, expected {LEGACY_PROTOCOL}")
    sys_info = _load_pickle(unpickler)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ModelError(f"{path} was not written on a little-endian machine; not supported")

    state = _load_pickle(unpickler)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorRef) for k, v in state.items()
    ):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    keys = _load_pickle(unpickler)
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.storages):
        raise ModelError(f"{path} lists storages that its tensors do not match")

    storages = _read_storages(data, stream.tell(), keys, unpickler.storages, source)
    return {name: _materialise(ref, storages[ref.storage.key], name) for name, ref in state.items()}


def _read_storages(
    data: bytes, offset: int, keys: list[str], refs: dict[str, _StorageRef], source: str
) -> dict[str, np.ndarray]:
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = refs[key]
        if offset + 8 > len(data):
            raise ModelError(f"{source} is truncated: storage {key} is missing")
        (numel,) = struct.unpack_from("<q", data, offset)
        offset += 8
        if numel != ref.numel:
            raise ModelError(
                f"{source}: storage {key} holds {numel} elements, expected {ref.numel}"
            )
        nbytes = numel * ref.dtype.itemsize
        if offset + nbytes > len(data):
            raise ModelError(f"{source} is truncated inside storage {key}")
        storages[key] = np.frombuffer(data, dtype=ref.dtype, count=numel, offset=offset)
        offset += nbytes
    if offset != len(data):
        raise ModelError(f"{source} has {len(data) - offset} unexpected bytes after its storages")
    return storages


def _materialise(ref: _TensorRef, storage: np.ndarray, name: str) -> np.ndarray:
    if any(n == 0 for n in ref.shape):
        return np.empty(ref.shape, dtype=storage.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if last >= storage.size:
        raise ModelError(f"tensor {name} reaches past the end of its storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="), copy=True)
