"""Messages between normspec and its worker processes (:mod:`normspec.worker`).

A message is pickled (protocol 5) with three rules on top:

- a NumPy array of :data:`OUT_OF_BAND_BYTES` or more travels out of band: its buffer is
  written to the connection as it is, and read into a writable buffer the received array
  wraps, with no copy into or out of the pickle stream;
- a strided (neither C- nor Fortran-contiguous) array arrives with its strides, as a view
  of a buffer of its own, as :func:`strided_copy` makes it: NumPy alone would send it
  contiguous, and conv.layout.memory checks what an implementation does with strides;
- what the receiving side should not need a framework to read becomes portable: an
  array-like of another library (a torch tensor, a JAX array) a NumPy array, a string or
  number of a subclass of another library (``torch.__version__``) a plain one, an exception
  of a class outside Python, NumPy and normspec a :class:`RemoteException` with its name
  and message.
"""

from __future__ import annotations

import io
import pickle
import struct
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Arrays at least this large (bytes) travel out of band.
OUT_OF_BAND_BYTES = 1 << 16
#: Top-level packages whose objects pickle as they are: the receiver imports nothing new.
PORTABLE_PACKAGES = frozenset({"builtins", "numpy", "normspec", "ml_dtypes"})
#: Built-in types whose subclasses of other packages travel as the built-in type.
PLAIN_TYPES: tuple[type, ...] = (str, bytes, int, float, complex)


class RemoteException(Exception):
    """An exception raised in a worker whose class the receiver need not import.

    ``type_name`` is the class's qualified name; ``str()`` its message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return self.message


def exception_name(problem: BaseException) -> str:
    """The class name of an exception, also of a :class:`RemoteException`."""
    return problem.type_name if isinstance(problem, RemoteException) else type(problem).__name__


def strided_copy(values: NDArray[Any], strides: tuple[int, ...]) -> NDArray[Any]:
    """A copy of ``values`` laid out with ``strides`` (positive multiples of the item size)
    over a zeroed buffer of its own: the same values, the same memory layout."""
    if values.size == 0 or any(s <= 0 or s % values.itemsize for s in strides):
        copied: NDArray[Any] = values.copy()
        return copied
    span = sum((n - 1) * s for n, s in zip(values.shape, strides, strict=True))
    buffer = np.zeros(span // values.itemsize + 1, dtype=values.dtype)
    view: NDArray[Any] = np.lib.stride_tricks.as_strided(buffer, values.shape, strides)
    view[...] = values
    return view


def _package(cls: type) -> str:
    return (cls.__module__ or "").partition(".")[0]


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.flags.c_contiguous or obj.flags.f_contiguous:
                return NotImplemented
            return strided_copy, (np.ascontiguousarray(obj), obj.strides)
        if isinstance(obj, type) or _package(type(obj)) in PORTABLE_PACKAGES:
            return NotImplemented
        if isinstance(obj, BaseException):
            name = f"{type(obj).__module__}.{type(obj).__qualname__}"
            return RemoteException, (name, str(obj))
        if hasattr(obj, "__array__"):
            return np.asarray, (np.asarray(obj),)
        plain = next((t for t in PLAIN_TYPES if isinstance(obj, t)), None)
        if plain is not None:
            return plain, (plain(obj),)
        return NotImplemented


def encode(message: Any) -> tuple[bytes, list[memoryview]]:
    """The pickle of ``message`` and the raw buffers that travel out of band."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True  # in band
        buffers.append(raw)
        return False

    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=out_of_band).dump(message)
    return stream.getvalue(), buffers


def send(connection: Connection, message: Any) -> None:
    """Write ``message``: the buffer sizes, the pickle, then each buffer unchanged."""
    head, buffers = encode(message)
    sizes = struct.pack(f"<{len(buffers) + 1}Q", len(buffers), *(b.nbytes for b in buffers))
    connection.send_bytes(sizes + head)
    for buffer in buffers:
        connection.send_bytes(buffer)


def receive(connection: Connection) -> Any:
    """Read a message :func:`send` wrote (``EOFError`` if the other side is gone)."""
    first = connection.recv_bytes()
    (count,) = struct.unpack_from("<Q", first)
    sizes = struct.unpack_from(f"<{count}Q", first, 8)
    buffers = [bytearray(size) for size in sizes]
    for buffer in buffers:
        connection.recv_bytes_into(buffer)
    return pickle.loads(memoryview(first)[8 * (count + 1) :], buffers=buffers)
