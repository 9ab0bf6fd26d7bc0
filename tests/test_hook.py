"""paddlenlp_ext.enable(): the pass runs on what paddle.jit.save writes and on legacy
generation models paddle.inference.create_predictor loads."""

import logging

import numpy as np
import paddle
from loop_programs import count_loop_copies
from test_llama_loop import exported  # noqa: F401 (a fixture)
from test_program_shapes import loop_with_outer_buffer

import paddlenlp_ext
import paddlenlp_ext.hook as hook
from paddlenlp_ext.inference import run_predictor
from paddlenlp_ext.paddle_config import paddlenlp_static_config
from paddlenlp_ext.paddle_modes import dygraph_mode

SPEC = [paddle.static.InputSpec([2, 3], "float32", "x")]


def dead_outer_write(x):
    buf = paddle.zeros([2, 3])
    i = paddle.zeros([1], "int64")
    while i < 3:
        paddle.assign(x * 2, output=buf)  # never read again: the copy is removable
        x = x + 1
        i = i + 1
    return x


def saved_copies(fn, directory) -> int:
    prefix = str(directory / "model")
    with dygraph_mode():
        paddle.jit.save(paddle.jit.to_static(fn, input_spec=SPEC, full_graph=True), prefix)
    program, _, _ = paddle.static.load_inference_model(prefix, paddle.static.Executor(paddle.CPUPlace()))
    return count_loop_copies(program)


def test_jit_save_keeps_copies_without_the_hook(tmp_path):
    assert not hook.is_enabled()
    assert saved_copies(dead_outer_write, tmp_path) == 1


def test_enabled_hook_cleans_the_saved_program_and_logs_the_report(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="paddlenlp_ext")
    with hook.enable():
        assert saved_copies(dead_outer_write, tmp_path / "a") == 0
        assert saved_copies(loop_with_outer_buffer, tmp_path / "b") == 1
    assert not hook.is_enabled()
    messages = [r.getMessage() for r in caplog.records
                if r.name == "paddlenlp_ext" and r.getMessage().startswith("remove_loop_assign")]
    assert len(messages) == 2
    assert messages[0].endswith("removed 1 copies from 1 loops; kept 0")
    assert messages[1].endswith("removed 0 copies from 1 loops; kept 1: destination read in loop body (1)")


def test_enable_is_also_a_switch_and_nests(tmp_path):
    hook.enable()
    try:
        with hook.enable():
            assert hook.is_enabled()
        assert hook.is_enabled()  # the outer enable() still holds
        assert saved_copies(dead_outer_write, tmp_path) == 0
    finally:
        hook.disable()
    assert not hook.is_enabled()


def test_enabled_hook_cleans_a_legacy_model_paddle_inference_loads(exported, tmp_path, caplog):
    """Issue 9: a user's own serving code (PaddleNLP's config, paddle.inference's
    create_predictor) gets the cleaned loop with one call, and the same tokens."""
    from paddle import inference
    from test_llama_loop import feed

    from paddlenlp_ext.inference import executed_loop_copies

    directory, reference = exported
    config = paddlenlp_static_config(directory)
    as_is = inference.create_predictor(config)
    caplog.set_level(logging.INFO, logger="paddlenlp_ext")
    with paddlenlp_ext.enable() as enabled:
        config.set_optim_cache_dir(str(tmp_path))
        config.enable_save_optim_model(True)
        cleaned = inference.create_predictor(config)
    assert inference.create_predictor is hook._original_create_predictor
    assert [(path, report.summary()) for path, report in enabled.reports] == [
        (str(directory / "model.pdmodel"), "removed 14 copies from 1 loops; kept 0")]
    assert executed_loop_copies(str(tmp_path)) == 0  # the program Paddle Inference ran
    assert config.prog_file() == str(directory / "model.pdmodel") and not config.new_ir_enabled()
    np.testing.assert_array_equal(run_predictor(cleaned, feed())[0], reference)
    np.testing.assert_array_equal(run_predictor(as_is, feed())[0], reference)


def test_enabled_hook_leaves_other_models_to_paddle(tmp_path):
    """A program without a while loop is created as it is."""
    from paddle import inference

    with paddle.pir_utils.OldIrGuard():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [2], "float32")
            weight = paddle.static.create_parameter(
                [2], "float32", default_initializer=paddle.nn.initializer.Constant(2.0))
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            paddle.static.save_inference_model(str(tmp_path / "model"), [x], [x * weight], exe, program=main)
    with paddlenlp_ext.enable() as enabled:
        predictor = inference.create_predictor(paddlenlp_static_config(tmp_path))
    assert enabled.reports == []
    assert run_predictor(predictor, {"x": np.array([1.0, 2.0], "float32")})[0].tolist() == [2.0, 4.0]


def test_the_hook_keeps_the_users_onednn_setting(exported):
    """Issue 15, class 6: a config with oneDNN disabled stays disabled under the hook
    (it used to be turned back on); one with oneDNN on keeps it, in our configuration."""
    from paddle import inference
    from test_llama_loop import feed

    from paddlenlp_ext.hook_config import cleaned_legacy_config

    directory, reference = exported
    for onednn in (False, True):
        config = paddlenlp_static_config(directory)
        config.set_cpu_math_library_num_threads(2)
        if not onednn:
            config.disable_mkldnn()
        cleaned = cleaned_legacy_config(config).config
        assert cleaned.mkldnn_enabled() == onednn and config.mkldnn_enabled() == onednn
        assert cleaned.cpu_math_library_num_threads() == 2 and cleaned.new_ir_enabled()
        # the concat loop, its caches carried permuted, on either runtime
        np.testing.assert_array_equal(run_predictor(inference.create_predictor(cleaned), feed())[0], reference)


def test_the_hook_keeps_the_callers_names(exported):
    """Issue 27, class 8: serving code asks for the outputs by the names its own predictor
    has (a legacy program's fetch targets), on the hook's predictor and on its clone."""
    from paddle import inference
    from test_llama_loop import feed

    directory, reference = exported
    own = inference.create_predictor(paddlenlp_static_config(directory))
    with paddlenlp_ext.enable():
        hooked = inference.create_predictor(paddlenlp_static_config(directory))
    assert not any(name.startswith("fetch_name_") for name in own.get_output_names())
    for predictor in (hooked, hooked.clone()):
        assert isinstance(predictor, hook.FallbackPredictor)
        assert predictor.get_input_names() == own.get_input_names()
        assert predictor.get_output_names() == own.get_output_names()
        for name, value in feed().items():
            if name in own.get_input_names():
                predictor.get_input_handle(name).copy_from_cpu(value)
        predictor.run()
        np.testing.assert_array_equal(predictor.get_output_handle(own.get_output_names()[0]).copy_to_cpu(),
                                      reference)
