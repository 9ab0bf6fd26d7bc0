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

Grouped-query attention. PaddleNLP's ``repeat_kv`` repeats the cache's heads between
the concat and the transposes (unsqueeze after the heads axis, tile there, reshape
merging the two). The repeat is then made of the permuted concat, on the heads' new
axis, and the attention reads it::

        (%cat) = "pd_op.concat" (%kv, 1)                            # [B, L, G, D]
        (%u) = "pd_op.unsqueeze" (%cat, [-2])                       # [B, L, G, 1, D]
        (%r) = "pd_op.tile" (%u, [1, 1, 1, n, 1])
        (%rep) = "pd_op.reshape" (%r, [shape(%cat)[0], shape(%cat)[1], G·n, D])
        (%t1) = "pd_op.transpose" (%rep) {perm:[0, 2, 1, 3]}        # [B, G·n, L, D]

        (%cat') = "pd_op.concat" (%kv', 2)                          # [B, G, L, D]
        (%u') = "pd_op.unsqueeze" (%cat', [2])                      # [B, G, 1, L, D]
        (%r') = "pd_op.tile" (%u', [1, 1, n, 1, 1])
        (%rep') = "pd_op.reshape" (%r', [shape(%cat')[0], G·n, shape(%cat')[2], D])

A repeat of one axis (each entry n times in a row, or the whole axis n times over)
commutes with a permutation that moves that axis along, so ``%rep'`` is ``%t1``
element for element. The tile still writes the repeated cache every step; what goes
is the strided transpose of it (n times the cache, twice for the keys).

Why. At llama2-7B's layer shape and 2048 positions the transposes of the whole
cache took about 60 of a decode step's 130 ms (a strided copy on oneDNN, far below
the memory bandwidth); the static cache, which holds the permuted layout, takes 53.
Every value the remaining ops read is unchanged, element for element and in the same
layout (a permutation commutes with a concat on the matching axis), and none of them
can tell the carried cache from the copies it replaces (conditions 6 to 8), so the
program's outputs stay bit-identical. The transposes the rewrite adds have their perms
counted from the front.

Safety conditions (checked in ``loop_cache_layout_analysis._match_position``, each at
its check, before anything changes). Attributes are normalised before they are
compared: a negative axis or perm entry counts from the end, as Paddle reads it, and
one out of range (or a perm that is not a permutation) fails the condition it belongs
to. A loop variable grown by a concat of itself and read through transposes (directly
or through a repeat) that fails one is left as it is and reported (``KeptCache``, its
reason one of the analysis module's constants); a cache read as it is carried, as the
rule leaves it, is no candidate, so a second run reports nothing new.

1. The loop variable ``%k`` has a static rank, and the value yielded for it is a
   ``pd_op.concat`` of a ``builtin.combine`` that only that concat reads, with ``%k``
   among the combined values once, on a constant axis.
2. ``%k`` itself is read only by that combine and by shape readers (``pd_op.shape``,
   ``pd_op.shape64``, given the permuted shape back). Any other reader would see the
   permuted layout.
3. The concat is read only by the yield, at ``%k``'s position and nowhere else (another
   loop variable would receive the permuted layout), by shape readers, and by at least
   one transpose (or by a repeat, condition 5, and the repeat by them); every transpose
   that reads it has one and the same ``perm``. The chain is followed a level further
   while every reader of the current transposes is a transpose of one common ``perm``:
   the permutation carried is their composition, and the last level's results are what
   the concat (or its repeat) replaces.
4. The loop's result for ``%k`` is not one of the caller's ``outputs`` (values read
   after the run that are not yet fetch ops: the caller holds that value, which would
   now be permuted). Every reader of it in the program gets the inverse transpose.
5. Through a repeat (checked in ``_head_repeat``), the concat is read by one
   ``pd_op.unsqueeze`` (and by the yield and shape readers, not by transposes), of one
   constant axis ``u``; the unsqueezed value only by a ``pd_op.tile`` whose constant
   repeat times (padded with 1s in front to the rank, as Paddle does) are 1 except at
   ``u``; the tiled value only by a ``pd_op.reshape`` whose target is the concat's
   shape with one axis ``a`` (``u - 1`` or ``u``, the two that merge with the new one)
   multiplied by the repeat times: each other entry is the concat's static dim, reads
   the concat's own dim at that index (a slice of its ``pd_op.shape``) or is 0 before
   ``u`` (the tiled value's dim there, the concat's), and ``a``'s is a constant over a
   static dim; one entry, ``a``'s or another, may instead be -1 (inferred: the dim
   wanted there, every other entry being exact). The reshape's result is read only by
   the transposes of condition 3 and by shape readers. (So the repeat's own values have
   no reader but the next op.)
6. Nothing writes in place what the attention will read. Each last-level transpose
   made a fresh copy every step; after the rewrite its readers read the carried concat
   itself, so a write to it would land in the cache every later step reads. No reader
   of a last-level transpose's result, nor of any value that may share its buffer
   through another op (a view such as ``reshape``, an in-place op's result,
   ``share_data_``, a vector unpacked: ``ProgramIndex``'s alias graph), writes that
   operand in place: an op whose inplace map writes it (``scale_``, ``assign_out_``'s
   destination, ``share_data_``) or an op named in place (``*_``) with no map saying
   which operand. Checked through a repeat too, although its tile makes a fresh buffer
   every step: the rule does not rest on which ops copy. [_check_attention_reads]
7. Nor does any of those values leave the step's ops: none is yielded (to another loop
   variable, out of an if), taken by a region op (a nested loop's init, which its body
   may write), fetched or one of the caller's ``outputs``; a copy could go anywhere,
   the carried cache must stay where conditions 3 and 4 put it. [_check_attention_reads]
8. The loop's init for ``%k`` does not share its buffer with what the loop touches.
   ``%k`` shared the init's buffer in the first iteration; it is now a permuted copy
   made before the loop, so a write to the init (or to a value sharing its buffer) in
   the body, or through another loop variable that started from the same buffer, no
   longer reaches the first concat. Nothing nested in the loop reads the init or a
   value that may share its buffer, and no other operand of the loop is one.
   [_check_init]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import paddle

from ..paddle_modes import static_mode
from .loop_cache_layout_analysis import (SHAPE_COMPUTATIONS, SHAPE_READERS, HeadRepeat, KeptCache, PermutedCache,
                                         permuted_caches)
from .report import PassReport


@dataclass(frozen=True)
class LoopCacheLayoutReport(PassReport):
    rewritten: int  # loop variables now carried permuted
    loops: int  # while ops in the program
    kept: tuple[KeptCache, ...] = ()

    @property
    def modified(self) -> bool:
        return self.rewritten > 0

    @property
    def kept_reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(k.reason for k in self.kept).items()))

    def summary(self) -> str:
        text = f"{self.rewritten} loop caches carried in their attention's layout ({self.loops} loops)"
        if self.kept:
            text += f"; kept {len(self.kept)}: " + ", ".join(f"{r} ({n})" for r, n in self.kept_reasons.items())
        return text


def _read_shapes_from(old, new, inverse) -> None:
    """Every shape reader of ``old`` reads ``new`` (``old`` permuted by the inverse of
    ``inverse``) instead, its result put back in ``old``'s order by ``inverse``."""
    for shape_reader in [op for op in old.all_used_ops() if op.name() in SHAPE_READERS]:
        paddle.pir.set_insertion_point(shape_reader)
        reader = getattr(paddle._C_ops, shape_reader.name().split(".")[1])
        reordered = paddle._C_ops.gather(reader(new), paddle.assign(np.array(inverse, dtype="int64")), 0)
        shape_reader.result(0).replace_all_uses_with(reordered)
        shape_reader.erase()


def _erase_with_unused_shape_computations(op) -> None:
    """Erase ``op``, then every shape computation (``SHAPE_COMPUTATIONS``) it read that
    nothing reads any more."""
    producers = []
    for i in range(op.num_operands()):
        producer = op.operand_source(i).get_defining_op()
        if producer is not None and producer.name() in SHAPE_COMPUTATIONS and all(producer != p for p in producers):
            producers.append(producer)
    op.erase()
    for producer in producers:
        if all(not producer.result(i).all_used_ops() for i in range(producer.num_results())):
            _erase_with_unused_shape_computations(producer)


def _repeat_permuted(repeat: HeadRepeat, permuted, perm: list[int], cache_dims: list[int]):
    """``repeat`` made of the permuted concat: on the repeated axis's permuted position,
    the new axis on the same side of it. ``cache_dims`` is the concat's static shape
    before the rewrite (condition 5 checked the repeated axis static there); a dim the
    matched reshape inferred (-1) is inferred here too, so both fail or succeed alike."""
    axis = perm.index(repeat.axis)
    inserted = axis + (repeat.inserted - repeat.axis)
    tiled = paddle._C_ops.tile(paddle._C_ops.unsqueeze(permuted, [inserted]),
                               [repeat.times if k == inserted else 1 for k in range(len(perm) + 1)])
    target, dims = [], None
    for k, p in enumerate(perm):
        dim = cache_dims[p]
        if p == repeat.inferred:
            target.append(-1)  # inferred, as the matched reshape's entry for this dim
        elif k == axis:
            target.append(dim * repeat.times)
        elif dim >= 0:
            target.append(dim)
        else:
            dims = paddle.shape(permuted) if dims is None else dims  # read only for dynamic dims
            target.append(dims[k])
    return paddle.reshape(tiled, target)


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
    read = permuted
    if match.repeat is not None:
        read = _repeat_permuted(match.repeat, permuted, perm, list(concat.result(0).shape))
    for transpose in match.last_transposes:
        transpose.result(0).replace_all_uses_with(read)
    for transpose in match.dead_transposes:
        transpose.erase()
    if match.repeat is not None:
        _read_shapes_from(match.repeat.reshape.result(0), read, inverse)
        for op in (match.repeat.reshape, match.repeat.tile, match.repeat.unsqueeze):
            _erase_with_unused_shape_computations(op)
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
    matches, kept, loops = permuted_caches(program, outputs)
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for match in matches:
            _rewrite(match)
        paddle.pir.reset_insertion_point_to_end()
    return LoopCacheLayoutReport(len(matches), loops, tuple(kept))
