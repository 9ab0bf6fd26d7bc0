"""passes.inplace_reads: after an in-place write, a read of the written value goes
through the writer's result; Paddle Inference 3.3.1 with oneDNN, and its CSE with
oneDNN off, lose the write for a reader of the value itself (pinned), and the rewired
program is right on every route."""

import numpy as np
import paddle
import pytest
from onednn_cases import paddle_default_predictor, save
from paddle import _C_ops

from paddlenlp_ext.convert import convert
from paddlenlp_ext.inference import StaticGenerationModel, create_paddle_predictor, run_predictor
from paddlenlp_ext.program_files import load_files, run_program
from paddlenlp_ext.passes.inplace_reads import read_inplace_results


def _two():
    return paddle.static.create_parameter([16], "float32", default_initializer=paddle.nn.initializer.Constant(2.0))


def scaled_transpose(x):  # a oneDNN transpose's (strided) result scaled in place, then read
    t = paddle.transpose(paddle.reshape(x * _two(), [-1, 4, 4]), [0, 2, 1])
    s = _C_ops.scale_(t, 0.5, 0.0, True)
    return [s + 1.0, t + 0.0]


def tanh_of_a_sum(x):  # a oneDNN elementwise result written in place, then read
    h = x * _two() + 1.0
    s = _C_ops.tanh_(h)
    return [s * 3.0, h + 0.0]


def feed_written_in_a_loop(x):  # the same sum of the fed x read before and after a write into x
    i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")

    def step(i, c):
        paddle.add(x, c)  # read before the write: Paddle's CSE merges the later sum into it
        _C_ops.set_value_with_tensor_(x, x[:, :, 15:], [9], [10], [1], [2], [], [])
        return [i + 1, paddle.tanh(paddle.add(x, c))]

    return [paddle.static.nn.while_loop(lambda i, c: i < n, step, [i, x * _two()])[1] * 1.0]


CASES = {"scale_ of a transpose": scaled_transpose, "tanh_ of a sum": tanh_of_a_sum,
         "a fed value written in a loop": feed_written_in_a_loop}


def _error(outputs, reference):
    return max(float(np.abs(got - want).max()) for got, want in zip(outputs, reference))


@pytest.mark.parametrize("name", ["scale_ of a transpose", "tanh_ of a sum"])
def test_onednn_loses_an_inplace_write_for_readers_of_the_value(tmp_path, name):
    """The defect, pinned: when this test fails, Paddle keeps the write, and the pass can go."""
    feed = save(str(tmp_path / "model"), CASES[name])
    reference = run_program(load_files(str(tmp_path / "model"), "pir"), feed)
    assert _error(run_predictor(create_paddle_predictor(str(tmp_path / "model"), onednn="off"), feed), reference) == 0
    for predictor in (create_paddle_predictor(str(tmp_path / "model")), paddle_default_predictor(
            str(tmp_path / "model"))):
        assert _error(run_predictor(predictor, feed), reference) > 0.1


def test_common_subexpression_elimination_loses_an_inplace_write_into_a_fed_value(tmp_path):
    """The defect, pinned (oneDNN off; right with the CSE pass deleted)."""
    prefix = str(tmp_path / "model")
    feed = save(prefix, feed_written_in_a_loop)
    reference = run_program(load_files(prefix, "pir"), feed)
    assert _error(run_predictor(create_paddle_predictor(prefix, onednn="off"), feed), reference) > 0.01
    without_cse = paddle_default_predictor(prefix, delete=("common_subexpression_elimination_pass",), onednn=False)
    assert _error(run_predictor(without_cse, feed), reference) == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_route_keeps_the_write(tmp_path, name):
    feed = save(str(tmp_path / "source" / "model"), CASES[name])
    reference = run_program(load_files(str(tmp_path / "source" / "model"), "pir"), feed)
    converted = convert(tmp_path / "source", tmp_path / "converted").directory
    predictors = {"converted, Paddle's default": paddle_default_predictor(str(converted / "model"))}
    for onednn in ("all", "off"):
        model = StaticGenerationModel(tmp_path / "source", onednn=onednn, fall_back=False)
        assert model.pipeline.get("inplace_reads") is None or model.pipeline.get("inplace_reads").modified
        predictors[f"ours, {onednn}"] = model.predictor
    for route, predictor in predictors.items():
        for _ in range(2):
            assert _error(run_predictor(predictor, feed), reference) < 1e-5, route


def test_only_reads_after_the_write_in_its_scope_are_rewired(tmp_path):
    """A read before the write keeps the value; reads after it, a branch's included, are
    rewired; in-place writes in a row chain (the last writer's result is read)."""
    def body(x):
        h = x * _two()
        before = h * 3.0
        t = _C_ops.tanh_(h)
        s = _C_ops.scale_(h, 3.0, 0.0, True)
        branch = paddle.static.nn.cond(paddle.sum(x) > 0, lambda: h + 1.0, lambda: h - 1.0)
        return [before, branch, h + 0.0, t * 1.0, s * 1.0]

    feed = save(str(tmp_path / "model"), body)
    loaded = load_files(str(tmp_path / "model"), "pir")
    reference = run_program(loaded, feed)
    ops = list(loaded.program.global_block().ops)
    tanh, scale = (next(op for op in ops if op.name() == name) for name in ("pd_op.tanh_", "pd_op.scale_"))
    h = tanh.operand_source(0)
    report = read_inplace_results(loaded.program, loaded.outputs)
    assert scale.operand_source(0).is_same(tanh.result(0))  # chained
    readers_of_h = {op.name() for op in h.all_used_ops()}
    assert readers_of_h == {"pd_op.scale", "pd_op.tanh_"}, readers_of_h  # before, and the first writer
    # after the last write: the branch's two reads, h + 0.0, t * 1.0 and s * 1.0
    assert len(scale.result(0).all_used_ops()) == 5
    assert report.rewired == 4 + 4  # tanh_: scale_, the branch (2), h + 0.0; scale_: the branch (2), h + 0.0, t * 1.0
    for got, want in zip(run_program(loaded, feed), reference):
        np.testing.assert_array_equal(got, want)
