"""Our bfloat16 GEMV kernel (``native``) and the pass that runs a decode loop's bfloat16
weight products on it (``passes.loop_bfloat16_gemv``): the kernel's error bound, each
safety condition, the route without a kernel. The llama loops' accuracy contract on it
is in ``test_bfloat16.py``."""

import numpy as np
import paddle
import pytest
from hardware import requires_avx512_bf16, requires_bfloat16

from paddlenlp_ext.inference import StaticGenerationModel
from paddlenlp_ext.program_files import load_program, run_program
from paddlenlp_ext.native import load_bfloat16_gemv
from paddlenlp_ext.paddle_modes import dygraph_mode

HIDDEN = 48  # not a multiple of the kernel's 32 bfloat16 a step, nor 64 rows a task
ROUNDING = 2.0**-8  # bfloat16's unit roundoff: 8 significant bits, half a spacing of 2**-7 relative


def _bfloat16_values(array: np.ndarray) -> np.ndarray:
    """``array`` rounded to bfloat16, as float64."""
    with dygraph_mode():
        return paddle.to_tensor(array.astype("float32")).astype("bfloat16").astype("float32").numpy().astype("float64")


@requires_avx512_bf16
@pytest.mark.parametrize("rows, n, k", [(1, 1, 1), (1, 5, 7), (3, 13, 33), (2, 67, 4096), (5, 130, 100), (4, 64, 64), (2, 203, 4100)])
def test_the_kernel_is_the_product_rounded_once_to_bfloat16(rows, n, k):
    """Float32 sums of exact bfloat16 products (each sum of ``k`` terms off by at most
    ``k * 2**-24`` of the sum of their magnitudes) rounded once to bfloat16 (at most
    ``2**-8`` of the value): together the bound every element must meet."""
    gemv, why = load_bfloat16_gemv()
    assert gemv is not None, why
    rng = np.random.default_rng(rows * 1000 + n + k)
    x, w = _bfloat16_values(rng.normal(size=(rows, 1, k))), _bfloat16_values(rng.normal(size=(n, k)))
    with dygraph_mode():
        y = gemv(paddle.to_tensor(x.astype("float32")).astype("bfloat16"),
                 paddle.to_tensor(w.astype("float32")).astype("bfloat16"))
        assert y.dtype == paddle.bfloat16 and list(y.shape) == [rows, 1, n]
        got = y.astype("float32").numpy()
    exact = x @ w.T
    summing = k * 2.0**-24 * (np.abs(x) @ np.abs(w).T)
    bound = ROUNDING * (np.abs(exact) + summing) + summing
    assert (np.abs(got - exact) <= bound).all(), np.abs(got - exact).max()


class _Loop(paddle.nn.Layer):
    """``h = h @ W^T`` (``W`` stored ``[out, in]``) ``steps`` times in a while loop;
    ``transpose_y=False``: ``h @ W``; ``weight_in_loop``: ``W`` computed in the body."""

    def __init__(self, transpose_y=True, weight_in_loop=False):
        super().__init__()
        self.transpose_y, self.weight_in_loop = transpose_y, weight_in_loop
        self.weight = self.create_parameter([HIDDEN, HIDDEN], dtype="float32")
        self.weight.set_value(np.random.default_rng(0).normal(0, 0.2, (HIDDEN, HIDDEN)).astype("float32"))

    def forward(self, x, steps):
        h = x.astype(self.weight.dtype)
        i = paddle.zeros([1], dtype="int64")
        while i < steps:
            weight = self.weight * 2 if self.weight_in_loop else self.weight
            h = paddle.matmul(h, weight, transpose_y=self.transpose_y)
            i = i + 1
        return h


def _save_loop(directory, dtype="bfloat16", **options):
    with dygraph_mode():
        layer = _Loop(**options)
        layer.to(dtype=dtype)
        spec = [paddle.static.InputSpec([None, 1, HIDDEN], "float32", "x"),
                paddle.static.InputSpec([1], "int64", "steps")]
        with paddle.pir_utils.IrGuard():
            paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), str(directory / "model"))
    feed = {"x": np.random.default_rng(1).normal(size=(3, 1, HIDDEN)).astype("float32"), "steps": np.array([3])}
    want = run_program(load_program(directory), feed)[0]  # the Executor, no pass
    if dtype == "bfloat16":
        want = (want.astype(np.uint32) << 16).view(np.float32)  # the Executor's bfloat16 bits
    return feed, want


def _check_runs(model, feed, want):
    for _ in range(2):  # run after run
        np.testing.assert_allclose(model.run(feed), want, rtol=3e-2, atol=3e-2 * np.abs(want).max())


@requires_avx512_bf16
@pytest.mark.parametrize("onednn", ["all", "off"])
def test_a_loop_product_of_a_bfloat16_weight_stored_out_in_runs_on_the_kernel(tmp_path, onednn):
    feed, want = _save_loop(tmp_path)
    model = StaticGenerationModel(tmp_path, onednn=onednn, fall_back=False)
    report = model.pipeline.get("loop_bfloat16_gemv")
    assert (report.rewritten, report.kept, report.unavailable) == (1, 0, None)
    _check_runs(model, feed, want)


@requires_bfloat16
def test_a_weight_computed_in_the_loop_stays_on_matmul(tmp_path):
    """Condition 1: the kernel takes parameters only."""
    feed, want = _save_loop(tmp_path, weight_in_loop=True)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    report = model.pipeline.get("loop_bfloat16_gemv")
    assert (report.rewritten, report.kept) == (0, 1)
    _check_runs(model, feed, want)


def test_a_float32_loop_product_stays_on_matmul(tmp_path):
    """Condition 1: the kernel computes in bfloat16 only (it refuses float32 tensors)."""
    feed, want = _save_loop(tmp_path, dtype="float32")
    model = StaticGenerationModel(tmp_path, fall_back=False)
    _check_runs(model, feed, want)  # rewritten, it would be wrong (or refused)
    assert not model.pipeline.get("loop_bfloat16_gemv").modified


@requires_bfloat16
def test_a_weight_stored_in_out_stays_on_matmul(tmp_path):
    """Condition 2: ``h @ W`` is not the kernel's ``h @ W^T`` (same shape: a square W)."""
    feed, want = _save_loop(tmp_path, transpose_y=False)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    _check_runs(model, feed, want)  # rewritten, it would be wrong (or refused)
    assert not model.pipeline.get("loop_bfloat16_gemv").modified


@requires_bfloat16
def test_without_the_kernel_the_products_stay_on_matmul_and_say_why(tmp_path, monkeypatch):
    """Condition 5: no AVX512-BF16, or no compiler: the step changes nothing."""
    from paddlenlp_ext import native

    monkeypatch.setattr(native, "load_bfloat16_gemv", lambda: (None, "no compiler here"))
    feed, want = _save_loop(tmp_path)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    report = model.pipeline.get("loop_bfloat16_gemv")
    assert (report.rewritten, report.kept, report.unavailable) == (0, 1, "no compiler here")
    assert "no compiler here" in report.summary()
    _check_runs(model, feed, want)


@requires_avx512_bf16
def test_a_failed_build_is_one_reason_not_an_error(tmp_path, monkeypatch):
    from paddlenlp_ext import native

    monkeypatch.setenv("PADDLENLP_EXT_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_SOURCES", (tmp_path / "broken.cc",))
    (tmp_path / "broken.cc").write_text("this is not C++\n")
    why = native._unavailable.__wrapped__()  # a build, not this process's cached kernels
    assert why.startswith("the paddlenlp_ext_bfloat16_gemv kernels could not be built")
    assert "\n" not in why
