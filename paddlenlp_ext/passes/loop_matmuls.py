"""The matmuls of ``pd_op.while`` bodies, which of them multiply by a weight matrix, and
replacing matmuls one by one: what the rules that move a decode loop's products to
another kernel share (``loop_weight_matmul``, ``loop_float32_gemv``,
``loop_bfloat16_gemv``, ``loop_batched_matmul``); the walk of loop bodies and the
kernel's loading only when a rule found something serve ``loop_rms_norm`` too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import paddle

from ..paddle_modes import static_mode
from .program_index import PARAMETER, WHILE
from .report import PassReport

MATMUL = "pd_op.matmul"


def loop_ops(program, name: str) -> list:
    """``(op, its block)`` for every op named ``name`` in a loop body, at any depth."""
    # A walk of its own, not ProgramIndex (which copy_ops.loop_copies uses): the index
    # builds an alias graph these rules do not need, 10x the time (8 against 79 ms on
    # the toy llama's loop), and they run every time a predictor is made.
    found = []
    _collect_loop_ops(program.global_block(), False, name, found)
    return found


def _collect_loop_ops(block, in_loop: bool, name: str, found: list) -> None:
    # Module-level recursion, not a nested function (program_index._walk_block says why).
    for op in block.ops:
        if in_loop and op.name() == name:
            found.append((op, block))
        for sub in op.blocks():
            _collect_loop_ops(sub, in_loop or op.name() == WHILE, name, found)


def loop_matmuls(program, selected: Callable) -> tuple[list, int]:
    """(the matmuls in loop bodies, at any depth, for which ``selected(op)`` is true;
    the number of the others)."""
    matmuls = [op for op, _ in loop_ops(program, MATMUL)]
    found = [op for op in matmuls if selected(op)]
    return found, len(matmuls) - len(found)


def weight_product(op, dtypes: tuple, transpose_y: bool, min_elements: int = 0) -> bool:
    """Whether the matmul ``op`` multiplies activations by a weight matrix, as the weight
    rules need it (each names these its conditions):

    - the weight is a ``builtin.parameter`` of rank 2, of a dtype of ``dtypes`` and of
      ``min_elements`` or more: a dense matrix, the same at every step;
    - ``transpose_x`` false and ``transpose_y`` as given: the one product the kernel
      computes (the other would be wrong at the same shape for a square weight);
    - the activations have the weight's dtype and a static last dimension equal to the
      weight's inner one: the product's shape is the matmul's."""
    weight = op.operand_source(1)
    producer = weight.get_defining_op()
    if producer is None or producer.name() != PARAMETER or len(weight.shape) != 2:
        return False
    if weight.dtype not in dtypes or weight.shape[0] * weight.shape[1] < min_elements:
        return False
    attrs = op.attrs()
    if attrs.get("transpose_x") or bool(attrs.get("transpose_y")) != transpose_y:
        return False
    x = op.operand_source(0)
    inner = weight.shape[1] if transpose_y else weight.shape[0]
    return x.dtype == weight.dtype and len(x.shape) >= 1 and x.shape[-1] == inner


def replace_matmuls(program, matmuls: list, product: Callable) -> None:
    """Replace each op of ``matmuls`` (of ``program``) by ``product(x, w)``, the ops it
    appends at the matmul's place computing the value that takes the matmul's uses."""
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for op in matmuls:
            paddle.pir.set_insertion_point(op)
            result = product(op.operand_source(0), op.operand_source(1))
            op.result(0).replace_all_uses_with(result)
            op.erase()
        paddle.pir.reset_insertion_point_to_end()


@dataclass(frozen=True)
class LoopKernelReport(PassReport):
    """What a rule that moves loop matmuls to one of our kernels did."""

    rewritten: int  # matmuls now run on the kernel
    kept: int  # matmuls in a loop body left as they are
    unavailable: str | None = None  # why there is no kernel, when one was needed
    rewritten_to: ClassVar[str] = "run on our kernel"  # the summary's words, per rule

    @property
    def modified(self) -> bool:
        return self.rewritten > 0

    def summary(self) -> str:
        text = f"{self.rewritten} {self.rewritten_to}; kept {self.kept}"
        return text if self.unavailable is None else f"{text} ({self.unavailable})"


def rewrite_on_kernel(program, selected: Callable, load_kernel: Callable, rewrite: Callable) -> tuple:
    """Match every loop matmul ``selected(op)`` accepts, then ``rewrite_found_on_kernel``
    them: ``(rewritten, kept, unavailable)``, a ``LoopKernelReport``'s fields."""
    matmuls, kept = loop_matmuls(program, selected)
    return rewrite_found_on_kernel(program, matmuls, kept, load_kernel, rewrite)


def rewrite_found_on_kernel(program, found: list, kept: int, load_kernel: Callable, rewrite: Callable) -> tuple:
    """Only when a rule found something (``found``, matched before any change; ``kept``
    the candidates it leaves), ``load_kernel()``: ``(kernel, None)`` or ``(None, why there
    is none)``. With a kernel, ``rewrite(program, found, kernel)`` replaces them all;
    without, nothing changes. ``(rewritten, kept, unavailable)``, a ``LoopKernelReport``'s
    fields."""
    if not found:
        return 0, kept, None
    kernel, unavailable = load_kernel()
    if kernel is None:
        return 0, kept + len(found), unavailable
    rewrite(program, found, kernel)
    return len(found), kept, None
