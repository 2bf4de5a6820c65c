"""Read a ``.safetensors`` file into float32 numpy arrays without torch (spec §13.0).

``safetensors.numpy`` refuses BF16 and numpy has no bfloat16, so the header (8-byte little-endian length, then
JSON) is parsed here and bf16 values are widened exactly: uint16 -> uint32 << 16 -> float32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from pipeline.shared.errors import SourceError

_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """uint16 bit patterns of bfloat16 values -> float32 (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    """Every tensor of ``path`` whose name starts with ``prefix``, floats as float32 (bf16/f16 upcast exactly)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path} is missing")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(f.read(n))
        blob = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    except (OSError, ValueError, struct.error) as e:
        raise SourceError(f"{path} is not a readable safetensors file ({e})") from e
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__" or not name.startswith(prefix):
            continue
        try:
            dtype, shape, (a, b) = spec["dtype"], tuple(int(s) for s in spec["shape"]), spec["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"{path}: bad header entry for {name} ({e})") from e
        raw = blob[a:b]
        if dtype == "BF16":
            arr = bf16_to_f32(raw.view(np.uint16))
        elif dtype in _NUMPY:
            arr = raw.view(_NUMPY[dtype])
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32)
        else:
            raise SourceError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise SourceError(f"{path}: tensor {name} has {arr.size} values, its shape {shape} needs more")
        out[name] = np.array(arr.reshape(shape))  # a copy: the memmap is closed with the function
    del blob
    return out
