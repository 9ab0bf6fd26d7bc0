"""What the loop-copy passes share: finding loop copies and naming their operands."""

from __future__ import annotations

from .program_index import WHILE, ProgramIndex, value_key

ASSIGN_OUT = "pd_op.assign_out_"
SOURCE, DESTINATION = 0, 1  # operand positions of assign_out_(x, output)


def loops_in_order(index: ProgramIndex) -> list[int]:
    return [op_id for op_id in index.order if index.name(op_id) == WHILE]


def loop_copies(index: ProgramIndex) -> dict[int, list[int]]:
    """``{while op id: [assign_out_ op ids]}`` keyed by each copy's innermost loop."""
    found: dict[int, list[int]] = {loop: [] for loop in loops_in_order(index)}
    for op_id in index.order:
        if index.name(op_id) != ASSIGN_OUT:
            continue
        loops = index.enclosing_loops(index.ops[op_id].block)
        if loops:
            found[loops[0]].append(op_id)
    return found


def source_key(index: ProgramIndex, copy: int) -> str:
    return value_key(index.op(copy).operand_source(SOURCE))


def destination_key(index: ProgramIndex, copy: int) -> str:
    return value_key(index.op(copy).operand_source(DESTINATION))


def result_key(index: ProgramIndex, copy: int) -> str:
    return value_key(index.op(copy).result(0))

