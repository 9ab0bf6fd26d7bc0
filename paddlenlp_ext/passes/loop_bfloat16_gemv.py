"""loop_bfloat16_gemv: a decode loop's bfloat16 weight products on our bfloat16 GEMV kernel.

Rule. In a ``pd_op.while`` body (at any depth), a product of bfloat16 activations and a
bfloat16 parameter matrix stored ``[out, in]`` becomes our kernel's op
(``native.load_bfloat16_gemv``: ``x @ W^T``, float32 sums rounded to bfloat16)::

    (%y) = "pd_op.matmul" (%x, %W) {transpose_x:false, transpose_y:true}   # x [B, 1, K] bf16, W [N, K] bf16

    (%y) = "custom_op.paddlenlp_ext_bfloat16_gemv" (%x, %W)                 # [B, 1, N] bf16

Why. A bfloat16 model's decode step multiplies one row per sequence by every weight
matrix, held ``[out, in]`` (``transposed_weights``), so it waits on reading them. Paddle
3.3.1's oneDNN bfloat16 matmul repacks the weights on every call at one row: one
[1, 4096] x [4096, 11008] product took 7.9-8.4 ms on one Zen 4 thread (about 11 GB/s)
and 4.5-4.7 on two; the kernel reads the rows as they are stored, 3.8 ms on one
thread and 2.8 on two (24 and 32 GB/s: the memory's speed). The prefill (outside the
loop, many rows) keeps oneDNN's matmul, which runs at the CPU's bfloat16 peak there.

Safety conditions (1-3 checked by ``loop_matmuls.weight_product``; 4-5 hold by construction
or are the pipeline's):

1. ``W`` is a ``builtin.parameter`` of rank 2 and dtype bfloat16: a dense matrix, the
   same at every step, read by the kernel as ``[N, K]`` (a value computed in the loop
   could be a view or change its layout under oneDNN; the kernel takes it contiguous
   anyway, but a parameter is what a weight is).
2. ``transpose_x`` false and ``transpose_y`` true: the kernel computes ``x @ W^T`` and
   nothing else (``W`` as stored ``[in, out]`` would give a wrong product of the same
   shape when square).
3. ``x`` is bfloat16 with a static last dimension equal to ``W``'s ``K``: the kernel's
   rows are ``x``'s leading dimensions, its result ``x``'s shape with ``N`` last, the
   matmul's.
4. The value is the same product: float32 sums of bfloat16 products, rounded to
   bfloat16 once, as oneDNN's bfloat16 matmul writes it; the order of the sums differs
   (last bits: the bfloat16 accuracy contract of the tests, against float32, holds on
   every route). The op writes a new tensor and reads its inputs only.
5. The pipeline runs this pass only on CPU, and only when the kernel exists in this
   process (an AVX512-BF16 CPU, built: ``native``); ``convert`` and the save hook never
   do, since a directory Paddle's default config loads cannot hold our op.
"""

from __future__ import annotations

from typing import Callable

import paddle

from .loop_matmuls import LoopKernelReport, replace_matmuls, rewrite_on_kernel, weight_product


class LoopBfloat16GemvReport(LoopKernelReport):
    rewritten_to = "loop bfloat16 matmuls run on the GEMV kernel"


def _rewritable(op) -> bool:
    # conditions 1 (bfloat16), 2 (transpose_y only) and 3
    return weight_product(op, (paddle.bfloat16,), transpose_y=True)


def run_loop_bfloat16_matmuls_on_gemv(program, outputs=None, *,
                                      load_kernel: Callable) -> LoopBfloat16GemvReport:
    """Rewrite every matmul the rule selects (all are matched before any is changed).
    ``load_kernel()`` is called only when there is one: it returns ``(gemv, reason)``,
    ``gemv(x, w)`` appending the kernel's op, or None and why there is no kernel
    (``native.load_bfloat16_gemv``), in which case nothing changes (condition 5).
    ``outputs``: the pass protocol's (``report.PassReport``); it replaces none."""
    return LoopBfloat16GemvReport(*rewrite_on_kernel(program, _rewritable, load_kernel, replace_matmuls))
