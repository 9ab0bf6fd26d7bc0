"""Random loop programs for the differential test.

``build_random_loop(seed)`` draws one or two while loops (the second one starting
from the first one's results) over 1-4 carried tensors, plus, often, a sink: a
loop variable that sums values the body reads, so that reads made for their own
sake are observable in the outputs. A body is a random sequence of statements:

- arithmetic on what is in scope, copies into a loop variable (``assign_out_``
  into its block argument, or into the previous copy's result: a chain);
- copies into outer buffers; copies into an outer buffer whose result is yielded
  as the loop variable, with the block argument read after the copy (from the
  second iteration on the block argument *is* that buffer);
- in-place ops on body values, on block arguments and on outer values;
- loop-invariant values: ``paddle.full`` in the body, arithmetic on outer
  constants, arithmetic on parameters (Paddle Inference folds these into
  constants), copied into loop variables whose block argument is written in place;
- ifs whose branches read body values, block arguments and copy results (and
  sometimes write or copy in place), and inner loops with copies of their own,
  including copies of and into the outer loop's carried values;

then reads after the loop (results, outer buffers, in-place writes to results).

The first loop often also carries concat caches (``_Cache``, for ``loop_cache_layout``):
loop variables grown by a concat each step and read through transposes (sometimes
through a repeat of one axis, as grouped-query attention does), their attributes often
written from the end (negative axes and perm entries, a tile's times without their
leading 1s, a reshape's 0 and -1), the transposed cache sometimes written in place
(``assign_out_``, ``scale_``, ``tanh_``, through ``share_data_`` or a view, in an if,
mid-chain, before or after the step reads it), two caches sometimes started from one
buffer and a cache's init sometimes written in the body. Their choices come from a
random stream of their own, so the rest of a seed's program is drawn as without them.
``Built.cache_rewrites`` counts the caches the rule must rewrite (those with none of
these hazards), ``Built.cache_copies`` the ``assign_out_`` writes they hold (copies
into body values, not loop variables).

The same seed always builds the same program; ``Built.tags`` is the set of shapes
that were drawn (see ``TAGS``). (Reading a loop init after the loop makes Paddle
3.3.1's executor fail on its own; the rule tests cover that case with its garbage
collector off, and the generator avoids it.)
"""

from __future__ import annotations

import random

import numpy as np
import paddle
from loop_programs import Built, build_pir
from paddle import _C_ops

SHAPE = [2, 3]
FEED = {"x": (np.arange(6, dtype="float32").reshape(SHAPE) - 2.5) / 4}
COEFFICIENTS = (-1.0, -0.5, 0.5, 1.0, 2.0)

# Every tag build_random_loop can put in Built.tags, with what it means.
TAGS = {
    "copy": "a copy into a loop variable (its block argument)",
    "chain": "a copy into a previous copy's result",
    "outer copy": "a copy into a buffer defined before the loop, result not yielded",
    "outer copy yielded": "a copy into an outer buffer whose result is yielded as a loop variable",
    "outer copy yielded, arg read after": "... and the block argument is read after that copy",
    "in-place": "an in-place op on a value computed in the body",
    "in-place arg": "an in-place op on a block argument (or a copy result)",
    "in-place outer": "an in-place op on a value defined before the loop",
    "row write": "one of those in-place ops writes one row only (set_value_with_tensor_, as the static KV cache "
                 "writes a position)",
    "invariant const": "a body value computed from constants only (full in the body, or outer constants)",
    "invariant param": "a body value computed from parameters only",
    "invariant copy": "a loop-invariant value copied into a loop variable",
    "invariant copy, arg written": "... whose block argument is also written in place in the body",
    "parameters": "the program has persistable parameters",
    "param source": "a parameter copied into a loop variable",
    "if": "an if in the body",
    "if reads carried": "an if branch reads a block argument or a copy result",
    "if writes": "an if branch writes a body value in place or copies into it",
    "inner loop": "a while loop in the body",
    "inner loop copy": "a copy inside an inner loop",
    "inner copy of carried": "an inner-loop copy whose source or destination the outer loop carries",
    "inner init carried": "an inner loop starting from the outer loop's block argument",
    "sequential loops": "two loops, the second starting from the first one's results",
    "shared init": "two loop variables start from one buffer",
    "sink": "a loop variable summing values the body reads",
    "in-place after loop": "a loop result written in place after the loop",
    "outer read after loop": "an outer buffer read after the loop",
    "cache": "a concat cache read through transposes",
    "cache rewritable": "a concat cache the layout rule must rewrite",
    "cache repeat": "a cache read through a repeat of one axis",
    "cache negative perm": "a transpose of a cache with a negative perm entry",
    "cache negative axis": "a cache's concat or unsqueeze axis, or a shape index, from the end",
    "cache short tile or reshape 0/-1": "a repeat's tile times without leading 1s, or a reshape entry 0 or -1",
    "cache written": "a transposed cache written in place",
    "cache written by assign_out_": "... by a copy into it (a translated paddle.assign(output=))",
    "cache written through an alias": "... through share_data_ or a reshape of it",
    "cache written in if": "... inside an if",
    "cache written mid-chain": "... between two of its transposes",
    "cache written after read": "... after the step read it",
    "cache plain reader": "a transposed cache read by an op that has an in-place version",
    "cache shared init": "two caches start from one buffer",
    "cache init written": "a cache's init written in place in the loop body",
    "cache read after loop": "a cache's loop result read after the loop",
}
# How a transposed cache may be written in place after its last transpose ("mid-chain":
# between two of them), and the tags that say so beyond "cache written".
CACHE_WRITES = ("assign_out_", "scale_", "tanh_", "share_data_", "view", "if")
CACHE_WRITE_TAGS = {"assign_out_": "cache written by assign_out_", "share_data_": "cache written through an alias",
                    "view": "cache written through an alias", "if": "cache written in if",
                    "mid-chain": "cache written mid-chain"}


def _root_buffer(value):
    """The buffer a chain of copy results writes: follow assign_out_ destinations."""
    while value.get_defining_op() is not None and value.get_defining_op().name() == "pd_op.assign_out_":
        value = value.get_defining_op().operand_source(1)
    return value


def _cannot_build_copy(source, destination) -> bool:
    """Copies Paddle 3.3.1's Python builder segfaults on (it reads a ``stop_gradient``
    attribute that assign_out_ results lack): a source that is itself a copy's
    result, or a copy from a buffer into itself."""
    producer = source.get_defining_op()
    if producer is not None and producer.name() == "pd_op.assign_out_":
        return True
    return _root_buffer(source).is_same(_root_buffer(destination))


def _ids(values) -> set:
    return {v.id for v in values}  # Value.__eq__ builds an op: never compare with ==


def _counted_loop(body, inits, steps):
    i = paddle.full([1], 0, "int64")
    limit = paddle.full([1], steps, "int64")
    outs = paddle.static.nn.while_loop(lambda i, *xs: i < limit, lambda i, *xs: [i + 1, *body(*xs)], [i, *inits])
    return list(outs[1:])


class _Program:
    """What every body of one program shares: the rng, the tags, the parameters and
    the outer constants (values no op writes, from which invariants are computed).

    Nothing writes a parameter, a constant or an invariant (``frozen``) in place:
    Paddle Inference folds values computed from them into constants and ignores
    such writes, so the program would mean different things on the two runtimes
    before any pass runs. (Only a copy the pass removes may make a loop variable
    share an invariant's buffer: that is the hazard the test is after.)
    """

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.cache_rng = random.Random(f"caches {seed}")  # the caches' choices: see the module docstring
        self.tags: set = set()
        self.params: list = []
        self.constants: list = []
        self.frozen: set = set()
        self.cache_rewrites = 0
        self.cache_copies = 0

    def writable(self, values) -> list:
        return [v for v in values if v.id not in self.frozen]

    def in_place(self, target, other=None):
        """One in-place op on ``target`` (a copy of nothing: it writes target's buffer)."""
        rng = self.rng
        kinds = ["scale_", "scale_", "tanh_"] + (["add_", "set_value_"] if other is not None else [])
        kind = rng.choice(kinds)
        if kind == "scale_":
            _C_ops.scale_(target, rng.choice(COEFFICIENTS), 0.25, True)
        elif kind == "tanh_":
            _C_ops.tanh_(target)
        elif kind == "add_":
            _C_ops.add_(target, other)
        else:  # one row of target written from other's, as the static KV cache writes a position
            self.tags.add("row write")
            row = rng.randrange(SHAPE[0])
            _C_ops.set_value_with_tensor_(target, other[row:row + 1], [row], [row + 1], [1], [0], [], [])

    def invariant(self):
        """A value computed in the body from constants or parameters only."""
        value = self._invariant()
        self.frozen.add(value.id)
        return value

    def _invariant(self):
        rng = self.rng
        choices = ["full", "const"] + (["param", "param"] if self.params else [])
        kind = rng.choice(choices if self.constants else [c for c in choices if c != "const"])
        if kind == "full":
            self.tags.add("invariant const")
            return paddle.full(SHAPE, rng.choice(COEFFICIENTS) + 0.125)
        if kind == "const":
            self.tags.add("invariant const")
            return rng.choice(self.constants) * rng.choice(COEFFICIENTS) + 0.5
        self.tags.add("invariant param")
        value = rng.choice(self.params) * rng.choice(COEFFICIENTS)
        return value + 0.25 if rng.random() < 0.5 else value


class _Body:
    """Draws one loop body; every choice comes from the program's rng in a fixed order.

    ``outer``: values defined before the loop the body may read, copy into and write
    in place. ``spare``: outer buffers nothing else reads, for copies whose result
    is yielded. ``carried``: the enclosing loop's block arguments and copy results
    (for an inner loop). ``sink``: the last loop variable sums observed reads.
    """

    def __init__(self, prog: _Program, outer: list, depth: int, *, spare=(), carried=(), sink=False, caches=()):
        self.prog = prog
        self.rng = prog.rng
        self.outer = outer
        self.spare = list(spare)
        self.carried = _ids(carried)
        self.depth = depth
        self.sink = sink
        # the last loop variables: a sum of what the caches' reads observe, then the caches
        self.caches = list(caches)

    def __call__(self, *args):
        prog, rng, tags = self.prog, self.rng, self.prog.tags
        args = list(args)
        cache_args = args[len(args) - len(self.caches) - 1:] if self.caches else []
        args = args[:len(args) - len(cache_args)]
        # the statement after which each cache grows (the rest after the last statement)
        cache_at = [prog.cache_rng.randrange(10) for _ in self.caches]
        grown: dict = {}  # cache index -> (the grown cache, what its read observes)
        n = len(args) - (1 if self.sink else 0)  # loop variables copies may write
        scope = list(args) + [o for o in self.outer if rng.random() < 0.5]
        computed: list = []
        invariants: list = []
        observed: list = []  # reads the sink makes observable
        handles = list(args)  # what the next copy into each variable writes
        copied = [False] * len(args)
        spare = list(self.spare)
        inner_weight = (0.8, 0.25, 0)[min(self.depth, 2)]
        for statement in range(rng.randint(2, 10)):
            for j, at in enumerate(cache_at):
                if at == statement:
                    grown[j] = self.caches[j].grow(cache_args[1 + j], scope)
            kind = rng.choices(
                ["compute", "copy", "outer copy", "outer copy yielded", "in-place", "in-place arg",
                 "invariant", "refresh", "if", "inner loop"],
                weights=[5, 4, 1.2, 1.2 if spare else 0, 0.8, 1, 1, 1, 1.2, inner_weight],
            )[0]
            if kind == "compute" or (kind in ("in-place", "inner loop") and not prog.writable(computed)):
                a, b = rng.choice(scope), rng.choice(scope)
                value = a * rng.choice(COEFFICIENTS) + b * rng.choice(COEFFICIENTS)
                scope.append(value)
                computed.append(value)
            elif kind == "copy":
                j = rng.randrange(n)
                pick = rng.random()
                if invariants and pick < 0.25:
                    source = rng.choice(invariants)
                elif prog.params and pick > 0.9:
                    source = rng.choice(prog.params)
                    tags.add("param source")
                else:
                    source = rng.choice(computed) if computed and rng.random() < 0.85 else rng.choice(scope)
                if _cannot_build_copy(source, handles[j]):
                    continue
                self._tag_copy(source, handles[j])
                tags.add("chain" if copied[j] else "copy")
                if source.id in _ids(invariants):
                    tags.add("invariant copy")
                handles[j] = _C_ops.assign_out_(source, handles[j])
                copied[j] = True
                if rng.random() < 0.4:
                    scope.append(handles[j])  # later statements read through the copy
            elif kind == "outer copy" and self.outer:
                source, buffer = rng.choice(scope), rng.choice(self.outer)
                if not _cannot_build_copy(source, buffer):
                    self._tag_copy(source, buffer)
                    tags.add("outer copy")
                    _C_ops.assign_out_(source, buffer)
            elif kind == "outer copy yielded":
                # old = y; y = assign_out_(f(old), buf); use(old)
                j = rng.randrange(n)
                buffer = spare.pop(rng.randrange(len(spare))) if rng.random() < 0.8 else rng.choice(self.spare)
                old = args[j]
                # (the bias keeps f(old) from being old itself)
                source = old * rng.choice(COEFFICIENTS) + rng.choice(scope) * rng.choice(COEFFICIENTS) + 0.375
                computed.append(source)
                handles[j] = _C_ops.assign_out_(source, buffer)
                copied[j] = True
                tags.add("outer copy yielded")
                if rng.random() < 0.75:
                    use = old * rng.choice(COEFFICIENTS) + 0.5
                    tags.add("outer copy yielded, arg read after")
                    observed.append(use)
                    scope.append(use)
                    computed.append(use)
            elif kind == "in-place":
                target = rng.choice(prog.writable(computed))
                tags.add("in-place")
                prog.in_place(target, rng.choice(scope) if rng.random() < 0.3 else None)
            elif kind == "in-place arg":
                pick = rng.random()
                if pick < 0.6:
                    target = args[rng.randrange(n)]
                elif pick < 0.8 or not self.outer:
                    target = rng.choice(handles[:n])
                else:
                    target = rng.choice(self.outer)
                tags.add("in-place outer" if target.id in _ids(self.outer) else "in-place arg")
                prog.in_place(target, rng.choice(computed) if computed and rng.random() < 0.3 else None)
            elif kind == "invariant":
                value = prog.invariant()
                invariants.append(value)
                scope.append(value)
                computed.append(value)
            elif kind == "refresh":
                # y_arg written in place, then y = assign_out_(invariant, y_arg): once the
                # copy is gone the next iteration's in-place write hits the invariant.
                j = rng.randrange(n)
                if rng.random() < 0.8:
                    prog.in_place(args[j])
                    tags.add("in-place arg")
                    tags.add("invariant copy, arg written")
                value = rng.choice(invariants) if invariants and rng.random() < 0.3 else prog.invariant()
                invariants.append(value)
                if _cannot_build_copy(value, handles[j]):
                    continue
                tags.add("invariant copy")
                tags.add("chain" if copied[j] else "copy")
                handles[j] = _C_ops.assign_out_(value, handles[j])
                copied[j] = True
            elif kind == "if":
                value = self._if(scope, computed, handles[:n], args[:n])
                scope.append(value)
                computed.append(value)
                if rng.random() < 0.5:
                    observed.append(value)
            elif kind == "inner loop":
                value = self._inner_loop(scope, computed, handles[:n], args[:n])
                scope.append(value)
                computed.append(value)
                if rng.random() < 0.5:
                    observed.append(value)
        # An invariant is yielded only through a copy: yielded as it is, it would be a
        # loop variable sharing a constant Paddle Inference folds (and the in-place
        # writes to block arguments would change that constant for good).
        writable = prog.writable(computed)
        yields = [
            handles[j] if copied[j] else (rng.choice(writable) if writable and rng.random() < 0.8 else args[j])
            for j in range(n)
        ]
        if self.sink:
            if computed:
                observed += rng.sample(computed, min(len(computed), rng.randint(0, 2)))
            total = args[n] * 0.5
            for value in observed:
                total = total + value
            yields.append(total)
        if self.caches:
            for j, cache in enumerate(self.caches):
                if j not in grown:
                    grown[j] = cache.grow(cache_args[1 + j], scope)
            observed_by_caches = cache_args[0] * 0.5
            for j in range(len(self.caches)):
                observed_by_caches = observed_by_caches + grown[j][1]
            yields += [observed_by_caches] + [grown[j][0] for j in range(len(self.caches))]
        return yields

    def _tag_copy(self, source, destination):
        if self.depth > 0:
            self.prog.tags.add("inner loop copy")
            if _ids([source, _root_buffer(destination)]) & self.carried:
                self.prog.tags.add("inner copy of carried")

    def _if(self, scope, computed, handles, args):
        rng, tags = self.rng, self.prog.tags
        tags.add("if")
        pick = rng.random()
        if pick < 0.4:
            a = rng.choice(handles + args)  # a block argument or a copy result
            tags.add("if reads carried")
        else:
            a = rng.choice(computed) if computed else rng.choice(scope)
        b = rng.choice(scope)
        scale = rng.choice(COEFFICIENTS)
        writable = self.prog.writable(computed)
        write = rng.choice(writable) if writable and rng.random() < 0.25 else None
        copy_into = rng.random() < 0.5
        if write is not None and copy_into and _cannot_build_copy(a, write):
            write = None

        def true_fn():
            value = a * scale + b
            if write is not None:
                if copy_into:
                    _C_ops.assign_out_(a * 1.0, write)  # a copy inside the if
                else:
                    self.prog.in_place(write)
            return value

        if write is not None:
            tags.add("if writes")
        return paddle.static.nn.cond(paddle.sum(rng.choice(scope)) > 0, true_fn, lambda: a - scale)

    def _inner_loop(self, scope, computed, handles, args):
        rng, tags = self.rng, self.prog.tags
        tags.add("inner loop")
        carried = handles + args
        inits = []
        for _ in range(rng.randint(1, 2)):
            pick = rng.random()
            if pick < 0.25:
                inits.append(rng.choice(args))  # the inner loop starts from the outer argument
                tags.add("inner init carried")
            elif pick < 0.45:
                inits.append(rng.choice(self.prog.writable(computed)))  # the inner copies may write it
            else:
                inits.append(rng.choice(computed) * 1.0)
        if len(_ids(inits)) < len(inits):
            inits[-1] = inits[-1] * 1.0
        # The inner body may read and copy into the outer loop's carried values.
        inner_outer = [v for v in carried + self.prog.writable(computed) if rng.random() < 0.4]
        body = _Body(self.prog, inner_outer, self.depth + 1, carried=carried)
        results = _counted_loop(body, inits, rng.randint(1, 3))
        return rng.choice(results)


class _Cache:
    """One concat cache the first loop carries: SHAPE with a growing axis inserted at
    ``axis``, grown by one entry a step and read through 1-2 levels of transposes
    (``loop_cache_layout``'s rule), with the attributes and hazards the module docstring
    lists. Every choice comes from ``prog.cache_rng``."""

    def __init__(self, prog: _Program, shared_with: "_Cache | None" = None):
        rng, tags = prog.cache_rng, prog.tags
        self.prog = prog
        tags.add("cache")
        self.axis = shared_with.axis if shared_with is not None else rng.randrange(3)
        self.shared_with = shared_with  # the cache whose init this one starts from
        self.shares_init = shared_with is not None  # (set on the other one too: _caches)
        self.dims = SHAPE[:self.axis] + [-1] + SHAPE[self.axis:]  # -1: the growing axis
        self.concat_axis = self.axis - 3 if rng.random() < 0.3 else self.axis
        self.levels = [self._perm(rng) for _ in range(rng.choice([1, 1, 2]))]
        self.repeat = self._repeat(rng) if rng.random() < 0.35 else None
        writes = CACHE_WRITES + ("assign_out_", "if", "mid-chain", "mid-chain")
        self.write = rng.choice(writes) if rng.random() < 0.5 else None
        if self.write == "mid-chain" and len(self.levels) == 1:
            self.levels.append(self._perm(rng))
        self.write_after_read = self.write in CACHE_WRITES and rng.random() < 0.4
        self.plain_reader = self.write is None and rng.random() < 0.4
        self.read_after_loop = rng.random() < 0.5
        self.init_written = rng.random() < 0.12  # in the body, before the concat reads it
        if self.init_written:
            tags.add("cache init written")
        if self.concat_axis < 0:
            tags.add("cache negative axis")
        if self.write is not None:
            tags.add("cache written")
            if self.write in CACHE_WRITE_TAGS:
                tags.add(CACHE_WRITE_TAGS[self.write])
            if self.write_after_read:
                tags.add("cache written after read")
        if self.plain_reader:
            tags.add("cache plain reader")
        if self.write == "assign_out_":
            prog.cache_copies += 1

    def _perm(self, rng) -> list[int]:
        perm = [0, 1, 2]
        while perm == [0, 1, 2]:
            rng.shuffle(perm)
        if rng.random() < 0.12:  # (rare: a program holding one is not run on oneDNN, see test_differential)
            k = rng.randrange(3)
            perm[k] -= 3  # the same axis, from the end
            self.prog.tags.add("cache negative perm")
        return perm

    def _repeat(self, rng) -> dict:
        """A repeat of one static axis (each entry, or the whole axis, ``times`` times)
        between the concat and the transposes: the unsqueeze's axis, the tile's times and
        the reshape's target as drawn (``target`` holds ints and "dim" for the grown
        cache's own dim, read from its shape)."""
        tags = self.prog.tags
        tags.add("cache repeat")
        repeated = rng.choice([a for a in range(3) if a != self.axis])
        inserted = repeated + rng.choice([0, 1])
        times = rng.choice([1, 2])
        unsqueeze_axis = inserted - 4 if rng.random() < 0.3 else inserted
        tile = [times if k == inserted else 1 for k in range(4)]
        if rng.random() < 0.4 and inserted > 0:
            tile = tile[inserted:]  # Paddle's tile pads the times in front with 1s
            tags.add("cache short tile or reshape 0/-1")
        target = []
        for k, dim in enumerate(self.dims):
            if k == repeated:
                target.append(dim * times)
            elif dim < 0:
                target.append("dim")
            else:
                target.append(0 if k < inserted and rng.random() < 0.3 else dim)
        if rng.random() < 0.3:
            target[rng.randrange(3)] = -1  # Paddle infers it
        if 0 in target or -1 in target:
            tags.add("cache short tile or reshape 0/-1")
        from_end = rng.random() < 0.3  # the grown cache's own dim read as shape(grown)[axis - 3]
        if unsqueeze_axis < 0 or from_end:
            tags.add("cache negative axis")
        return {"unsqueeze": unsqueeze_axis, "tile": tile, "target": target, "from_end": from_end}

    def init(self, x, k: int):
        """The cache before the loop: two entries computed from the feed ``x``, or the
        init of the cache it shares one with."""
        if self.shared_with is not None:
            return self.shared_with.init_value
        self.init_value = paddle.stack([x * 0.5 + float(k), x * -1.0 + 0.25], axis=self.axis)
        return self.init_value

    def grow(self, arg, scope: list):
        """One step: ``arg`` grown by an entry from ``scope``, read through its transposes;
        returns the grown cache and a scalar that observes the read."""
        rng = self.prog.cache_rng
        c = rng.choice(COEFFICIENTS)
        observed = []
        if self.init_written:  # in the first iteration ``arg`` is that buffer
            init = self.init_value if self.shared_with is None else self.shared_with.init_value
            observed.append(paddle.sum(_C_ops.scale_(init, c, 0.25, True)))
        grown = paddle.concat([arg, paddle.unsqueeze(rng.choice(scope), self.axis)], axis=self.concat_axis)
        read = grown
        if self.repeat is not None:
            r = self.repeat
            tiled = paddle.tile(paddle.unsqueeze(grown, r["unsqueeze"]), r["tile"])
            dims = paddle.shape(grown)
            own = dims[self.axis - 3] if r["from_end"] else dims[self.axis]
            read = paddle.reshape(tiled, [own if t == "dim" else t for t in r["target"]])
        for level, perm in enumerate(self.levels):
            read = paddle.transpose(read, perm)
            if self.write == "mid-chain" and level == 0:
                read = _C_ops.scale_(read, c, 0.25, True)
        if self.plain_reader:
            read = paddle.tanh(read)  # an op inplace_pass may make write in place
        if self.write in CACHE_WRITES and not self.write_after_read:
            read = self._write(read, c)
        observed.append(_order_sensitive_sum(read))
        if self.write in CACHE_WRITES and self.write_after_read:
            observed.append(paddle.sum(self._write(read, c)))  # read: saving prunes what no output needs
        total = observed[0] * 0.001
        for value in observed[1:]:
            total = total + value * 0.001
        return grown, total

    def _write(self, read, c: float):
        """``read`` written in place as ``self.write`` says; what is read of it after."""
        if self.write == "assign_out_":
            return _C_ops.assign_out_(read * c, read)
        if self.write == "scale_":
            return _C_ops.scale_(read, c, 0.25, True)
        if self.write == "tanh_":
            return _C_ops.tanh_(read)
        if self.write == "share_data_":
            return _C_ops.scale_(_C_ops.share_data_(read), c, 0.25, True)
        if self.write == "view":
            return _C_ops.scale_(paddle.reshape(read, [-1]), c, 0.25, True)
        return paddle.static.nn.cond(paddle.sum(read) > -1e30, lambda: _C_ops.scale_(read, c, 0.25, True) * 1.0,
                                     lambda: read * 1.0)

    def after_loop(self, result):
        """What is read of the cache's loop result after the loop, if anything."""
        if not self.read_after_loop:
            return []
        self.prog.tags.add("cache read after loop")
        return [paddle.slice(result, [self.axis], [0], [1]) + 1.0]


def _order_sensitive_sum(value):
    """A scalar that changes when ``value``'s elements change or move."""
    flat = paddle.reshape(value, [-1])
    return paddle.sum(flat * paddle.cast(paddle.arange(paddle.shape(flat)[0]), "float32"))


def _caches(prog: _Program) -> list:
    """0-2 caches for the first loop, the second one sometimes starting from the first
    one's init; counts those the rule must rewrite (``prog.cache_rewrites``)."""
    rng = prog.cache_rng
    caches = []
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        caches.append(_Cache(prog, caches[-1] if caches and rng.random() < 0.3 else None))
        if caches[-1].shares_init:
            caches[-1].shared_with.shares_init = True
            prog.tags.add("cache shared init")
    for cache in caches:
        if cache.write is None and not cache.shares_init and not cache.init_written:  # conditions 6-8 hold
            prog.tags.add("cache rewritable")
            prog.cache_rewrites += 1
    return caches


def _loop(prog: _Program, inits: list, outer: list, spare: list, x=None, caches=()):
    """Draw one loop: its results, then what is read after it of what its ``caches``
    (grown from the feed ``x``) observed and of their results."""
    rng = prog.rng
    sink = rng.random() < 0.7
    if sink:
        prog.tags.add("sink")
        inits = inits + [inits[0] * 0.0]
    body = _Body(prog, outer, 0, spare=spare, sink=sink, caches=caches)
    extra = [x * 0.0] + [cache.init(x, k) for k, cache in enumerate(caches)] if caches else []
    results = _counted_loop(body, inits + extra, rng.randint(1, 4))
    regular, cache_results = results[:len(inits)], results[len(inits) + 1:]
    after = [results[len(inits)]] if caches else []  # what the caches' reads observed
    for cache, result in zip(caches, cache_results):
        after += cache.after_loop(result)
    return regular, after


def _program(prog: _Program):
    rng = prog.rng
    x = paddle.static.data("x", SHAPE, "float32")
    if rng.random() < 0.4:
        prog.tags.add("parameters")
        for _ in range(rng.randint(1, 2)):
            values = np.array([rng.choice(COEFFICIENTS) for _ in range(6)], "float32").reshape(SHAPE)
            prog.params.append(paddle.static.create_parameter(
                SHAPE, "float32", default_initializer=paddle.nn.initializer.Assign(values)))
    prog.constants = [paddle.full(SHAPE, 0.75 * (k + 1)) for k in range(rng.randint(0, 2))]
    inits: list = []
    for j in range(rng.randint(1, 4)):
        if inits and rng.random() < 0.1:
            inits.append(inits[-1])  # two loop variables start from one buffer
            prog.tags.add("shared init")
        else:
            inits.append(x * rng.choice(COEFFICIENTS) + float(j))
    # Outer buffers the loop writes are computed from the feed: Paddle Inference would
    # fold a `full` into a constant and ignore the loop's writes to it.
    outer = [x * 0.0 + float(k + 1) for k in range(rng.randint(0, 2))]
    spare = [x * 0.0 + (10.0 + k) for k in range(rng.randint(0, 2))]
    results, observed_by_caches = _loop(prog, inits, outer, spare, x, _caches(prog))
    outputs = []
    if rng.random() < 0.3:
        prog.tags.add("sequential loops")
        # The second loop starts from some of the first one's results (reading
        # those after it would read a loop init: left out) and may write the rest.
        taken = [r for r in results if rng.random() < 0.7] or results[:1]
        rest = [r for r in results if r.id not in _ids(taken)]
        outputs += rest
        spare2 = [x * 0.0 + (20.0 + k) for k in range(rng.randint(0, 1))]
        results, _ = _loop(prog, taken + [x * rng.choice(COEFFICIENTS)], outer + rest, spare2)
        spare += spare2
    if rng.random() < 0.2:
        k = rng.randrange(len(results))
        # Fetch the in-place op's result: save_inference_model prunes ops no fetch
        # needs, in-place ones too, so fetching `results[k]` would skip the write there.
        results[k] = _C_ops.scale_(results[k], rng.choice(COEFFICIENTS), 0.5, True)
        prog.tags.add("in-place after loop")
    outputs += results + observed_by_caches
    anchor = results[0] * 0  # orders the reads below after the loop
    for buffer in outer + spare:
        if rng.random() < (0.5 if buffer.id in _ids(outer) else 0.25):
            outputs.append(buffer + anchor)
            prog.tags.add("outer read after loop")
    return outputs


def build_random_loop(seed: int) -> Built:
    prog = _Program(seed)
    built = build_pir(lambda: _program(prog), FEED)
    built.tags = frozenset(prog.tags)
    built.cache_rewrites, built.cache_copies = prog.cache_rewrites, prog.cache_copies
    return built
