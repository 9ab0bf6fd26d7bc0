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
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from onednn_cases import FEED, paddle_default_predictor, save

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
