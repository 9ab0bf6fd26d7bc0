"""Checking a ``.pdiparams`` file's framing before Paddle reads it.

Paddle 3.3.1 loads a combined parameters file whose last tensor is cut short without an
error: the missing bytes are left as whatever the buffer held, and the model runs on
them. This reads each tensor's header and skips its data, so a truncated file is found
in milliseconds whatever its size, and without importing Paddle.

The format (``SerializeToStream`` for a ``DenseTensor``, one record per parameter, in
``save_combine`` order): uint32 version, uint64 LoD levels (each a uint64 byte count and
its bytes), uint32 tensor version, int32 size of a ``VarType.TensorDesc`` protobuf
(field 1: data type, a varint; field 2: dims, int64 varints), that protobuf, then
``numel * element size`` bytes of data.
"""

from __future__ import annotations

import os
import struct

# framework.proto VarType.Type -> bytes per element, for the types a tensor holds.
ELEMENT_SIZES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 20: 1, 21: 1, 22: 2, 23: 8, 24: 16}


class ParamsFileError(ValueError):
    """A parameters file whose records do not add up: the message says where."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ParamsFileError("a tensor description ends inside a number")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def _tensor_bytes(desc: bytes) -> int:
    """Data bytes of the tensor a ``VarType.TensorDesc`` describes."""
    data_type, numel, at = None, 1, 0
    while at < len(desc):
        key, at = _varint(desc, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(desc, at)
            if field == 1:
                data_type = value
            elif field == 2:
                numel *= value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 2:  # packed dims, or a field this reader does not need
            length, at = _varint(desc, at)
            if field == 2:
                end = at + length
                while at < end:
                    value, at = _varint(desc, at)
                    numel *= value
            else:
                at += length
        else:
            raise ParamsFileError(f"unexpected protobuf wire type {wire} in a tensor description")
    if data_type not in ELEMENT_SIZES:
        raise ParamsFileError(f"unknown tensor data type {data_type}")
    if numel < 0:
        raise ParamsFileError("a tensor with a negative dimension")
    return numel * ELEMENT_SIZES[data_type]


def check_params_file(path: str | os.PathLike) -> int:
    """The number of tensors in a combined ``.pdiparams`` file; ParamsFileError when a
    record is cut short (a truncated copy) or does not parse."""
    size = os.path.getsize(path)
    count = 0
    with open(path, "rb") as file:
        while file.tell() < size:
            count += 1
            try:
                _read_record(file, size)
            except ParamsFileError as error:
                raise ParamsFileError(f"tensor {count}: {error}") from None
    return count


def check_directory_params(directory: str | os.PathLike) -> None:
    """ParamsFileError, naming the directory and the file, unless the model directory's
    ``model.pdiparams`` is there and whole."""
    from .files import PARAMS_FILE

    path = os.path.join(directory, PARAMS_FILE)
    if not os.path.isfile(path):
        raise ParamsFileError(f"{directory}: {PARAMS_FILE} is missing")
    try:
        check_params_file(path)
    except ParamsFileError as error:
        raise ParamsFileError(f"{directory}: {PARAMS_FILE}: {error}") from None


def _read_record(file, size: int) -> None:
    def take(n: int) -> bytes:
        data = file.read(n)
        if len(data) != n:
            raise ParamsFileError(f"the file ends {n - len(data)} bytes early (truncated?)")
        return data

    take(4)  # version
    (lod_levels,) = struct.unpack("<Q", take(8))
    for _ in range(lod_levels):
        (length,) = struct.unpack("<Q", take(8))
        _skip(file, length, size)
    take(4)  # tensor version
    (desc_size,) = struct.unpack("<i", take(4))
    if desc_size < 0 or desc_size > size:
        raise ParamsFileError(f"a tensor description of {desc_size} bytes")
    _skip(file, _tensor_bytes(take(desc_size)), size)


def _skip(file, length: int, size: int) -> None:
    if file.tell() + length > size:
        raise ParamsFileError(f"the file ends {file.tell() + length - size} bytes early (truncated?)")
    file.seek(length, os.SEEK_CUR)
