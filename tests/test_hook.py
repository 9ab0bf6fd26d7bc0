"""paddlenlp_ext.enable(): the pass runs on what paddle.jit.save writes."""

import logging

import paddle
from loop_programs import count_loop_copies
from test_program_shapes import loop_with_outer_buffer

import paddlenlp_ext.hook as hook
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
    messages = [r.getMessage() for r in caplog.records if r.name == "paddlenlp_ext"]
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
