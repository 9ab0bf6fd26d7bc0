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
}


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
        self.tags: set = set()
        self.params: list = []
        self.constants: list = []
        self.frozen: set = set()

    def writable(self, values) -> list:
        return [v for v in values if v.id not in self.frozen]

    def in_place(self, target, other=None):
        """One in-place op on ``target`` (a copy of nothing: it writes target's buffer)."""
        rng = self.rng
        kind = rng.choice(["scale_", "scale_", "tanh_", "add_"] if other is not None else ["scale_", "scale_", "tanh_"])
        if kind == "scale_":
            _C_ops.scale_(target, rng.choice(COEFFICIENTS), 0.25, True)
        elif kind == "tanh_":
            _C_ops.tanh_(target)
        else:
            _C_ops.add_(target, other)

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

    def __init__(self, prog: _Program, outer: list, depth: int, *, spare=(), carried=(), sink=False):
        self.prog = prog
        self.rng = prog.rng
        self.outer = outer
        self.spare = list(spare)
        self.carried = _ids(carried)
        self.depth = depth
        self.sink = sink

    def __call__(self, *args):
        prog, rng, tags = self.prog, self.rng, self.prog.tags
        args = list(args)
        n = len(args) - (1 if self.sink else 0)  # loop variables copies may write
        scope = list(args) + [o for o in self.outer if rng.random() < 0.5]
        computed: list = []
        invariants: list = []
        observed: list = []  # reads the sink makes observable
        handles = list(args)  # what the next copy into each variable writes
        copied = [False] * len(args)
        spare = list(self.spare)
        inner_weight = (0.8, 0.25, 0)[min(self.depth, 2)]
        for _ in range(rng.randint(2, 10)):
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


def _loop(prog: _Program, inits: list, outer: list, spare: list):
    rng = prog.rng
    sink = rng.random() < 0.7
    if sink:
        prog.tags.add("sink")
        inits = inits + [inits[0] * 0.0]
    body = _Body(prog, outer, 0, spare=spare, sink=sink)
    results = _counted_loop(body, inits, rng.randint(1, 4))
    return results


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
    results = _loop(prog, inits, outer, spare)
    outputs = []
    if rng.random() < 0.3:
        prog.tags.add("sequential loops")
        # The second loop starts from some of the first one's results (reading
        # those after it would read a loop init: left out) and may write the rest.
        taken = [r for r in results if rng.random() < 0.7] or results[:1]
        rest = [r for r in results if r.id not in _ids(taken)]
        outputs += rest
        spare2 = [x * 0.0 + (20.0 + k) for k in range(rng.randint(0, 1))]
        results = _loop(prog, taken + [x * rng.choice(COEFFICIENTS)], outer + rest, spare2)
        spare += spare2
    if rng.random() < 0.2:
        k = rng.randrange(len(results))
        # Fetch the in-place op's result: save_inference_model prunes ops no fetch
        # needs, in-place ones too, so fetching `results[k]` would skip the write there.
        results[k] = _C_ops.scale_(results[k], rng.choice(COEFFICIENTS), 0.5, True)
        prog.tags.add("in-place after loop")
    outputs += results
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
    return built
