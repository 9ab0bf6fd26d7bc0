"""Our batched kernels (``native``: ``x @ y^T`` and ``x @ y`` per batch, in bfloat16 and in
float32) and the pass that runs a decode loop's products of two activations on them
(``passes.loop_batched_matmul``): each kernel's error bound, with broadcast batch dims;
each safety condition; the route without a kernel. The llama loops' accuracy contract
on them is in ``test_bfloat16.py`` and the float32 loops' tests (``test_llama_loops``)."""

import numpy as np
import paddle
import pytest
from hardware import requires_avx512_bf16, requires_bfloat16
from test_bfloat16_gemv import ROUNDING, _bfloat16_values, _check_runs
from test_loop_float32_gemv import UNIT_ROUNDOFF, float32_gemv_pays, threads  # noqa: F401 (fixtures)

from paddlenlp_ext.inference import StaticGenerationModel
from paddlenlp_ext.program_files import load_program, run_program
from paddlenlp_ext.native import load_bfloat16_batched_matmul, load_float32_batched_matmul
from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.passes import pipeline

HEAD = 40  # not a multiple of 32 (the transposed kernel's step) nor 16 (a register of sums)
POSITIONS = 37
# (x's shape, y's shape, transpose_y) both kernels are checked on
PRODUCTS = [
    ((2, 4, 3, 40), (2, 4, 37, 40), True),
    ((2, 4, 3, 37), (2, 4, 37, 130), False),  # more than 128 columns: two passes
    ((1, 3, 5), (4, 1, 9, 5), True),  # batch dims broadcast both ways, ranks differ
    ((4, 1, 2, 9), (3, 9, 17), False),
    ((2, 7), (5, 7), True),  # no batch dims
    ((1, 8, 1, 128), (1, 8, 300, 128), True),  # a decode step's attention: one row a head
    ((1, 8, 1, 300), (1, 8, 300, 128), False),
]


@requires_avx512_bf16
@pytest.mark.parametrize("x_shape, y_shape, transpose_y", [
    *PRODUCTS,
    ((2, 1, 3, 256), (2, 1, 50, 256), True),  # the longest rows the short-row path takes
    ((2, 1, 3, 257), (2, 1, 50, 257), True),  # the shortest the long-row path takes
])
def test_the_kernel_is_the_product_rounded_once_to_bfloat16(x_shape, y_shape, transpose_y):
    """The bound of ``test_bfloat16_gemv``'s test: float32 sums of exact bfloat16 products
    rounded once to bfloat16."""
    product, why = load_bfloat16_batched_matmul()
    assert product is not None, why
    rng = np.random.default_rng(sum(x_shape) * 100 + sum(y_shape))
    x, y = _bfloat16_values(rng.normal(size=x_shape)), _bfloat16_values(rng.normal(size=y_shape))
    with dygraph_mode():
        out = product(paddle.to_tensor(x.astype("float32")).astype("bfloat16"),
                      paddle.to_tensor(y.astype("float32")).astype("bfloat16"), transpose_y)
        assert out.dtype == paddle.bfloat16
        got = out.astype("float32").numpy()
    y_as_used = np.swapaxes(y, -1, -2) if transpose_y else y
    exact = x @ y_as_used
    assert got.shape == exact.shape
    k = x.shape[-1]
    summing = k * 2.0**-24 * (np.abs(x) @ np.abs(y_as_used))
    bound = ROUNDING * (np.abs(exact) + summing) + summing
    assert (np.abs(got - exact) <= bound).all(), np.abs(got - exact).max()


@requires_avx512_bf16
@pytest.mark.parametrize("x_shape, y_shape, transpose_y", [
    *PRODUCTS,
    ((2, 2, 4, 128), (2, 2, 150, 128), True),  # grouped queries: 4 rows a key/value head
])
def test_the_float32_kernel_is_the_product_summed_in_float32(threads, x_shape, y_shape, transpose_y):
    """Every element within the bound of float32 sums of ``k`` products (each rounding off
    by at most ``2**-24`` of what it sums), at one thread and two."""
    product, why = load_float32_batched_matmul()
    assert product is not None, why
    rng = np.random.default_rng(sum(x_shape) * 100 + sum(y_shape))
    x, y = rng.normal(size=x_shape).astype("float32"), rng.normal(size=y_shape).astype("float32")
    with dygraph_mode():
        out = product(paddle.to_tensor(x), paddle.to_tensor(y), transpose_y)
        assert out.dtype == paddle.float32
        got = out.numpy().astype("float64")
    y_as_used = (np.swapaxes(y, -1, -2) if transpose_y else y).astype("float64")
    exact = x.astype("float64") @ y_as_used
    assert got.shape == exact.shape
    bound = (x.shape[-1] + 1) * UNIT_ROUNDOFF * (np.abs(x.astype("float64")) @ np.abs(y_as_used))
    assert (np.abs(got - exact) <= bound).all(), np.abs(got - exact).max()


@requires_avx512_bf16
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_batch_dims_that_do_not_broadcast_are_refused(dtype):
    loader = load_bfloat16_batched_matmul if dtype == "bfloat16" else load_float32_batched_matmul
    product, _ = loader()
    with dygraph_mode(), pytest.raises(Exception, match="batch dims do not broadcast"):
        product(paddle.ones([2, 1, 8], dtype), paddle.ones([3, 4, 8], dtype), True)


class _Attention(paddle.nn.Layer):
    """``steps`` times in a while loop, attention of ``h`` [B, 2, 1, HEAD] over a cache
    [B, 2, POSITIONS, HEAD] computed before the loop: ``p = softmax(h @ K^T)``, ``h = p @ K``.
    ``transpose_x``: the scores of 8 rows stored transposed; ``dynamic_rows``: ``h``'s row
    count known at run time only; ``parameter``: K a parameter. ``dtype``: what the products
    compute in."""

    def __init__(self, transpose_x=False, dynamic_rows=False, parameter=False, dtype="bfloat16"):
        super().__init__()
        self.transpose_x, self.dynamic_rows, self.dtype = transpose_x, dynamic_rows, dtype
        self.gain = self.create_parameter([HEAD], dtype="float32", default_initializer=paddle.nn.initializer.Constant(1.5))
        self.key = self.create_parameter([POSITIONS, HEAD], dtype="float32") if parameter else None
        if parameter:
            self.key.set_value(np.random.default_rng(0).normal(0, 0.3, (POSITIONS, HEAD)).astype("float32"))

    def forward(self, x, cache, steps):
        h = (x + cache[:, :, :1] * 0.1).astype(self.dtype) * self.gain
        key = self.key if self.key is not None else (cache * 0.5).astype(self.dtype)
        if self.dynamic_rows:
            h = h.reshape([0, 2, -1, HEAD])
        i = paddle.zeros([1], dtype="int64")
        while i < steps:
            if self.transpose_x:  # 8 rows stored transposed: square, so only condition 2 tells
                square = (cache[:, :, :8, :8] * 0.1).astype(self.dtype) + h[:, :, :, :8]
                scores = paddle.matmul(square, key[:, :, :, :8], transpose_x=True, transpose_y=True)
            else:
                scores = paddle.matmul(h, key, transpose_y=True)
            weights = paddle.nn.functional.softmax(scores.astype("float32"), -1)
            weights = weights.mean(2, keepdim=True).astype(self.dtype)
            h = paddle.matmul(weights, key) * 2.0
            i = i + 1
        return h.astype("float32")


def _save_attention(directory, dtype="bfloat16", **options):
    with dygraph_mode():
        layer = _Attention(dtype=dtype, **options)
        layer.to(dtype=dtype)  # a bfloat16 model's parameters are bfloat16
        spec = [paddle.static.InputSpec([None, 2, 1, HEAD], "float32", "x"),
                paddle.static.InputSpec([None, 2, POSITIONS, HEAD], "float32", "cache"),
                paddle.static.InputSpec([1], "int64", "steps")]
        with paddle.pir_utils.IrGuard():
            paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), str(directory / "model"))
    rng = np.random.default_rng(1)
    feed = {"x": rng.normal(size=(3, 2, 1, HEAD)).astype("float32"),
            "cache": rng.normal(size=(3, 2, POSITIONS, HEAD)).astype("float32"), "steps": np.array([3])}
    return feed, run_program(load_program(directory), feed)[0]  # the Executor, no pass


@requires_avx512_bf16
@pytest.mark.parametrize("onednn", ["all", "off"])
def test_a_loops_attention_over_a_bfloat16_cache_runs_on_the_kernel(tmp_path, onednn):
    feed, want = _save_attention(tmp_path)
    model = StaticGenerationModel(tmp_path, onednn=onednn, fall_back=False)
    report = model.pipeline.get("loop_bfloat16_batched_matmul")
    assert (report.rewritten, report.kept, report.unavailable) == (2, 0, None)
    _check_runs(model, feed, want)


@pytest.mark.parametrize("options, kept", [
    # condition 1: weights are loop_bfloat16_gemv's, which takes the scores (h @ K^T); p @ K stays on matmul
    ({"parameter": True}, 1),
    ({"transpose_x": True}, 1),  # condition 2 (the weighted values run on the kernel)
    ({"dynamic_rows": True}, 1),  # condition 3 (the weighted values, one row after the mean, run on the kernel)
])
@requires_bfloat16
def test_what_the_rule_leaves_on_matmul(tmp_path, options, kept):
    feed, want = _save_attention(tmp_path, **options)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    report = model.pipeline.get("loop_bfloat16_batched_matmul")
    assert report.kept == kept, report.summary()
    _check_runs(model, feed, want)


@requires_bfloat16
def test_without_the_kernel_the_products_stay_on_matmul_and_say_why(tmp_path, monkeypatch):
    """Condition 6: no AVX512-BF16, or no compiler: the step changes nothing."""
    from paddlenlp_ext import native

    monkeypatch.setattr(native, "load_bfloat16_batched_matmul", lambda: (None, "no compiler here"))
    feed, want = _save_attention(tmp_path)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    report = model.pipeline.get("loop_bfloat16_batched_matmul")
    assert (report.rewritten, report.kept, report.unavailable) == (0, 2, "no compiler here")
    assert "no compiler here" in report.summary()
    _check_runs(model, feed, want)


def _check_float32_runs(model, feed, want):
    for _ in range(2):  # run after run
        np.testing.assert_allclose(model.run(feed), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@requires_avx512_bf16
@pytest.mark.parametrize("onednn", ["all", "off"])
def test_a_loops_attention_over_a_float32_cache_runs_on_the_kernel(tmp_path, onednn, float32_gemv_pays):
    feed, want = _save_attention(tmp_path, dtype="float32")
    model = StaticGenerationModel(tmp_path, onednn=onednn, fall_back=False)
    assert model.pipeline.get("loop_bfloat16_batched_matmul").rewritten == 0
    report = model.pipeline.get("loop_float32_batched_matmul")
    assert (report.rewritten, report.kept, report.unavailable) == (2, 0, None)
    _check_float32_runs(model, feed, want)


@requires_avx512_bf16
@pytest.mark.parametrize("options, kept", [
    ({"parameter": True}, 2),  # condition 1: a weight (too small for the weight rules: both stay on matmul)
    ({"transpose_x": True}, 1),  # condition 2 (the weighted values run on the kernel)
    ({"dynamic_rows": True}, 1),  # condition 3 (the weighted values, one row after the mean, run on the kernel)
])
def test_what_the_float32_rule_leaves_on_matmul(tmp_path, options, kept, float32_gemv_pays):
    feed, want = _save_attention(tmp_path, dtype="float32", **options)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    report = model.pipeline.get("loop_float32_batched_matmul")
    assert (report.rewritten, report.kept) == (2 - kept, kept), report.summary()
    _check_float32_runs(model, feed, want)


def test_the_float32_rule_runs_where_our_float32_kernels_do(tmp_path, monkeypatch):
    """Condition 6: on a CPU where the pipeline keeps MKL's GEMM for float32 (Intel), the
    float32 attention stays on oneDNN's matmul too."""
    monkeypatch.setattr(pipeline, "float32_gemv_pays", lambda: False)
    feed, want = _save_attention(tmp_path, dtype="float32")
    model = StaticGenerationModel(tmp_path, fall_back=False)
    assert model.pipeline.get("loop_float32_batched_matmul") is None
    _check_float32_runs(model, feed, want)


@requires_avx512_bf16
def test_without_the_float32_kernel_the_products_stay_on_matmul_and_say_why(tmp_path, monkeypatch,
                                                                            float32_gemv_pays):
    from paddlenlp_ext import native

    monkeypatch.setattr(native, "load_float32_batched_matmul", lambda: (None, "no compiler here"))
    feed, want = _save_attention(tmp_path, dtype="float32")
    model = StaticGenerationModel(tmp_path, fall_back=False)
    report = model.pipeline.get("loop_float32_batched_matmul")
    assert (report.rewritten, report.kept, report.unavailable) == (0, 2, "no compiler here")
    _check_float32_runs(model, feed, want)
