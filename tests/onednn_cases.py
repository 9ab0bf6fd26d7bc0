"""Small programs for the oneDNN classes of issue 15, and the configurations they run on.

Each builder writes ``prefix``.json/.pdiparams (PIR, parameters from a fixed seed) and
returns its feed. The shapes are a decoding step's, ``[batch, 1, hidden]``: the shape
Paddle 3.3.1's inplace_pass acts on.
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle import _C_ops

HIDDEN = 16
FEED = {"x": np.random.RandomState(0).randn(3, 1, HIDDEN).astype("float32")}


def save(prefix: str, body, shape=(-1, 1, HIDDEN)) -> dict:
    """Build ``body(x)`` (one output, or a list) in a fresh PIR program and save it as
    an inference model."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.pir_utils.IrGuard(), paddle.static.program_guard(main, startup):
        paddle.seed(0)
        x = paddle.static.data("x", list(shape), "float32")
        out = body(x)
        exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(paddle.static.Scope()):
            exe.run(startup)
            paddle.static.save_inference_model(prefix, [x], out if isinstance(out, list) else [out], exe,
                                               program=main)
    return FEED


def parameter(shape, dtype="float32"):
    return paddle.static.create_parameter(list(shape), dtype,
                                          default_initializer=paddle.nn.initializer.Normal(std=0.3))


def linear(x, bias=True, weight=None):
    """``x @ W (+ b)``: Paddle's fuse passes make it a oneDNN fc / fused_matmul."""
    out = paddle.matmul(x, parameter([HIDDEN, HIDDEN]) if weight is None else weight)
    if bias:
        out = out + paddle.static.create_parameter([HIDDEN], "float32",
                                                   default_initializer=paddle.nn.initializer.Normal(std=0.3))
    return out


def counted_loop(body, init, steps=3):
    """``while i < steps: y = body(y)``, the loop variable written back with
    ``assign_out_`` as a translated legacy loop writes it (the copy the pass removes)."""
    i = paddle.full([1], 0, "int64")
    n = paddle.full([1], steps, "int64")

    def step(i, y):
        new = body(y)
        return i + 1, _C_ops.assign_out_(new, y)

    return paddle.static.nn.while_loop(lambda i, y: i < n, step, [i, init])[1]


# -- the classes: name -> body --

def silu_written_out(x):  # class 1
    h = linear(x)
    return paddle.nn.functional.sigmoid(h) * h


def gelu_new(x):  # class 1 (GPT-2's tanh approximation)
    h = linear(x)
    return 0.5 * h * (1.0 + paddle.tanh(0.7978845608 * (h + 0.044715 * paddle.pow(h, 3.0))))


def softmax_plus_input(x):  # class 1
    h = linear(x)
    return paddle.nn.functional.softmax(h) + h


def divide_rms_norm(x):  # class 2: divide keeps a plain kernel under Paddle's placement
    h = x * 3.0
    return h / paddle.sqrt((h * h).mean(-1, keepdim=True) + 1e-6) + h


def fused_activation(x):  # class 3: hardsigmoid(x @ W + b) becomes one oneDNN op
    h = paddle.nn.functional.hardsigmoid(linear(x))
    return paddle.pow(h, 2.0) + h


def read_once_in_loop(x):  # class 4: computed before the loop, read once inside it
    h = x * 3.0
    return counted_loop(lambda y: y + paddle.pow(h, 2.0) * 0.1, x)


def residual_in_loop(x):  # class 7: a fused matmul whose residual is computed in the body
    weight = parameter([HIDDEN, HIDDEN])

    def body(y):
        h = paddle.tanh(y)
        return h + linear(h, bias=False, weight=weight)
    return counted_loop(body, x)


def stacked_activations(x):  # found by the differential test: two ops over one fc
    return paddle.nn.functional.sigmoid(paddle.tanh(linear(x)))


CLASSES = {
    "silu written out": silu_written_out,
    "gelu_new": gelu_new,
    "softmax(h) + h": softmax_plus_input,
    "divide RMSNorm": divide_rms_norm,
    "hardsigmoid fused": fused_activation,
    "read once in a loop": read_once_in_loop,
    "residual in a loop": residual_in_loop,
    "stacked activations": stacked_activations,
}


def conv_loop(x):  # class 5: the loop carries relu(conv2d(y))
    weight = parameter([2, 2, 3, 3])
    return counted_loop(lambda y: paddle.nn.functional.relu(paddle.nn.functional.conv2d(y, weight, padding=1)), x)


CONV_SHAPE = (-1, 2, 5, 5)
CONV_FEED = {"x": np.random.RandomState(1).randn(2, 2, 5, 5).astype("float32")}


def paddle_default_predictor(prefix: str, delete=(), onednn: bool = True):
    """What a user of a converted directory writes: Paddle's defaults on CPU (new IR,
    oneDNN with its placement and fuse passes, inplace_pass), with the passes named in
    ``delete`` deleted; ``onednn=False``: with ``disable_mkldnn()``."""
    from paddle import inference

    config = inference.Config(prefix + ".json", prefix + ".pdiparams")
    config.disable_gpu()
    config.disable_glog_info()
    if not onednn:
        config.disable_mkldnn()
    for name in delete:
        config.delete_pass(name)
    return inference.create_predictor(config)
