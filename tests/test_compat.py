"""Every patch in paddlenlp_ext.compat is needed: the export fails without it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

import paddlenlp_ext.compat.legacy_ops as legacy_ops
from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop, export_legacy, export_pir, generation_inputs
from paddlenlp_ext.models import load_model
from paddlenlp_ext.paddle_modes import dygraph_mode


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    model, _ = load_model("llama2", cache_dir=tmp_path_factory.mktemp("models"))
    return GenerationLoop(model, DecodingConfig(eos_token_id=2))


def export(loop, directory):
    with dygraph_mode():
        export_legacy(loop, str(directory / "model"))


# The legacy ops a llama loop's export needs (test_architectures: the other architectures').
LLAMA_LEGACY_OPS = ("argmax", "logical_not", "matmul", "roll", "rsqrt", "tril")


@pytest.mark.parametrize("op", LLAMA_LEGACY_OPS)
def test_legacy_export_fails_without_each_op_patch(loop, tmp_path, monkeypatch, op):
    monkeypatch.setattr(legacy_ops, "LEGACY_OPS", {k: v for k, v in legacy_ops.LEGACY_OPS.items() if k != op})
    with pytest.raises(TypeError, match="must be Value, but got Variable"):
        export(loop, tmp_path)


def test_legacy_export_fails_without_the_swiglu_patch(loop, tmp_path, monkeypatch):
    import paddle.incubate.nn.functional as incubate

    monkeypatch.setattr(legacy_ops, "_swiglu", incubate.swiglu)  # what PaddleNLP would call
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute"):
        export(loop, tmp_path)


def test_legacy_export_works_and_restores_everything(loop, tmp_path):
    import paddlenlp.transformers.llama.modeling as llama_modeling

    originals = (paddle.matmul, paddle.tensor.argmax, llama_modeling.swiglu)
    export(loop, tmp_path)
    assert (tmp_path / "model.pdmodel").is_file()
    assert (paddle.matmul, paddle.tensor.argmax, llama_modeling.swiglu) == originals


def export_after_a_failed_trace(program_format, directory):
    """A user's session: run a llama in dygraph, try Paddle's own to_static on another
    model (it fails on PaddleNLP 2.8.1), then export the first one with our exporter,
    and check the exported program's tokens.

    The failed trace leaves its tensors in Paddle's dy2static parameter recorder, keyed
    by id(program); they reach a later trace only if its Program gets the dead
    program's id, which CPython does now and then by reusing the freed address. Here
    every Program gets the same key, so that happens every time.
    """
    import paddle.jit.dy2static.parameter_recorder as pir_recorder
    import paddle.jit.dy2static.program_translator as legacy_recorder
    from test_decoding import BATCHES, llama, paddlenlp_greedy, run_dynamic

    from paddlenlp_ext.program_files import load_program
    from paddlenlp_ext.decoding import run_generation

    legacy_recorder._program_hash = pir_recorder._program_hash = lambda program: 0
    ids, mask = BATCHES["batch2"]
    config = DecodingConfig(eos_token_id=2)
    model, other = llama(), llama()
    paddlenlp_greedy(model, ids, mask)
    guard = paddle.pir_utils.OldIrGuard() if program_format == "legacy" else paddle.pir_utils.IrGuard()
    with guard, dygraph_mode(), pytest.raises(TypeError):
        failing = paddle.jit.to_static(GenerationLoop(other, config), input_spec=generation_inputs(config),
                                       full_graph=True)
        failing.forward.concrete_program
    loop = GenerationLoop(model, config)
    (export_legacy if program_format == "legacy" else export_pir)(loop, str(Path(directory) / "model"))
    tokens = run_generation(load_program(directory), ids, mask, 8)
    np.testing.assert_array_equal(tokens, run_dynamic(loop, ids, mask))


@pytest.mark.parametrize("program_format", ["legacy", "pir"])
def test_export_after_a_failed_trace_in_the_same_process(tmp_path, program_format):
    """Without compat.fresh_trace_records the legacy export raises KeyError in jit.save
    (a tensor of the other model is not in the state dict; in the test suite it was
    'eager_tmp_10', a rotary cache) and the PIR one crashes the process (SIGSEGV). In
    a fresh process, as the forced id reuse must not leak into other tests."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_compat; "
            f"test_compat.export_after_a_failed_trace({program_format!r}, {str(tmp_path)!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def branch_written_buffer(tmp_path_factory):
    import branch_written_buffer

    directory = tmp_path_factory.mktemp("branch_written_buffer")
    branch_written_buffer.build(directory)
    return directory


def test_a_buffer_a_branch_may_rebuild_keeps_its_saved_value_on_every_route(branch_written_buffer):
    from branch_written_buffer import SAVED_ROWS, TRACED_ROWS, saved_row

    from paddlenlp_ext.inference import StaticGenerationModel, run_predictor
    from paddlenlp_ext.paddle_config import paddlenlp_static_config
    from paddlenlp_ext.program_files import load_program, run_program

    def feed(k):
        return {"k": np.array([[k]], dtype="int64")}

    old_ir = paddle.inference.create_predictor(paddlenlp_static_config(branch_written_buffer))
    translated = load_program(branch_written_buffer)
    predictor = StaticGenerationModel(branch_written_buffer, remove_loop_assign=False)
    for k in (5, TRACED_ROWS, SAVED_ROWS - 1):
        np.testing.assert_array_equal(run_predictor(old_ir, feed(k))[0], saved_row(k))  # the user's route today
        np.testing.assert_array_equal(run_program(translated, feed(k))[0], saved_row(k))
        np.testing.assert_array_equal(predictor.run(feed(k)), saved_row(k))


def test_without_the_patch_the_translated_buffer_is_zeros_then_an_error(branch_written_buffer, monkeypatch):
    import paddlenlp_ext.program_files as program_files
    from branch_written_buffer import TRACED_ROWS
    from paddlenlp_ext.inference import StaticGenerationModel

    monkeypatch.setattr(program_files, "read_persistables_written_in_branches", lambda desc: [])
    predictor = StaticGenerationModel(branch_written_buffer, remove_loop_assign=False, fall_back=False)
    assert not predictor.run({"k": np.array([[5]], dtype="int64")}).any()  # silently wrong
    with pytest.raises(Exception, match=r"Input\(index\[-1\)\] has wrong value, it is \[16\]"):
        predictor.run({"k": np.array([[TRACED_ROWS]], dtype="int64")})
