"""Writes torch's legacy ``.pth`` layout from numpy arrays, without torch, to test the reader.

Also crafts hostile files: the writer puts whatever global names it is given in the pickle.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlaas.model.torchfile import LEGACY_MAGIC, LEGACY_PROTOCOL

STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


@dataclass(frozen=True)
class Global:
    """A reference to ``module.name`` in the pickle, written as a GLOBAL opcode."""

    module: str
    name: str

    def __call__(self, *args: Any) -> None:  # pickle insists that a reduce target be callable
        raise AssertionError("never called")


@dataclass(eq=False)
class Storage:
    key: str
    data: np.ndarray  # flat


@dataclass(eq=False)
class Tensor:
    storage: Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    rebuild: Global = field(default_factory=lambda: Global("torch._utils", "_rebuild_tensor_v2"))

    def __reduce__(self) -> tuple[Any, ...]:
        args: tuple[Any, ...] = (
            self.storage,
            self.offset,
            self.shape,
            self.stride,
            False,
            collections.OrderedDict(),
        )
        return (self.rebuild, args)


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets us write any global by name
    dispatch = pickle._Pickler.dispatch.copy()

    def save_marker(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())  # type: ignore[attr-defined]

    dispatch[Global] = save_marker  # type: ignore[assignment]

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            kind = Global("torch", STORAGE_NAMES[obj.data.dtype])
            return ("storage", kind, obj.key, "cpu", obj.data.size, None)
        return None


def dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def header() -> bytes:
    sys_info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}  # fmt: skip
    return dumps(LEGACY_MAGIC) + dumps(LEGACY_PROTOCOL) + dumps(sys_info)


def legacy_bytes(state: dict[str, Any], storages: list[Storage]) -> bytes:
    """``state`` maps names to Tensor (or anything, for hostile files)."""
    out = header() + dumps(collections.OrderedDict(state)) + dumps(sorted(s.key for s in storages))
    for s in sorted(storages, key=lambda s: s.key):
        out += (
            struct.pack("<q", s.data.size) + s.data.astype(s.data.dtype.newbyteorder("<")).tobytes()
        )
    return out


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Each array in its own contiguous storage, as torch.save of a state dict does."""
    storages, state = [], {}
    for i, (name, array) in enumerate(arrays.items()):
        contiguous = array.copy(order="C")  # ascontiguousarray would make 0-d arrays 1-d
        storage = Storage(str(1000 + i), contiguous.reshape(-1))
        strides = tuple(s // array.itemsize for s in contiguous.strides)
        storages.append(storage)
        state[name] = Tensor(storage, 0, array.shape, strides)
    path.write_bytes(legacy_bytes(state, storages))
