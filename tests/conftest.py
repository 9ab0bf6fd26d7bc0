import sys
from pathlib import Path

import paddle
import pytest

sys.path.insert(0, str(Path(__file__).parent))
paddle.enable_static()
# The pass reasons in program order. Paddle's parallel scheduler orders ops by the
# values they name, so a program that reads a buffer a loop writes through sharing
# (a while init, an outer buffer) races on its own, with or without the pass.
paddle.set_flags({"FLAGS_new_executor_serial_run": True})


@pytest.fixture
def garbage_collector_off():
    """Paddle's executor with its garbage collector off, as some deployments run it.

    Body values then keep their buffers from one iteration to the next, which
    breaks the premise the pass's removals rest on (its condition 0).
    """
    flag = "FLAGS_eager_delete_tensor_gb"
    previous = paddle.get_flags([flag])
    paddle.set_flags({flag: -1.0})
    yield
    paddle.set_flags(previous)


@pytest.fixture
def every_weight_is_large(monkeypatch):
    """Our CPU configuration runs a decode loop's products with large weight matrices
    on the plain GEMM (passes.loop_weight_matmul), or on AMD processors on our float32
    kernel (passes.loop_float32_gemv); the suite's models are tiny, so a test that
    should run the rewrite as a llama2-7B-sized model gets it counts every matrix as
    large."""
    from paddlenlp_ext.passes import loop_weight_matmul

    monkeypatch.setattr(loop_weight_matmul, "MIN_WEIGHT_ELEMENTS", 0)


@pytest.fixture
def float32_products_on_mkl(monkeypatch):
    """The pipeline as it is on an Intel processor, on any CPU: a decode loop's float32
    weight products go to MKL's GEMM (``addmm``), none to our kernel."""
    from paddlenlp_ext.passes import pipeline

    monkeypatch.setattr(pipeline, "float32_gemv_pays", lambda: False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``models(name)``: an embedded model and its tokenizer (``load_model``), built once
    per test module in a cache of its own."""
    from paddlenlp_ext.models import load_model

    cache = tmp_path_factory.mktemp("models")
    loaded = {}

    def get(name):
        if name not in loaded:
            loaded[name] = load_model(name, cache_dir=cache)
        return loaded[name]

    return get
