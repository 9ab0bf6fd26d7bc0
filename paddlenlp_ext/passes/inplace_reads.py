"""inplace_reads: a value an op writes in place is read, after that op, through its result.

Why. In a PIR program an in-place op ``%r = P_(%v)`` writes ``%v``'s buffer, and ``%r``
*is* that buffer: a later reader of ``%v`` means the written data. Paddle Inference
3.3.1 with oneDNN on (our ``"all"`` configuration and Paddle's default CPU config) loses
the write for those readers when a oneDNN kernel wrote ``%v``: the plain in-place
kernel writes through ``onednn_to_paddle_layout(%v)`` (a reorder of a transpose's
strided output, or a tensor whose oneDNN memory object the later oneDNN reader keeps),
and a reader of ``%v`` after ``P_`` sees the value before the write (off by 2.6 after a
``scale_`` of a transpose's result, by 4.5 after a ``tanh_`` of a sum; readers of
``%r`` are right; oneDNN off is right). And Paddle Inference's
``common_subexpression_elimination_pass`` (seen with oneDNN off) merges two equal ops
that read a fed ``%v`` in a loop body on both sides of an in-place write into it: the
later one gets the value before the write (off by 0.24-0.63; the oneDNN differential's
seed 381). ``tests/test_inplace_reads.py`` pins both.

Rule. Every reader of ``%v`` that runs after ``P_`` reads ``%r`` instead (for each
operand ``P_`` writes in place, and the result that is its buffer)::

    (%r) = "pd_op.scale_" (%v, %f) ...
    (%y) = "pd_op.add" (%v, %c)                 # after: reads %v, meaning the scaled data

becomes::

    (%r) = "pd_op.scale_" (%v, %f) ...
    (%y) = "pd_op.add" (%r, %c)

On any runtime that honours in-place semantics (the Executor) this changes nothing:
``%r`` and ``%v`` are one buffer after ``P_``. No op is added. So every route runs it.

Safety conditions (checked in ``_later_reads``, before any read changes):

1. The reader runs after ``P_`` and ``%r`` is visible to it: it is in ``P_``'s block
   after ``P_``, or in a region of an op there (``%r`` dominates it). A reader elsewhere
   (before ``P_``, in an enclosing block after the region holding ``P_``, in a later
   iteration of a loop around ``P_``) is left as it is: ``%r`` does not reach it.
2. The pair comes from the op's inplace map (``get_op_inplace_info``): result ``j`` is
   operand ``k``'s buffer. Ops without one are not in-place writes.
3. The op is not ``share_data_``, which writes nothing, and whose aliasing Paddle's own
   runtimes disagree on (the Executor in serial mode and Paddle Inference with oneDNN
   off do not pass a write through its result on to its operand; the Executor's default
   mode does): its readers stay as the runtime reads them.

In-place ops in a row chain: ops are visited in program order and reads are looked up
on the program as rewritten so far, so after ``P1_`` and ``P2_`` write ``%v`` a later
reader reads ``P2_``'s result.
"""

from __future__ import annotations

from dataclasses import dataclass

from .program_index import ProgramIndex, inplace_map
from .report import PassReport

SHARE_DATA = "pd_op.share_data_"


@dataclass(frozen=True)
class InplaceReadsReport(PassReport):
    rewired: int  # reads that now go through an in-place op's result

    @property
    def modified(self) -> bool:
        return self.rewired > 0

    def summary(self) -> str:
        return f"{self.rewired} reads after an in-place write read its result"


def _later_reads(index: ProgramIndex, writer: int, value) -> list[tuple[object, int]]:
    """``(op, operand)`` of every read of ``value`` that condition 1 admits for ``writer``."""
    block = index.ops[writer].block
    found = []
    for op in value.all_used_ops():
        reader = op.id()
        if reader == writer or reader not in index.ops or index.rank[reader] <= index.rank[writer]:
            continue
        enclosing = index.ops[reader].block
        while enclosing != block and enclosing[0] is not None:  # up to writer's block, if it encloses
            enclosing = index.ops[enclosing[0]].block
        if enclosing != block:
            continue
        found += [(op, k) for k in range(op.num_operands()) if op.operand_source(k).is_same(value)]
    return found


def read_inplace_results(program, outputs: list | None = None) -> InplaceReadsReport:
    """Rewire every read the rule selects. ``outputs``: the list of values the caller
    fetches after the run, read after every op of the top-level block: a value written
    in place there is replaced in it by the writer's result."""
    outputs = [] if outputs is None else outputs
    index = ProgramIndex.build(program)  # ops and their order do not change below
    rewired = 0
    for op_id in list(index.order):
        op = index.ops[op_id].op
        if index.ops[op_id].name == SHARE_DATA:  # condition 3
            continue
        for result, operand in inplace_map(op).items():  # condition 2
            written = op.operand_source(operand)
            reads = _later_reads(index, op_id, written)
            for reader, k in reads:
                reader.operand(k).set_source(op.result(result))
            rewired += len(reads)
            if index.ops[op_id].block == (None, 0):
                fetched = [k for k, value in enumerate(outputs) if value.is_same(written)]
                for k in fetched:
                    outputs[k] = op.result(result)
                rewired += len(fetched)
    return InplaceReadsReport(rewired)
