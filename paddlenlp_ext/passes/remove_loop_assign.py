"""remove_loop_assign: erase the copies that end a translated while body.

Rule. A legacy (ProgramDesc) while body writes each loop variable back with
``assign(X=new, Out=var)``. Translated to PIR, that is ``r = assign_out_(new, dst)``
with ``r`` yielded: one full copy of the tensor per iteration (for a dy2static
llama export, two per KV-cache tensor: a chain ``r1 = assign_out_(kv, %arg)``,
``r2 = assign_out_(kv, r1)``). The executor already shares buffers along the loop
(inputs -> results -> block arguments, yielded values -> results, with
``ShareDataWith``), so yielding ``new`` itself carries the same data with no copy.
This pass erases such copies (whole chains at a time) and makes their readers read
the source, when that is unobservable: the program's outputs stay bit-identical.

Before::

    (%5, %6) = "pd_op.while" (cond=%3, inputs=%1, %2) {
    ^%arg_0, %arg_1
        (%9) = "pd_op.concat" (...)
        (%10) = "pd_op.less_than" (...)
        (%11) = "pd_op.assign_out_" (%9, %arg_1)
        (%12) = "pd_op.assign_out_" (%9, %11)
        (%13) = "pd_op.assign_out_" (%10, %3)
        () = "cf.yield" (%13, %arg_0, %12)
    }

After::

    (%5, %6) = "pd_op.while" (cond=%3, inputs=%1, %2) {
    ^%arg_0, %arg_1
        (%9) = "pd_op.concat" (...)
        (%10) = "pd_op.less_than" (...)
        () = "cf.yield" (%10, %arg_0, %9)
    }

A chain is a run of copies ``c1..cn`` at the top level of one while body W where
each copy after the first writes the previous one's result. Its destination ``D``
is the first copy's destination; ``ri``/``vi`` are the copies' results/sources.
"Alias" below means may share a buffer (inplace maps, view ops, ``share_data_``,
and the sharing of other loops and ifs; W's own sharing is reasoned about
iteration by iteration instead). The chain is removed when all of these hold
(each is checked in the function of ``loop_assign_analysis`` named in brackets, which
documents why):

0. The executor's garbage collector is on (``FLAGS_eager_delete_tensor_gb`` >= 0
   when the pass runs). Otherwise every copy is kept. [_garbage_collector_off]
1. Every copy sits at the top level of the while body; copies in nested regions
   are kept. [_nested_copies]
2. No copy result is overwritten by two copies. [_build_chains]
3. ``D`` is a block argument of W or a value defined outside W; not a value local
   to the body. [_check_destination_kind]
4. Every read of a result ``ri`` is a plain read (no in-place write or alias of
   it), made before ``c(i+1)`` overwrites it; only ``rn`` may be yielded.
   [_check_result_uses]
5. Nothing reads ``D``'s buffer (any alias of it) after ``c1``: not later in the
   body, not in nested regions, not as another yield operand; for an ``D`` defined
   outside W also not anywhere in the body (next iteration), not after W, not as a
   program output, and, where ``rn`` is yielded at position ``p``, not through
   ``%arg_p`` after ``c1`` (from iteration 2 on ``%arg_p`` *is* ``D``'s buffer);
   ``D`` is not persistable. The only exception is W reading ``D`` as its
   condition when ``rn`` is the yielded condition. [_check_destination_reads]
6. For a block argument ``D = %arg_i``: ``rn`` is yielded at position ``i`` and
   nowhere else, and the init value ``in_i`` (which ``%arg_i`` shares in the
   first iteration, so the copies write into it) is read by nothing that runs
   after W starts (W itself included, where an enclosing loop runs it again from
   ``in_i``), is no other loop variable's init, is no program output and is
   not persistable. What may share ``in_i``'s buffer is followed per instance:
   a value of an enclosing loop's body that the loop carried into ``in_i`` from
   an earlier iteration (W's own result, holding the final value with or without
   the copies, among them) was read in that iteration, before W started; and in
   the run of an if around W in which W runs, the if's results share nothing
   another branch yields. [_check_loop_init]
7. Every source ``vi`` is a value computed in this iteration of the body (its
   aliases include no block argument of W and no value from outside W), derived
   from a fed or loop-carried value (not from constants and parameters only,
   which Paddle Inference may fold into one constant buffer), produced and used
   only at the top level of the body or by plain reads inside ifs there (not by a
   nested loop, not yielded by an if), and not written in place after its copy.
   [_check_sources]
8. After all removals in W, the aliases of each chain's last source are yielded
   at one position at most: two loop variables never share one buffer.
   [_check_single_yield]
9. No source is computed, through any chain of ops, from a kernel that oneDNN runs
   with a blocked memory layout (``onednn_layouts.BLOCKED_LAYOUT_OPS``: convolutions,
   pooling, normalisations). On oneDNN the copy is also what turns such a tensor back into a
   plain one; without it the loop carries the blocked tensor into the next iteration,
   which Paddle 3.3.1 reads wrongly or fails to reorder ("could not create a primitive
   descriptor for a reorder primitive"). [_check_sources]

The premises about the runtime, and where each is relied on: the executor shares
buffers along a loop and copies nowhere else (conditions 5, 6, 8); a yielded body
value gets a fresh buffer in the next iteration (conditions 0 and 7: it does with
the garbage collector on, for values not folded into constants). The tests run
every rule, and a generator of random loops, on ``paddle.static.Executor`` and on
Paddle Inference as ``paddlenlp_ext.inference`` configures it, twice in a row.
"""

from __future__ import annotations

from .copy_ops import SOURCE, loop_copies
from .loop_assign_analysis import Sweep, index_with_outputs
from .report import LoopAssignReport


def remove_loop_assign(program, outputs=None) -> LoopAssignReport:
    """Erase removable ``pd_op.assign_out_`` copies in while bodies, in place.

    ``outputs`` are values the caller reads after running the program (fetch
    targets not yet in it as ``pd_op.fetch`` / ``builtin.shadow_output`` ops); None
    means none. Loops are analysed one at a time on the program as rewritten so
    far, sweeping until a sweep removes nothing; so a second run removes nothing.
    """
    index, output_keys = index_with_outputs(program, outputs)
    # Erasing a copy makes its readers read its source; sources are fed or
    # carried (condition 7), so this set stays true as the program is rewritten.
    fed_or_carried = index.fed_or_carried()
    removed = 0
    while True:
        sweep = Sweep(index, output_keys, fed_or_carried)
        for loop, copies in loop_copies(index).items():
            for chain in sweep.analyze(loop, copies):
                for copy in reversed(chain.copies):
                    index.erase_forwarding(copy, SOURCE)
                removed += len(chain.copies)
        if not sweep.removable:
            return LoopAssignReport(removed=removed, loops=sweep.loops, kept=tuple(sweep.kept))
