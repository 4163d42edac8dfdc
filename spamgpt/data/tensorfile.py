"""Safetensors files written and read a few rows at a time, never whole.

The trunk cache of a large dataset does not fit in memory (500k messages of GPT-2 124M hidden
states are tens of GB). The trunk stage creates the file at its full size and writes each
message's rows at their place as they are computed; finetune and evaluate read a batch's
messages with positional reads (pread), so a process holds a batch, not the file.

Why not mmap: the pages of a mapping a process has read count in its resident memory until the
kernel reclaims them, so one epoch over a memory-mapped cache shows the whole file in the
process's RSS; pread goes through the page cache, which the kernel shares and drops as it
needs. The files are plain safetensors: safetensors.torch.load_file reads them whole.
"""

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class FormatError(ValueError):
    """Not a safetensors file this module reads (truncated, garbage, an unknown dtype)."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # of its first byte, from the start of the file

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def create(path: str | os.PathLike, tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]]):
    """A safetensors file holding these tensors (name: dtype, shape), in this order, all zero
    until written; the file system stores no zero blocks until they are written."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)


class TensorFile:
    """An open safetensors file: where each tensor lies, its rows read or written by position."""

    def __init__(self, path: str | os.PathLike, writable: bool = False) -> None:
        self.path = Path(path)
        self._file = open(self.path, "r+b" if writable else "rb")  # noqa: SIM115 (kept open)
        try:
            self.tensors = _parse_header(self._file, self._size())
        except FormatError:
            self._file.close()
            raise

    def _size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def read(self, name: str) -> torch.Tensor:
        """One whole tensor (for the small ones: lengths, labels)."""
        return self.rows(name)[:]

    def rows(self, name: str, dtype: torch.dtype | None = None) -> "FileRows":
        """The rows of one tensor, read on demand as `dtype` (None: as stored)."""
        return FileRows(self, self.tensors[name], dtype)

    def write(self, name: str, first_row: int, values: torch.Tensor) -> None:
        """Write `values` (converted to the stored dtype) over rows first_row, first_row + 1, ..."""
        info = self.tensors[name]
        if values.shape[1:] != info.shape[1:] or first_row + len(values) > info.shape[0]:
            raise ValueError(f"{name}: rows {first_row}+{tuple(values.shape)} outside {info.shape}")
        data = values.to(info.dtype).contiguous().view(torch.uint8).numpy()
        view, offset = memoryview(data).cast("B"), info.offset + first_row * info.row_bytes
        while view:
            written = os.pwrite(self._file.fileno(), view, offset)
            view, offset = view[written:], offset + written

    def pread(self, buffer: memoryview, offset: int) -> None:
        """Fill `buffer` from the file at `offset`."""
        while buffer:
            got = os.preadv(self._file.fileno(), [buffer], offset)
            if got == 0:
                raise OSError(f"{self.path}: ends before byte {offset}: truncated")
            buffer, offset = buffer[got:], offset + got

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TensorFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileRows:
    """The rows of one tensor of a TensorFile, as PackedSequences.rows: a slice reads those
    rows, `padded` a batch of sequences; nothing is held in memory."""

    def __init__(self, file: TensorFile, info: TensorInfo, dtype: torch.dtype | None) -> None:
        self.file, self.info = file, info
        self.dtype = dtype or info.dtype
        self.shape = info.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise IndexError("FileRows reads contiguous rows only")
        return self._read([start], [max(0, stop - start)])

    def _read(self, starts: list[int], lengths: list[int]) -> torch.Tensor:
        """Rows starts[i] .. starts[i] + lengths[i] - 1 of each i, end to end."""
        row_bytes = self.info.row_bytes
        # torch's own buffer: numpy's of no bytes has stride 0, which torch cannot view as dtype
        buffer = torch.empty(sum(lengths) * row_bytes, dtype=torch.uint8)
        view, position = memoryview(buffer.numpy()), 0
        for start, length in zip(starts, lengths, strict=True):
            end = position + length * row_bytes
            self.file.pread(view[position:end], self.info.offset + start * row_bytes)
            position = end
        stored = buffer.view(self.info.dtype)
        return stored.reshape(sum(lengths), *self.shape[1:]).to(self.dtype)

    def padded(
        self, starts: torch.Tensor, lengths: torch.Tensor, width: int, pad_value: float | int
    ) -> torch.Tensor:
        """(B, width, *feature): sequence i is lengths[i] rows from row starts[i], then
        pad_value. One read per sequence."""
        real = torch.arange(width) < lengths[:, None]
        out = torch.full((len(lengths), width, *self.shape[1:]), pad_value, dtype=self.dtype)
        out[real] = self._read(starts.tolist(), lengths.tolist())
        return out


def _parse_header(file: BinaryIO, file_size: int) -> dict[str, TensorInfo]:
    """Each tensor's place, checked against the file: a truncated or garbled file is a
    FormatError here, not a wrong read later."""
    if file_size < 8:
        raise FormatError(f"{file_size} bytes: too short for a safetensors header")
    (length,) = struct.unpack("<Q", file.read(8))
    if length > min(MAX_HEADER, file_size - 8):
        raise FormatError(f"a header of {length} bytes in a file of {file_size}")
    try:
        header = json.loads(file.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError("the header is not a JSON object")
    tensors, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = DTYPES[entry["dtype"]], entry["shape"]
            first, last = entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{name}: not a tensor entry this reader knows ({entry})") from None
        info = TensorInfo(dtype, tuple(shape), 8 + length + first)
        if last - first != info.nbytes or not shape:
            raise FormatError(f"{name}: offsets {first}..{last} do not hold shape {shape}")
        tensors[name], end = info, max(end, last)
    if 8 + length + end != file_size:
        raise FormatError(f"data ends at byte {8 + length + end}, the file has {file_size}")
    return tensors
