"""loop_float32_gemv: a decode loop's float32 weight products on our float32 GEMV kernel.

Rule. In a ``pd_op.while`` body (at any depth), a product of float32 activations and a
large float32 parameter matrix stored ``[in, out]`` becomes our kernel's op
(``native.load_float32_gemv``: ``x @ W``, float32 sums, the rows of ``W`` split between
threads)::

    (%y) = "pd_op.matmul" (%x, %W) {transpose_x:false, transpose_y:false}   # x [B, 1, K], W [K, N]

    (%y) = "custom_op.paddlenlp_ext_float32_gemv" (%x, %W)                  # [B, 1, N]

Why. A float32 decode step waits on reading the weights. ``loop_weight_matmul`` puts
its products on MKL's GEMM (``pd_op.addmm``), which reads them at one core's bandwidth
on AMD processors whatever the thread count: [1, 4096] x [4096, 11008] took 8.5-9.2 ms
on one thread of a 2-vCPU Zen 4 and on two alike (19 GiB/s; ``float32_gemv.cc`` has
the kernel's figures). On Intel processors MKL's two threads read 1.9x faster
(``docs/benchmark-llama2-7b.md``), so the pipeline runs this pass on AMD processors only
(``passes.pipeline``), before ``loop_weight_matmul``, which then keeps the products
this pass leaves (float64 ones, or all where there is no kernel).

Safety conditions (1-3 checked by ``loop_matmuls.weight_product``; 4-5 hold by construction
or are the pipeline's):

1. ``W`` is a ``builtin.parameter`` of rank 2 and dtype float32, of
   ``loop_weight_matmul.MIN_WEIGHT_ELEMENTS`` or more (a matrix read from memory; a
   smaller one stays in cache, where a plain product costs less than the threads'
   start): a dense matrix, the same at every step, read as ``[K, N]``.
2. ``transpose_x`` and ``transpose_y`` false: the kernel computes ``x @ W`` and nothing
   else (a transposed square ``W`` would give a wrong product of the same shape).
3. ``x`` is float32 with a static last dimension equal to ``W``'s ``K``: the kernel's
   rows are ``x``'s leading dimensions, its result ``x``'s shape with ``N`` last, the
   matmul's.
4. The value is the same product: float32 sums of float32 products, ordered
   differently (per thread, then across threads: last bits of the logits, as between
   any two kernels; the tests check tokens on every route). The op writes a new
   tensor and reads its inputs only.
5. The pipeline runs this pass only on CPU, and only when the kernel exists in this
   process (an AVX512-BF16 CPU, where the package's kernels build: ``native``);
   ``convert`` and the save hook never do, since a directory Paddle's default config
   loads cannot hold our op.
"""

from __future__ import annotations

from typing import Callable

import paddle

from . import loop_weight_matmul
from .loop_matmuls import LoopKernelReport, replace_matmuls, rewrite_on_kernel, weight_product


class LoopFloat32GemvReport(LoopKernelReport):
    rewritten_to = "loop float32 weight matmuls run on the GEMV kernel"


def _rewritable(op) -> bool:
    # conditions 1 (float32, large), 2 (no transposes) and 3
    return weight_product(op, (paddle.float32,), transpose_y=False, min_elements=loop_weight_matmul.MIN_WEIGHT_ELEMENTS)


def run_loop_float32_matmuls_on_gemv(program, outputs=None, *, load_kernel: Callable) -> LoopFloat32GemvReport:
    """Rewrite every matmul the rule selects (all are matched before any is changed).
    ``load_kernel()`` is called only when there is one: it returns ``(gemv, reason)``,
    ``gemv(x, w)`` appending the kernel's op, or None and why there is no kernel
    (``native.load_float32_gemv``), in which case nothing changes (condition 5).
    ``outputs``: the pass protocol's (``report.PassReport``); it replaces none."""
    return LoopFloat32GemvReport(*rewrite_on_kernel(program, _rewritable, load_kernel, replace_matmuls))
