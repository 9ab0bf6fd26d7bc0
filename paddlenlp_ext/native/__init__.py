"""Native CPU kernels the package builds for itself, as Paddle custom operators.

``load_bfloat16_gemv()`` gives ``paddlenlp_ext_bfloat16_gemv(x, w)``: ``x @ w^T`` for a few
rows of bfloat16 activations and a bfloat16 weight matrix stored ``[out, in]``
(``bfloat16_gemv.cc`` says why oneDNN's matmul is not enough at one row);
``load_bfloat16_batched_matmul()`` gives ``product(x, y, transpose_y)``: ``x @ y^T`` or
``x @ y`` per batch, for a few rows and bfloat16 matrices (a decode step's attention
over its KV cache); ``load_float32_gemv()`` gives ``paddlenlp_ext_float32_gemv(x, w)``:
``x @ w`` for a few rows of float32 activations and a float32 weight matrix stored
``[in, out]``, its rows split between threads (``float32_gemv.cc`` says why MKL's GEMM is
not enough on AMD processors); ``load_float32_batched_matmul()`` the batched product in
float32 (``batched_matmul.h``: what the two batched kernels share);
``load_rms_norm()`` gives ``op(x, w, epsilon)``: PaddleNLP's ``LlamaRMSNorm`` of float32 or
bfloat16 rows as one op (``rms_norm.cc``). They are built
from the shipped source the first time a process asks for it, with the compiler Paddle's
``cpp_extension`` uses, into ``<cache home>/native/`` (``files.cache_home``; about 15 s,
once per source and Paddle version; concurrent builds wait on a lock), and registered
in the process, so that Paddle Inference can run programs holding it.

When the CPU lacks AVX512-BF16 or the build fails (no compiler), there is no kernel:
each loader returns None and why, in one line; callers keep oneDNN's matmul (MKL's GEMM
for float32), which is right, only slower.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
from pathlib import Path

from ..cpu import has_avx512_bf16
from ..files import cache_home
from ..quiet import library_quiet

logger = logging.getLogger("paddlenlp_ext")

BFLOAT16_GEMV = "paddlenlp_ext_bfloat16_gemv"
BFLOAT16_BATCHED_MATMUL = "paddlenlp_ext_bfloat16_batched_matmul"  # x @ y
BFLOAT16_BATCHED_MATMUL_T = "paddlenlp_ext_bfloat16_batched_matmul_t"  # x @ y^T
FLOAT32_GEMV = "paddlenlp_ext_float32_gemv"
FLOAT32_BATCHED_MATMUL = "paddlenlp_ext_float32_batched_matmul"  # x @ y
FLOAT32_BATCHED_MATMUL_T = "paddlenlp_ext_float32_batched_matmul_t"  # x @ y^T
RMS_NORM = "paddlenlp_ext_rms_norm"
NATIVE_OPS = (BFLOAT16_GEMV, BFLOAT16_BATCHED_MATMUL, BFLOAT16_BATCHED_MATMUL_T, FLOAT32_GEMV,
              FLOAT32_BATCHED_MATMUL, FLOAT32_BATCHED_MATMUL_T, RMS_NORM)
# One library (its name: the first op's) for every kernel: built, and available, together.
_DIRECTORY = Path(__file__).resolve().parent
_SOURCES = tuple(_DIRECTORY / name for name in ("bfloat16_gemv.cc", "float32_gemv.cc", "rms_norm.cc"))
# What the sources include: part of the build's key.
_HEADERS = (_DIRECTORY / "batched_matmul.h", _DIRECTORY / "bfloat16.h")
_CXXFLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp")


@functools.cache
def _unavailable() -> str | None:
    """Why there are no kernels in this process, or None once they are built and registered."""
    if not has_avx512_bf16():
        return "this CPU has no AVX512-BF16"
    try:
        _build_and_register()
    except Exception as error:  # no compiler, a compile error: the products stay on oneDNN
        first = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        reason = f"the {BFLOAT16_GEMV} kernels could not be built: {first}"
        logger.warning("%s; bfloat16 loop products stay on oneDNN's matmul", reason)
        return reason
    return None


def load_bfloat16_gemv():
    """``(op, None)``, ``op(x, w)`` appending (static) or running (dygraph) the kernel,
    or ``(None, why there is none)``."""
    reason = _unavailable()
    return (None, reason) if reason else (_bfloat16_gemv_op, None)


def load_bfloat16_batched_matmul():
    """``(op, None)``, ``op(x, y, transpose_y)`` appending or running the batched kernel,
    or ``(None, why there is none)``."""
    reason = _unavailable()
    return (None, reason) if reason else (_bfloat16_batched_matmul_op, None)


def load_float32_gemv():
    """``(op, None)``, ``op(x, w)`` appending or running the float32 kernel, or ``(None,
    why there is none)``."""
    reason = _unavailable()
    return (None, reason) if reason else (_float32_gemv_op, None)


def load_float32_batched_matmul():
    """``(op, None)``, ``op(x, y, transpose_y)`` appending or running the float32 batched
    kernel, or ``(None, why there is none)``."""
    reason = _unavailable()
    return (None, reason) if reason else (_float32_batched_matmul_op, None)


def load_rms_norm():
    """``(op, None)``, ``op(x, w, epsilon)`` appending or running the RMSNorm kernel, or
    ``(None, why there is none)``."""
    reason = _unavailable()
    return (None, reason) if reason else (_rms_norm_op, None)


def _rms_norm_op(x, w, epsilon: float):
    from paddle import _C_ops

    return _C_ops._run_custom_op(RMS_NORM, x, w, float(epsilon))[0]


def _float32_batched_matmul_op(x, y, transpose_y: bool):
    from paddle import _C_ops

    return _C_ops._run_custom_op(FLOAT32_BATCHED_MATMUL_T if transpose_y else FLOAT32_BATCHED_MATMUL, x, y)[0]


def _float32_gemv_op(x, w):
    from paddle import _C_ops

    return _C_ops._run_custom_op(FLOAT32_GEMV, x, w)[0]


def _bfloat16_gemv_op(x, w):
    from paddle import _C_ops

    return _C_ops._run_custom_op(BFLOAT16_GEMV, x, w)[0]


def _bfloat16_batched_matmul_op(x, y, transpose_y: bool):
    from paddle import _C_ops

    return _C_ops._run_custom_op(BFLOAT16_BATCHED_MATMUL_T if transpose_y else BFLOAT16_BATCHED_MATMUL, x, y)[0]


def _build_and_register() -> None:
    import paddle

    sources = [path.read_bytes() for path in _SOURCES + _HEADERS]
    libs = Path(paddle.__file__).resolve().parent / "libs"
    # libiomp5, the OpenMP runtime of Paddle's oneDNN and MKL: the kernel's threads are
    # theirs, sized by the thread count Paddle Inference sets.
    ldflags = [f"-L{libs}", "-l:libiomp5.so", f"-Wl,-rpath,{libs}"]
    key = hashlib.sha256(b"\0".join([*sources, paddle.__version__.encode(), *(f.encode() for f in _CXXFLAGS),
                                     *(f.encode() for f in ldflags)])).hexdigest()[:16]
    directory = cache_home() / "native" / f"{BFLOAT16_GEMV}-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / ".lock"), library_quiet():
        from paddle.utils import cpp_extension  # warns (no ccache) on import

        cpp_extension.load(name=BFLOAT16_GEMV, sources=[str(path) for path in _SOURCES],
                           extra_cxx_cflags=list(_CXXFLAGS), extra_ldflags=ldflags, build_directory=str(directory),
                           verbose=False)


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path`` (processes building at once wait here)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
