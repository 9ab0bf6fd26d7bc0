"""The rule of PaddleNLP PR #9002 (closed, never merged), for comparison only.

Its C++ DRR pass ``remove_assign_out_pass`` erased ``r = assign_out_(x, dst)`` when
``r`` is used only by ``cf.yield`` and ``dst`` is a block argument of the while
body. It does not look at other reads of ``dst`` after the copy, at the loop init
that ``dst`` shares in the first iteration, or at where ``x`` ends up yielded, so it
can change a program's outputs; and it never removes either copy of a chain
(``r1`` feeds the second copy, whose destination ``r1`` is no block argument).
Use :func:`paddlenlp_ext.remove_loop_assign` for the safe rule.
"""

from __future__ import annotations

from .copy_ops import DESTINATION, SOURCE, loop_copies, loops_in_order, result_key
from .program_index import WHILE, YIELD, ProgramIndex, value_key
from .report import KeptCopy, LoopAssignReport

NOT_ONLY_YIELDED = "result not only yielded"
DESTINATION_NOT_ARGUMENT = "destination not a block argument"


def remove_loop_assign_pr9002(program, outputs=None) -> LoopAssignReport:
    """Apply PR #9002's rule to ``program`` in place (one sweep, as its DRR pattern).
    ``outputs`` (the pass protocol's, ``report.PassReport``) are not read: the rule has
    no condition on what the caller fetches."""
    index = ProgramIndex.build(program)
    copies_by_loop = loop_copies(index)
    removed, kept = 0, []
    for loop_no, loop in enumerate(loops_in_order(index)):
        for copy in copies_by_loop[loop]:
            reason = _reason_to_keep(index, copy)
            if reason:
                kept.append(KeptCopy(loop_no, copy, reason))
            else:
                index.erase_forwarding(copy, SOURCE)
                removed += 1
    return LoopAssignReport(removed=removed, loops=len(copies_by_loop), kept=tuple(kept))


def _reason_to_keep(index: ProgramIndex, copy: int) -> str | None:
    users = index.uses.get(result_key(index, copy), ())
    if not users or any(index.name(user) != YIELD for user, _ in users):
        return NOT_ONLY_YIELDED
    block = index.ops[copy].block
    parent = block[0]
    destination = value_key(index.op(copy).operand_source(DESTINATION))
    if parent is None or index.name(parent) != WHILE or destination not in index.block_args[block]:
        return DESTINATION_NOT_ARGUMENT
    return None
