"""Paddle 3.3.1 defects our programs can meet, pinned: each test asserts the defect, so
that a Paddle release fixing it makes its test fail (then its workaround can go).

An if's results lose their oneDNN layout (issue 27, item 10c). Paddle's kernel lowering
(``pd_op_to_kernel_pass``) gives a ``pd_op.if`` plain-typed results and adds no layout
transform at the branches' ``cf.yield`` (it does at ``builtin.shadow_output``). When a
branch yields a value a oneDNN kernel computed, the if's result holds a tensor marked
``ONEDNN`` whose readers are lowered as if it were plain, so a plain kernel reading it
gets no ``onednn_to_paddle_layout`` in front:

- a plain unary kernel whose InferMeta shares its input's meta (``floor``, ``sign``,
  ``reciprocal``, ``square``) marks its output ``ONEDNN`` with no oneDNN memory
  descriptor: the next layout transform fails ("could not create a primitive descriptor
  for a reorder primitive"), and a oneDNN kernel reading it raises an oneDNN error that
  Paddle's executor reports as a bare ``std::exception`` (its exception holder copies
  the exception as a ``std::exception``, dropping the message);
- a plain kernel reading a blocked tensor (a convolution's output) reads its memory as
  if it were plain: wrong values, no error.

oneDNN off is right. With oneDNN on (our ``"all"`` configuration and Paddle's default
CPU config alike) deleting ``onednn_placement_pass`` is the only deleted pass that
avoids it, which is oneDNN off for most ops. A copy by a plain op inside each branch,
before the yield, avoids it: there the kernel lowering sees the oneDNN value and adds the
transform, and the if yields a plain tensor. A copy after the if does not (it is one of
the plain readers above).

Paddle Inference's ``dead_code_elimination_pass`` erases an if whose result only a dead
op reads (an op in a loop body whose own result nothing reads), with the in-place
writes its branches make to values defined before it: later readers of such a value
see it unwritten, on every configuration, oneDNN off included. The Executor runs the
write. Found by the oneDNN differential drawing in-place row writes. Our exports'
in-place writes (the static cache's) are in a loop body, outside any if, and their
results are read.

Paddle's interpreter (``paddle.static.Executor``) misses a write-after-read in a while
body: an op reading the result of an in-place write into a carried buffer may run after
a later ``assign_out_`` into that buffer. Its serial mode runs the copy first; its
default mode races. Paddle Inference is right; ``run_program`` runs the Executor in the
program's order (``compat.executor_in_program_order``). Our exports' loop copies into
the cache are copies of the written buffer onto itself, which no order changes. Found
by the oneDNN differential drawing in-place row writes (its seed 25).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from onednn_cases import FEED, linear, paddle_default_predictor, save
from paddle import _C_ops

from paddlenlp_ext.inference import create_paddle_predictor, run_predictor

CONFIGURATIONS = {
    "ours": lambda prefix: create_paddle_predictor(prefix, "cpu", onednn="all"),
    "paddle default": paddle_default_predictor,
}


def _copy(value):
    """A plain kernel's exact copy (the guard's ``roll`` by 0)."""
    return paddle.roll(value, [0], [-1])


def _scaled_by_branch(x, copy_in_branch: bool):
    """``x * 2`` or ``x * 6`` (oneDNN's scale), chosen by an if."""
    wrap = _copy if copy_in_branch else (lambda value: value)
    return paddle.static.nn.cond(paddle.sum(x) > 0, lambda: wrap(x * 2.0), lambda: wrap(x * 6.0))


def _expected_floor(x):
    return np.floor(x * (2.0 if x.sum() > 0 else 6.0))


def _runs(predictor, feed, times=2):
    return [run_predictor(predictor, feed) for _ in range(times)]


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
@pytest.mark.parametrize(
    "then, error",
    [("fetched", "could not create a primitive descriptor for a reorder primitive"),
     ("read by a oneDNN op", "std::exception")],
)
def test_plain_unary_op_reading_an_if_result_fails_with_onednn(tmp_path, configuration, then, error):
    prefix = str(tmp_path / "model")

    def body(x):
        floored = paddle.floor(_scaled_by_branch(x, copy_in_branch=False))
        return [floored if then == "fetched" else floored * 2.0]

    feed = save(prefix, body)
    predictor = CONFIGURATIONS[configuration](prefix)
    for _ in range(2):
        with pytest.raises(Exception, match=error):
            run_predictor(predictor, feed)
    plain = create_paddle_predictor(prefix, "cpu", onednn="off")
    factor = 1.0 if then == "fetched" else 2.0
    for run in _runs(plain, feed):
        np.testing.assert_array_equal(run[0], _expected_floor(feed["x"]) * factor)


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
def test_a_copy_in_each_branch_avoids_it(tmp_path, configuration):
    prefix = str(tmp_path / "model")
    feed = save(prefix, lambda x: [paddle.floor(_scaled_by_branch(x, copy_in_branch=True)) * 2.0])
    for run in _runs(CONFIGURATIONS[configuration](prefix), feed):
        np.testing.assert_array_equal(run[0], _expected_floor(feed["x"]) * 2.0)


IMAGE_SHAPE = (-1, 4, 2, 2)  # FEED's [3, 1, 16] viewed as 3 images of 4 channels


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
def test_plain_op_reading_an_if_result_reads_a_blocked_tensor_raw(tmp_path, configuration):
    """A branch yields a convolution's output, which oneDNN keeps blocked: a copy after
    the if reads it wrongly; a copy inside the branch reads it right."""
    outputs = {}
    for where in ("after the if", "in the branch"):
        prefix = str(tmp_path / where.replace(" ", "_") / "model")

        def body(x, where=where):
            weight = paddle.static.create_parameter(
                [8, 4, 1, 1], "float32", default_initializer=paddle.nn.initializer.Normal(std=0.3))
            image = paddle.reshape(x, list(IMAGE_SHAPE))
            wrap = _copy if where == "in the branch" else (lambda value: value)
            convolved = paddle.static.nn.cond(
                paddle.sum(x) > 0,
                lambda: wrap(paddle.nn.functional.conv2d(image, weight)),
                lambda: wrap(paddle.nn.functional.conv2d(image, weight) * 2.0))
            return [_copy(convolved) if where == "after the if" else convolved + 0.0]

        feed = save(prefix, body)
        reference = run_predictor(create_paddle_predictor(prefix, "cpu", onednn="off"), feed)[0]
        predictor = CONFIGURATIONS[configuration](prefix)
        outputs[where] = [np.abs(run[0] - reference).max() for run in _runs(predictor, feed)]
    assert all(error > 1e-2 for error in outputs["after the if"]), outputs
    assert all(error < 1e-5 for error in outputs["in the branch"]), outputs


def _write_in_an_if_read_only_by_dead_code(x):
    """``h`` written in place (one position) in an if's branch; the if's result read only
    by an op whose result nothing reads, in a loop body; ``h`` read after the if."""
    h = linear(x)
    written = paddle.static.nn.cond(
        paddle.mean(x) > -100.0,  # always true for FEED
        lambda: _C_ops.set_value_with_tensor_(h, x[:, :, 3:4], [5], [6], [1], [2], [], []) * 1.0,
        lambda: h * 3.0)
    after = h * 2.0
    i, n = paddle.full([1], 0, "int64"), paddle.full([1], 2, "int64")

    def step(i, y):
        paddle.nn.functional.silu(written)  # dead: nothing reads it
        return [i + 1, paddle.tanh(y)]

    return [paddle.static.nn.while_loop(lambda i, y: i < n, step, [i, after])[1]]


@pytest.mark.parametrize("configuration", ["ours, oneDNN all", "ours, oneDNN off", "paddle default"])
def test_dead_code_elimination_erases_an_if_with_its_in_place_writes(tmp_path, configuration):
    from paddlenlp_ext.program_files import load_program, run_program

    prefix = str(tmp_path / "model")
    feed = save(prefix, _write_in_an_if_read_only_by_dead_code)
    (want,) = run_program(load_program(tmp_path), feed)  # the Executor runs the write
    factories = {"ours, oneDNN all": lambda: create_paddle_predictor(prefix, "cpu", onednn="all"),
                 "ours, oneDNN off": lambda: create_paddle_predictor(prefix, "cpu", onednn="off"),
                 "paddle default": lambda: paddle_default_predictor(prefix)}
    for (got,) in _runs(factories[configuration](), feed):
        assert np.abs(got - want).max() > 0.1  # the write is lost
    without_dce = paddle_default_predictor(prefix, delete=("dead_code_elimination_pass",), onednn=False)
    for (got,) in _runs(without_dce, feed):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _carried_buffer_read_then_copied_into(x):
    """A loop whose body writes position 4 of its carried ``a`` in place, reads the written
    buffer, then copies a new value into ``a`` (``assign_out_``, as dy2static's loop copies)."""
    c = paddle.sqrt(paddle.abs(x) + 0.5)
    i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")

    def step(i, a, b):
        new = paddle.tanh(paddle.exp(paddle.clip(c, -3.0, 3.0)))
        written = _C_ops.set_value_with_tensor_(a, c[:, :, 1:2], [4], [5], [1], [2], [], [])
        read = written * 1.0
        return [i + 1, _C_ops.assign_out_(new, a), read * 0.5]

    return [paddle.static.nn.while_loop(lambda i, a, b: i < n, step, [i, x * 1.0, x * 1.0])[2] * 1.0]


def _read_then_copied_expected(x):
    """Position 4 holds the written value, read before the copy; the rest, the copy
    of the step before."""
    c = np.sqrt(np.abs(x) + 0.5)
    want = 0.5 * np.tanh(np.exp(np.clip(c, -3.0, 3.0)))
    want[:, :, 4] = 0.5 * c[:, :, 1]
    return want


def _executor_as_scheduled(loaded, feed, serial: bool):
    """The Executor in the order Paddle 3.3.1 schedules it (not ``run_program``'s)."""
    flags = {"FLAGS_new_executor_serial_run": serial, "FLAGS_new_executor_sequential_run": False}
    previous = paddle.get_flags(list(flags))
    paddle.set_flags(flags)
    try:
        with paddle.pir_utils.IrGuard(), paddle.static.scope_guard(loaded.scope):
            return paddle.static.Executor(paddle.CPUPlace()).run(loaded.program, feed=feed,
                                                                  fetch_list=loaded.outputs)
    finally:
        paddle.set_flags(previous)


def test_executor_runs_a_copy_into_a_carried_buffer_before_a_read_of_its_in_place_write(tmp_path):
    from paddlenlp_ext.program_files import load_files

    prefix = str(tmp_path / "model")
    feed = save(prefix, _carried_buffer_read_then_copied_into)
    want = _read_then_copied_expected(feed["x"])
    for _ in range(2):
        (got,) = _executor_as_scheduled(load_files(prefix, "pir"), feed, serial=True)
        assert np.abs(got - want).max() > 0.05  # the read saw the copy


@pytest.mark.parametrize("configuration", ["ours, oneDNN all", "ours, oneDNN off", "paddle default"])
def test_paddle_inference_runs_it_in_the_programs_order(tmp_path, configuration):
    prefix = str(tmp_path / "model")
    feed = save(prefix, _carried_buffer_read_then_copied_into)
    factories = {"ours, oneDNN all": lambda: create_paddle_predictor(prefix, "cpu", onednn="all"),
                 "ours, oneDNN off": lambda: create_paddle_predictor(prefix, "cpu", onednn="off"),
                 "paddle default": lambda: paddle_default_predictor(prefix)}
    for (got,) in _runs(factories[configuration](), feed):
        np.testing.assert_allclose(got, _read_then_copied_expected(feed["x"]), rtol=1e-5, atol=1e-5)


def test_run_program_runs_it_in_the_programs_order(tmp_path):
    from paddlenlp_ext.program_files import load_files, run_program

    prefix = str(tmp_path / "model")
    feed = save(prefix, _carried_buffer_read_then_copied_into)
    for _ in range(2):
        (got,) = run_program(load_files(prefix, "pir"), feed)
        np.testing.assert_allclose(got, _read_then_copied_expected(feed["x"]), rtol=1e-5, atol=1e-5)
