"""passes.loop_float32_gemv and its kernel: a decode loop's float32 weight products on
our GEMV (on AMD processors), the kernel's sums within float32's bound at every thread
count, and each safety condition."""

import numpy as np
import paddle
import pytest
from hardware import requires_avx512_bf16
from test_bfloat16_gemv import _save_loop

from paddlenlp_ext.inference import StaticGenerationModel
from paddlenlp_ext.native import load_float32_gemv
from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.passes import pipeline

UNIT_ROUNDOFF = 2.0**-24  # float32's


@pytest.fixture
def float32_gemv_pays(monkeypatch):
    """The pipeline as it is on an AMD processor, on any CPU."""
    monkeypatch.setattr(pipeline, "float32_gemv_pays", lambda: True)


@pytest.fixture(params=[1, 2])
def threads(request):
    """The kernel run with one thread and with two: its threads are those of the OpenMP
    runtime Paddle ships (libiomp5), whose count Paddle's math threads set."""
    import ctypes
    from pathlib import Path

    openmp = ctypes.CDLL(str(Path(paddle.__file__).parent / "libs" / "libiomp5.so"))
    previous = openmp.omp_get_max_threads()
    paddle.base.core.set_num_threads(request.param)
    assert openmp.omp_get_max_threads() == request.param
    yield request.param
    paddle.base.core.set_num_threads(previous)


@requires_avx512_bf16
@pytest.mark.parametrize("leading, k, n", [((1,), 1, 1), ((1, 1), 7, 5), ((3, 1), 33, 13), ((2, 1), 4096, 67),
                                            ((5,), 100, 130), ((1, 1), 1000, 16), ((2, 3), 4100, 203)])
def test_the_kernel_is_the_product_summed_in_float32(threads, leading, k, n):
    """Every element within the bound of float32 sums of ``k`` products (each rounding
    off by at most ``2**-24`` of what it sums, per thread then across threads): shapes
    whose ``k`` is split between threads (64 rows of w or more each) and not, with rows
    of w and columns that are not whole blocks of the kernel's 16."""
    gemv, why = load_float32_gemv()
    assert gemv is not None, why
    rng = np.random.default_rng(k * 1000 + n)
    x = rng.normal(size=(*leading, k)).astype("float32")
    w = rng.normal(size=(k, n)).astype("float32")
    with dygraph_mode():
        y = gemv(paddle.to_tensor(x), paddle.to_tensor(w))
        assert y.dtype == paddle.float32 and list(y.shape) == [*leading, n]
        got = y.numpy().astype("float64")
    exact = x.astype("float64") @ w.astype("float64")
    bound = (k + threads + 1) * UNIT_ROUNDOFF * (np.abs(x.astype("float64")) @ np.abs(w.astype("float64")))
    assert (np.abs(got - exact) <= bound).all(), np.abs(got - exact).max()


def _check_runs(model, feed, want):
    for _ in range(2):  # run after run
        np.testing.assert_allclose(model.run(feed), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@requires_avx512_bf16
@pytest.mark.parametrize("onednn", ["all", "off"])
def test_a_loop_product_of_a_float32_weight_runs_on_the_kernel(tmp_path, onednn, every_weight_is_large,
                                                               float32_gemv_pays):
    feed, want = _save_loop(tmp_path, dtype="float32", transpose_y=False)
    model = StaticGenerationModel(tmp_path, onednn=onednn, fall_back=False)
    report = model.pipeline.get("loop_float32_gemv")
    assert (report.rewritten, report.kept, report.unavailable) == (1, 0, None)
    assert not model.pipeline.get("loop_weight_matmul").modified  # nothing left for addmm
    _check_runs(model, feed, want)


@requires_avx512_bf16
def test_a_weight_computed_in_the_loop_stays_off_the_kernel(tmp_path, every_weight_is_large, float32_gemv_pays):
    """Condition 1: the kernel takes parameters only."""
    feed, want = _save_loop(tmp_path, dtype="float32", transpose_y=False, weight_in_loop=True)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    report = model.pipeline.get("loop_float32_gemv")
    assert (report.rewritten, report.kept) == (0, 1)
    _check_runs(model, feed, want)


@requires_avx512_bf16
def test_a_small_weight_stays_off_the_kernel(tmp_path, float32_gemv_pays):
    """Condition 1: a matrix under loop_weight_matmul.MIN_WEIGHT_ELEMENTS stays in cache."""
    feed, want = _save_loop(tmp_path, dtype="float32", transpose_y=False)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    assert not model.pipeline.get("loop_float32_gemv").modified
    _check_runs(model, feed, want)


@requires_avx512_bf16
def test_a_weight_stored_out_in_stays_off_the_kernel(tmp_path, every_weight_is_large, float32_gemv_pays):
    """Condition 2: ``h @ W^T`` is not the kernel's ``h @ W`` (same shape: a square W)."""
    feed, want = _save_loop(tmp_path, dtype="float32", transpose_y=True)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    _check_runs(model, feed, want)  # rewritten, it would be wrong
    assert not model.pipeline.get("loop_float32_gemv").modified


def test_without_the_kernel_the_products_go_to_addmm_and_say_why(tmp_path, monkeypatch, every_weight_is_large,
                                                                 float32_gemv_pays):
    """Condition 5: no kernel (no AVX512-BF16, no compiler): loop_weight_matmul takes them."""
    from paddlenlp_ext import native

    monkeypatch.setattr(native, "load_float32_gemv", lambda: (None, "no compiler here"))
    feed, want = _save_loop(tmp_path, dtype="float32", transpose_y=False)
    model = StaticGenerationModel(tmp_path, fall_back=False)
    report = model.pipeline.get("loop_float32_gemv")
    assert (report.rewritten, report.kept, report.unavailable) == (0, 1, "no compiler here")
    assert model.pipeline.get("loop_weight_matmul").rewritten == 1
    _check_runs(model, feed, want)


def test_the_kernel_runs_on_amd_processors_only(monkeypatch):
    """Where MKL's one-row GEMM uses every thread (Intel processors), it keeps the products."""
    from paddlenlp_ext import cpu

    for amd in (True, False):
        monkeypatch.setattr(cpu, "is_amd", lambda amd=amd: amd)
        steps = [step.name for step in pipeline.running_passes()]
        assert ("loop_float32_gemv" in steps) == amd
        assert "loop_weight_matmul" in steps
        assert "loop_float32_gemv" not in [step.name for step in pipeline.saving_passes()]
