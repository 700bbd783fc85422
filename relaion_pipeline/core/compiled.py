"""What the compiled kernels (`pdq_index`, `lookup_hashes`) share: numba's thread pool, CPU instructions
numba does not expose, and calls into C functions by address.

numba runs on its own workqueue pool, not OpenMP: a process that ran a kernel can still fork (hash-images'
workers, a Celery prefork pool) and the children can run kernels too. The pool takes one parallel launch at
a time, hence `LAUNCH`, held around every parallel kernel call.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import pyarrow as pa
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

numba.config.THREADING_LAYER = "workqueue"
LAUNCH = threading.Lock()


@intrinsic
def popcount(typingctx, value):
    """The CPU's population count of a uint64 (LLVM's ctpop)."""

    def codegen(context, builder, signature, args):
        return builder.call(builder.module.declare_intrinsic("llvm.ctpop", [args[0].type]), args)

    return types.uint64(types.uint64), codegen


def _c_function(arity: int):
    """LLVM code calling the C function at an address (int64) with `arity` int64 arguments (pointers or sizes,
    which the x86-64 ABI passes alike) and returning its int. An address, unlike a ctypes function, is an
    argument: the kernels that use it can be cached on disk."""
    i64 = ir.IntType(64)

    def codegen(context, builder, signature, values):
        function = builder.inttoptr(values[0], ir.FunctionType(ir.IntType(32), [i64] * arity).as_pointer())
        return builder.call(function, values[1:])

    return types.int32(*([types.int64] * (arity + 1))), codegen


@intrinsic
def call1(typingctx, address, a):
    """`address(a)` for a C function of one pointer or size argument."""
    return _c_function(1)


@intrinsic
def call2(typingctx, address, a, b):
    """`address(a, b)`."""
    return _c_function(2)


@intrinsic
def call3(typingctx, address, a, b, c):
    """`address(a, b, c)`."""
    return _c_function(3)


def string_buffers(
    array: pa.Array | pa.ChunkedArray, narrow: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a kernel reads of a string array: offsets (int64, n + 1), the bytes (uint8, never empty) and a
    validity mask (bool); no copy of the bytes when the array already has 64-bit offsets. With `narrow`, a
    string array's own 32-bit offsets are kept too (no copy at all; they need not start at 0): for kernels
    compiled for either width."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if narrow and array.type in (pa.string(), pa.binary()):
        width = np.int32
    else:
        array = pa.concat_arrays([array.cast(pa.large_string())])  # offset 0, 64-bit offsets
        width = np.int64
    _, offsets, data = array.buffers()
    n = len(array)
    if offsets is None:
        offsets = np.zeros(n + 1, width)
    else:
        offsets = np.frombuffer(offsets, width, n + 1, offset=array.offset * np.dtype(width).itemsize)
    data = np.frombuffer(data, np.uint8) if data is not None and len(data) else np.zeros(1, np.uint8)
    return offsets, data, np.asarray(array.is_valid())
