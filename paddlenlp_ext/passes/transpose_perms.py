"""transpose_perms: every ``pd_op.transpose`` states its permutation with non-negative axes.

Why. Paddle accepts a negative entry in a transpose's ``perm`` (``[0, 2, 1, -1]`` is
``[0, 2, 1, 3]``), and its plain CPU kernel computes it right, but Paddle Inference
3.3.1 with oneDNN on (our ``"all"`` configuration and Paddle's default CPU config)
corrupts the heap on it: "double free or corruption" on a three-op program, or a hang
(``tests/test_transpose_perms.py`` pins it). The same permutation written with
non-negative axes runs right, so every route that runs a program on oneDNN, or saves
one for Paddle's default config, states them so.

Rule. A transpose whose ``perm`` holds a negative entry is replaced by a transpose of
the same operand with every entry ``p`` of ``perm`` written ``p % rank``::

    (%2) = "pd_op.transpose" (%1) {perm:[0,2,1,-1]}     # %1: rank 4

becomes::

    (%3) = "pd_op.transpose" (%1) {perm:[0,2,1,3]}

Safety conditions (checked in ``normalised_perm``, before anything changes):

1. The operand's rank is static (``len(shape)``), and ``perm`` is a permutation of
   ``range(rank)`` once normalised (every entry in ``[-rank, rank)``, none twice).
   Otherwise the transpose is left as it is (Paddle rejects it at run time anyway).
2. The new transpose computes the same tensor (the same permutation), so every reader of
   the old result reads the new one: the result's value, dtype and shape are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle

from ..paddle_modes import static_mode
from .program_index import walk_ops
from .report import PassReport

TRANSPOSE = "pd_op.transpose"


@dataclass(frozen=True)
class TransposePermsReport(PassReport):
    rewritten: int  # transposes now stated with non-negative axes

    @property
    def modified(self) -> bool:
        return self.rewritten > 0

    def summary(self) -> str:
        return f"{self.rewritten} transposes stated with non-negative axes"


def normalised_perm(op) -> tuple[int, ...] | None:
    """Transpose ``op``'s perm with negative entries counted from the end; None when it is
    not a permutation of its operand's axes (condition 1)."""
    rank = len(op.operand_source(0).shape)
    perm = [int(p) for p in op.attrs()["perm"]]
    if len(perm) != rank or any(not -rank <= p < rank for p in perm):
        return None
    normalised = tuple(p % rank for p in perm)
    return normalised if sorted(normalised) == list(range(rank)) else None


def _restated(op) -> list | None:
    """The non-negative perm of transpose ``op`` when its own has a negative entry and
    condition 1 holds, else None."""
    if not any(p < 0 for p in op.attrs()["perm"]):
        return None
    perm = normalised_perm(op)
    return None if perm is None else list(perm)


def state_transpose_perms_non_negative(program, outputs: list | None = None) -> TransposePermsReport:
    """Rewrite every transpose the rule selects (all are matched before any changes).
    ``outputs``: the list of values the caller fetches; an old transpose's result in it
    is replaced by the new one's, in the list."""
    outputs = [] if outputs is None else outputs
    matches = [(op, perm) for op in walk_ops(program)
               if op.name() == TRANSPOSE and (perm := _restated(op)) is not None]
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for op, perm in matches:
            paddle.pir.set_insertion_point(op)
            new = paddle._C_ops.transpose(op.operand_source(0), perm)  # condition 2
            old = op.result(0)
            outputs[:] = [new if value.is_same(old) else value for value in outputs]
            old.replace_all_uses_with(new)
            op.erase()
        paddle.pir.reset_insertion_point_to_end()
    return TransposePermsReport(len(matches))
