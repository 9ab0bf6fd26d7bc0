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
   repeat times are 1 except at ``u``; the tiled value only by a ``pd_op.reshape``
   whose target is the concat's shape with one axis ``a`` (``u - 1`` or ``u``, the two
   that merge with the new one) multiplied by the repeat times: each other entry is
   the concat's static dim or reads the concat's own dim at that index (a slice of its
   ``pd_op.shape``), and ``a``'s is a constant over a static dim. The reshape's result
   is read only by the transposes of condition 3 and by shape readers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from ..paddle_modes import static_mode
from .program_index import value_key

WHILE, CONCAT, COMBINE, TRANSPOSE, FULL, YIELD = (
    "pd_op.while", "pd_op.concat", "builtin.combine", "pd_op.transpose", "pd_op.full", "cf.yield")
UNSQUEEZE, TILE, RESHAPE, SLICE, STACK, FULL_INT_ARRAY = (
    "pd_op.unsqueeze", "pd_op.tile", "pd_op.reshape", "pd_op.slice", "pd_op.stack", "pd_op.full_int_array")
SHAPE_READERS = ("pd_op.shape", "pd_op.shape64")
# Ops that only compute shapes and constants: erased once nothing reads them.
SHAPE_COMPUTATIONS = (COMBINE, STACK, SLICE, FULL, FULL_INT_ARRAY, *SHAPE_READERS)


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
class HeadRepeat:
    """A repeat of the cache's heads between its concat and its transposes (condition 5):
    unsqueeze at ``inserted``, tile ``times`` there, reshape merging it with ``axis``."""

    unsqueeze: object
    tile: object
    reshape: object
    axis: int  # the concat's axis the reshape multiplies by ``times``
    inserted: int  # the unsqueezed axis: ``axis + 1`` (each entry repeated) or ``axis`` (the whole axis)
    times: int


@dataclass(frozen=True)
class PermutedCache:
    """One loop variable the rule rewrites, as matched."""

    loop: object  # the pd_op.while
    position: int  # its index among the body's arguments and the loop's results
    concat: object
    axis: int  # the concat's axis, in the carried layout
    perm: tuple[int, ...]  # composed permutation: permuted dim j is carried dim perm[j]
    last_transposes: tuple  # the transposes whose results the permuted concat (or its repeat) replaces
    dead_transposes: tuple  # every matched transpose, readers before the ops they read
    repeat: HeadRepeat | None  # the heads' repeat between the concat and the transposes


def _perm(op) -> tuple[int, ...]:
    return tuple(int(d) for d in op.attrs()["perm"])


def _constant_axis(concat) -> int | None:
    producer = concat.operand_source(1).get_defining_op()
    if producer is None or producer.name() != FULL:
        return None
    return int(producer.attrs()["value"])


def _constant_ints(value) -> list[int] | None:
    """The ints a ``pd_op.full_int_array`` (or a one-element ``pd_op.full``) makes, or None."""
    producer = value.get_defining_op()
    if producer is None:
        return None
    if producer.name() == FULL_INT_ARRAY:
        return [int(v) for v in producer.attrs()["value"]]
    if producer.name() == FULL and list(value.shape) in ([], [1]):
        return [int(producer.attrs()["value"])]
    return None


def _sole_reader(value):
    readers = list(value.all_used_ops())
    return readers[0] if len(readers) == 1 else None


def _dim_read_from_shape(part) -> tuple | None:
    """(value, index) when ``part`` is ``shape(value)[index]`` (one entry sliced out of a
    shape reader's result), else None."""
    slice_op = part.get_defining_op()
    if slice_op is None or slice_op.name() != SLICE or [int(a) for a in slice_op.attrs()["axes"]] != [0]:
        return None
    starts, ends = _constant_ints(slice_op.operand_source(1)), _constant_ints(slice_op.operand_source(2))
    if starts is None or len(starts) != 1 or starts[0] < 0 or ends != [starts[0] + 1]:
        return None
    reader = slice_op.operand_source(0).get_defining_op()
    if reader is None or reader.name() not in SHAPE_READERS:
        return None
    return reader.operand_source(0), starts[0]


def _reshape_target(reshape) -> list | None:
    """The reshape's target, one entry per dim: an int or ``(value, index)`` (see
    ``_dim_read_from_shape``); None when some entry is neither."""
    target = reshape.operand_source(1)
    constant = _constant_ints(target)
    if constant is not None:
        return constant
    combine = target.get_defining_op()
    scalars = combine is not None and combine.name() == STACK and int(combine.attrs()["axis"]) == 0
    if scalars:  # PIR's own reshape: the entries stacked into one tensor, so each must be a scalar
        combine = combine.operand_source(0).get_defining_op()
    if combine is None or combine.name() != COMBINE:
        return None
    entries = []
    for i in range(combine.num_operands()):
        part = combine.operand_source(i)
        if scalars and len(part.shape) != 0:
            return None
        value = _constant_ints(part)
        entry = value[0] if value is not None and len(value) == 1 else _dim_read_from_shape(part)
        if entry is None:
            return None
        entries.append(entry)
    return entries


def _multiplies_one_axis(target: list, cache, axis: int, times: int) -> bool:
    """Condition 5's target (``_reshape_target``'s entries): ``cache``'s shape with
    ``axis`` (static) multiplied by ``times``."""
    dims = list(cache.shape)
    if len(target) != len(dims):
        return False
    for k, (entry, dim) in enumerate(zip(target, dims)):
        if isinstance(entry, tuple):
            same = k != axis and entry[0].is_same(cache) and entry[1] == k
        else:
            same = dim >= 0 and entry == (dim * times if k == axis else dim)
        if not same:
            return False
    return True


def _head_repeat(cache, readers) -> HeadRepeat | None:
    """The repeat of condition 5 reading ``cache`` (among ``readers``), or None."""
    unsqueezes = [op for op in readers if op.name() == UNSQUEEZE]
    if len(unsqueezes) != 1:
        return None
    unsqueeze, rank = unsqueezes[0], len(cache.shape)
    axes = _constant_ints(unsqueeze.operand_source(1))
    if axes is None or len(axes) != 1 or not -rank - 1 <= axes[0] <= rank:
        return None
    inserted = axes[0] % (rank + 1)
    tile = _sole_reader(unsqueeze.result(0))
    if tile is None or tile.name() != TILE or not tile.operand_source(0).is_same(unsqueeze.result(0)):
        return None
    times = _constant_ints(tile.operand_source(1))
    if times is None or len(times) != rank + 1 or any(t != 1 for k, t in enumerate(times) if k != inserted):
        return None
    reshape = _sole_reader(tile.result(0))
    if reshape is None or reshape.name() != RESHAPE or not reshape.operand_source(0).is_same(tile.result(0)):
        return None
    target = _reshape_target(reshape)
    if target is None:
        return None
    for axis in (inserted - 1, inserted):  # the two axes a reshape can merge the new one with
        if 0 <= axis < rank and _multiplies_one_axis(target, cache, axis, times[inserted]):
            return HeadRepeat(unsqueeze, tile, reshape, axis, inserted, times[inserted])
    return None


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
    readers = list(carried.all_used_ops())
    repeat = _head_repeat(carried, readers)  # condition 5
    attention_input = carried if repeat is None else repeat.reshape.result(0)
    chain = _transpose_levels(attention_input)  # condition 3
    if chain is None:
        return None
    perm, levels = chain
    allowed = (TRANSPOSE, *SHAPE_READERS) if repeat is None else SHAPE_READERS
    if any(op.name() not in allowed and op != yield_op and (repeat is None or op != repeat.unsqueeze)
           for op in readers):
        return None
    if repeat is not None and any(op.name() not in (TRANSPOSE, *SHAPE_READERS)
                                  for op in attention_input.all_used_ops()):
        return None
    yielded_at = [i for i in range(1, yield_op.num_operands()) if yield_op.operand_source(i).is_same(carried)]
    if yielded_at != [position + 1]:
        return None
    if value_key(loop.result(position)) in output_keys:  # condition 4
        return None
    dead = tuple(op for level in reversed(levels) for op in level)
    return PermutedCache(loop, position, concat, perm.index(axis), perm, tuple(levels[-1]), dead, repeat)


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
    before the rewrite (condition 5 checked the repeated axis static there)."""
    axis = perm.index(repeat.axis)
    inserted = axis + (repeat.inserted - repeat.axis)
    tiled = paddle._C_ops.tile(paddle._C_ops.unsqueeze(permuted, [inserted]),
                               [repeat.times if k == inserted else 1 for k in range(len(perm) + 1)])
    static = [cache_dims[p] for p in perm]
    dims = paddle.shape(permuted) if any(dim < 0 for dim in static) else None  # read only for dynamic dims
    target = [dim * repeat.times if k == axis else (dim if dim >= 0 else dims[k]) for k, dim in enumerate(static)]
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
    matches, loops = permuted_caches(program, outputs)
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for match in matches:
            _rewrite(match)
        paddle.pir.reset_insertion_point_to_end()
    return LoopCacheLayoutReport(len(matches), loops)
