"""onednn_broadcast_add: a computed value an ``add`` broadcasts reaches it through a copy.

Why. Paddle Inference's ``matmul_elementwise_add_fuse_pass`` (3.3.1, on with oneDNN: our
``"all"`` configuration and Paddle's default CPU config) folds ``add(residual,
matmul(x, w))``, in either operand order, into one ``onednn_op.fused_matmul`` that takes
``residual`` as its residual input, and a fused matmul followed by an add likewise,
checking no shape: the fused op's result has the matmul's shape. When the add broadcasts
the matmul's result (``[B, 1, H] + [B, S, H]``: the last position's MLP added to the
sequence's residual) the program returns ``[B, 1, H]``, wrong
(``tests/test_onednn_broadcast_add.py``). The matmul may reach the add through ops a fuse
pass folds into it first (an activation, a bias add turned into ``fc``, a reshape or
transpose of its output), so the rule does not try to follow the fuse passes: a copy
between the value and the add leaves the add nothing to fuse.

Rule. For each ``pd_op.add`` of floating-point values, each operand the add may broadcast
(``_broadcast_operands``) that a matmul computed, directly or within
``MATMUL_DEPTH`` ops of any kind (``_from_matmul``), and that is not already a copy,
reaches the add through an exact copy (``exact_copy.exact_copy``: a roll by 0)::

    (%5) = "pd_op.matmul" (%4, %w) {transpose_x:false,transpose_y:false}   # [-1, 1, 4096]
    (%6) = "pd_op.add" (%3, %5)                                            # %3: [-1, -1, 4096]

becomes::

    (%7) = "pd_op.roll" (%5, %c) {axis:[0]}
    (%6) = "pd_op.add" (%3, %7)

Safety conditions:

1. The copy is exact, so the add computes the same tensor; only this add reads the copy.
   Values with no matmul among their last ``MATMUL_DEPTH`` producers (fed values,
   parameters, constants, attention masks) are left alone: the fuse passes fold at most
   two ops between a matmul and the add (a bias add and an activation, or a transpose
   and a reshape), and a copy of them would only cost time (a mask's, in every layer of
   every decode step).
2. An operand may be broadcast when its static shape has fewer axes than the other's,
   or a 1 on an axis where the other's size is not 1 (unknown included). A size unknown
   on both sides (-1 and -1) is taken as equal: a program that gets both from one input
   (a sequence length) has them equal, and copying every residual add's operands would
   cost every transformer its fusions. Known limit: a program adding two inputs whose
   sizes it declares unknown, fed 1 and S, is not guarded.
3. Each copy's axis list differs from every other roll of the value
   (``exact_copy``), so Paddle's CSE cannot make two copies one value read twice.
4. ``pd_op.add_`` (in place) is not matched: the fuse pass matches ``pd_op.add`` only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import paddle

from ..paddle_modes import static_mode
from .exact_copy import defining_op, exact_copy, is_exact_copy
from .program_index import value_key, walk_ops
from .report import PassReport

ADD = "pd_op.add"
MATMULS = frozenset({"pd_op.matmul", "pd_op.fc"})
# How many ops back from an add's operand a matmul is looked for (condition 1).
MATMUL_DEPTH = 3
# The dtypes a oneDNN matmul computes in.
MATMUL_DTYPES = (paddle.float32, paddle.bfloat16, paddle.float16)


@dataclass(frozen=True)
class BroadcastAddReport(PassReport):
    copied: int  # add operands given a copy

    @property
    def modified(self) -> bool:
        return self.copied > 0

    def summary(self) -> str:
        return f"copied {self.copied} operands an add broadcasts"


def _broadcast_operands(op) -> list[int]:
    """The operands (0, 1) add ``op`` may broadcast (condition 2)."""
    shapes = [list(op.operand_source(k).shape) for k in (0, 1)]
    found = []
    for k in (0, 1):
        mine, other = shapes[k], shapes[1 - k]
        if len(mine) < len(other):
            found.append(k)
            continue
        aligned = zip(mine[len(mine) - len(other):], other)
        if any(a == 1 and b != 1 for a, b in aligned):
            found.append(k)
    return found


def _from_matmul(value, depth: int = MATMUL_DEPTH) -> bool:
    """Whether a matmul computed ``value``, or an operand of its producer's, and so on
    ``depth`` ops back (condition 1)."""
    producer = defining_op(value)
    if producer is None:
        return False
    if producer.name() in MATMULS:
        return True
    return depth > 1 and any(_from_matmul(producer.operand_source(k), depth - 1)
                             for k in range(producer.num_operands()))


def _needs_copy(value) -> bool:
    return value.dtype in MATMUL_DTYPES and not is_exact_copy(value) and _from_matmul(value)


def broadcast_adds(program) -> list[tuple]:
    """``(add op, operand)`` for every operand the rule copies; changes nothing."""
    return [(op, k) for op in walk_ops(program) if op.name() == ADD
            for k in _broadcast_operands(op) if _needs_copy(op.operand_source(k))]


def copy_broadcast_add_operands(program, outputs=None) -> BroadcastAddReport:
    """Give every operand ``broadcast_adds`` finds its own copy (all matched first)."""
    matches = broadcast_adds(program)
    taken = defaultdict(set)  # value key -> the roll axis lists of its copies (condition 3)
    for op in walk_ops(program):
        if op.name() == "pd_op.roll":
            taken[value_key(op.operand_source(0))].add(tuple(op.attrs()["axis"]))
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for op, k in matches:
            source = op.operand_source(k)
            paddle.pir.set_insertion_point(op)
            op.operand(k).set_source(exact_copy(source, taken[value_key(source)]))
        paddle.pir.reset_insertion_point_to_end()
    return BroadcastAddReport(len(matches))
