"""loop_cache_layout: a decode loop carries its concat cache in the layout its attention reads.

Rule. A ``pd_op.while`` carries a cache that grows by one ``pd_op.concat`` per
iteration, and the body reads the grown cache only through a chain of transposes
(PaddleNLP's llama attention keeps keys and values as [batch, length, heads, dim]
and permutes the whole cache to [batch, heads, length, dim], the keys once more to
[batch, heads, dim, length], at every step). The loop then carries the cache
permuted instead: the new entries are permuted (one position), concatenated on the
permuted axis, and the attention reads the concat directly::

    (%k_out) = "pd_op.while" (cond=%c, inputs=..., %k0, ...) {
    ^..., %k, ...                                                   # [B, L, H, D]
        (%kv) = "builtin.combine" (%k, %new)
        (%cat) = "pd_op.concat" (%kv, 1)
        (%t1) = "pd_op.transpose" (%cat) {perm:[0, 2, 1, 3]}
        (%t2) = "pd_op.transpose" (%t1) {perm:[0, 1, 3, 2]}
        (%s) = "pd_op.matmul" (%q, %t2)
        () = "cf.yield" (..., %cat, ...)
    }

    (%k0') = "pd_op.transpose" (%k0) {perm:[0, 2, 3, 1]}           # once, before the loop
    (%k_out') = "pd_op.while" (cond=%c, inputs=..., %k0', ...) {
    ^..., %k', ...                                                  # [B, H, D, L]
        (%new') = "pd_op.transpose" (%new) {perm:[0, 2, 3, 1]}      # one position
        (%kv') = "builtin.combine" (%k', %new')
        (%cat') = "pd_op.concat" (%kv', 3)
        (%s) = "pd_op.matmul" (%q, %cat')
        () = "cf.yield" (..., %cat', ...)
    }
    (%k_out) = "pd_op.transpose" (%k_out') {perm:[0, 3, 1, 2]}      # only if %k_out is read

Why. At llama2-7B's layer shape and 2048 positions the transposes of the whole
cache took about 60 of a decode step's 130 ms (a strided copy on oneDNN, far below
the memory bandwidth); the static cache, which holds the permuted layout, takes 53.
Every value the remaining ops read is unchanged, element for element and in the same
layout (a permutation commutes with a concat on the matching axis), so the program's
outputs stay bit-identical.

Safety conditions (checked in ``_match_position``, at the check, before anything
changes):

1. The loop variable ``%k`` has a static rank, and the value yielded for it is a
   ``pd_op.concat`` of a ``builtin.combine`` that only that concat reads, with ``%k``
   among the combined values once, on a constant axis (a ``pd_op.full``).
2. ``%k`` itself is read only by that combine and by shape readers (``pd_op.shape``,
   ``pd_op.shape64``, given the permuted shape back). Any other reader would see the
   permuted layout.
3. The concat is read only by the yield, at ``%k``'s position and nowhere else (another
   loop variable would receive the permuted layout), by shape readers, and by at least
   one transpose; every transpose that reads it has one and the same ``perm``. The chain
   is followed a level further while every reader of the current transposes is a
   transpose of one common ``perm``: the permutation carried is their composition, and
   the last level's results are what the concat replaces.
4. The loop's result for ``%k`` is not one of the caller's ``outputs`` (values read
   after the run that are not yet fetch ops: the caller holds that value, which would
   now be permuted). Every reader of it in the program gets the inverse transpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from ..paddle_modes import static_mode
from .program_index import value_key

WHILE, CONCAT, COMBINE, TRANSPOSE, FULL, YIELD = (
    "pd_op.while", "pd_op.concat", "builtin.combine", "pd_op.transpose", "pd_op.full", "cf.yield")
SHAPE_READERS = ("pd_op.shape", "pd_op.shape64")


@dataclass(frozen=True)
class LoopCacheLayoutReport:
    rewritten: int  # loop variables now carried permuted
    loops: int  # while ops in the program

    @property
    def modified(self) -> bool:
        return self.rewritten > 0

    def summary(self) -> str:
        return f"{self.rewritten} loop caches carried in their attention's layout ({self.loops} loops)"


@dataclass(frozen=True)
class PermutedCache:
    """One loop variable the rule rewrites, as matched."""

    loop: object  # the pd_op.while
    position: int  # its index among the body's arguments and the loop's results
    concat: object
    axis: int  # the concat's axis, in the carried layout
    perm: tuple[int, ...]  # composed permutation: permuted dim j is carried dim perm[j]
    last_transposes: tuple  # the transposes whose results the permuted concat replaces
    dead_transposes: tuple  # every matched transpose, readers before the ops they read


def _perm(op) -> tuple[int, ...]:
    return tuple(int(d) for d in op.attrs()["perm"])


def _constant_axis(concat) -> int | None:
    producer = concat.operand_source(1).get_defining_op()
    if producer is None or producer.name() != FULL:
        return None
    return int(producer.attrs()["value"])


def _transpose_levels(value) -> tuple[tuple[int, ...], list[list]] | None:
    """The composed perm and the levels of the transpose chain reading ``value``
    (condition 3), or None. Readers that are not transposes stop nothing here: the
    caller decides which are allowed at the first level."""
    first = [op for op in value.all_used_ops() if op.name() == TRANSPOSE]
    if not first or len({_perm(op) for op in first}) != 1:
        return None
    perm, levels = _perm(first[0]), [first]
    while True:
        readers = [op for t in levels[-1] for op in t.result(0).all_used_ops()]
        if not readers or any(op.name() != TRANSPOSE for op in readers):
            return perm, levels
        perms = {_perm(op) for op in readers}
        if len(perms) != 1:
            return perm, levels
        step = perms.pop()
        # transpose(transpose(x, p1), p2) has dim k = x's dim p1[p2[k]]
        perm = tuple(perm[step[k]] for k in range(len(step)))
        levels.append(list(dict.fromkeys(readers)))


def _match_position(loop, position: int, output_keys: set) -> PermutedCache | None:
    body = loop.as_while_op().body()
    arg = body.args()[position]
    yield_op = list(body.ops)[-1]
    if yield_op.name() != YIELD or not arg.is_dense_tensor_type() or len(arg.shape) == 0:  # condition 1
        return None
    carried = yield_op.operand_source(position + 1)
    concat = carried.get_defining_op()
    if concat is None or concat.name() != CONCAT:
        return None
    combine = concat.operand_source(0).get_defining_op()
    if combine is None or combine.name() != COMBINE or len(combine.result(0).all_used_ops()) != 1:
        return None
    if [combine.operand_source(i).is_same(arg) for i in range(combine.num_operands())].count(True) != 1:
        return None
    axis = _constant_axis(concat)
    if axis is None:
        return None
    rank = len(arg.shape)
    axis %= rank
    if any(op.name() not in SHAPE_READERS and op != combine for op in arg.all_used_ops()):  # condition 2
        return None
    chain = _transpose_levels(carried)  # condition 3
    if chain is None:
        return None
    perm, levels = chain
    for op in carried.all_used_ops():
        if op.name() in SHAPE_READERS or op.name() == TRANSPOSE:
            continue
        if op != yield_op:
            return None
    yielded_at = [i for i in range(1, yield_op.num_operands()) if yield_op.operand_source(i).is_same(carried)]
    if yielded_at != [position + 1]:
        return None
    if value_key(loop.result(position)) in output_keys:  # condition 4
        return None
    dead = tuple(op for level in reversed(levels) for op in level)
    return PermutedCache(loop, position, concat, perm.index(axis), perm, tuple(levels[-1]), dead)


def permuted_caches(program, outputs=None) -> tuple[list[PermutedCache], int]:
    """(every loop variable the rule rewrites, the number of while ops); analysis only."""
    output_keys = {value_key(v) for v in (outputs or ())}
    found, loops = [], 0

    def walk(block) -> None:
        nonlocal loops
        for op in block.ops:
            if op.name() == WHILE:
                loops += 1
                for position in range(len(op.as_while_op().body().args())):
                    match = _match_position(op, position, output_keys)
                    if match is not None:
                        found.append(match)
            for sub in op.blocks():
                walk(sub)

    walk(program.global_block())
    return found, loops


def _read_shapes_from(old, new, inverse) -> None:
    """Every shape reader of ``old`` reads ``new`` (``old`` permuted by the inverse of
    ``inverse``) instead, its result put back in ``old``'s order by ``inverse``."""
    for shape_reader in [op for op in old.all_used_ops() if op.name() in SHAPE_READERS]:
        paddle.pir.set_insertion_point(shape_reader)
        reader = getattr(paddle._C_ops, shape_reader.name().split(".")[1])
        reordered = paddle._C_ops.gather(reader(new), paddle.assign(np.array(inverse, dtype="int64")), 0)
        shape_reader.result(0).replace_all_uses_with(reordered)
        shape_reader.erase()


def _rewrite(match: PermutedCache) -> None:
    loop, position, perm = match.loop, match.position, list(match.perm)
    body = loop.as_while_op().body()
    arg, result = body.args()[position], loop.result(position)
    inverse = [perm.index(j) for j in range(len(perm))]

    # The loop variable's own type, permuted (its dims may be less static than the init's).
    paddle.pir.set_insertion_point(match.concat)
    probe = paddle._C_ops.transpose(arg, perm)
    permuted_type = probe.type()
    probe.get_defining_op().erase()

    paddle.pir.set_insertion_point(loop)
    init = paddle._C_ops.transpose(loop.operand_source(position + 1), perm)
    loop.operand(position + 1).set_source(init)
    arg.set_type(permuted_type)
    _read_shapes_from(arg, arg, inverse)

    concat = match.concat
    combine = concat.operand_source(0).get_defining_op()
    paddle.pir.set_insertion_point(concat)
    parts = [arg if v.is_same(arg) else paddle._C_ops.transpose(v, perm)
             for v in (combine.operand_source(i) for i in range(combine.num_operands()))]
    permuted = paddle._C_ops.concat(parts, match.axis)
    for transpose in match.last_transposes:
        transpose.result(0).replace_all_uses_with(permuted)
    for transpose in match.dead_transposes:
        transpose.erase()
    _read_shapes_from(concat.result(0), permuted, inverse)
    concat.result(0).replace_all_uses_with(permuted)  # the yield is its last reader
    concat.erase()
    combine.erase()

    readers = list(result.all_used_ops())
    result.set_type(permuted_type)
    if readers:
        paddle.pir.set_insertion_point_after(loop)
        restored = paddle._C_ops.transpose(result, inverse)
        for op in readers:
            for i in range(op.num_operands()):
                if op.operand_source(i).is_same(result):
                    op.operand(i).set_source(restored)


def carry_loop_caches_permuted(program, outputs=None) -> LoopCacheLayoutReport:
    """Rewrite every loop variable the rule selects (all are matched before any changes)."""
    matches, loops = permuted_caches(program, outputs)
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for match in matches:
            _rewrite(match)
        paddle.pir.reset_insertion_point_to_end()
    return LoopCacheLayoutReport(len(matches), loops)
