"""passes.onednn_broadcast_add: Paddle Inference's oneDNN matmul + add fusion drops the
add's broadcast of the matmul's result ([B, 1, H] + [B, S, H] returns [B, 1, H]); with
the pass every route we ship returns the right tensor, and without it the oneDNN routes
do not."""

import numpy as np
import paddle
import pytest
from onednn_routes import run_every_route, spec, wrong_routes

import paddlenlp_ext.passes.pipeline as pipeline
from paddlenlp_ext.paddle_modes import static_mode
from paddlenlp_ext.passes.onednn_broadcast_add import broadcast_adds, copy_broadcast_add_operands
from paddlenlp_ext.passes.onednn_inplace_guard import OneDNNGuardReport

H = 16


class LastPositionMLP(paddle.nn.Layer):
    """``residual + mlp(last position)``: the add broadcasts the MLP's [B, 1, H] over
    the sequence. ``form`` picks what a fuse pass sees before the add."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.up = paddle.nn.Linear(H, 32, bias_attr=False)
        self.down = paddle.nn.Linear(32, H, bias_attr=form == "fc")

    def forward(self, x):
        residual = x * 2.0
        h = self.down(paddle.nn.functional.silu(self.up(residual[:, -1, :].unsqueeze(1))))
        if self.form == "relu":
            h = paddle.nn.functional.relu(h)
        return h + residual if self.form == "matmul first" else residual + h


FORMS = ["matmul", "matmul first", "relu", "fc"]
FEED = {"x": np.random.RandomState(0).randn(2, 5, H).astype("float32")}


@pytest.mark.parametrize("form", FORMS)
def test_every_route_returns_the_broadcast_sum(form, tmp_path):
    reference, runs = run_every_route(lambda: LastPositionMLP(form), [spec("x", [-1, -1, H])], FEED, tmp_path)
    assert reference[0].shape == (2, 5, H)
    assert wrong_routes(reference, runs) == {}


def test_without_the_pass_the_onednn_routes_are_wrong(tmp_path, monkeypatch):
    """The defect the pass exists for (Paddle 3.3.1): pins it, so that a Paddle that fixes
    it shows here."""
    skipped = pipeline.PassStep("onednn_broadcast_add", lambda program, outputs: OneDNNGuardReport(0))
    monkeypatch.setattr(pipeline, "ONEDNN_BROADCAST_ADD", skipped)
    reference, runs = run_every_route(lambda: LastPositionMLP("matmul"), [spec("x", [-1, -1, H])], FEED, tmp_path)
    wrong = wrong_routes(reference, runs)
    assert set(wrong) == {"StaticGenerationModel, oneDNN all", "convert, Paddle's default",
                          "save hook, Paddle's default"}
    assert all("float32[2, 1, 16], expected float32[2, 5, 16]" in what for what in wrong.values())


def _program(build, shapes):
    """The PIR program of ``build`` over float32 inputs of ``shapes``."""
    with static_mode(), paddle.pir_utils.IrGuard():
        program = paddle.static.Program()
        with paddle.static.program_guard(program):
            build(*[paddle.static.data(f"x{k}", shape, "float32") for k, shape in enumerate(shapes)])
    return program


def _copied(build, *shapes) -> list[int]:
    program = _program(build, shapes)
    return sorted(k for _, k in broadcast_adds(program))


def _product(v):
    """``v`` times a [H, H] parameter: a matmul's result."""
    weight = paddle.static.create_parameter([H, H], "float32")
    return paddle.matmul(v, weight)


def test_the_operands_an_add_may_broadcast():
    assert _copied(lambda x, y: x + _product(y), [-1, -1, H], [-1, 1, H]) == [1]
    assert _copied(lambda x, y: _product(x) + _product(y), [-1, 1, H], [1, -1, H]) == [0, 1]
    assert _copied(lambda x, y: x + _product(y), [-1, -1, H], [H]) == [1]  # fewer axes
    assert _copied(lambda x, y: _product(x) + _product(y), [-1, -1, H], [-1, -1, H]) == []  # unknown = unknown
    assert _copied(lambda x, y: x + y, [-1, -1, H], [-1, 1, H]) == []  # fed values
    assert _copied(lambda x, y: x + y * 2.0, [-1, -1, H], [-1, 1, H]) == []  # no matmul's
    # A linear's bias, a parameter, broadcasts: never a matmul's result.
    assert _copied(lambda x: paddle.nn.Linear(H, H)(x), [-1, -1, H]) == []
    assert _copied(lambda x, y: (x * 2.0).astype("int64") + _product(y).astype("int64"), [-1, 4, H], [-1, 1, H]) == []


def test_a_matmul_is_looked_for_three_ops_back():
    relu = paddle.nn.functional.relu
    assert _copied(lambda x, y: x + relu(relu(_product(y))), [-1, -1, H], [-1, 1, H]) == [1]
    assert _copied(lambda x, y: x + relu(relu(relu(_product(y)))), [-1, -1, H], [-1, 1, H]) == []


def test_a_second_run_copies_nothing():
    program = _program(lambda x, y: x + _product(y), [[-1, -1, H], [-1, 1, H]])
    assert copy_broadcast_add_operands(program).copied == 1
    assert copy_broadcast_add_operands(program).copied == 0
    assert [op.name() for op in program.global_block().ops].count("pd_op.roll") == 1
