"""loop_batched_matmul: a decode loop's bfloat16 or float32 products of two activations
(the attention over the KV cache) on our batched kernel of that dtype.

Rule. In a ``pd_op.while`` body (at any depth), a matmul of a few rows of activations by
a value that is not a parameter, both of the rule's dtype (bfloat16, or float32),
becomes our kernel's op of that dtype (``native.load_bfloat16_batched_matmul``,
``native.load_float32_batched_matmul``: ``x @ y^T`` or ``x @ y`` per batch, float32
sums; in bfloat16 rounded to bfloat16 once)::

    (%s) = "pd_op.matmul" (%q, %K) {transpose_x:false, transpose_y:true}    # [B, H, G, D] x [B, H, S, D]
    (%a) = "pd_op.matmul" (%p, %V) {transpose_x:false, transpose_y:false}   # [B, H, G, S] x [B, H, S, D]

    (%s) = "custom_op.paddlenlp_ext_bfloat16_batched_matmul_t" (%q, %K)    # [B, H, G, S]
    (%a) = "custom_op.paddlenlp_ext_bfloat16_batched_matmul" (%p, %V)      # [B, H, G, D]

(``paddlenlp_ext_float32_batched_matmul_t`` / ``paddlenlp_ext_float32_batched_matmul`` in
float32).

Why. A decode step reads its whole KV cache twice, for the scores and for the weighted
values, one query row (or one per grouped head) a head. Paddle 3.3.1's oneDNN bfloat16
matmul took about 4 ms for the two over 2176 positions of one llama2-7B layer on one
Zen 4 thread (about 9 GB/s), the kernel 1.9 ms (1.09 for the scores, 0.85 for the
weighted values, cold): a step went from 37.7 to 35.5 ms. In float32, oneDNN's matmul read
that layer's cache at 2081 positions at 11-17 GB/s on two threads (2.9 ms for the scores,
1.9 for the weighted values, profiled); on the kernel the step took 0.87x the time (paired
with the same program on oneDNN, 12 rounds). The prefill (outside the loop, many rows)
keeps oneDNN's matmul.

Safety conditions (1-4 checked by ``_rewritable``, at the check; 5-6 hold by construction
or are the pipeline's):

1. ``x`` and ``y`` are of the rule's dtype, and ``y`` is no ``builtin.parameter``:
   weights are the weight rules' (``loop_bfloat16_gemv``, ``loop_float32_gemv``,
   ``loop_weight_matmul``), which run first.
2. ``transpose_x`` is false: the kernel reads ``x``'s rows as stored.
3. ``x`` and ``y`` have rank 2 or more, and ``x``'s row count (its second-to-last dim) is
   static and at most ``MAX_ROWS``: the kernel reads ``y`` from memory once and from
   cache for each further row, a product of a few rows; more rows are a GEMM, oneDNN's.
4. The inner dims agree where static; the batch dims broadcast as matmul's do (the
   kernel broadcasts them the same way, and raises on dims that do not broadcast, as
   matmul does).
5. The value is the same product: float32 sums of the products (of bfloat16 values:
   exact), in bfloat16 rounded once, as oneDNN's bfloat16 matmul writes it; the order
   of the sums differs (last bits). The op writes a new tensor and reads its inputs only.
6. The pipeline runs this pass only on CPU, and only when the kernels exist in this
   process (``native``); the float32 rule where our float32 kernels run
   (``pipeline.float32_gemv_pays``); ``convert`` and the save hook never do.
"""

from __future__ import annotations

from typing import Callable

import paddle

from .loop_matmuls import LoopKernelReport, replace_matmuls, rewrite_on_kernel
from .program_index import PARAMETER

MAX_ROWS = 16  # of x: grouped-query attention's queries per key/value head, or a few sequences


class LoopBfloat16BatchedMatmulReport(LoopKernelReport):
    rewritten_to = "loop bfloat16 activation matmuls run on the batched kernel"


class LoopFloat32BatchedMatmulReport(LoopKernelReport):
    rewritten_to = "loop float32 activation matmuls run on the batched kernel"


def _rewritable(op, dtype) -> bool:
    x, y = op.operand_source(0), op.operand_source(1)
    if x.dtype != dtype or y.dtype != dtype:  # condition 1
        return False
    producer = y.get_defining_op()
    if producer is not None and producer.name() == PARAMETER:  # condition 1
        return False
    attrs = op.attrs()
    if attrs.get("transpose_x"):  # condition 2
        return False
    if len(x.shape) < 2 or len(y.shape) < 2 or not 0 < x.shape[-2] <= MAX_ROWS:  # condition 3 (-1: not static)
        return False
    inner = y.shape[-1] if attrs.get("transpose_y") else y.shape[-2]
    return x.shape[-1] < 0 or inner < 0 or x.shape[-1] == inner  # condition 4


def _rewrite(program, matmuls: list, product) -> None:
    # Sorted by transpose_y before any is replaced: an erased op has no attributes to read.
    by_transpose = {True: [], False: []}
    for op in matmuls:
        by_transpose[bool(op.attrs().get("transpose_y"))].append(op)
    for transpose_y, chosen in by_transpose.items():
        replace_matmuls(program, chosen, lambda x, y, transpose_y=transpose_y: product(x, y, transpose_y))


def run_loop_bfloat16_matmuls_on_batched_kernel(program, outputs=None, *,
                                                 load_kernel: Callable) -> LoopBfloat16BatchedMatmulReport:
    """Rewrite every bfloat16 matmul the rule selects (all are matched before any is
    changed). ``load_kernel()`` is called only when there is one: it returns ``(product,
    reason)``, ``product(x, y, transpose_y)`` appending the kernel's op, or None and why
    there is no kernel (``native.load_bfloat16_batched_matmul``), in which case nothing
    changes (condition 6). ``outputs``: the pass protocol's (``report.PassReport``); it
    replaces none."""
    return LoopBfloat16BatchedMatmulReport(*rewrite_on_kernel(
        program, lambda op: _rewritable(op, paddle.bfloat16), load_kernel, _rewrite))


def run_loop_float32_matmuls_on_batched_kernel(program, outputs=None, *,
                                               load_kernel: Callable) -> LoopFloat32BatchedMatmulReport:
    """The same rule for float32 matmuls (``native.load_float32_batched_matmul``)."""
    return LoopFloat32BatchedMatmulReport(*rewrite_on_kernel(
        program, lambda op: _rewritable(op, paddle.float32), load_kernel, _rewrite))
