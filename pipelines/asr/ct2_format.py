"""Reader for CTranslate2's binary model file (``model.bin``).

Layout, all little-endian: uint32 binary version; spec name; uint32 spec revision; uint32 variable
count, then per variable its name, uint8 rank, ``rank`` uint32 dims, uint8 dtype id, uint32 byte
count and the raw bytes; then uint32 alias count and (alias, target) name pairs. A name is a uint16
length that counts a trailing NUL, then that many bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# CTranslate2's C++ loader reads versions 4 to 6 with one code path: the dtype id and the alias
# table appeared in these; older files store an item size instead of a dtype.
SUPPORTED_BINARY_VERSIONS = range(4, 7)

_BFLOAT16 = np.dtype("<u2")  # numpy has no bfloat16: read the raw bits, widen to float32 below
# Indexed by dtype id, in the order of CTranslate2's DataType enum.
_DTYPES: tuple[np.dtype[Any], ...] = (
    np.dtype("<f4"),
    np.dtype("i1"),
    np.dtype("<i2"),
    np.dtype("<i4"),
    np.dtype("<f2"),
    _BFLOAT16,
)
_U8, _U16, _U32 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<I")


@dataclass(frozen=True)
class CT2Model:
    """A parsed ``model.bin``: variables by name, aliases included.

    Arrays are read-only views into the bytes given to ``read_ct2_model`` (bfloat16 ones excepted,
    widened to float32); an alias maps to its target's array.
    """

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: Mapping[str, NDArray[Any]]
    aliases: Mapping[str, str]

    def get(self, name: str) -> NDArray[Any]:
        """The variable ``name``, or a ``ValueError`` naming it."""
        try:
            return self.variables[name]
        except KeyError:
            raise ValueError(f"the {self.spec_name} model has no variable {name!r}") from None

    def scalar(self, name: str) -> int | float:
        """A rank-0 variable (e.g. ``encoder/num_heads``) as a Python number."""
        value = self.get(name)
        if value.ndim != 0:
            raise ValueError(f"variable {name!r} has shape {value.shape}, expected a scalar")
        scalar: int | float = value.item()
        return scalar


class _Cursor:
    """Sequential reads over a buffer; every read past its end is a ``ValueError``."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int, what: str) -> memoryview:
        end = self.pos + size
        if end > len(self.data):
            raise ValueError(
                f"truncated CTranslate2 model: {what} needs {size} bytes at offset {self.pos}, "
                f"but the data ends at {len(self.data)}"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, fmt: struct.Struct, what: str) -> int:
        value: int = fmt.unpack(self.take(fmt.size, what))[0]
        return value

    def name(self, what: str) -> str:
        raw = bytes(self.take(self.uint(_U16, what), what))
        if not raw or raw[-1] != 0:
            raise ValueError(f"corrupt CTranslate2 model: {what} at offset {self.pos} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def _read_variable(cur: _Cursor) -> tuple[str, NDArray[Any]]:
    name = cur.name("a variable name")
    rank = cur.uint(_U8, f"the rank of {name!r}")
    shape = tuple(struct.unpack(f"<{rank}I", cur.take(4 * rank, f"the shape of {name!r}")))
    type_id = cur.uint(_U8, f"the dtype of {name!r}")
    if type_id >= len(_DTYPES):
        raise ValueError(f"variable {name!r} has unknown dtype id {type_id}")
    dtype = _DTYPES[type_id]
    size = cur.uint(_U32, f"the byte count of {name!r}")
    if size != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"variable {name!r} of shape {shape} and dtype {dtype} cannot hold {size} bytes")
    array = np.frombuffer(cur.take(size, f"the data of {name!r}"), dtype=dtype).reshape(shape)
    if dtype == _BFLOAT16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    array.flags.writeable = False
    return name, array


def _read_aliases(cur: _Cursor, variables: dict[str, NDArray[Any]]) -> dict[str, str]:
    aliases = {}
    for _ in range(cur.uint(_U32, "the alias count")):
        alias, target = cur.name("an alias name"), cur.name("an alias target")
        if target not in variables:
            raise ValueError(f"alias {alias!r} points to unknown variable {target!r}")
        aliases[alias] = target
    for alias, target in aliases.items():
        variables[alias] = variables[target]
        # As the C++ loader does: a quantized target's scale is shared by its alias.
        if target + "_scale" in variables:
            variables[alias + "_scale"] = variables[target + "_scale"]
    return aliases


def read_ct2_model(data: bytes | bytearray | memoryview) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` without copying the weights out of ``data``."""
    cur = _Cursor(memoryview(data).cast("B"))
    version = cur.uint(_U32, "the binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ValueError(
            f"unsupported CTranslate2 binary version {version} (this reader supports "
            f"{SUPPORTED_BINARY_VERSIONS.start}-{SUPPORTED_BINARY_VERSIONS.stop - 1}); "
            "is this a CTranslate2 model.bin?"
        )
    spec_name = cur.name("the spec name")
    revision = cur.uint(_U32, "the spec revision")
    variables = dict(_read_variable(cur) for _ in range(cur.uint(_U32, "the variable count")))
    aliases = _read_aliases(cur, variables)
    if cur.pos != len(cur.data):
        raise ValueError(f"corrupt CTranslate2 model: {len(cur.data) - cur.pos} unexpected bytes at the end")
    return CT2Model(version, spec_name, revision, variables, aliases)
