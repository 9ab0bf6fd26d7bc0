"""A read-only index of a PIR program: where every op sits, who uses every value.

``paddle.pir`` hands out fresh Python wrappers on every access and overloads ``==`` on
``Value`` to build a ``pd_op.equal`` op, so nothing here compares or hashes wrappers:
ops are keyed by ``op.id()`` and values by ``value.id``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from paddle.base import libpaddle

WHILE = "pd_op.while"
IF = "pd_op.if"
COMBINE = "builtin.combine"  # packs values into a vector: see ProgramIndex.reads
PERSISTABLE_PRODUCERS = frozenset({"builtin.parameter", "builtin.constant"})
YIELD = "cf.yield"

# Ops whose results may share memory with an operand without saying so in their
# inplace map: `share_data_` (checked: it aliases on the CPU executor), the builtin
# ops that unpack a vector, and Paddle's view ops. On the CPU static executor the view ops copied
# (checked on 3.3.1), but they return views under stride kernels, so they are treated
# as aliasing: a false alias only makes the pass keep a copy.
ALIASING_OPS = frozenset(
    {
        "pd_op.share_data_",
        "pd_op.share_data",
        "builtin.split",
        "builtin.slice",
        "pd_op.reshape",
        "pd_op.reshape_",
        "pd_op.squeeze",
        "pd_op.squeeze_",
        "pd_op.unsqueeze",
        "pd_op.unsqueeze_",
        "pd_op.flatten",
        "pd_op.flatten_",
        "pd_op.slice",
        "pd_op.split",
        "pd_op.split_with_num",
        "pd_op.unbind",
        "pd_op.transpose",
        "pd_op.view_shape",
        "pd_op.view_dtype",
        "pd_op.view_slice",
        "pd_op.as_strided",
        "pd_op.diagonal",
        "pd_op.real",
        "pd_op.imag",
        "pd_op.as_real",
        "pd_op.as_complex",
        "pd_op.tensor_unfold",
        "pd_op.strided_slice",
    }
)


def value_key(value) -> str:
    return value.id


def inplace_map(op) -> dict[int, int]:
    """``{result index: operand index}`` for ops that write an operand in place."""
    try:
        return dict(libpaddle.pir.get_op_inplace_info(op))
    except Exception:  # ops without yaml info (builtin, cf) have no inplace map
        return {}


@dataclass
class OpInfo:
    op: object
    parent: int | None  # id of the op whose region holds this op; None at top level
    position: int  # index in its block
    block: tuple  # (parent op id or None, block number)


@dataclass
class ProgramIndex:
    """Ops in program order, their nesting, and every use of every value."""

    ops: dict[int, OpInfo] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # pre-order walk
    rank: dict[int, int] = field(default_factory=dict)  # op id -> place in order
    values: dict[str, object] = field(default_factory=dict)
    # value key -> block (parent op id or None, block number) where it is defined
    defined_in: dict[str, tuple] = field(default_factory=dict)
    # value key -> [(user op id, operand index)]
    uses: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    # block -> its ops' ids in order
    block_ops: dict[tuple, list] = field(default_factory=dict)
    block_args: dict[tuple, list] = field(default_factory=dict)

    @classmethod
    def build(cls, program) -> "ProgramIndex":
        index = cls()
        index._walk(program.global_block(), None, 0)
        return index

    def _walk(self, block, parent: int | None, block_no: int) -> None:
        key = (parent, block_no)
        ids = []
        self.block_ops[key] = ids
        args = []
        for arg in block.args():
            self._define(arg, key)
            args.append(value_key(arg))
        self.block_args[key] = args
        for position, op in enumerate(block.ops):
            op_id = op.id()
            ids.append(op_id)
            self.ops[op_id] = OpInfo(op, parent, position, key)
            self.rank[op_id] = len(self.order)
            self.order.append(op_id)
            for k, source in enumerate(op.operands_source()):
                if source is not None and source.initialized():  # optional operands are null
                    self.uses[value_key(source)].append((op_id, k))
            for result in op.results():
                self._define(result, key)
            if op.num_regions():
                for sub_no, sub in enumerate(op.blocks()):
                    self._walk(sub, op_id, sub_no)

    def _define(self, value, block_key: tuple) -> None:
        k = value_key(value)
        self.values[k] = value
        self.defined_in[k] = block_key

    def reads(self, key: str) -> list[tuple[int, int]]:
        """Uses of a value, where a vector packing it counts as used by its consumers.

        ``builtin.combine`` only gathers references; the op that takes the vector is
        the one that reads (or writes) the element, at its own position.
        """
        found = []
        for user, operand in self.uses.get(key, ()):
            if self.name(user) == COMBINE:
                found += self.reads(value_key(self.op(user).result(0)))
            else:
                found.append((user, operand))
        return found

    # -- nesting -----------------------------------------------------------------
    def op(self, op_id: int):
        return self.ops[op_id].op

    def name(self, op_id: int) -> str:
        return self.ops[op_id].op.name()

    def ancestor_in(self, op_id: int, block: tuple) -> int | None:
        """The op of ``block`` that is ``op_id`` or contains it; None if outside."""
        current: int | None = op_id
        while current is not None:
            info = self.ops[current]
            if info.block == block:
                return current
            current = info.parent
        return None

    def is_nested_in(self, op_id: int, container: int) -> bool:
        current = self.ops[op_id].parent
        while current is not None:
            if current == container:
                return True
            current = self.ops[current].parent
        return False

    def block_is_within(self, block: tuple, container: int) -> bool:
        """True when ``block`` is a region of ``container`` or nested deeper in it."""
        parent = block[0]
        return parent is not None and (parent == container or self.is_nested_in(parent, container))

    def enclosing_loops(self, block: tuple) -> list[int]:
        loops = []
        current = block[0]
        while current is not None:
            if self.name(current) == WHILE:
                loops.append(current)
            current = self.ops[current].parent
        return loops

    def may_run_after(self, op_id: int, anchor: int, value: str | None = None) -> bool:
        """Whether ``op_id`` (not nested in ``anchor``) may execute after ``anchor`` starts.

        Ops later in a common block run after. Earlier ones run after too when that
        block sits inside a loop, as they run again in the next iteration; when the
        op is asked about as a reader of ``value``, only loops that ``value`` was
        defined outside count, since inside them every iteration reads a freshly
        computed instance. Ops in two regions of one op (the branches of an if) are
        treated as running after.
        """
        chain = {}
        current: int | None = anchor
        while current is not None:
            chain[self.ops[current].block] = current
            current = self.ops[current].parent
        current = op_id
        while current is not None:
            info = self.ops[current]
            if info.block in chain:
                mine, theirs = info.position, self.ops[chain[info.block]].position
                if mine > theirs or current == chain[info.block]:
                    return True
                loops = self.enclosing_loops(info.block)
                if value is not None:
                    loops = [loop for loop in loops if not self.block_is_within(self.defined_in[value], loop)]
                return bool(loops)
            current = info.parent
        return True  # no common block: cannot happen in one program; stay safe

    def yield_of(self, block: tuple) -> int | None:
        ids = self.block_ops.get(block) or []
        if ids and self.name(ids[-1]) == YIELD:
            return ids[-1]
        return None

    def is_persistable(self, key: str) -> bool:
        """Parameters and persistable values outlive a run: later runs read them.

        (``libpaddle.pir.value_is_persistable`` answered True for plain ``full``
        results on 3.3.1, so the value's own attribute and its producer decide.)
        """
        value = self.values[key]
        producer = value.get_defining_op()
        if producer is not None and producer.name() in PERSISTABLE_PRODUCERS:
            return True
        try:
            return bool(value.persistable)
        except Exception:  # block arguments carry no persistable attribute
            return False


def _combine_operands(index: ProgramIndex, vector) -> list | None:
    """The values a ``builtin.combine`` packed into ``vector``; None for other values."""
    producer = vector.get_defining_op()
    if producer is None or producer.name() != COMBINE:
        return None
    return [value_key(v) if v is not None and v.initialized() else None for v in producer.operands_source()]


class AliasClasses:
    """Values that may share one buffer, as a union-find over value keys.

    Sharing comes from inplace maps, ``ALIASING_OPS`` and control flow: a while op
    shares (``ShareDataWith``) its inputs, block arguments, yielded values and
    results position by position, and its condition with the first yielded value;
    an if op shares its results with what either branch yields. ``exclude_loop``
    leaves one while op's own sharing out, for an analysis that reasons about that
    loop iteration by iteration.
    """

    def __init__(self, index: ProgramIndex, exclude_loop: int | None = None):
        self._parent: dict[str, str] = {}
        for op_id in index.order:
            op = index.op(op_id)
            name = op.name()
            results = [value_key(r) for r in op.results()]
            operands = [value_key(s) if s is not None and s.initialized() else None for s in op.operands_source()]
            for out, inp in inplace_map(op).items():
                if out < len(results) and inp < len(operands) and operands[inp]:
                    self.union(results[out], operands[inp])
                    for element in _combine_operands(index, op.operand_source(inp)) or ():
                        if element:
                            self.union(results[out], element)
            packed = _combine_operands(index, op.operand_source(0)) if operands and operands[0] else None
            if name in ("builtin.split", "builtin.slice") and packed is not None:
                # unpacking a vector built here: each piece is one of the packed values
                first = op.attrs().get("index", 0) if name == "builtin.slice" else 0
                for k, result in enumerate(results):
                    if first + k < len(packed) and packed[first + k]:
                        self.union(result, packed[first + k])
            elif name in ALIASING_OPS and operands and operands[0]:
                for result in results:
                    self.union(result, operands[0])
                    for element in packed or ():
                        if element:
                            self.union(result, element)
            if not op.num_regions() or op_id == exclude_loop:
                continue
            self._union_regions(index, op_id, name, results, operands)
        self._groups: dict[str, list[str]] = defaultdict(list)
        for key in list(self._parent):
            self._groups[self.find(key)].append(key)

    def _union_regions(self, index, op_id, name, results, operands):
        regions = [(op_id, n) for n in range(index.op(op_id).num_regions())]
        yields = [index.yield_of(b) for b in regions]
        if name == WHILE:
            args = index.block_args[regions[0]]
            yielded = [value_key(v) for v in index.op(yields[0]).operands_source()] if yields[0] else []
            if yielded and operands[0]:
                self.union(operands[0], yielded[0])
            for i, result in enumerate(results):
                for other in (
                    operands[i + 1] if i + 1 < len(operands) else None,
                    args[i] if i < len(args) else None,
                    yielded[i + 1] if i + 1 < len(yielded) else None,
                ):
                    if other:
                        self.union(result, other)
        elif name == IF:
            for y in yields:
                if y is not None:
                    for k, v in enumerate(index.op(y).operands_source()):
                        if k < len(results):
                            self.union(results[k], value_key(v))
        else:  # an unknown region op: everything it touches may be one buffer
            members = results + [o for o in operands if o]
            for block, y in zip(regions, yields):
                members += index.block_args[block]
                if y is not None:
                    members += [value_key(v) for v in index.op(y).operands_source()]
            for member in members[1:]:
                self.union(members[0], member)

    def find(self, key: str) -> str:
        root = key
        while self._parent.setdefault(root, root) != root:
            root = self._parent[root]
        while key != root:  # path compression
            self._parent[key], key = root, self._parent[key]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[ra] = rb

    def members(self, key: str) -> list[str]:
        return self._groups.get(self.find(key)) or [key]
