"""Random loop programs for the differential test.

``build_random_loop(seed)`` draws a while loop over 1-4 carried tensors whose body
is a random sequence of statements: arithmetic on what is in scope, copies into a
loop variable (``assign_out_`` into its block argument, or into the previous
copy's result: a chain), copies into outer buffers, in-place writes, ifs and inner
loops with copies of their own; then reads after the loop (results, outer
buffers). The same seed always builds the same program. (Reading a loop init
after the loop makes Paddle 3.3.1's executor fail on its own; the rule tests cover
that case with its garbage collector off.)
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


def _counted_loop(body, inits, steps):
    i = paddle.full([1], 0, "int64")
    limit = paddle.full([1], steps, "int64")
    outs = paddle.static.nn.while_loop(lambda i, *xs: i < limit, lambda i, *xs: [i + 1, *body(*xs)], [i, *inits])
    return list(outs[1:])


class _Body:
    """Draws one loop body; every choice comes from ``rng`` in a fixed order."""

    def __init__(self, rng: random.Random, outer: list, depth: int):
        self.rng = rng
        self.outer = outer
        self.depth = depth

    def __call__(self, *args):
        rng = self.rng
        scope = list(args) + [o for o in self.outer if rng.random() < 0.5]
        computed: list = []
        handles = list(args)  # what the next copy into each variable writes
        copied = [False] * len(args)
        for _ in range(rng.randint(2, 9)):
            kind = rng.choices(
                ["compute", "copy", "outer copy", "in-place", "if", "inner loop"],
                weights=[5, 5, 1.5, 1, 1, 0.7 if self.depth == 0 else 0],
            )[0]
            if kind == "compute" or (kind in ("in-place", "if", "inner loop") and not computed):
                a, b = rng.choice(scope), rng.choice(scope)
                value = a * rng.choice(COEFFICIENTS) + b * rng.choice(COEFFICIENTS)
                scope.append(value)
                computed.append(value)
            elif kind == "copy":
                j = rng.randrange(len(args))
                source = rng.choice(computed) if computed and rng.random() < 0.85 else rng.choice(scope)
                if _cannot_build_copy(source, handles[j]):
                    continue
                handles[j] = _C_ops.assign_out_(source, handles[j])
                copied[j] = True
                if rng.random() < 0.4:
                    scope.append(handles[j])  # later statements read through the copy
            elif kind == "outer copy" and self.outer:
                source, buffer = rng.choice(scope), rng.choice(self.outer)
                if not _cannot_build_copy(source, buffer):
                    _C_ops.assign_out_(source, buffer)
            elif kind == "in-place":
                target = rng.choice(computed if rng.random() < 0.8 else scope)
                _C_ops.scale_(target, rng.choice(COEFFICIENTS), 0.25, True)
            elif kind == "if":
                a = rng.choice(scope)
                scale = rng.choice(COEFFICIENTS)
                value = paddle.static.nn.cond(
                    paddle.sum(rng.choice(scope)) > 0, lambda: a * scale, lambda: a - scale
                )
                scope.append(value)
                computed.append(value)
            elif kind == "inner loop":
                seed = rng.choice(computed)
                init = seed if rng.random() < 0.3 else seed * 1.0  # the inner copy may write `seed`
                inner = _counted_loop(_Body(rng, [], self.depth + 1), [init], rng.randint(1, 3))[0]
                scope.append(inner)
                computed.append(inner)
        return [
            handles[j] if copied[j] else (rng.choice(computed) if computed and rng.random() < 0.8 else args[j])
            for j in range(len(args))
        ]


def _program(seed: int):
    rng = random.Random(seed)
    x = paddle.static.data("x", SHAPE, "float32")
    inits: list = []
    for j in range(rng.randint(1, 4)):
        if inits and rng.random() < 0.1:
            inits.append(inits[-1])  # two loop variables start from one buffer
        else:
            inits.append(x * rng.choice(COEFFICIENTS) + float(j))
    outer = [paddle.full(SHAPE, float(k + 1)) for k in range(rng.randint(0, 2))]
    results = _counted_loop(_Body(rng, outer, 0), inits, rng.randint(1, 4))
    outputs = list(results)
    anchor = results[0] * 0  # orders the reads below after the loop
    for buffer in outer:
        if rng.random() < 0.5:
            outputs.append(buffer + anchor)
    return outputs


def build_random_loop(seed: int) -> Built:
    return build_pir(lambda: _program(seed), FEED)
