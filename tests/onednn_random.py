"""Random programs whose ops really run on oneDNN, for the oneDNN differential test.

``build_onednn_program(seed)`` returns ``(body, shape, feed, tags)``: ``body(x)`` builds
the program (outputs in a list) from a fed ``x`` of ``shape``. Most programs are a
decoding step's shape, ``[batch, 1, hidden]``; about one in five is a 4-D image batch
with convolutions, pooling and normalisations; about one decode program in eight
computes in bfloat16 (``x`` and the weights cast to it, or, in half of them, the matrices
held as bfloat16 parameters, as a bfloat16 model's are, whose transposed products in a
loop run on our kernel: ``passes.loop_bfloat16_gemv``; the outputs cast back; float32
instead where oneDNN computes no bfloat16, ``paddlenlp_ext.cpu``); about a third of a
float32 decode program's matrices are computed (``tanh`` of a parameter), so that a
loop's product by one is of two activations (``passes.loop_batched_matmul``). A
program has:

- values computed before the loop, from ``STATEMENTS``: the matmul family (without
  bias, with bias, with an activation over it, with a residual, with a residual it is
  broadcast to), activations
  (sigmoid, gelu, SiLU written out, hardsigmoid, softmax, floor...), ``divide``,
  ``pow``, norms written out (RMSNorm with a divide or an rsqrt, layer_norm),
  convolutions, pooling and batch, instance and group norms on 4-D programs, and (in
  float32 programs, before the loop) int ids cast from an activation (int64 or int32,
  by oneDNN's cast) used in arithmetic and cast back, and, in decode programs, in-place
  row writes (one position of a value written by ``set_value_with_tensor_``, as the
  static cache writes, its result read), into values fed, computed or carried;
- often (in float32 programs: oneDNN off cannot run a bfloat16 ``if``,
  ``test_onednn_classes``) an ``if`` (``paddle.static.nn.cond`` on the data) whose
  branches compute one more such value each;
- a while loop over 1-2 carried float32 values (3 steps; Paddle 3.3.1 cannot run a
  copy-free loop carrying bfloat16, ``test_onednn_classes``), whose body reads the carried values
  and values from before the loop (often only once, inside the loop), computes more
  statements, and writes each carried value back with ``assign_out_`` as a translated
  legacy loop does (sometimes twice: a chain), or, in a copy-free loop (as to_static
  and ``while_loop`` write it), yields it as it is; squashed by ``tanh`` or a scale so
  that values stay bounded;
- outputs: the loop's results and, often, values from before the loop (read after it).

Values are read by several ops at random, so a value read by one op and again later,
a value read once in a loop, and a fused op's output read by plain ops all occur;
and a statement is sometimes drawn again on the same operands (a layer called twice,
or a body repeating a value from before the loop), which Paddle's
``common_subexpression_elimination_pass`` merges into one value. The same seed always
builds the same program; ``tags`` names what was drawn.
"""

from __future__ import annotations

import random

import numpy as np
import paddle
import paddle.nn.functional as F
from onednn_cases import HIDDEN, parameter
from paddle import _C_ops

from paddlenlp_ext.cpu import computes_bfloat16

DECODE_SHAPE = (-1, 1, HIDDEN)
DECODE_FEED = {"x": np.random.RandomState(0).randn(3, 1, HIDDEN).astype("float32")}
CHANNELS = 4
IMAGE_SHAPE = (-1, CHANNELS, 6, 6)
IMAGE_FEED = {"x": np.random.RandomState(1).randn(2, CHANNELS, 6, 6).astype("float32")}
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
    # The ids statements make multiples of 0.1, whose quadruples fall on integers, where
    # a last-bit difference between oneDNN's kernels and the plain ones flips the floor;
    # shifted by 0.5 they sit at least 0.1 from one.
    "floor": lambda v: paddle.floor(v * 4.0 + 0.5) * 0.25,
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
# What has a bfloat16 CPU kernel (Paddle 3.3.1): silu, pow, square, rsqrt and
# hardsigmoid have none.
BFLOAT16_OPS = frozenset({"sigmoid", "tanh", "relu", "gelu", "gelu tanh", "silu written out", "hardswish",
                          "leaky_relu", "abs", "clip", "exp", "scale", "sqrt", "floor", "softmax",
                          "rms_norm divide", "layer_norm"})
# Int ids cast from an activation (oneDNN's cast writes them), used in arithmetic.
IDS = {
    "ids + 1": lambda ids: (ids + 1) * ids,
    "ids bucket": lambda ids: paddle.clip(ids, -3, 3) * 2 + ids,
    "ids modulo": lambda ids: paddle.remainder(ids, paddle.full([1], 5, ids.dtype)) + ids,
}


def _is_parameter(value) -> bool:
    producer = value.get_defining_op()
    return producer is not None and producer.name() == "builtin.parameter"


class _Draw:
    def __init__(self, seed: int, image: bool, dtype: str):
        self.rng = random.Random(seed)
        # Whether a drawn RMSNorm is PaddleNLP's LlamaRMSNorm (passes.loop_rms_norm's
        # chain): a generator of its own, so that the other draws stay as they were.
        self.norm_rng = random.Random(seed * 7919 + 1)
        self.norm_weight = None  # LlamaRMSNorm's weight, a parameter
        self.image = image
        self.dtype = dtype
        self.tags: set = set()
        self.weights = []  # parameters made before the loop (a while body cannot make them)
        self.norms = []  # (mean, variance, weight, bias) of the image norms
        self.drawn = []  # (build, operands) of every statement: to draw one again
        self.row_writes = set()  # the row writes' builds: kept out of ifs (below)
        self.in_loop = False  # drawing a while body's statements
        self.in_if = False  # drawing an if branch's statements

    def tag(self, name: str) -> None:
        self.tags.add(name)

    def make_weights(self) -> None:
        for _ in range(4):
            if self.image:
                self.weights.append((parameter([CHANNELS, CHANNELS, 3, 3]), parameter([CHANNELS])))
            else:
                weight, bias = parameter([HIDDEN, HIDDEN]), parameter([HIDDEN])
                if self.dtype != "float32" and self.rng.random() < 0.5:
                    # held in bfloat16, as a bfloat16 model's: a loop's transposed product of
                    # one runs on our kernel (passes.loop_bfloat16_gemv)
                    weight = parameter([HIDDEN, HIDDEN], self.dtype)
                    bias = bias.cast(self.dtype)
                    self.tag("bfloat16 parameters")
                elif self.dtype != "float32":
                    weight, bias = weight.cast(self.dtype), bias.cast(self.dtype)
                elif self.rng.random() < 0.3:
                    # a matrix computed, not a parameter: a loop's product by it is one of
                    # two activations, as attention's over a KV cache, on our batched
                    # kernel (passes.loop_batched_matmul)
                    weight = paddle.tanh(weight)
                    self.tag("float32 computed matrices")
                self.weights.append((weight, bias))
        if not self.image:  # made last: the other parameters' initial values stay as they were
            self.norm_weight = parameter([HIDDEN], self.dtype)
        if self.image:
            self.norms = [(parameter([CHANNELS]), paddle.abs(parameter([CHANNELS])) + 1.0, parameter([CHANNELS]),
                           parameter([CHANNELS])) for _ in range(2)]

    def statement(self, scope: list):
        """A new value computed from ``scope``: a fresh statement, or one drawn before
        drawn again on the same operands."""
        rng = self.rng
        again = [(build, operands) for build, operands in self.drawn
                 if all(any(value is known for known in scope) for value in operands)
                 and not (self.in_if and build in self.row_writes)]
        if again and rng.random() < 0.15:
            build, operands = rng.choice(again)
            self.tag("duplicated subexpression")
            return build(*operands)
        build, operands = self._fresh(rng.choice(scope), rng.choice(scope))
        self.drawn.append((build, operands))
        return build(*operands)

    def _fresh(self, a, b):
        """``(build, operands)`` of a statement: ``build(*operands)`` computes it."""
        rng = self.rng
        # ids: before the loop only (oneDNN's int ids multiplied in a loop body go
        # wrong from its second step: docs/onednn.md), and in float32 programs only (a
        # bfloat16 rounding of oneDNN's that differs flips an id)
        ids = not self.in_loop and self.dtype == "float32"
        kinds = ["activation", "binary", "weighted", "weighted"] + (["ids"] if ids else [])
        # No row write in an if: Paddle Inference's dead-code elimination can erase an if
        # with the in-place writes of its branches (test_paddle_defects)
        kinds += ["image norm"] if self.image else ["last axis"] + ([] if self.in_if else ["row write"])
        kind = rng.choice(kinds)
        if kind == "row write":
            return self._row_write(), (a, b)
        if kind == "activation":
            name = rng.choice(sorted(self._usable(ACTIVATIONS)))
            self.tag(name)
            return ACTIVATIONS[name], (a,)
        if kind == "last axis":
            name = rng.choice(sorted(self._usable(LAST_AXIS)))
            if name.startswith("rms_norm") and self.norm_rng.random() < 0.5:
                self.tag("LlamaRMSNorm")
                return self._llama_rms_norm(), (a,)
            self.tag(name)
            return LAST_AXIS[name], (a,)
        if kind == "binary":
            name = rng.choice(sorted(BINARY))
            self.tag(name)
            return BINARY[name], (a, b)
        if kind == "ids":
            return self._ids(), (a,)
        if kind == "image norm":
            return self._image_norm(), (a,)
        return self._weighted(), (a, b)

    def _llama_rms_norm(self):
        """PaddleNLP 2.8.1's LlamaRMSNorm as a static program traces it: in float32, cast to
        the weight's dtype when that is bfloat16, times the weight (a parameter)."""
        weight = self.norm_weight

        def build(v):
            c = v.astype("float32")
            n = paddle.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-6) * c
            return (n.astype(weight.dtype) if weight.dtype == paddle.bfloat16 else n) * weight
        return build

    def _row_write(self):
        """One position of ``a`` written in place with one of ``b``, as the static cache
        writes a row (``kv_cache.write_cache_position_``), the written buffer read."""
        rng = self.rng
        self.tag("row write")
        p, q = rng.randrange(HIDDEN), rng.randrange(HIDDEN)

        def build(a, b):
            return _C_ops.set_value_with_tensor_(a, b[:, :, q:q + 1], [p], [p + 1], [1], [2], [], []) * 1.0
        self.row_writes.add(build)
        return build

    def _usable(self, ops: dict) -> list:
        return [name for name in ops if self.dtype == "float32" or name in BFLOAT16_OPS]

    def _ids(self):
        rng = self.rng
        name, int_dtype, dtype = rng.choice(sorted(IDS)), rng.choice(["int64", "int32"]), self.dtype
        self.tag("ids from a oneDNN cast")
        self.tag(name)

        def build(v):
            ids = paddle.cast(v * 4.0, int_dtype)
            return paddle.cast(IDS[name](ids), dtype) * 0.1
        return build

    def _image_norm(self):
        rng = self.rng
        name = rng.choice(["batch_norm", "instance_norm", "group_norm", "max_pool"])
        mean, variance, weight, bias = rng.choice(self.norms)
        self.tag(name)
        if name == "batch_norm":
            return lambda v: F.batch_norm(v, mean, variance, weight, bias, training=False)
        if name == "instance_norm":
            return lambda v: F.instance_norm(v, weight=weight, bias=bias)
        if name == "group_norm":
            return lambda v: F.group_norm(v, 2, weight=weight, bias=bias)
        return lambda v: F.max_pool2d(v, 3, stride=1, padding=1)

    def _weighted(self):
        """The matmul family (conv on images), with bias, activation or residual."""
        rng = self.rng
        weight, bias = rng.choice(self.weights)
        forms = ["plain", "bias", "bias+activation", "residual", "pool" if self.image else "transposed"]
        if not self.image:
            forms.append("broadcast residual")
        form = rng.choice(forms)
        if self.in_loop and weight.dtype == paddle.bfloat16 and _is_parameter(weight) and rng.random() < 0.5:
            form = "transposed"  # a decode step's product as a bfloat16 model exports it: on our kernel
        activation = rng.choice(sorted({"relu", "gelu", "tanh", "sigmoid", "hardsigmoid", "silu"}
                                       & set(self._usable(ACTIVATIONS)) | {"relu"}))
        self.tag("conv2d" if self.image else "matmul")
        self.tag(f"weighted {form}")
        if form == "bias+activation":
            self.tag(activation)
        image = self.image

        def build(a, b):
            out = F.conv2d(a, weight, padding=1) if image else paddle.matmul(a, weight)
            if form in ("bias", "bias+activation"):
                out = out + (bias.reshape([1, CHANNELS, 1, 1]) if image else bias)
            if form == "bias+activation":
                out = ACTIVATIONS[activation](out)
            elif form == "residual":
                out = b + out
            elif form == "broadcast residual":  # the product added to two positions, averaged back to one
                out = (paddle.concat([b, b * 0.5], axis=1) + out).mean(axis=1, keepdim=True)
            elif form == "pool":
                out = F.avg_pool2d(out, 3, stride=1, padding=1)
            elif form == "transposed":
                out = paddle.matmul(a, weight, transpose_y=True)
            return out
        return build

    def squash(self, value):
        if self.rng.random() < 0.6:
            return paddle.tanh(value)
        return value * 0.5


def build_onednn_program(seed: int):
    choice = random.Random(seed)
    image = choice.random() < 0.2
    dtype = "bfloat16" if not image and choice.random() < 0.125 else "float32"
    if not computes_bfloat16():  # oneDNN computes no bfloat16 on this CPU: a float32 program instead
        dtype = "float32"
    draw = _Draw(seed, image, dtype)
    if dtype != "float32":
        draw.tag(dtype)

    def as_float32(value):
        return value.cast("float32") if dtype != "float32" else value

    def body(x):
        rng = draw.rng
        draw.make_weights()
        start = x.cast(dtype) if dtype != "float32" else x
        before = [start]
        for _ in range(rng.randint(1, 3)):
            before.append(draw.statement(before))
        if dtype == "float32" and rng.random() < 0.3:  # (a bfloat16 if: test_onednn_classes)
            draw.tag("if before the loop")
            decided = list(before)  # what both branches may read
            draw.in_if = True
            before.append(paddle.static.nn.cond(paddle.mean(x) > 0.0, lambda: draw.statement(decided),
                                                lambda: draw.statement(decided)))
            draw.in_if = False
        carried = rng.randint(1, 2)
        # A loop carries float32 (a bfloat16 program's body computes in bfloat16)
        inits = [as_float32(rng.choice(before)) * 1.0 for _ in range(carried)]
        read_inside = rng.sample(before, rng.randint(1, len(before)))
        if any(v is not start for v in read_inside):
            draw.tag("value from before the loop read inside")
        copy_free = rng.random() < (0.5 if image else 0.3)
        draw.tag("copy-free loop" if copy_free else "loop with copies")
        i, n = paddle.full([1], 0, "int64"), paddle.full([1], STEPS, "int64")

        def step(i, *ys):
            draw.in_loop = True
            scope = [y.cast(dtype) if dtype != "float32" else y for y in ys] + read_inside
            for _ in range(rng.randint(1, 4)):
                scope.append(draw.statement(scope))
            fresh = scope[len(ys) + len(read_inside):]
            written = []
            for y in ys:
                new = as_float32(draw.squash(rng.choice(fresh)))
                if copy_free:
                    written.append(new)
                    continue
                out = _C_ops.assign_out_(new, y)
                if rng.random() < 0.3:  # a chain, as a translated KV cache is written
                    out = _C_ops.assign_out_(new, out)
                    draw.tag("chain")
                written.append(out)
            draw.in_loop = False
            return [i + 1] + written

        results = paddle.static.nn.while_loop(lambda i, *ys: i < n, step, [i] + inits)[1:]
        outputs = list(results)
        if rng.random() < 0.5:
            outputs.append(rng.choice(before[1:] or before) * 1.0)
            draw.tag("value from before the loop read after it")
        return [as_float32(out) for out in outputs]

    shape, feed = (IMAGE_SHAPE, IMAGE_FEED) if image else (DECODE_SHAPE, DECODE_FEED)
    return body, shape, feed, draw.tags
