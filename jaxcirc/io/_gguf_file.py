"""A GGUF file's metadata and tensor table, parsed in one pass (format: ggml's `docs/gguf.md`).

`gguf.GGUFReader` builds a NumPy view for every element of every array field, which takes
10-15 s for a 49k-token vocabulary; this reader decodes the same fields into plain Python values
in a fraction of a second and maps the tensors' bytes without copying. Dequantization stays with
the `gguf` package. Little-endian files (GGUF v2 and v3) only; anything malformed is a
`ValueError` naming the byte offset.
"""

from __future__ import annotations

import dataclasses
import pathlib
import struct
from typing import Any

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)
_SCALARS = {  # GGUF value type -> struct format
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_NUMPY = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
          10: "<u8", 11: "<i8", 12: "<f8"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor: `shape` in ggml order (fastest axis first), raw bytes in `data`."""

    name: str
    shape: tuple[int, ...]
    tensor_type: Any  # gguf.GGMLQuantizationType
    data: np.ndarray


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    path: pathlib.Path
    version: int
    fields: dict[str, Any]
    tensors: list[Tensor]


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.at = buf, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.at + n > len(self.buf):
            raise ValueError(
                f"needs {n} bytes at offset {self.at}, but the file ends at {len(self.buf)}"
            )
        out = self.buf[self.at : self.at + n]
        self.at += n
        return out

    def scalar(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar("Q"))).decode("utf-8")

    def strings(self, n: int) -> list[str]:
        """`n` strings in one tight loop (vocabularies hold tens of thousands)."""
        buf, at, out, size_at = self.buf, self.at, [], _U64.unpack_from
        try:
            for _ in range(n):
                (size,) = size_at(buf, at)
                out.append(str(buf[at + 8 : at + 8 + size], "utf-8"))
                at += 8 + size
        except struct.error:
            raise ValueError(f"a string array runs past the end of the file ({len(buf)} bytes)")
        if at > len(buf):
            raise ValueError(f"a string array runs to byte {at}, past the end at {len(buf)}")
        self.at = at
        return out

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.scalar("I"), self.scalar("Q")
            if item in _NUMPY:  # numbers: one vectorised read
                dtype = np.dtype(_NUMPY[item])
                return np.frombuffer(self.take(n * dtype.itemsize), dtype).tolist()
            if item == _STRING:
                return self.strings(n)
            if item == _ARRAY:
                return [self.value(_ARRAY) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {kind} before offset {self.at}")


def read(path: str | pathlib.Path) -> GGUFFile:
    """Parse `path`'s header, metadata and tensor table; tensor data stays memory-mapped."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = pathlib.Path(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.empty(0)
    cursor = _Cursor(memoryview(mapped))
    if bytes(cursor.take(4)) != MAGIC:
        raise ValueError("it does not start with the GGUF magic bytes")
    version = cursor.scalar("I")
    if version not in VERSIONS:
        raise ValueError(f"GGUF version {version} (expected one of {VERSIONS}, little-endian)")
    n_tensors, n_fields = cursor.scalar("Q"), cursor.scalar("Q")
    if n_fields > len(mapped) or n_tensors > len(mapped):
        raise ValueError(f"{n_fields} fields and {n_tensors} tensors cannot fit in the file")
    fields = {}
    for _ in range(n_fields):
        key = cursor.string()
        fields[key] = cursor.value(cursor.scalar("I"))
    table = []
    for _ in range(n_tensors):
        name = cursor.string()
        shape = tuple(cursor.scalar("Q") for _ in range(cursor.scalar("I")))
        table.append((name, shape, GGMLQuantizationType(cursor.scalar("I")), cursor.scalar("Q")))
    alignment = int(fields.get("general.alignment", 32))
    start = -(-cursor.at // alignment) * alignment
    tensors = []
    for name, shape, kind, offset in table:
        block, nbytes = GGML_QUANT_SIZES[kind]
        rows = int(np.prod(shape[1:], dtype=np.int64))
        if shape[0] % block:
            raise ValueError(
                f"tensor {name!r} has a row of {shape[0]}, not a multiple of "
                f"{kind.name}'s block of {block}"
            )
        row_bytes = shape[0] // block * nbytes
        begin = start + offset
        end = begin + rows * row_bytes
        if end > len(mapped):
            raise ValueError(
                f"tensor {name!r} runs to byte {end}, but the file ends at {len(mapped)}"
            )
        data = mapped[begin:end].reshape(rows, row_bytes)
        if kind.name in ("F32", "F16"):  # as `gguf.GGUFReader` gives them: typed, ggml shape
            data = data.view(np.float32 if kind.name == "F32" else np.float16)
            data = data.reshape(tuple(reversed(shape)))
        tensors.append(Tensor(name, shape, kind, data))
    return GGUFFile(path, version, fields, tensors)


def dequantize(tensor: Tensor) -> np.ndarray:
    """`tensor` as float32 in NumPy axis order (ggml's shape reversed).

    The block formats of common small checkpoints (Q8_0, Q4_0, Q4_1) are decoded here in one
    vectorised pass over the whole tensor (about 10x faster than `gguf.quants`, which works
    in row groups); every other type goes to `gguf.quants.dequantize`.
    """
    shape = tuple(reversed(tensor.shape))
    kind, raw = tensor.tensor_type.name, tensor.data
    if kind not in _BLOCKS:
        from gguf.quants import dequantize as reference

        return np.asarray(reference(raw, tensor.tensor_type), np.float32).reshape(shape)
    head, block = _BLOCKS[kind]
    blocks = np.asarray(raw).reshape(-1, head + (block if kind == "Q8_0" else block // 2))
    scales = blocks[:, :head].copy().view(np.float16).astype(np.float32)  # [n, 1 or 2]
    body = blocks[:, head:]
    if kind == "Q8_0":
        values = body.view(np.int8).astype(np.float32) * scales
    else:  # 4-bit: low nibbles are the block's first half, high nibbles its second
        nibbles = np.concatenate([body & 0x0F, body >> 4], axis=1).astype(np.float32)
        if kind == "Q4_0":
            values = (nibbles - 8.0) * scales
        else:
            values = nibbles * scales[:, :1] + scales[:, 1:]
    return values.reshape(shape)


_BLOCKS = {"Q8_0": (2, 32), "Q4_0": (2, 32), "Q4_1": (4, 32)}  # header bytes, values per block
