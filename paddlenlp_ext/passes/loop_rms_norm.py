"""loop_rms_norm: a decode loop's RMSNorm (PaddleNLP's ``LlamaRMSNorm``, eight ops) as our
one op.

Rule. In a ``pd_op.while`` body (at any depth), the chain PaddleNLP 2.8.1's
``LlamaRMSNorm`` traces (``rsqrt(mean(x^2) + eps) * x``, cast to the weight's dtype when
that is bfloat16, times the weight) becomes our kernel's op
(``native.load_rms_norm``)::

    (%c) = "pd_op.cast" (%x) {dtype: float32}          # or %c is %x, a float32 value
    (%p) = "pd_op.pow" (%c) {y: 2}
    (%m) = "pd_op.mean" (%p, %axis) {keepdim: true}    # %axis: [-1]
    (%s) = "pd_op.scale" (%m, %one) {bias: eps, bias_after_scale: true}
    (%r) = "pd_op.rsqrt" (%s)
    (%n) = "pd_op.multiply" (%r, %c)
    (%b) = "pd_op.cast" (%n) {dtype: bfloat16}          # bfloat16 weights only
    (%y) = "pd_op.multiply" (%b, %w)                    # %w: a parameter [H]

    (%y) = "custom_op.paddlenlp_ext_rms_norm" (%x, %w) {epsilon: eps}

Why. A decode step runs two of these a layer and one before the head, each eight ops on a
few rows of 4096 values, most on oneDNN, each paying Paddle's interpreter and oneDNN's
per-call work: about 320 us a norm in a profiled float32 step of the llama2-7B-shaped
layer on two Zen 4 threads (``pow`` alone 80 us), 38 us for the kernel's op. Unprofiled
the gain is smaller: that layer's float32 step took 0.994x the time (512 prompt tokens,
two threads, paired with the same program without the rule, 10 rounds). The prefill's
norms (outside the loop, many rows) stay as they are.

Safety conditions (``_match`` checks 1-5, at the check; 6-7 hold by construction or are
the pipeline's):

1. Every value of the chain between ``%c`` and ``%y`` has exactly one use, the chain's next
   op, and ``%c`` (when it is the cast's) the two of ``pow`` and the first ``multiply``:
   the ops erased compute values nothing else reads.
2. ``pow``'s exponent is 2; ``mean`` reduces the last axis alone and keeps it; ``scale``'s
   factor is a constant 1 (a ``pd_op.full``) added to after scaling: ``mean(x^2) + eps``.
3. ``%x`` is float32 or bfloat16 and ``%c`` float32; ``%w`` is a ``builtin.parameter`` of
   rank 1 and ``%x``'s dtype, its size ``%x``'s static last dim; the cast to bfloat16 is
   there exactly when ``%x`` is bfloat16 (PaddleNLP casts to the weight's dtype).
4. ``multiply`` takes its operands in either order (the same product).
5. The chain's ops follow one another in one block, constants (``pd_op.full``,
   ``pd_op.full_int_array``) aside: nothing runs between the chain's first read of ``%x``
   and its last product, so nothing writes ``%x`` there (in place, or through a buffer it
   shares), and the op, put at the chain's last product, reads the ``%x`` the chain read.
6. The kernel computes the same values: float32 sums of the squares (in another order:
   the last bits differ), the normalized value rounded to bfloat16 as the cast does,
   the product rounded as Paddle's bfloat16 multiply does; it writes a new tensor and
   reads its inputs only.
7. The pipeline runs this pass only on CPU and only when the kernels exist in this process
   (``native``); ``convert`` and the save hook never do.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import paddle

from ..paddle_modes import static_mode
from .loop_matmuls import LoopKernelReport, loop_ops, rewrite_found_on_kernel
from .program_index import PARAMETER

RSQRT = "pd_op.rsqrt"
CONSTANTS = frozenset({"pd_op.full", "pd_op.full_int_array"})


class LoopRmsNormReport(LoopKernelReport):
    rewritten_to = "loop RMSNorms run on our kernel"


class RmsNormChain(NamedTuple):
    """A matched chain: its input, weight and epsilon, the ops (and their constants) erased,
    in program order."""

    x: object
    weight: object
    epsilon: float
    erased: tuple
    constants: tuple

    @property
    def last(self):
        """The weight's product, whose result the kernel's replaces."""
        return self.erased[-1]


def _single_user(value, name: str):
    """The one op reading ``value`` when it is named ``name``, else None (condition 1)."""
    users = list(value.all_used_ops())
    return users[0] if len(users) == 1 and users[0].name() == name else None


def _producer(value, name: str):
    op = value.get_defining_op()
    return op if op is not None and op.name() == name else None


def _constant(value, name: str):
    """The attributes of the ``name`` op (``pd_op.full``, ``pd_op.full_int_array``) that
    defines ``value``, or None."""
    op = _producer(value, name)
    return None if op is None else op.attrs()


def _other_operand(op, value):
    """``op``'s operand other than ``value`` (a binary op), or None when neither is it."""
    a, b = op.operand_source(0), op.operand_source(1)
    return b if a.is_same(value) else a if b.is_same(value) else None


def _consecutive(block, chain: list) -> bool:
    """Whether the ops of ``chain`` follow one another in ``block``, constants aside
    (condition 5)."""
    ids, found = {op.id() for op in chain}, 0
    for op in block.ops:
        if op.id() in ids:
            found += 1
            if found == len(ids):
                return True
        elif found and op.name() not in CONSTANTS:
            return False
    return False  # a chain op is in another block


def _match(rsqrt, block) -> RmsNormChain | None:
    scale = _producer(rsqrt.operand_source(0), "pd_op.scale")
    if scale is None or _single_user(scale.result(0), RSQRT) is None:  # condition 1
        return None
    attrs, factor = scale.attrs(), _constant(scale.operand_source(1), "pd_op.full")
    if factor is None or factor.get("value") != 1.0 or not attrs.get("bias_after_scale"):  # condition 2
        return None
    mean = _producer(scale.operand_source(0), "pd_op.mean")
    if mean is None or _single_user(mean.result(0), "pd_op.scale") is None:  # condition 1
        return None
    axis = _constant(mean.operand_source(1), "pd_op.full_int_array")
    power = _producer(mean.operand_source(0), "pd_op.pow")
    if axis is None or not mean.attrs().get("keepdim") or power is None or power.attrs().get("y") != 2.0:
        return None  # condition 2
    if _single_user(power.result(0), "pd_op.mean") is None:  # condition 1
        return None
    c = power.operand_source(0)
    if c.dtype != paddle.float32 or len(c.shape) < 1 or c.shape[-1] <= 0:  # condition 3
        return None
    if list(axis.get("value", ())) not in ([-1], [len(c.shape) - 1]):  # condition 2
        return None
    normalize = _single_user(rsqrt.result(0), "pd_op.multiply")
    if normalize is None or _other_operand(normalize, rsqrt.result(0)) is None:  # conditions 1, 4
        return None
    if not _other_operand(normalize, rsqrt.result(0)).is_same(c):
        return None
    cast_in = _producer(c, "pd_op.cast")
    x = cast_in.operand_source(0) if cast_in is not None else c
    if cast_in is not None and sorted(op.name() for op in c.all_used_ops()) != ["pd_op.multiply", "pd_op.pow"]:
        return None  # condition 1
    erased = [power, mean, scale, rsqrt, normalize]
    normalized = normalize.result(0)
    if x.dtype == paddle.bfloat16:  # condition 3: PaddleNLP's cast to the weight's dtype
        cast_out = _single_user(normalized, "pd_op.cast")
        if cast_out is None or cast_out.result(0).dtype != paddle.bfloat16:
            return None
        erased.append(cast_out)
        normalized = cast_out.result(0)
    elif x.dtype != paddle.float32:  # condition 3
        return None
    product = _single_user(normalized, "pd_op.multiply")  # condition 1
    weight = None if product is None else _other_operand(product, normalized)
    if weight is None or _producer(weight, PARAMETER) is None:  # conditions 3, 4
        return None
    if weight.dtype != x.dtype or list(weight.shape) != [c.shape[-1]]:  # condition 3
        return None
    erased.append(product)
    if cast_in is not None:
        erased.insert(0, cast_in)
    if not _consecutive(block, erased):  # condition 5
        return None
    return RmsNormChain(x, weight, float(attrs["bias"]), tuple(erased),
                        (mean.operand_source(1).get_defining_op(), scale.operand_source(1).get_defining_op()))


def _rewrite(program, chains: list, norm: Callable) -> None:
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for chain in chains:
            paddle.pir.set_insertion_point(chain.last)
            chain.last.result(0).replace_all_uses_with(norm(chain.x, chain.weight, chain.epsilon))
            for op in reversed(chain.erased):
                op.erase()
            for constant in chain.constants:  # the axis and the factor, when nothing else reads them
                if all(not constant.result(i).all_used_ops() for i in range(constant.num_results())):
                    constant.erase()
        paddle.pir.reset_insertion_point_to_end()


def run_loop_rms_norms_on_kernel(program, outputs=None, *, load_kernel: Callable) -> LoopRmsNormReport:
    """Rewrite every chain the rule selects (all are matched before any is changed).
    ``load_kernel()`` is called only when there is one: ``(norm, None)``, ``norm(x, w,
    epsilon)`` appending the kernel's op, or ``(None, why there is none)``
    (``native.load_rms_norm``), in which case nothing changes (condition 7).
    ``outputs``: the pass protocol's (``report.PassReport``); it replaces none (the chain's
    last value takes the kernel's, which an output would be only outside a loop)."""
    rsqrts = loop_ops(program, RSQRT)
    chains = [chain for chain in (_match(op, block) for op, block in rsqrts) if chain is not None]
    return LoopRmsNormReport(*rewrite_found_on_kernel(program, chains, len(rsqrts) - len(chains), load_kernel,
                                                      _rewrite))
