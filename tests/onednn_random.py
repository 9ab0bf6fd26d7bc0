"""Random programs whose ops really run on oneDNN, for the oneDNN differential test.

``build_onednn_program(seed)`` returns ``(body, shape, feed, tags)``: ``body(x)`` builds
the program (outputs in a list) from a fed ``x`` of ``shape``. Most programs are a
decoding step's shape, ``[batch, 1, hidden]``; about one in five is a 4-D image batch
with convolutions. A program has:

- values computed before the loop, from ``STATEMENTS``: the matmul family (without
  bias, with bias, with an activation over it, with a residual), activations
  (sigmoid, gelu, SiLU written out, hardsigmoid, softmax...), ``divide``, ``pow``,
  norms written out (RMSNorm with a divide or an rsqrt, layer_norm), convolutions and
  pooling on 4-D programs;
- a while loop over 1-2 carried values (3 steps), whose body reads the carried values
  and values from before the loop (often only once, inside the loop), computes more
  statements, and writes each carried value back with ``assign_out_`` as a translated
  legacy loop does (sometimes twice: a chain), squashed by ``tanh`` or a scale so that
  values stay bounded;
- outputs: the loop's results and, often, values from before the loop (read after it).

Values are read by several ops at random, so a value read by one op and again later,
a value read once in a loop, and a fused op's output read by plain ops all occur. The
same seed always builds the same program; ``tags`` names what was drawn.
"""

from __future__ import annotations

import random

import numpy as np
import paddle
import paddle.nn.functional as F
from onednn_cases import HIDDEN, parameter
from paddle import _C_ops

DECODE_SHAPE = (-1, 1, HIDDEN)
DECODE_FEED = {"x": np.random.RandomState(0).randn(3, 1, HIDDEN).astype("float32")}
IMAGE_SHAPE = (-1, 4, 6, 6)
IMAGE_FEED = {"x": np.random.RandomState(1).randn(2, 4, 6, 6).astype("float32")}
STEPS = 3

ACTIVATIONS = {
    "sigmoid": F.sigmoid,
    "tanh": paddle.tanh,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu tanh": lambda v: F.gelu(v, approximate=True),
    "silu": F.silu,
    "silu written out": lambda v: F.sigmoid(v) * v,
    "gelu_new written out": lambda v: 0.5 * v * (1.0 + paddle.tanh(0.79788456 * (v + 0.044715 * paddle.pow(v, 3.0)))),
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
    "leaky_relu": F.leaky_relu,
    "abs": paddle.abs,
    "square": paddle.square,
    "clip": lambda v: paddle.clip(v, -1.0, 1.0),
    "exp": lambda v: paddle.exp(paddle.clip(v, -3.0, 3.0)),
    "scale": lambda v: v * 0.5 + 0.25,
    "pow 2": lambda v: paddle.pow(v, 2.0),
    "pow 3": lambda v: paddle.pow(v, 3.0) * 0.1,
    "rsqrt": lambda v: paddle.rsqrt(paddle.abs(v) + 1.0),
    "sqrt": lambda v: paddle.sqrt(paddle.abs(v) + 0.5),
}
# Over the last axis: a decoding step's hidden size.
LAST_AXIS = {
    "softmax": lambda v: F.softmax(v, -1),
    "rms_norm divide": lambda v: v / paddle.sqrt((v * v).mean(-1, keepdim=True) + 1e-6),
    "rms_norm rsqrt": lambda v: v * paddle.rsqrt(paddle.pow(v, 2.0).mean(-1, keepdim=True) + 1e-6),
    "layer_norm": lambda v: F.layer_norm(v, [HIDDEN]),
}
BINARY = {
    "add": paddle.add,
    "subtract": paddle.subtract,
    "multiply": paddle.multiply,
    "divide": lambda a, b: a / (paddle.abs(b) + 1.0),
    "maximum": paddle.maximum,
    "minimum": paddle.minimum,
}


class _Draw:
    def __init__(self, seed: int, image: bool):
        self.rng = random.Random(seed)
        self.image = image
        self.tags: set = set()
        self.weights = []  # parameters made before the loop (a while body cannot make them)

    def tag(self, name: str) -> None:
        self.tags.add(name)

    def make_weights(self) -> None:
        for _ in range(4):
            if self.image:
                self.weights.append((parameter([4, 4, 3, 3]), parameter([4])))
            else:
                self.weights.append((parameter([HIDDEN, HIDDEN]), parameter([HIDDEN])))

    def statement(self, scope: list):
        rng = self.rng
        a, b = rng.choice(scope), rng.choice(scope)
        kinds = ["activation", "binary", "weighted", "weighted"] + ([] if self.image else ["last axis"])
        kind = rng.choice(kinds)
        if kind == "activation":
            name = rng.choice(sorted(ACTIVATIONS))
            self.tag(name)
            return ACTIVATIONS[name](a)
        if kind == "last axis":
            name = rng.choice(sorted(LAST_AXIS))
            self.tag(name)
            return LAST_AXIS[name](a)
        if kind == "binary":
            name = rng.choice(sorted(BINARY))
            self.tag(name)
            return BINARY[name](a, b)
        return self.weighted(a, b)

    def weighted(self, a, b):
        """The matmul family (conv on images), with bias, activation or residual."""
        rng = self.rng
        weight, bias = rng.choice(self.weights)
        if self.image:
            out = F.conv2d(a, weight, padding=1)
            self.tag("conv2d")
        else:
            out = paddle.matmul(a, weight)
            self.tag("matmul")
        form = rng.choice(["plain", "bias", "bias+activation", "residual", "pool" if self.image else "transposed"])
        if form == "bias":
            out = out + (bias.reshape([1, 4, 1, 1]) if self.image else bias)
        elif form == "bias+activation":
            out = out + (bias.reshape([1, 4, 1, 1]) if self.image else bias)
            name = rng.choice(["relu", "gelu", "tanh", "sigmoid", "hardsigmoid", "silu"])
            out = ACTIVATIONS[name](out)
            self.tag(name)
        elif form == "residual":
            out = b + out
        elif form == "pool":
            out = F.avg_pool2d(out, 3, stride=1, padding=1)
        elif form == "transposed":
            out = paddle.matmul(a, weight, transpose_y=True)
        self.tag(f"weighted {form}")
        return out

    def squash(self, value):
        if self.rng.random() < 0.6:
            return paddle.tanh(value)
        return value * 0.5


def build_onednn_program(seed: int):
    image = random.Random(seed).random() < 0.2
    draw = _Draw(seed, image)

    def body(x):
        rng = draw.rng
        draw.make_weights()
        before = [x]
        for _ in range(rng.randint(1, 3)):
            before.append(draw.statement(before))
        carried = rng.randint(1, 2)
        inits = [rng.choice(before) * 1.0 for _ in range(carried)]
        read_inside = rng.sample(before, rng.randint(1, len(before)))
        if any(v is not x for v in read_inside):
            draw.tag("value from before the loop read inside")
        i, n = paddle.full([1], 0, "int64"), paddle.full([1], STEPS, "int64")

        def step(i, *ys):
            scope = list(ys) + read_inside
            for _ in range(rng.randint(1, 4)):
                scope.append(draw.statement(scope))
            fresh = scope[len(ys) + len(read_inside):]
            written = []
            for y in ys:
                new = draw.squash(rng.choice(fresh))
                out = _C_ops.assign_out_(new, y)
                if rng.random() < 0.3:  # a chain, as a translated KV cache is written
                    out = _C_ops.assign_out_(new, out)
                    draw.tag("chain")
                written.append(out)
            return [i + 1] + written

        results = paddle.static.nn.while_loop(lambda i, *ys: i < n, step, [i] + inits)[1:]
        outputs = list(results)
        if rng.random() < 0.5:
            outputs.append(rng.choice(before[1:] or before) * 1.0)
            draw.tag("value from before the loop read after it")
        return outputs

    shape, feed = (IMAGE_SHAPE, IMAGE_FEED) if image else (DECODE_SHAPE, DECODE_FEED)
    return body, shape, feed, draw.tags
