"""loop_assign_analysis: which loop copies ``remove_loop_assign`` may erase, decided
without changing the program (``analyze_loop_assign``), and why each kept copy stays.

The rule and its numbered safety conditions are ``remove_loop_assign``'s docstring;
each condition is enforced, and its reason given, at the check named there. Removing a
chain may make more removable: the pass sweeps until nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle

from . import onednn_layouts
from .copy_ops import DESTINATION, destination_key, loop_copies, result_key, source_key
from .loop_init_aliases import CleanInitWalks, InitAliases
from .program_index import ALIASING_OPS, IF, YIELD, ProgramIndex, inplace_map, value_key
from .report import KeptCopy

GARBAGE_COLLECTOR_OFF = "garbage collector off"
NESTED_COPY = "copy inside nested region"
BRANCHING_CHAIN = "result overwritten twice"
LOCAL_DESTINATION = "destination local to body"
RESULT_READ_AFTER_OVERWRITE = "result read after overwrite"
RESULT_WRITTEN_OR_ALIASED = "result written or aliased"
RESULT_NOT_YIELDED_AT_ARG = "result not yielded at its argument"
DESTINATION_READ_AFTER_COPY = "destination read after copy"
DESTINATION_READ_IN_LOOP = "destination read in loop body"
DESTINATION_READ_AFTER_LOOP = "destination read after loop"
DESTINATION_IS_LOOP_INPUT = "destination is loop input"
DESTINATION_IS_CONDITION = "destination is loop condition"
DESTINATION_PERSISTABLE = "destination persistable"
INIT_SHARED = "init shared by loop variables"
INIT_READ_IN_LOOP = "init read in loop body"
INIT_READ_AFTER_LOOP = "init read after loop"
INIT_PERSISTABLE = "init persistable"
SOURCE_NOT_LOCAL = "source not computed in body"
SOURCE_CONSTANT = "source computed from constants only"
SOURCE_MUTATED = "source mutated after copy"
SOURCE_IN_NESTED_REGION = "source shared with nested region"
SOURCE_YIELDED_TWICE = "source yielded at several positions"
SOURCE_ONEDNN_LAYOUT = "source may have a oneDNN blocked layout"


@dataclass(frozen=True)
class CopyChain:
    loop: int  # while op id
    copies: tuple[int, ...]  # assign_out_ op ids, in order
    destination: str  # value key of the first copy's destination


@dataclass(frozen=True)
class LoopAssignAnalysis:
    index: ProgramIndex
    removable: tuple[CopyChain, ...]
    kept: tuple[KeptCopy, ...]
    loops: int


class _Keep(Exception):
    """Raised by a check with the stable reason for keeping a chain."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def analyze_loop_assign(program, outputs=None) -> LoopAssignAnalysis:
    """Decide, without changing ``program``, which loop copies are removable now.

    (Removing them may make more removable: ``remove_loop_assign`` iterates.)
    """
    index, output_keys = index_with_outputs(program, outputs)
    sweep = Sweep(index, output_keys, index.fed_or_carried())
    for loop, copies in loop_copies(index).items():
        sweep.analyze(loop, copies)
    return LoopAssignAnalysis(index, tuple(sweep.removable), tuple(sweep.kept), sweep.loops)


def index_with_outputs(program, outputs):
    index = ProgramIndex.build(program)
    keys = [value_key(v) for v in (outputs or ())]
    foreign = [k for k in keys if k not in index.values]
    if foreign:
        raise ValueError(f"{len(foreign)} of the outputs are not values of this program "
                         "(a value of another program, or of the program before clone()?)")
    return index, frozenset(keys)


class Sweep:
    """One pass over the loops in program order, collecting decisions."""

    def __init__(self, index: ProgramIndex, output_keys: frozenset, fed_or_carried: frozenset):
        self.index = index
        self.output_keys = output_keys
        self.fed_or_carried = fed_or_carried
        self.blocked_layout = index.derived_from(onednn_layouts.BLOCKED_LAYOUT_OPS)
        self.clean_inits = CleanInitWalks(index)
        self.gc_off = _garbage_collector_off()
        self.removable: list[CopyChain] = []
        self.kept: list[KeptCopy] = []
        self.loops = 0

    def analyze(self, loop: int, copies: list[int]) -> list[CopyChain]:
        loop_no = self.loops
        self.loops += 1
        if self.gc_off:
            chains, kept = [], [(c, GARBAGE_COLLECTOR_OFF) for c in copies]
        else:
            chains, kept = _analyze_loop(_Loop(self, loop), copies)
        self.removable += chains
        self.kept += [KeptCopy(loop_no, op_id, reason) for op_id, reason in kept]
        return chains


def _garbage_collector_off() -> bool:
    """Condition 0: the premise that a yielded value is fresh in the next iteration.

    With Paddle's garbage collector off (``FLAGS_eager_delete_tensor_gb`` < 0) a
    body value keeps its buffer from one iteration to the next, so a loop variable
    yielded from it is overwritten when the next iteration recomputes it (seen on
    3.3.1: the translated ``while_loop`` of the README changes its result, and
    Paddle's own copy-free PIR loops are wrong there too). The copies are what
    keeps such programs right, so they all stay.
    """
    return float(paddle.get_flags(["FLAGS_eager_delete_tensor_gb"])["FLAGS_eager_delete_tensor_gb"]) < 0


class _Loop:
    """One while op and the facts every check about it needs."""

    def __init__(self, sweep: Sweep, loop: int):
        index = sweep.index
        self.index = index
        self.id = loop
        self.body = (loop, 0)
        self.yield_id = index.yield_of(self.body)
        self.args = index.block_args[self.body]
        self.inputs = index.ops[loop].operands  # [cond, init_0, ...]
        self.results = index.ops[loop].results
        self.output_keys = sweep.output_keys
        self.fed_or_carried = sweep.fed_or_carried
        self.blocked_layout = sweep.blocked_layout
        self.clean_inits = sweep.clean_inits
        self.block = index.ops[loop].block
        self.enclosing = frozenset(index.enclosing_loops(self.block))
        # the ifs around this loop, each with the branch this loop is in
        self.branches = {}
        parent, branch = self.block
        while parent is not None:
            if index.name(parent) == IF:
                self.branches[parent] = branch
            parent, branch = index.ops[parent].block
        self._members: dict[str, list[str]] = {}

    def keep_edge(self, tag: tuple) -> bool:
        """A loop enclosing this one that runs no iteration never runs this one, so
        its init-to-result sharing says nothing about this loop's copies."""
        return not (tag[0] == "while" and tag[2] == "skip" and tag[1] in self.enclosing)

    def members(self, key: str) -> list[str]:
        """Values that may share ``key``'s buffer, this loop's own sharing left out."""
        if key not in self._members:
            found = self.index.aliases.members(key, exclude_loop=self.id, keep_edge=self.keep_edge)
            for member in found:
                self._members[member] = found
        return self._members[key]

    def find(self, key: str) -> str:
        return min(self.members(key))

    def position(self, op_id: int) -> int:
        """Position in the body of the body op that is or contains ``op_id``."""
        return self.index.ops[self.index.ancestor_in(op_id, self.body)].position

    def inside(self, op_id: int) -> bool:
        return self.index.is_nested_in(op_id, self.id)

    def defined_inside(self, key: str) -> bool:
        return self.index.block_is_within(self.index.defined_in[key], self.id)

    def yielded(self) -> list[str]:
        return list(self.index.ops[self.yield_id].operands)


def _analyze_loop(ctx: _Loop, copies: list[int]):
    index = ctx.index
    kept = _nested_copies(index, ctx.id, copies)
    top_level = [c for c in copies if index.ops[c].block == ctx.body]
    if not top_level:
        return [], kept
    chains, branching = _build_chains(ctx, top_level)
    kept += [(c, BRANCHING_CHAIN) for c in branching]
    candidates = []
    for chain in chains:
        try:
            _check_destination_kind(ctx, chain)
            yielded_at = _check_result_uses(ctx, chain)
            _check_destination_reads(ctx, chain, yielded_at)
            _check_loop_init(ctx, chain, yielded_at)
            _check_sources(ctx, chain)
        except _Keep as keep:
            kept += [(c, keep.reason) for c in chain.copies]
        else:
            candidates.append(chain)
    removable, crowded = _check_single_yield(ctx, candidates)
    kept += [(c, SOURCE_YIELDED_TWICE) for chain in crowded for c in chain.copies]
    return removable, sorted(kept, key=lambda item: index.rank[item[0]])


def _nested_copies(index, loop, copies):
    """Condition 1: only top-level copies are candidates.

    A copy inside an if (or a nested loop body, analysed as its own loop) runs
    conditionally or repeatedly, so what it writes is not a plain end-of-body
    write-back; its innermost loop reports it as kept.
    """
    return [(c, NESTED_COPY) for c in copies if index.ops[c].block != (loop, 0)]


def _build_chains(ctx: _Loop, copies: list[int]):
    """Condition 2: group copies into chains; a result written by two copies is kept.

    Two copies overwriting one result would leave two candidate sources for its
    later readers; such trees are rare and kept whole.
    """
    by_result = {result_key(ctx.index, c): c for c in copies}
    successors: dict[int, list[int]] = {c: [] for c in copies}
    heads = []
    for c in copies:
        dst = destination_key(ctx.index, c)
        if dst in by_result:
            successors[by_result[dst]].append(c)
        else:
            heads.append(c)
    chains, branching = [], []
    for head in heads:
        members, current = [head], head
        while successors[current]:
            current = successors[current][0]
            members.append(current)
        tree = _tree(successors, head)
        if len(tree) == len(members):  # no copy result had two successors
            chains.append(CopyChain(ctx.id, tuple(members), destination_key(ctx.index, head)))
        else:
            branching += tree
    return chains, branching


def _tree(successors, head):
    found, stack = [], [head]
    while stack:
        c = stack.pop()
        found.append(c)
        stack += successors[c]
    return found


def _check_destination_kind(ctx: _Loop, chain: CopyChain) -> None:
    """Condition 3: the destination is a loop-carried or outer buffer.

    A copy into a value computed in the body is not the loop write-back this pass
    understands (its buffer is recomputed every iteration); keep it.
    """
    if chain.destination not in ctx.args and ctx.defined_inside(chain.destination):
        raise _Keep(LOCAL_DESTINATION)


def _is_plain_read(index: ProgramIndex, user: int, operand: int) -> bool:
    op = index.op(user)
    name = op.name()
    if operand in inplace_map(op).values() or name in ALIASING_OPS:
        return False
    return not op.num_regions() or name == IF  # an if only reads its condition


def _check_result_uses(ctx: _Loop, chain: CopyChain) -> list[int]:
    """Condition 4: readers of each result can read the source instead.

    ``ri`` holds ``vi``'s data only until ``c(i+1)`` overwrites the shared buffer,
    so a read of ``ri`` after that is a read of a later source; and an in-place
    write through ``ri`` (or an alias of it) would, once redirected, write into the
    source. Returns the yield positions of the last result.
    """
    index = ctx.index
    yielded_at: list[int] = []
    last = len(chain.copies) - 1
    for i, copy in enumerate(chain.copies):
        following = chain.copies[i + 1] if i < last else None
        for user, operand in index.reads(result_key(index, copy)):
            if user == following and operand == DESTINATION:
                continue
            if user == ctx.yield_id:
                if i != last:
                    raise _Keep(RESULT_READ_AFTER_OVERWRITE)
                yielded_at.append(operand)
                continue
            if following is not None and ctx.position(user) > index.ops[following].position:
                raise _Keep(RESULT_READ_AFTER_OVERWRITE)
            if not _is_plain_read(index, user, operand):
                raise _Keep(RESULT_WRITTEN_OR_ALIASED)
    return yielded_at


def _check_destination_reads(ctx: _Loop, chain: CopyChain, yielded_at: list[int]) -> None:
    """Condition 5: nobody observes that ``D``'s buffer stops receiving the data.

    Reads through the chain's results are redirected (condition 4); any other
    value that may share ``D``'s buffer is checked here. A value defined inside
    the body is a fresh instance each iteration, so only reads after ``c1`` see
    the write. A value from outside the body keeps the write into the next
    iteration and past the loop, so any read inside the body or after the loop
    counts. The while op reads its condition operand only before the first
    iteration; later checks read the yielded condition, so ``D`` may be that
    operand when ``rn`` is yielded as the condition (translated loop conditions).

    An outer ``D`` whose copy result is yielded at position ``p`` becomes
    ``%arg_p``'s buffer from the second iteration on: W's own sharing, which
    the alias graph leaves out. A read of ``%arg_p`` (or an alias) after ``c1``
    then sees the data ``c1`` wrote; without the copy, the previous iteration's.
    """
    index = ctx.index
    results = {result_key(index, c) for c in chain.copies}
    first = index.ops[chain.copies[0]].position
    for member in ctx.members(chain.destination):
        if member in results:
            continue
        if index.is_persistable(member):
            raise _Keep(DESTINATION_PERSISTABLE)
        if member in ctx.output_keys:
            raise _Keep(DESTINATION_READ_AFTER_LOOP)
        local = member in ctx.args or ctx.defined_inside(member)
        for user, operand in index.reads(member):
            if user == chain.copies[0] and operand == DESTINATION and member == chain.destination:
                continue
            if ctx.inside(user):
                if not local:
                    raise _Keep(DESTINATION_READ_IN_LOOP)
                if ctx.position(user) > first:
                    raise _Keep(DESTINATION_READ_AFTER_COPY)
            elif user == ctx.id:
                if operand != 0:
                    raise _Keep(DESTINATION_IS_LOOP_INPUT)
                if member != chain.destination or 0 not in yielded_at:
                    raise _Keep(DESTINATION_IS_CONDITION)
            elif index.may_run_after(user, ctx.id, member):
                raise _Keep(DESTINATION_READ_AFTER_LOOP)
    if chain.destination in ctx.args:
        return
    for position in yielded_at:
        if position == 0:  # the condition has no block argument
            continue
        for member in ctx.members(ctx.args[position - 1]):
            if any(ctx.inside(user) and ctx.position(user) > first for user, _ in index.reads(member)):
                raise _Keep(DESTINATION_READ_AFTER_COPY)


def _check_loop_init(ctx: _Loop, chain: CopyChain, yielded_at: list[int]) -> None:
    """Condition 6: a copy into ``%arg_i`` is unobservable through ``in_i``.

    In the first iteration ``%arg_i`` shares ``in_i``'s buffer, and with the copy
    yielded back at ``i`` every later iteration does too: the copies write the
    loop's results into ``in_i`` whenever the sizes fit. Without them ``in_i``
    keeps its value, so nothing that runs after the loop starts may read it.

    W reads ``in_i`` itself, before its first iteration; but when ``in_i`` is
    defined outside a loop enclosing W, the next iteration of that loop runs W
    again from ``in_i``, which then holds what the copies wrote.

    The values that may share ``in_i``'s buffer are walked per instance
    (``InitAliases``), which is what makes nested loops exact. W's result ``i``
    also shares that buffer, and holds the loop's final value with or without the
    copies; the walk meets it, and what shares the buffer only through it, as the
    instance of an earlier iteration of an enclosing loop that carries it back
    into ``in_i`` (translated nested loops do), whose reads ran before W started.
    Through an if around W it meets nothing that another branch yields: in the
    run of the if in which W runs, the if's results are what W's branch yields.
    Without these two, a loop in an if in a loop kept its copies (issue 27).
    """
    if chain.destination not in ctx.args:
        return
    position = ctx.args.index(chain.destination) + 1  # yield operand 0 is the condition
    if yielded_at != [position]:
        raise _Keep(RESULT_NOT_YIELDED_AT_ARG)
    index = ctx.index
    init = ctx.inputs[position]
    aliases = InitAliases(ctx, init)
    for member, earlier in aliases:
        if index.is_persistable(member):
            raise _Keep(INIT_PERSISTABLE)
        if member in ctx.output_keys:
            raise _Keep(INIT_READ_AFTER_LOOP)
        if earlier:  # read only in an earlier iteration of an enclosing loop
            continue
        for user, operand in index.reads(member):
            if user == ctx.id:
                if operand != position or member != init:
                    raise _Keep(INIT_SHARED)
                if index.may_run_after(user, ctx.id, member):  # W again, in a next iteration
                    raise _Keep(INIT_READ_AFTER_LOOP)
            elif ctx.inside(user):
                raise _Keep(INIT_READ_IN_LOOP)
            elif index.may_run_after(user, ctx.id, member):
                raise _Keep(INIT_READ_AFTER_LOOP)
    ctx.clean_inits.record(ctx, aliases)


def _check_sources(ctx: _Loop, chain: CopyChain) -> None:
    """Condition 7: each source is this iteration's own, unchanged, fresh buffer.

    Redirected readers and the next iteration read the source where they read the
    copy, so the source must hold the copied data until then: no in-place write
    after the copy. It must also be computed in the body: a block argument or an
    outer value yielded in place of the copy would make the loop variable share a
    buffer that something else reads or writes.

    Yielding the source relies on the runtime giving it a fresh buffer in the
    next iteration (the executor's garbage collector frees body values after
    their last use: condition 0). Two kinds of value break that premise, so a
    source of either kind is kept:

    - A value computed from constants and parameters only: Paddle Inference
      folds it into a constant whose one buffer serves every iteration and every
      run (seen on 3.3.1), so an in-place write through the loop variable would
      change the constant for good.
    - A value that a nested while takes as init or that an if or nested loop
      produces (seen on 3.3.1 with an inner loop's init: the next iteration
      recomputed it into the buffer the loop variable still shared). Values an
      if or loop produces join the source's aliases through a yield inside it,
      so reads by yields in nested regions reject those. Plain reads inside an
      if's branches (no in-place write, no alias, no yield) only read the buffer
      and are allowed, as is an if reading the source as its condition.
    """
    index = ctx.index
    for copy in chain.copies:
        source = source_key(index, copy)
        position = index.ops[copy].position
        for member in ctx.members(source):
            if member in ctx.args or not ctx.defined_inside(member):
                raise _Keep(SOURCE_NOT_LOCAL)
            if member not in ctx.fed_or_carried:
                raise _Keep(SOURCE_CONSTANT)
            if member in ctx.blocked_layout:  # condition 9
                raise _Keep(SOURCE_ONEDNN_LAYOUT)
            for user, operand in index.reads(member):
                if not _is_top_level_or_branch_read(ctx, user, operand):
                    raise _Keep(SOURCE_IN_NESTED_REGION)
                if operand in inplace_map(index.op(user)).values() and ctx.position(user) > position:
                    raise _Keep(SOURCE_MUTATED)


def _is_top_level_or_branch_read(ctx: _Loop, user: int, operand: int) -> bool:
    index = ctx.index
    info = index.ops[user]
    if info.block == ctx.body:
        return not info.op.num_regions() or (info.name == IF and operand == 0)
    if info.op.num_regions() or info.name == YIELD or info.name in ALIASING_OPS:
        return False
    if operand in inplace_map(info.op).values():
        return False
    parent = info.parent
    while parent != ctx.id:  # only ifs between the body and the read
        if index.name(parent) != IF:
            return False
        parent = index.ops[parent].parent
    return True


def _check_single_yield(ctx: _Loop, chains: list[CopyChain]):
    """Condition 8: after redirection no buffer is yielded at two positions.

    Loop variables yielded from one buffer share it in the next iteration, and a
    write to one would change the other. Keeping a chain only lowers the count for
    the others, so this is repeated until stable.
    """
    index = ctx.index
    removable = list(chains)
    while True:
        replacement = {
            result_key(index, chain.copies[-1]): source_key(index, chain.copies[-1]) for chain in removable
        }
        final = [ctx.find(replacement.get(key, key)) for key in ctx.yielded()]
        crowded = [
            chain
            for chain in removable
            if final.count(ctx.find(source_key(index, chain.copies[-1]))) > 1
        ]
        if not crowded:
            return removable, [c for c in chains if c not in removable]
        removable = [c for c in removable if c not in crowded]

