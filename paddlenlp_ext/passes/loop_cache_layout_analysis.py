"""loop_cache_layout_analysis: which loop variables ``loop_cache_layout`` carries in
its attention's layout, matched without changing the program (``permuted_caches``), and
why each concat cache it leaves stays as it is.

The rule and its numbered conditions are ``loop_cache_layout``'s docstring; each is
checked, and its reason given, in the functions here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .program_index import COMBINE, WHILE, YIELD, ProgramIndex, inplace_map, value_key
from .transpose_perms import TRANSPOSE, normalised_perm

CONCAT, FULL = "pd_op.concat", "pd_op.full"
UNSQUEEZE, TILE, RESHAPE, SLICE, STACK, FULL_INT_ARRAY = (
    "pd_op.unsqueeze", "pd_op.tile", "pd_op.reshape", "pd_op.slice", "pd_op.stack", "pd_op.full_int_array")
SHAPE_READERS = ("pd_op.shape", "pd_op.shape64")
# Ops that hand a value to whoever runs the program (condition 7).
OUTPUT_OPS = ("pd_op.fetch", "builtin.shadow_output", "builtin.set_parameter")
# Ops that only compute shapes and constants: erased once nothing reads them.
SHAPE_COMPUTATIONS = (COMBINE, STACK, SLICE, FULL, FULL_INT_ARRAY, *SHAPE_READERS)

# Why a loop variable grown by a concat of itself was left as it is (KeptCache.reason).
CONCAT_NOT_SIMPLE = "concat not of the cache once on a constant axis"  # condition 1
CACHE_READ = "cache read other than by its concat"  # condition 2
CONCAT_READ = "concat read other than by transposes"  # condition 3 (or 5: a repeat that does not match)
NO_TRANSPOSE_CHAIN = "concat not read through transposes of one perm"  # condition 3
CONCAT_YIELDED_ELSEWHERE = "concat yielded at another position"  # condition 3
RESULT_IS_OUTPUT = "loop result is an output"  # condition 4
REPEAT_READ = "repeat read other than by transposes"  # condition 5
ATTENTION_READ_WRITTEN = "transposed cache written in place"  # condition 6
ATTENTION_READ_ESCAPES = "transposed cache yielded or output"  # condition 7
INIT_SHARED = "init shared or read in the loop"  # condition 8


@dataclass(frozen=True)
class KeptCache:
    """A loop variable grown by a concat of itself that the rule left as it is."""

    loop: int  # which while op, counted in program order from 0
    position: int  # the variable's index among the loop's results
    reason: str


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
    inferred: int | None  # the concat's axis whose reshape entry is -1, if one is


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


class _Keep(Exception):
    """Raised by a check with the reason for leaving a concat cache as it is."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _integral(number) -> int | None:
    """``number`` (an attribute: ``pd_op.full`` holds a float) as an int, or None."""
    number = float(number)
    return int(number) if number.is_integer() else None


def _constant_ints(value) -> list[int] | None:
    """The ints a ``pd_op.full_int_array`` (or a one-element ``pd_op.full``) makes, or None."""
    producer = value.get_defining_op()
    if producer is None:
        return None
    if producer.name() == FULL_INT_ARRAY:
        ints = [int(v) for v in producer.attrs()["value"]]
    elif producer.name() == FULL and list(value.shape) in ([], [1]):
        ints = [_integral(producer.attrs()["value"])]
    else:
        return None
    return None if None in ints else ints


def _concat_axis(concat, rank: int) -> int | None:
    """The concat's constant axis counted from the front, or None."""
    axis = _constant_ints(concat.operand_source(1))
    if axis is None or len(axis) != 1 or not -rank <= axis[0] < rank:
        return None
    return axis[0] % rank


def _sole_reader(value):
    readers = list(value.all_used_ops())
    return readers[0] if len(readers) == 1 else None


def _dim_read_from_shape(part) -> tuple | None:
    """(value, index) when ``part`` is ``shape(value)[index]`` (one entry sliced out of a
    shape reader's result, a negative index counted from the end), else None."""
    slice_op = part.get_defining_op()
    if slice_op is None or slice_op.name() != SLICE or [int(a) for a in slice_op.attrs()["axes"]] not in ([0], [-1]):
        return None
    reader = slice_op.operand_source(0).get_defining_op()
    if reader is None or reader.name() not in SHAPE_READERS:
        return None
    shaped = reader.operand_source(0)
    rank = len(shaped.shape)
    starts, ends = _constant_ints(slice_op.operand_source(1)), _constant_ints(slice_op.operand_source(2))
    if starts is None or ends is None or len(starts) != 1 or len(ends) != 1:
        return None
    start = starts[0] + rank if starts[0] < 0 else starts[0]
    end = min(ends[0] + rank if ends[0] < 0 else ends[0], rank)  # Paddle's slice clamps the end
    if not 0 <= start < rank or end != start + 1:
        return None
    return shaped, start


def _reshape_target(reshape) -> list | None:
    """The reshape's target, one entry per dim: an int or ``(value, index)`` (see
    ``_dim_read_from_shape``); None when some entry is neither."""
    target = reshape.operand_source(1)
    constant = _constant_ints(target)
    if constant is not None:
        return constant
    combine = target.get_defining_op()
    # PIR's own reshape: the entries stacked into one tensor (axis -1 is 0 there), so each must be a scalar
    scalars = combine is not None and combine.name() == STACK and int(combine.attrs()["axis"]) in (0, -1)
    if scalars:
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


def _inferred_entry(target: list) -> int | None:
    """The index of ``target``'s -1 entry (the one Paddle's reshape infers), if any."""
    return next((k for k, entry in enumerate(target) if not isinstance(entry, tuple) and entry == -1), None)


def _multiplies_one_axis(target: list, cache, axis: int, inserted: int, times: int) -> bool:
    """Condition 5's target (``_reshape_target``'s entries) of the tiled ``cache``:
    ``cache``'s shape with ``axis`` (static) multiplied by ``times``."""
    dims = list(cache.shape)
    if len(target) != len(dims) or sum(not isinstance(e, tuple) and e == -1 for e in target) > 1:
        return False
    for k, (entry, dim) in enumerate(zip(target, dims)):
        if isinstance(entry, tuple):
            same = k != axis and entry[0].is_same(cache) and entry[1] == k
        elif entry == -1:  # inferred: the dim wanted here, once every other entry is exact
            same = True
        elif entry == 0:  # the tiled value's dim k: the cache's, before the new axis
            same = k != axis and k < inserted
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
    if times is None or len(times) > rank + 1:
        return None
    times = [1] * (rank + 1 - len(times)) + times  # Paddle's tile pads the repeat times in front
    if times[inserted] < 1 or any(t != 1 for k, t in enumerate(times) if k != inserted):
        return None
    reshape = _sole_reader(tile.result(0))
    if reshape is None or reshape.name() != RESHAPE or not reshape.operand_source(0).is_same(tile.result(0)):
        return None
    target = _reshape_target(reshape)
    if target is None:
        return None
    for axis in (inserted - 1, inserted):  # the two axes a reshape can merge the new one with
        if 0 <= axis < rank and _multiplies_one_axis(target, cache, axis, inserted, times[inserted]):
            return HeadRepeat(unsqueeze, tile, reshape, axis, inserted, times[inserted], _inferred_entry(target))
    return None


def _transpose_levels(value) -> tuple[tuple[int, ...], list[list]] | None:
    """The composed perm and the levels of the transpose chain reading ``value``
    (condition 3), or None. Readers that are not transposes stop nothing here: the
    caller decides which are allowed at the first level."""
    first = [op for op in value.all_used_ops() if op.name() == TRANSPOSE]
    perms = {normalised_perm(op) for op in first}
    if len(perms) != 1 or None in perms:
        return None
    perm, levels = perms.pop(), [first]
    while True:
        readers = [op for t in levels[-1] for op in t.result(0).all_used_ops()]
        if not readers or any(op.name() != TRANSPOSE for op in readers):
            return perm, levels
        perms = {normalised_perm(op) for op in readers}
        if len(perms) != 1 or None in perms:
            return perm, levels
        step = perms.pop()
        # transpose(transpose(x, p1), p2) has dim k = x's dim p1[p2[k]]
        perm = tuple(perm[step[k]] for k in range(len(step)))
        levels.append(list(dict.fromkeys(readers)))


def _read_through_transposes(value) -> bool:
    """Whether a transpose reads ``value``, directly or through the ops of a repeat
    (unsqueeze, tile, reshape: condition 5's, whether they match it or not)."""
    repeated = [value]
    for name in (UNSQUEEZE, TILE, RESHAPE):
        repeated = [op.result(0) for v in repeated for op in v.all_used_ops() if op.name() == name]
    return any(op.name() == TRANSPOSE for v in [value, *repeated] for op in v.all_used_ops())


def _writes(op, operand: int) -> bool:
    """Whether ``op`` may write its operand ``operand`` in place (condition 6): its
    inplace map says so, or its name says in place (``*_``) and no map says which."""
    written = inplace_map(op)
    return operand in written.values() or (not written and op.name().endswith("_"))


def _check_attention_reads(index: ProgramIndex, reads: list, matched: set, output_keys: set) -> None:
    """Conditions 6 and 7 on ``reads`` (the last-level transposes' results, which the
    permuted concat or its repeat replaces) and every value that may share a buffer
    with one of them through an op other than the ``matched`` transposes."""
    through_ops = lambda tag: tag[0] == "op" and tag[1] not in matched  # noqa: E731
    members = {m for value in reads for m in index.aliases.members(value_key(value), keep_edge=through_ops)}
    for member in members:
        if member in output_keys:  # condition 7
            raise _Keep(ATTENTION_READ_ESCAPES)
        for user, operand in index.reads(member):
            op = index.op(user)
            if _writes(op, operand):  # condition 6
                raise _Keep(ATTENTION_READ_WRITTEN)
            # condition 7 (the alias walk leaves control flow to this check: it stops here)
            if op.num_regions() or op.name() == YIELD or op.name() in OUTPUT_OPS:
                raise _Keep(ATTENTION_READ_ESCAPES)


def _check_init(index: ProgramIndex, loop, position: int) -> None:
    """Condition 8: the init for ``position`` shares no buffer with an op in the loop or
    with another of its operands (the loop's own sharing of it left out)."""
    loop_id = loop.id()
    init = value_key(loop.operand_source(position + 1))
    for member in index.aliases.members(init, exclude_loop=loop_id):
        for user, operand in index.reads(member):
            if (user == loop_id and operand != position + 1) or index.is_nested_in(user, loop_id):
                raise _Keep(INIT_SHARED)


def _match_position(index: ProgramIndex, loop, position: int, output_keys: set) -> PermutedCache | None:
    """The rewrite of loop variable ``position``; None when it is no concat cache; raises
    ``_Keep`` when it is one that fails a condition."""
    body = loop.as_while_op().body()
    arg = body.args()[position]
    yield_op = list(body.ops)[-1]
    if yield_op.name() != YIELD or not arg.is_dense_tensor_type() or len(arg.shape) == 0:
        return None
    carried = yield_op.operand_source(position + 1)
    concat = carried.get_defining_op()
    if concat is None or concat.name() != CONCAT:
        return None
    combine = concat.operand_source(0).get_defining_op()
    if combine is None or combine.name() != COMBINE:
        return None
    grown = [combine.operand_source(i).is_same(arg) for i in range(combine.num_operands())]
    if not any(grown) or not _read_through_transposes(carried):
        return None  # no cache, or one read as it is carried (the rule's own result among them)
    axis = _concat_axis(concat, len(arg.shape))
    if grown.count(True) != 1 or len(combine.result(0).all_used_ops()) != 1 or axis is None:  # condition 1
        raise _Keep(CONCAT_NOT_SIMPLE)
    if any(op.name() not in SHAPE_READERS and op != combine for op in arg.all_used_ops()):  # condition 2
        raise _Keep(CACHE_READ)
    readers = list(carried.all_used_ops())
    repeat = _head_repeat(carried, readers)  # condition 5
    attention_input = carried if repeat is None else repeat.reshape.result(0)
    allowed = (TRANSPOSE, *SHAPE_READERS) if repeat is None else SHAPE_READERS
    if any(op.name() not in allowed and op != yield_op and (repeat is None or op != repeat.unsqueeze)
           for op in readers):  # condition 3
        raise _Keep(CONCAT_READ)
    if repeat is not None and any(op.name() not in (TRANSPOSE, *SHAPE_READERS)
                                  for op in attention_input.all_used_ops()):  # condition 5
        raise _Keep(REPEAT_READ)
    chain = _transpose_levels(attention_input)  # condition 3
    if chain is None:
        raise _Keep(NO_TRANSPOSE_CHAIN)
    yielded_at = [i for i in range(1, yield_op.num_operands()) if yield_op.operand_source(i).is_same(carried)]
    if yielded_at != [position + 1]:  # condition 3
        raise _Keep(CONCAT_YIELDED_ELSEWHERE)
    if value_key(loop.result(position)) in output_keys:  # condition 4
        raise _Keep(RESULT_IS_OUTPUT)
    perm, levels = chain
    matched = {op.id() for level in levels for op in level}
    _check_attention_reads(index, [t.result(0) for t in levels[-1]], matched, output_keys)  # conditions 6, 7
    _check_init(index, loop, position)  # condition 8
    dead = tuple(op for level in reversed(levels) for op in level)
    return PermutedCache(loop, position, concat, perm.index(axis), perm, tuple(levels[-1]), dead, repeat)


def permuted_caches(program, outputs=None) -> tuple[list[PermutedCache], list[KeptCache], int]:
    """(every loop variable the rule rewrites, every concat cache it leaves as it is, the
    number of while ops); analysis only."""
    index = ProgramIndex.build(program)
    output_keys = {value_key(v) for v in (outputs or ())}
    found, kept, loops = [], [], 0
    for op_id in index.order:  # every while, nested ones too, in program order
        if index.name(op_id) != WHILE:
            continue
        loop = index.op(op_id)
        for position in range(len(loop.as_while_op().body().args())):
            try:
                match = _match_position(index, loop, position, output_keys)
            except _Keep as keep:
                kept.append(KeptCache(loops, position, keep.reason))
            else:
                if match is not None:
                    found.append(match)
        loops += 1
    return found, kept, loops
