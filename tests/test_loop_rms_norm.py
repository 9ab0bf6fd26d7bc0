"""Our RMSNorm kernel (``native.load_rms_norm``) and the pass that runs a decode loop's
RMSNorm on it (``passes.loop_rms_norm``): the kernel against Paddle's ops in both dtypes;
PaddleNLP's own ``LlamaRMSNorm`` in a loop, rewritten and right on oneDNN all and off;
each safety condition; the route without a kernel. The llama loops' tokens on it are the
export, decoding and bfloat16 tests'."""

import numpy as np
import paddle
import pytest
from hardware import requires_avx512_bf16, requires_bfloat16
from test_batched_matmul import _check_float32_runs
from test_bfloat16_gemv import ROUNDING, _check_runs
from test_loop_float32_gemv import UNIT_ROUNDOFF
from paddlenlp.transformers import LlamaConfig
from paddlenlp.transformers.llama.modeling import LlamaRMSNorm

from paddlenlp_ext.inference import StaticGenerationModel
from paddlenlp_ext.native import load_rms_norm
from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.program_files import load_program, run_program

HIDDEN = 80
EPSILON = 1e-5


def _paddle_norm(x, w, epsilon):
    """LlamaRMSNorm's ops (dygraph), as a static program traces them."""
    c = x.astype("float32")
    n = paddle.rsqrt(c.pow(2).mean(-1, keepdim=True) + epsilon) * c
    return (n.astype(w.dtype) if w.dtype == paddle.bfloat16 else n) * w


@requires_avx512_bf16
@pytest.mark.parametrize("shape", [(3, 1, HIDDEN), (2, 4096), (HIDDEN,)])
def test_the_float32_kernel_is_the_norm_within_float32s_rounding(shape):
    """Every element within the bound of a float32 sum of ``h`` squares (the order of the
    sum is the kernel's own), then a square root, a division and two products."""
    norm, why = load_rms_norm()
    assert norm is not None, why
    rng = np.random.default_rng(sum(shape))
    x, w = rng.normal(size=shape).astype("float32"), rng.normal(size=shape[-1:]).astype("float32")
    with dygraph_mode():
        got = norm(paddle.to_tensor(x), paddle.to_tensor(w), EPSILON).numpy().astype("float64")
    x64 = x.astype("float64")
    exact = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + EPSILON) * w
    bound = (shape[-1] + 8) * UNIT_ROUNDOFF * np.abs(exact)
    assert got.shape == exact.shape and (np.abs(got - exact) <= bound).all(), np.abs(got - exact).max()


@requires_avx512_bf16
def test_the_bfloat16_kernel_rounds_where_paddles_ops_do():
    """bfloat16: the normalized value rounded to bfloat16 before the product, the product
    rounded again. The scale differs from Paddle's in its last float32 bits (the order of
    the sum), which can move a rounding to the next bfloat16: at most one unit of each."""
    norm, why = load_rms_norm()
    assert norm is not None, why
    rng = np.random.default_rng(7)
    with dygraph_mode():
        x = paddle.to_tensor(rng.normal(size=(4, 1, 4096)).astype("float32")).astype("bfloat16")
        w = paddle.to_tensor(rng.normal(size=(4096,)).astype("float32")).astype("bfloat16")
        got = norm(x, w, EPSILON)
        assert got.dtype == paddle.bfloat16
        got, want = got.astype("float32").numpy(), _paddle_norm(x, w, EPSILON).astype("float32").numpy()
    bound = 3 * ROUNDING * np.abs(want)
    assert (np.abs(got - want) <= bound).all(), np.abs(got - want).max()
    assert (got == want).mean() > 0.99  # the same roundings nearly everywhere


class _NormLoop(paddle.nn.Layer):
    """``steps`` times in a while loop: ``h = norm(h) * 0.5 (+ h)``, with PaddleNLP's
    ``LlamaRMSNorm`` (``variant`` None) or the same ops written out, one condition broken
    (``variant``: "fourth power", "first axis", "variance read", "computed weight",
"interleaved"), or none
("written out")."""

    def __init__(self, variant=None):
        super().__init__()
        self.variant = variant
        self.norm = LlamaRMSNorm(LlamaConfig(hidden_size=HIDDEN, rms_norm_eps=EPSILON))
        self.norm.weight.set_value(np.random.default_rng(3).normal(1, 0.2, HIDDEN).astype("float32"))

    def _written_out(self, h):
        c = h.astype("float32")
        squares = c.pow(4 if self.variant == "fourth power" else 2)
        side = paddle.tanh(h) if self.variant == "interleaved" else None  # an op amid the chain's
        variance = squares.mean(0 if self.variant == "first axis" else -1, keepdim=True)
        n = paddle.rsqrt(variance + EPSILON) * c
        weight = self.norm.weight * 1.0 if self.variant == "computed weight" else self.norm.weight
        out = (n.astype(weight.dtype) if weight.dtype == paddle.bfloat16 else n) * weight
        if side is not None:
            out = out + side * 0.01
        return out + variance.mean() * 0.01 if self.variant == "variance read" else out

    def forward(self, x, steps):
        h = x.astype(self.norm.weight.dtype)
        i = paddle.zeros([1], dtype="int64")
        while i < steps:
            normed = self.norm(h) if self.variant is None else self._written_out(h)
            # bfloat16 without the residual add: Paddle 3.3.1's Executor fails on it here
            # (oneDNN's add raises dnnl::error).
            h = normed * 0.5 if h.dtype == paddle.bfloat16 else normed * 0.5 + h
            i = i + 1
        return h.astype("float32")


def _save_norm_loop(directory, dtype="float32", variant=None):
    with dygraph_mode():
        layer = _NormLoop(variant)
        layer.to(dtype=dtype)  # a bfloat16 model's parameters are bfloat16
        spec = [paddle.static.InputSpec([None, 1, HIDDEN], "float32", "x"),
                paddle.static.InputSpec([1], "int64", "steps")]
        with paddle.pir_utils.IrGuard():
            paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), str(directory / "model"))
    feed = {"x": np.random.default_rng(1).normal(size=(3, 1, HIDDEN)).astype("float32"), "steps": np.array([3])}
    return feed, run_program(load_program(directory), feed)[0]  # the Executor, no pass


# Paddle 3.3.1's oneDNN fails on this float32 loop as it is (std::exception, on Paddle
# Inference's default CPU config as on ours; not on the Executor, not with oneDNN off): a
# program the rule leaves is checked with oneDNN off, where the rule runs the same.
KEPT_ONEDNN = "off"


@requires_avx512_bf16
@pytest.mark.parametrize("onednn", ["all", "off"])
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=requires_bfloat16)])
def test_paddlenlps_rms_norm_in_a_loop_runs_on_the_kernel(tmp_path, onednn, dtype):
    feed, want = _save_norm_loop(tmp_path, dtype)
    model = StaticGenerationModel(tmp_path, onednn=onednn, fall_back=False)
    report = model.pipeline.get("loop_rms_norm")
    assert (report.rewritten, report.kept, report.unavailable) == (1, 0, None)
    (_check_float32_runs if dtype == "float32" else _check_runs)(model, feed, want)  # run after run


@requires_avx512_bf16
@pytest.mark.parametrize("variant", [
    "fourth power",  # condition 2: the exponent
    "first axis",  # condition 2: the reduced axis
    "variance read",  # condition 1: a value of the chain read elsewhere
    "computed weight",  # condition 3: no parameter
    "interleaved",  # condition 5: another op between the chain's
])
def test_what_the_rule_leaves_as_it_is(tmp_path, variant):
    feed, want = _save_norm_loop(tmp_path, variant=variant)
    model = StaticGenerationModel(tmp_path, onednn=KEPT_ONEDNN, fall_back=False)
    report = model.pipeline.get("loop_rms_norm")
    assert (report.rewritten, report.kept) == (0, 1), report.summary()
    _check_float32_runs(model, feed, want)


@requires_avx512_bf16
def test_the_norm_written_out_as_paddlenlp_writes_it_runs_on_the_kernel(tmp_path):
    """The written-out ops with no condition broken are the rule's too (the variants
    above differ from it in one condition each)."""
    feed, want = _save_norm_loop(tmp_path, variant="written out")
    model = StaticGenerationModel(tmp_path, fall_back=False)
    assert model.pipeline.get("loop_rms_norm").rewritten == 1
    _check_float32_runs(model, feed, want)


def test_without_the_kernel_the_norm_stays_as_it_is_and_says_why(tmp_path, monkeypatch):
    """Condition 7: no AVX512-BF16, or no compiler: the step changes nothing."""
    from paddlenlp_ext import native

    monkeypatch.setattr(native, "load_rms_norm", lambda: (None, "no compiler here"))
    feed, want = _save_norm_loop(tmp_path)
    model = StaticGenerationModel(tmp_path, onednn=KEPT_ONEDNN, fall_back=False)
    report = model.pipeline.get("loop_rms_norm")
    assert (report.rewritten, report.kept, report.unavailable) == (0, 1, "no compiler here")
    _check_float32_runs(model, feed, want)
