"""The matmuls of ``pd_op.while`` bodies, and replacing matmuls one by one: what the
rules that move a decode loop's products to another kernel share
(``loop_weight_matmul``, ``loop_bfloat16_gemv``, ``loop_bfloat16_batched_matmul``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import paddle

from ..paddle_modes import static_mode
from .program_index import WHILE
from .report import PassReport

MATMUL = "pd_op.matmul"


def loop_matmuls(program, selected: Callable) -> tuple[list, int]:
    """(the matmuls in loop bodies, at any depth, for which ``selected(op)`` is true;
    the number of the others)."""
    # A walk of its own, not ProgramIndex (which copy_ops.loop_copies uses): the index
    # builds an alias graph these rules do not need, 10x the time (8 against 79 ms on
    # the toy llama's loop), and they run every time a predictor is made.
    found, others = [], []
    _collect_loop_matmuls(program.global_block(), False, selected, found, others)
    return found, len(others)


def _collect_loop_matmuls(block, in_loop: bool, selected: Callable, found: list, others: list) -> None:
    # Module-level recursion, not a nested function (program_index._walk_block says why).
    for op in block.ops:
        if in_loop and op.name() == MATMUL:
            (found if selected(op) else others).append(op)
        for sub in op.blocks():
            _collect_loop_matmuls(sub, in_loop or op.name() == WHILE, selected, found, others)


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
    """Match every loop matmul ``selected(op)`` accepts, then (only when there is one)
    ``load_kernel()``: ``(kernel, None)`` or ``(None, why there is none)``. With a kernel,
    ``rewrite(program, matmuls, kernel)`` replaces them all; without, nothing changes.
    ``(rewritten, kept, unavailable)``, a ``LoopKernelReport``'s fields."""
    matmuls, kept = loop_matmuls(program, selected)
    if not matmuls:
        return 0, kept, None
    kernel, unavailable = load_kernel()
    if kernel is None:
        return 0, kept + len(matmuls), unavailable
    rewrite(program, matmuls, kernel)
    return len(matmuls), kept, None
