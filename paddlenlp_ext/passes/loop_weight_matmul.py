"""loop_weight_matmul: a decode loop's weight matmuls on the plain CPU GEMM (``pd_op.addmm``).

Rule. In a ``pd_op.while`` body (at any depth), a product of an activation and a
parameter matrix, ``y = pd_op.matmul(x, W)``, becomes a ``pd_op.addmm`` on the rows of
``x``, reshaped back::

    (%y) = "pd_op.matmul" (%x, %W) {transpose_x:false, transpose_y:false}   # x [-1, -1, K], W [K, N]

    (%x2) = "pd_op.reshape" (%x, [-1, K])
    (%z) = "pd_op.full" () {shape:[1, N], value:0}
    (%y2) = "pd_op.addmm" (%z, %x2, %W) {beta:0, alpha:1}                  # [rows, N]
    (%y) = "pd_op.reshape" (%y2, x's leading dims + [N])                    # from shape64(x) if dynamic

Why. A decode step multiplies one row per sequence by every weight matrix, so it is
bound by reading the weights. On Paddle 3.3.1 with oneDNN (Paddle's placement), the
oneDNN matmul takes about 3x the time the weights' bytes allow at llama2-7B's layer
shape (hidden 4096: 100 ms a step for 0.8 GB of weights, against 40 ms at the measured
bandwidth), while ``addmm``'s plain kernel (MKL's GEMM) reads them at the bandwidth (on an AMD
processor once our predictors have MKL take its AVX2 path: ``mkl_dispatch``).
``addmm`` is not in ``onednn_placement_pass``'s list and no fuse pass matches it, so it
stays plain under every oneDNN configuration. The prefill (outside the loop) keeps
oneDNN's GEMM, the faster one there.

Only matrices of ``MIN_WEIGHT_ELEMENTS`` or more are rewritten: reading those from
memory is what a step waits for. A small matrix stays in cache, and the extra ops
(reshapes, the zeros) cost more than they save: on the benchmark's toy llama (hidden
512, matrices of 1 to 4 MB) the static cache's step took 12% longer rewritten.

Safety conditions (1-3 and 6 checked by ``_rewritable``, through ``loop_matmuls.weight_product``;
4-5 hold by construction):

1. ``W`` is a ``builtin.parameter`` of rank 2: a matrix of weights, the same at every
   step, passed to ``addmm`` as it is (no op touches the parameter, so nothing can
   give Paddle a reason to make a second copy of it; ``bmm`` would need it reshaped to
   3-D, and was no faster).
2. No transposes: ``addmm`` has none.
3. ``x`` has rank 2 or more with a static last dimension ``K`` equal to ``W``'s rows,
   and its dtype is ``W``'s: the reshapes are exact.
4. The value computed is the same product: the rows of ``x`` times ``W``, plus
   ``0 * zeros``. The sums may be ordered differently from oneDNN's (last bits of the
   logits), as between any two kernels; the tests check tokens on every runtime.
5. The new values are each read once, by the next op: nothing can write over them
   in between, and ``y``'s users read the reshaped result as they read the matmul's.
   ``addmm`` itself stays out of place: ``inplace_pass`` (which our configurations run
   only with oneDNN off) could otherwise write the product over the zeros, a constant
   Paddle may fold and reuse; it does not, since their shapes differ ([1, N] and
   [rows, N]; checked on every configuration by the tests). ``convert`` does not apply
   the rewrite: its directories are for Paddle's default config, whose passes we do
   not control.
6. ``W`` is float32 or float64, the dtypes ``addmm`` has CPU kernels for (Paddle 3.3.1
   has no bfloat16 one: a bfloat16 product rewritten would fail when the predictor is
   made). A bfloat16 product is ``loop_bfloat16_gemv``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle

from .loop_matmuls import loop_matmuls, replace_matmuls, weight_product
from .report import PassReport

MIN_WEIGHT_ELEMENTS = 1 << 22  # 16 MiB of float32: larger than a last-level cache


@dataclass(frozen=True)
class LoopWeightMatmulReport(PassReport):
    rewritten: int  # matmuls now run as addmm
    kept: int  # matmuls in a loop body left as they are

    @property
    def modified(self) -> bool:
        return self.rewritten > 0

    def summary(self) -> str:
        return f"{self.rewritten} loop weight matmuls run as addmm; kept {self.kept}"


def _rewritable(op, min_elements: int) -> bool:
    # conditions 1, 2, 3 (rank 2 or more: its reshape to rows) and 6; a matrix under
    # min_elements is not worth it (see above)
    return len(op.operand_source(0).shape) >= 2 and weight_product(
        op, (paddle.float32, paddle.float64), transpose_y=False, min_elements=min_elements)


def loop_weight_matmuls(program, min_elements: int | None = None) -> tuple[list, int]:
    """(the matmuls in loop bodies the rule rewrites, the number of other loop matmuls);
    ``min_elements`` defaults to ``MIN_WEIGHT_ELEMENTS``."""
    min_elements = MIN_WEIGHT_ELEMENTS if min_elements is None else min_elements
    return loop_matmuls(program, lambda op: _rewritable(op, min_elements))


def _rows_times_weight(x, weight):
    """``x @ weight`` as an addmm on ``x``'s rows, reshaped to ``x``'s leading dims + [N]."""
    k, n = weight.shape
    rows = paddle._C_ops.reshape(x, [-1, k])
    zeros = paddle._C_ops.full([1, n], 0.0, weight.dtype, paddle.CPUPlace())
    product = paddle._C_ops.addmm(zeros, rows, weight, 0.0, 1.0)
    leading = list(x.shape[:-1])
    if all(d >= 0 for d in leading[1:]):  # only the first dimension is dynamic
        return paddle._C_ops.reshape(product, [-1, *leading[1:], n])
    shape = paddle._C_ops.slice(paddle._C_ops.shape64(x), [0], [0], [len(leading)], [1], [])
    last = paddle._C_ops.full([1], n, paddle.int64, paddle.CPUPlace())
    return paddle._C_ops.reshape(product, paddle._C_ops.concat([shape, last], 0))


def run_loop_weight_matmuls_as_addmm(program, outputs=None, *,
                                     min_elements: int | None = None) -> LoopWeightMatmulReport:
    """Rewrite every matmul the rule selects (all are matched before any is changed).
    ``outputs``: the pass protocol's (``report.PassReport``); it replaces none."""
    matmuls, kept = loop_weight_matmuls(program, min_elements)
    replace_matmuls(program, matmuls, _rows_times_weight)
    return LoopWeightMatmulReport(len(matmuls), kept)
