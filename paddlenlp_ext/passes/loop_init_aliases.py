"""loop_init_aliases: the values that may share a loop's init buffer once the loop
starts (``remove_loop_assign``'s condition 6, checked in ``loop_assign_analysis``),
walked per instance of the enclosing loops' iterations, and the walks that found
nothing kept for the later loops of their block.

``ctx`` below is ``loop_assign_analysis``'s view of one while op W (its index, id,
block, enclosing loops, the branches it runs in, the alias edges its checks keep).
"""

from __future__ import annotations

from .program_index import ProgramIndex

NOW = frozenset()  # an instance of the iteration of every enclosing loop in which W runs


class InitAliases:
    """The values that may share ``init``'s buffer once W starts, iterated as
    ``(value, earlier)``: ``earlier`` when the only instance of the value that does
    is one from an earlier iteration of a loop enclosing W (condition 6).

    A walk over the alias graph without W's own sharing and the skip edges of the
    loops enclosing W, whose states are ``(value, loops)``: ``loops`` are the
    enclosing loops of whose earlier iterations the instance is (none: the
    iterations in which W runs). A value is used only in the iteration of a loop
    that computes it, so an earlier instance's reads all ran before W started.

    - Crossing an enclosing loop O's carry edge from its block argument to the value
      yielded into it goes one iteration back: the argument is what the previous
      iteration yielded (O joins ``loops``).
    - O's exit edge is not crossed from an earlier iteration's yielded value: O's
      result shares only what the last iteration yields.
    - A value defined outside O has one instance for all of O's iterations: O
      leaves ``loops``. So an argument of O reached as an earlier instance is also
      reached as this iteration's, through its init (O's enter edge), as it should:
      its buffer lives on into later iterations (through the carry, or as itself
      where O yields it back unchanged, which makes no edge). Later iterations are
      not told apart from this one: the walk reaches one only through a value this
      iteration yields, which O's yield reads after W started.
    - In this iteration an if around W runs W's branch, so the walk does not cross
      an edge between the if's results and what another branch yields (in an
      earlier iteration the if may have run any branch).

    The walk of an earlier loop in the same block whose condition 6 held is reused
    whole (``CleanInitWalks``): where this walk reaches one of its values, it takes
    all of them as checked and goes on only from the values where that walk was
    stopped by its loop's own sharing.
    """

    def __init__(self, ctx, init: str):
        self.ctx = ctx
        self.start = (init, NOW)
        self.own: list[tuple] = []  # states this walk reached itself
        self.stopped: set = set()  # states where W's own sharing stopped it
        self.absorbed: set = set()  # earlier clean walks taken whole

    def __iter__(self):
        ctx = self.ctx
        clean = ctx.clean_inits
        visited = {self.start}
        frontier = [(self.start, True)]
        while frontier:
            state, fresh = frontier.pop()
            value, loops = state
            if fresh:
                self.own.append(state)
                yield value, bool(loops)
            for other, tag in ctx.index.aliases.edges.get(value, ()):
                if tag[0] == "while" and tag[1] == ctx.id:
                    self.stopped.add(state)
                    continue
                if not ctx.keep_edge(tag):
                    continue
                next_loops = self._step(value, loops, other, tag)
                if next_loops is None:
                    continue
                reached = (other, next_loops)
                if reached in visited:
                    continue
                walk = clean.reusable(reached, ctx)
                if walk is not None:
                    if walk not in self.absorbed:
                        self.absorbed.add(walk)
                        frontier += [(origin, False) for origin in clean.stopped[walk]]
                    continue
                visited.add(reached)
                frontier.append((reached, True))

    def _step(self, value: str, loops: frozenset, other: str, tag: tuple):
        """The state reached from ``(value, loops)`` along ``tag``; None: no sharing."""
        index, ctx = self.ctx.index, self.ctx
        if tag[0] == "if" and not loops and ctx.branches.get(tag[1], tag[2]) != tag[2]:
            return None
        loop = tag[1] if tag[0] == "while" else None
        if loop in ctx.enclosing:
            if tag[2] == "exit" and loop in loops:
                return None
            if tag[2] == "carry" and value == index.block_args[(loop, 0)][tag[3]]:
                loops = loops | {loop}
        if not loops:
            return NOW
        return frozenset(o for o in loops if index.block_is_within(index.defined_in[other], o))


class CleanInitWalks:
    """Condition 6's walks that found nothing, for the later loops of their block.

    What no op reads after loop V starts, no op reads after a later loop W of the
    same block starts either: ``may_run_after`` answers the same for both, except
    for ops inside W, W itself and ops between V and W, which all run after V
    starts; V reading its own init is allowed only where it does not run after V
    starts, so it does not after W starts. So a later walk in that block reaching
    any of V's values need not check any of them again: it goes on from where V's
    walk was stopped by V's own sharing (the states of a walk, and the branches of
    the ifs around the loop, mean the same for every loop of one block). On loops
    in a row, each loop's init is the previous loop's result, whose aliases reach
    every earlier loop: checking them all again made the pass quadratic in the
    number of loops.

    Walks are numbered; a walk that took earlier ones whole becomes their
    representative (union-find), so a later walk takes all of them in one step.
    A recorded walk stays true for the rest of the sweep: the sweep erases copies
    in loop bodies, earlier loops' before the walk, and the walk holds no value of
    the body of its own loop or of a later one (it would reach those only through
    the loop's own sharing, or through an op there reading what it found, which
    condition 6 rejects); where it stopped, the edges are read again when it is
    taken.
    """

    def __init__(self, index: ProgramIndex):
        self.index = index
        self.owner: dict[tuple, int] = {}  # state -> the walk that reached it itself
        self.parent: list[int] = []  # walk -> the later walk that took it whole (itself: none)
        self.loop: list[int] = []  # walk -> the loop it checked
        self.stopped: list[list] = []  # walk -> states where its loop's exclusions stopped it

    def record(self, ctx, walk: InitAliases) -> None:
        number = len(self.parent)
        self.parent.append(number)
        self.loop.append(ctx.id)
        self.stopped.append(list(walk.stopped))
        for absorbed in walk.absorbed:
            self.parent[absorbed] = number
        for state in walk.own:
            self.owner[state] = number

    def reusable(self, state: tuple, ctx) -> int | None:
        """The walk that holds ``state``, if it checked an earlier loop of ``ctx``'s block."""
        number = self.owner.get(state)
        if number is None:
            return None
        while self.parent[number] != number:
            self.parent[number] = self.parent[self.parent[number]]
            number = self.parent[number]
        loop = self.index.ops[self.loop[number]]
        if loop.block != ctx.block or loop.position >= self.index.ops[ctx.id].position:
            return None
        return number
