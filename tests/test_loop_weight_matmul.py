"""passes.loop_weight_matmul: a loop body's weight matmuls become addmm, and nothing
else changes: the delta, idempotence, and outputs on the Executor and on Paddle
Inference in every CPU configuration we create."""

from types import SimpleNamespace

import numpy as np
import paddle
import pytest
from loop_programs import INFERENCE_CONFIGS, build_pir, run, run_inference, save_inference

from paddlenlp_ext.inference import StaticGenerationModel, create_paddle_predictor, executed_loop_ops, prepare_program
from paddlenlp_ext.passes.pipeline import ADDMM_MAX_BATCH
from paddlenlp_ext.program_files import load_files, save_program
from paddlenlp_ext.passes.loop_weight_matmul import run_loop_weight_matmuls_as_addmm

K, N = 8, 6
RNG = np.random.default_rng(0)
WEIGHTS = {name: RNG.standard_normal(shape).astype("float32") / 3
           for name, shape in (("w_kk", (K, K)), ("w_kn", (K, N)), ("w_t", (K, K)))}
FEED = {"x": RNG.standard_normal((2, 3, K)).astype("float32")}


def _parameter(name):
    return paddle.static.create_parameter(list(WEIGHTS[name].shape), "float32", name=name,
                                          default_initializer=paddle.nn.initializer.Assign(WEIGHTS[name]))


def loop_with_weight_matmuls():
    x = paddle.static.data("x", [-1, -1, K], "float32")
    w_kk, w_kn, w_t = _parameter("w_kk"), _parameter("w_kn"), _parameter("w_t")
    outside = paddle.matmul(x, w_kn)  # the prefill's: stays on oneDNN
    i, steps = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")

    def body(i, h):
        dynamic = paddle.matmul(h, w_kk)  # [-1, -1, K]: rewritten, shape from shape64
        last = paddle.matmul(h[:, -1:, :], w_kk)  # [-1, 1, K]: rewritten, static shape
        transposed = paddle.matmul(h, w_t, transpose_y=True)  # kept: addmm has no transpose
        activations = paddle.matmul(h, paddle.transpose(h, [0, 2, 1]))  # kept (and the next): no weight
        h = paddle.tanh(dynamic + last + transposed) + 0.01 * paddle.matmul(activations, h)
        return [i + 1, h]

    _, h = paddle.static.nn.while_loop(lambda i, h: i < steps, body, [i, x])
    projected = paddle.matmul(h, w_kn)  # after the loop: not rewritten
    return [h, outside, projected]


def _matmul_names(program):
    names = []

    def walk(block, in_loop):
        for op in block.ops:
            names.append((op.name(), in_loop))
            for sub in op.blocks():
                walk(sub, in_loop or op.name() == "pd_op.while")

    walk(program.global_block(), False)
    return names


def test_weight_matmuls_in_the_loop_become_addmm_and_nothing_else_changes(every_weight_is_large):
    reference = run(build_pir(loop_with_weight_matmuls, FEED))
    built = build_pir(loop_with_weight_matmuls, FEED)
    report = run_loop_weight_matmuls_as_addmm(built.program)
    assert (report.rewritten, report.kept, report.modified) == (2, 3, True), report.summary()
    names = _matmul_names(built.program)
    assert names.count(("pd_op.addmm", True)) == 2 and names.count(("pd_op.matmul", True)) == 3
    assert names.count(("pd_op.matmul", False)) == 2  # before and after the loop
    text = str(built.program)
    again = run_loop_weight_matmuls_as_addmm(built.program)
    assert (again.rewritten, again.modified) == (0, False) and str(built.program) == text
    for got, expected in zip(run(built), reference):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_the_rewritten_loop_runs_right_on_every_inference_config(every_weight_is_large):
    """What StaticGenerationModel runs (``prepare_program`` applies the rewrite), twice
    in a row, against the Executor on the program as built."""
    reference = run(build_pir(loop_with_weight_matmuls, FEED))
    for onednn in INFERENCE_CONFIGS:
        for outputs in run_inference(build_pir(loop_with_weight_matmuls, FEED), onednn=onednn):
            assert len(outputs) == len(reference)
            for got, expected in zip(outputs, reference):
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=onednn)


def test_a_matrix_under_the_size_threshold_is_kept():
    built = build_pir(loop_with_weight_matmuls, FEED)
    report = run_loop_weight_matmuls_as_addmm(built.program, min_elements=K * K + 1)
    assert (report.rewritten, report.kept, report.modified) == (0, 5, False), report.summary()


def test_no_configuration_makes_addmm_write_in_place(tmp_path, every_weight_is_large, float32_products_on_mkl):
    """Premise of condition 5: ``inplace_pass`` (it runs when oneDNN is off) leaves
    ``addmm`` alone, so it never writes its product over the zeros, a constant Paddle may
    fold and reuse (their shapes differ: [1, N] and [rows, N])."""
    for onednn in INFERENCE_CONFIGS:
        save_inference(build_pir(loop_with_weight_matmuls, FEED), str(tmp_path / onednn / "source"))
        loaded = load_files(str(tmp_path / onednn / "source"), "pir")
        prepare_program(loaded, "cpu", onednn)
        save_program(loaded, str(tmp_path / onednn / "model"))
        create_paddle_predictor(str(tmp_path / onednn / "model"), "cpu", str(tmp_path / onednn / "dump"), onednn)
        executed = executed_loop_ops(str(tmp_path / onednn / "dump"))
        assert executed["addmm"] == 2 and executed["addmm_"] == 0, (onednn, executed)


@pytest.mark.parametrize("batch_size, onednn, rewritten", [
    (1, "all", 2),
    (ADDMM_MAX_BATCH + 1, "all", 0),  # oneDNN's matmul: the plain GEMM's time grows with the rows
    (ADDMM_MAX_BATCH + 1, "off", 2),  # no oneDNN to run them on
])
def test_the_batch_size_picks_the_loop_weight_kernel(tmp_path, every_weight_is_large, float32_products_on_mkl,
                                                      batch_size, onednn, rewritten):
    """StaticGenerationModel(batch_size=...) prepares the program for that many sequences:
    what its predictor executes, and its outputs, which are the same for any batch fed."""
    save_inference(build_pir(loop_with_weight_matmuls, FEED), str(tmp_path / "model" / "model"))
    model = StaticGenerationModel(tmp_path / "model", batch_size=batch_size, onednn=onednn,
                                  dump_optimized_to=str(tmp_path / "dump"), fall_back=False)
    executed = executed_loop_ops(str(tmp_path / "dump"))
    products = executed["matmul"] + executed["fused_matmul"]  # oneDNN's fuse passes may fuse an add in
    assert executed["addmm"] == rewritten and products == 5 - rewritten, executed
    reference = run(build_pir(loop_with_weight_matmuls, FEED))[0]
    np.testing.assert_allclose(model.run(FEED), reference, rtol=1e-4, atol=1e-5)


def test_the_predictor_prepares_its_static_model_for_its_batch_size(monkeypatch):
    import paddlenlp_ext.inference as inference_module
    from paddlenlp_ext.predictor import PredictorArgument, StaticGraphPredictor

    class Recorded(Exception):
        pass

    def recording(model_dir, **kwargs):
        raise Recorded(kwargs)

    monkeypatch.setattr(inference_module, "StaticGenerationModel", recording)
    with pytest.raises(Recorded) as recorded:
        StaticGraphPredictor(PredictorArgument(batch_size=3), "unused", tokenizer=SimpleNamespace())
    assert recorded.value.args[0]["batch_size"] == 3


def test_a_batch_size_under_one_is_refused_before_anything_is_loaded(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be 1 or more, got 0"):
        StaticGenerationModel(tmp_path / "nothing here", batch_size=0)
