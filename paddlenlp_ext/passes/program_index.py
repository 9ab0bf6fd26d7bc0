"""An index of a PIR program: where every op sits, who uses every value, what may alias.

``paddle.pir`` hands out fresh Python wrappers on every access and overloads ``==`` on
``Value`` to build a ``pd_op.equal`` op, so nothing here compares or hashes wrappers:
ops are keyed by ``op.id()`` and values by ``value.id``. The index is built once per
pass run; ``ProgramIndex.erase_forwarding`` erases an op from the program and updates
the index to match, so a pass need not rebuild it after each rewrite.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from paddle.base import libpaddle

WHILE = "pd_op.while"
IF = "pd_op.if"
COMBINE = "builtin.combine"  # packs values into a vector: see ProgramIndex.reads
PARAMETER = "builtin.parameter"
PERSISTABLE_PRODUCERS = frozenset({PARAMETER, "builtin.constant"})
# Ops whose results carry data fed at run time.
FEED_OPS = frozenset({"pd_op.data", "pd_op.feed"})
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


def walk_ops(program):
    """Every op of ``program`` (a ``paddle.pir.Program``), at any depth, in pre-order: an
    op before the ops of its regions."""
    return _walk_block(program.global_block())


# Recursion through module-level functions, never a nested function that calls itself:
# such a closure is a reference cycle, and a cycle a pass leaves keeps the Python
# wrappers of the program's ops (and what else its frame held) alive after the program
# is freed, until Python's cyclic collector runs. With them alive, Paddle 3.3.1
# (CPU) corrupted the programs built and rewritten next: crashes in Program::Print, in
# Value::ReplaceAllUsesWith, "Destroyed a op_result that is still in use" in
# save_inference_model, a fetched value missing from its program. With the collector
# off, the oneDNN differential's program work alone (100 programs, 5 pipelines each)
# failed so in 14 of 20 runs, and in none of 26 once no pass left a cycle; the whole
# differential, collector on, in about 1 run of 25 before (none of 4 after, collector
# off). How the wrappers do it is not known.
# tests/test_pipeline.py checks that no step of any pipeline leaves one.
def _walk_block(block):
    for op in block.ops:
        yield op
        for inner in op.blocks() if op.num_regions() else ():
            yield from _walk_block(inner)


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
    position: int  # index in its block (gaps appear where ops were erased)
    block: tuple  # (parent op id or None, block number)
    name: str
    operands: list  # value keys, None for an optional operand left out
    results: list  # value keys


@dataclass
class ProgramIndex:
    """Ops in program order, their nesting, every use of every value, and aliasing."""

    ops: dict[int, OpInfo] = field(default_factory=dict)
    # op ids in a pre-order walk (a dict used as an ordered set: erasing is O(1))
    order: dict[int, None] = field(default_factory=dict)
    rank: dict[int, int] = field(default_factory=dict)  # op id -> place in order
    values: dict[str, object] = field(default_factory=dict)
    # value key -> block (parent op id or None, block number) where it is defined
    defined_in: dict[str, tuple] = field(default_factory=dict)
    # value key -> [(user op id, operand index)]
    uses: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    # block -> its ops' ids in order
    block_ops: dict[tuple, list] = field(default_factory=dict)
    block_args: dict[tuple, list] = field(default_factory=dict)
    aliases: "AliasGraph" = None

    @classmethod
    def build(cls, program) -> "ProgramIndex":
        index = cls()
        index._walk(program.global_block(), None, 0)
        index.aliases = AliasGraph.build(index)
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
            operands = [value_key(s) if s is not None and s.initialized() else None for s in op.operands_source()]
            results = [value_key(r) for r in op.results()]
            self.ops[op_id] = OpInfo(op, parent, position, key, op.name(), operands, results)
            self.rank[op_id] = len(self.order)
            self.order[op_id] = None
            for k, source in enumerate(operands):
                if source is not None:  # optional operands are null
                    self.uses[source].append((op_id, k))
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
                found += self.reads(self.ops[user].results[0])
            else:
                found.append((user, operand))
        return found

    def erase_forwarding(self, op_id: int, operand: int) -> None:
        """Make every reader of ``op_id``'s only result read its operand ``operand``
        instead, erase the op from the program, and update the index to match."""
        info = self.ops.pop(op_id)
        result, source = info.results[0], info.operands[operand]
        info.op.result(0).replace_all_uses_with(info.op.operand_source(operand))
        info.op.erase()
        for k, key in enumerate(info.operands):
            if key is not None:
                self.uses[key].remove((op_id, k))
        for user, k in self.uses.pop(result, []):
            self.ops[user].operands[k] = source
            self.uses[source].append((user, k))
        self.block_ops[info.block].remove(op_id)
        del self.order[op_id]
        del self.rank[op_id], self.values[result], self.defined_in[result]
        self.aliases.forward(result, source, dropped=("op", op_id))

    # -- nesting -----------------------------------------------------------------
    def op(self, op_id: int):
        return self.ops[op_id].op

    def name(self, op_id: int) -> str:
        return self.ops[op_id].name

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

        Ops later in a common block run after; a while or if containing ``anchor``
        reads its operands before. Earlier ones run after too when that
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
                if mine > theirs:
                    return True
                # A while or if that contains ``anchor`` reads its operands before
                # its regions run; another region op might read them at any time.
                if current == chain[info.block] and info.name not in (WHILE, IF):
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

    def fed_or_carried(self) -> frozenset:
        """Values whose data depends on what is fed at run time or carried by a loop.

        Everything else is computed from constants and parameters only: Paddle
        Inference's constant folding may turn it into a constant whose one buffer
        serves every iteration and every run.
        """
        found: set[str] = set()
        self._mark_fed_or_carried((None, 0), found)
        return frozenset(found)

    def derived_from(self, producers: frozenset) -> frozenset:
        """Values computed, through any chain of ops, from a result of an op named in
        ``producers``. A region op passes what it reads and what its regions yield on to
        its block arguments and its results (all of them: a superset)."""
        found: set[str] = set()
        changed = any(self.ops[op_id].name in producers for op_id in self.order)  # most programs: none
        while changed:  # a loop's yield reaches its own block arguments: to a fixpoint
            changed = False
            for op_id in self.order:
                info = self.ops[op_id]
                reads = [key for key in info.operands if key]
                targets = list(info.results)
                for n in range(info.op.num_regions()):
                    targets += self.block_args[(op_id, n)]
                    yield_id = self.yield_of((op_id, n))
                    if yield_id is not None:
                        reads += [key for key in self.ops[yield_id].operands if key]
                if info.name in producers or any(key in found for key in reads):
                    new = set(targets) - found
                    if new:
                        found |= new
                        changed = True
        return frozenset(found)

    def _mark_fed_or_carried(self, block: tuple, found: set) -> None:
        if block[0] is not None and self.name(block[0]) == WHILE:
            # Carried. (In iteration 1 an argument shares its init's buffer, which may be
            # a constant; a pass must not take an argument's buffer as fresh anyway.)
            found.update(self.block_args[block])
        for op_id in self.block_ops[block]:
            info = self.ops[op_id]
            regions = [(op_id, n) for n in range(info.op.num_regions())]
            for region in regions:
                self._mark_fed_or_carried(region, found)
            if not regions:
                if info.name in FEED_OPS or any(key in found for key in info.operands if key):
                    found.update(info.results)
                continue
            # A region op's result shares the buffer of what its regions yield (or,
            # for a while that runs no iteration, of its init): marked only when every
            # value it may share is.
            yielded = [self.ops[y].operands if y is not None else [] for y in map(self.yield_of, regions)]
            for k, result in enumerate(info.results):
                if info.name == WHILE:
                    shared = [info.operands[k + 1] if k + 1 < len(info.operands) else None,
                              yielded[0][k + 1] if k + 1 < len(yielded[0]) else None]
                elif info.name == IF:
                    shared = [y[k] if k < len(y) else None for y in yielded]
                else:  # an unknown region op: marked when anything it takes is
                    shared = [next((key for key in info.operands if key in found), None)]
                if all(key in found for key in shared):
                    found.add(result)


def _combine_operands(index: ProgramIndex, key: str | None) -> list | None:
    """The values a ``builtin.combine`` packed into ``key``; None for other values."""
    if key is None:
        return None
    producer = index.values[key].get_defining_op()
    if producer is None or producer.id() not in index.ops or index.name(producer.id()) != COMBINE:
        return None
    return list(index.ops[producer.id()].operands)


class AliasGraph:
    """Values that may share one buffer: an undirected graph over value keys.

    Sharing comes from inplace maps, ``ALIASING_OPS`` and control flow. Each edge is
    tagged with where it comes from, so that an analysis can leave some out:
    ``("op", id)`` for an op's own aliasing; ``("while", id, kind, i)`` for a while
    op, which shares (``ShareDataWith``) loop variable by loop variable (``i``: block
    argument ``i``, yield operand ``i + 1``) its init with the block argument (kind
    ``enter``, first iteration), the yielded value with the block argument (``carry``,
    later iterations: the value yielded by one iteration is the argument of the next)
    and with the result (``exit``, the last iteration's), the init with the result
    (``skip``, a loop that runs no iteration), and (``("while", id, "cond")``) its
    condition operand with the yielded condition; ``("if", id, branch)`` for an if
    op's results and what its branch ``branch`` (0: true, 1: false) yields;
    ``("region", id)`` for an unknown region op, whose every touched value may be one
    buffer.
    """

    def __init__(self):
        self.edges: dict[str, list] = defaultdict(list)

    def add(self, a: str, b: str, tag: tuple) -> None:
        if a != b:
            self.edges[a].append((b, tag))
            self.edges[b].append((a, tag))

    @classmethod
    def build(cls, index: ProgramIndex) -> "AliasGraph":
        graph = cls()
        for op_id in index.order:
            info = index.ops[op_id]
            graph._add_op(index, op_id, info)
        return graph

    def _add_op(self, index: ProgramIndex, op_id: int, info: OpInfo) -> None:
        tag = ("op", op_id)
        results, operands = info.results, info.operands
        for out, inp in inplace_map(info.op).items():
            if out < len(results) and inp < len(operands) and operands[inp]:
                self.add(results[out], operands[inp], tag)
                for element in _combine_operands(index, operands[inp]) or ():
                    if element:
                        self.add(results[out], element, tag)
        packed = _combine_operands(index, operands[0]) if operands else None
        if info.name in ("builtin.split", "builtin.slice") and packed is not None:
            # unpacking a vector built here: each piece is one of the packed values
            first = info.op.attrs().get("index", 0) if info.name == "builtin.slice" else 0
            for k, result in enumerate(results):
                if first + k < len(packed) and packed[first + k]:
                    self.add(result, packed[first + k], tag)
        elif info.name in ALIASING_OPS and operands and operands[0]:
            for result in results:
                self.add(result, operands[0], tag)
                for element in packed or ():
                    if element:
                        self.add(result, element, tag)
        if info.op.num_regions():
            self._add_regions(index, op_id, info)

    def _add_regions(self, index: ProgramIndex, op_id: int, info: OpInfo) -> None:
        regions = [(op_id, n) for n in range(info.op.num_regions())]
        yields = [index.yield_of(b) for b in regions]
        results, operands = info.results, info.operands
        if info.name == WHILE:
            args = index.block_args[regions[0]]
            yielded = index.ops[yields[0]].operands if yields[0] else []
            if yielded and operands[0] and yielded[0]:
                self.add(operands[0], yielded[0], ("while", op_id, "cond"))
            for i, result in enumerate(results):
                init = operands[i + 1] if i + 1 < len(operands) else None
                arg = args[i] if i < len(args) else None
                new = yielded[i + 1] if i + 1 < len(yielded) else None
                for a, b, kind in ((init, arg, "enter"), (new, arg, "carry"), (new, result, "exit"),
                                   (init, result, "skip")):
                    if a and b:
                        self.add(a, b, ("while", op_id, kind, i))
        elif info.name == IF:
            for branch, y in enumerate(yields):
                if y is not None:
                    for k, v in enumerate(index.ops[y].operands):
                        if k < len(results) and v:
                            self.add(results[k], v, ("if", op_id, branch))
        else:  # an unknown region op: everything it touches may be one buffer
            members = results + [o for o in operands if o]
            for block, y in zip(regions, yields):
                members += index.block_args[block]
                if y is not None:
                    members += [v for v in index.ops[y].operands if v]
            for member in members[1:]:
                self.add(members[0], member, ("region", op_id))

    def forward(self, old: str, new: str, dropped: tuple) -> None:
        """``old``'s readers now read ``new``: its edges move there, except ``dropped``
        (the erased op's own aliasing)."""
        for other, tag in self.edges.pop(old, []):
            self.edges[other] = [(o, t) for o, t in self.edges[other] if o != old]
            if tag != dropped:
                self.add(new, other, tag)

    def members(self, key: str, *, exclude_loop: int | None = None, keep_edge=None) -> list[str]:
        """``key`` and every value connected to it: a walk that skips
        ``exclude_loop``'s own sharing and follows only edges ``keep_edge(tag)``
        accepts (all when None)."""
        seen = {key}
        frontier = [key]
        while frontier:
            current = frontier.pop()
            for other, tag in self.edges.get(current, ()):
                if other in seen:
                    continue
                if tag[0] == "while" and tag[1] == exclude_loop:
                    continue
                if keep_edge is not None and not keep_edge(tag):
                    continue
                seen.add(other)
                frontier.append(other)
        return list(seen)
