"""guard_onednn_inplace: a saved program that Paddle Inference's *default* CPU config
(``Config(model.json, model.pdiparams)`` + ``disable_gpu()``: new IR, oneDNN, every
default pass, inplace_pass included) runs right, and that computes the same bits as
before on plain kernels."""

import numpy as np
import paddle
import pytest
from hardware import requires_bfloat16
from onednn_cases import paddle_default_predictor
from test_inference import _scale_pow_add
from test_llama_loop import exported, feed  # noqa: F401 (a fixture)

from paddlenlp_ext.inference import run_predictor
from paddlenlp_ext.program_files import load_files, load_program, run_program, save_program
from paddlenlp_ext.paddle_modes import static_mode
from paddlenlp_ext.passes.onednn_inplace_guard import guard_onednn_inplace
from paddlenlp_ext.passes.remove_loop_assign import remove_loop_assign


def our_predictor(prefix):
    """StaticGenerationModel's configuration: oneDNN as Paddle places it, inplace_pass
    deleted."""
    from paddlenlp_ext.inference import create_paddle_predictor

    return create_paddle_predictor(prefix, "cpu")


def plain_predictor(prefix):
    """New IR, oneDNN off: plain kernels only."""
    from paddlenlp_ext.inference import create_paddle_predictor

    return create_paddle_predictor(prefix, "cpu", onednn="off")


def twice(predictor, feed_dict):
    return run_predictor(predictor, feed_dict), run_predictor(predictor, feed_dict)


def assert_bit_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))  # bits, not values (-0.0, NaN)


def save_both(loaded_factory, tmp_path):
    """Save a program as it is and guarded: (unfixed prefix, fixed prefix, report)."""
    unfixed, fixed = str(tmp_path / "unfixed" / "model"), str(tmp_path / "fixed" / "model")
    save_program(loaded_factory(), unfixed)
    loaded = loaded_factory()
    report = guard_onednn_inplace(loaded.program, loaded.outputs)
    save_program(loaded, fixed)
    return unfixed, fixed, report


# -- the three-op reproducer: h = 3 * x (oneDNN scale), pow(h, 2) (plain) + h --


def test_three_op_program(tmp_path):
    _scale_pow_add(str(tmp_path / "src" / "model"), [-1, 8])
    load = lambda: load_files(str(tmp_path / "src" / "model"), "pir")  # noqa: E731
    unfixed, fixed, report = save_both(load, tmp_path)
    x = np.array([[0.5, -0.0, 0.0, -2.0, 1e-3, 3e18, -7.25, 1.0]] * 2, dtype="float32")
    h = 3 * x
    expected = h ** 2 + h
    (broken,) = run_predictor(paddle_default_predictor(unfixed), {"x": x})
    np.testing.assert_allclose(broken, 2 * h ** 2, rtol=1e-6)  # pow_ wrote h ** 2 over h
    for run in twice(paddle_default_predictor(fixed), {"x": x}):
        np.testing.assert_allclose(run[0], expected, rtol=1e-6)
    assert_bit_identical(run_predictor(plain_predictor(fixed), {"x": x}),
                         run_predictor(plain_predictor(unfixed), {"x": x}))
    assert_bit_identical(run_program(load_files(fixed, "pir"), {"x": x}),
                         run_program(load_files(unfixed, "pir"), {"x": x}))
    # both reads of h: the pow, and the add (whichever operand its in-place twin writes)
    assert report.modified and report.guarded == 2 and report.ops == {"pd_op.pow": 1, "pd_op.add": 1}
    assert report.summary() == "guarded 2 reads: pd_op.add (1), pd_op.pow (1)"


def test_only_reads_that_can_alias_a_later_read_are_guarded():
    with static_mode(), paddle.pir_utils.IrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            x = paddle.static.data("x", [-1, 8], "float32")
            h = x * 3.0
            alone = (h * 2.0).pow(2)  # h * 2.0's only reader is the pow: not guarded
            shared = h.pow(2) + h  # h read by several ops: every read guarded
            from_feed = x.pow(2) + x  # x is fed (a plain tensor), never oneDNN's
            mixed = paddle.multiply(h, h) + h  # whatever kernel multiply gets: guarded
        first = guard_onednn_inplace(main, [alone, shared, from_feed, mixed])
        second = guard_onednn_inplace(main, [alone, shared, from_feed, mixed])
    # h's six reads: the scale of `h * 2.0`, the pow, two adds, multiply's two operands
    assert first.ops == {"pd_op.scale": 1, "pd_op.pow": 1, "pd_op.add": 2, "pd_op.multiply": 2}
    assert not second.modified and second.summary() == "guarded 0 reads"


def test_two_guarded_reads_of_one_value_get_copies_that_cannot_be_merged(tmp_path):
    """Identical copies would be merged by common_subexpression_elimination_pass into
    one value read by pow and rsqrt: pow_ would write over it before rsqrt reads it."""
    source = str(tmp_path / "src" / "model")
    with static_mode(), paddle.pir_utils.IrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            x = paddle.static.data("x", [-1, 8], "float32")
            h = x * 3.0
            out = h.pow(2) + paddle.rsqrt(h) + h
        paddle.static.save_inference_model(source, [x], [out], paddle.static.Executor(paddle.CPUPlace()),
                                           program=main)
    unfixed, fixed, report = save_both(lambda: load_files(source, "pir"), tmp_path)
    x = {"x": np.arange(1, 17, dtype="float32").reshape(2, 8) / 8}
    h = 3 * x["x"]
    expected = h ** 2 + 1 / np.sqrt(h) + h
    assert not np.allclose(run_predictor(paddle_default_predictor(unfixed), x)[0], expected, rtol=1e-5)
    np.testing.assert_allclose(run_predictor(paddle_default_predictor(fixed), x)[0], expected, rtol=1e-5)
    assert_bit_identical(run_predictor(plain_predictor(fixed), x), run_predictor(plain_predictor(unfixed), x))
    assert report.ops == {"pd_op.pow": 1, "pd_op.rsqrt": 1, "pd_op.add": 1}


# -- the llama decoding loop (legacy export, translated and cleaned as StaticGenerationModel does) --


def test_llama_loop_on_the_default_config(exported, tmp_path):
    directory, reference = exported

    def cleaned():
        loaded = load_program(directory)
        remove_loop_assign(loaded.program, outputs=loaded.outputs)
        return loaded

    unfixed, fixed, report = save_both(cleaned, tmp_path)
    inputs = feed()
    first, _ = twice(paddle_default_predictor(unfixed), inputs)
    assert not np.array_equal(first[0], reference)  # the bug
    for run in twice(paddle_default_predictor(fixed), inputs):
        np.testing.assert_array_equal(run[0], reference)
    assert_bit_identical(run_predictor(plain_predictor(fixed), inputs), run_predictor(plain_predictor(unfixed), inputs))
    assert_bit_identical(run_program(load_files(fixed, "pir"), inputs), run_program(load_files(unfixed, "pir"), inputs))
    # every RMSNorm's pow (2 layers x 2 + the final norm), before the loop and in it:
    # its input (PaddleNLP's astype("float32")) is read again by the normalisation
    assert report.ops["pd_op.pow"] == 10


# -- PaddleNLP's own sampling loop (to_static of sample_d2s), with float scores to compare bit by bit --


@pytest.fixture(scope="module")
def paddlenlp_loop(tmp_path_factory):
    from paddlenlp_ext.export_model import build_parser, export

    directory = tmp_path_factory.mktemp("paddlenlp_loop") / "model"
    home = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PADDLENLP_EXT_HOME", str(home))
        export(build_parser().parse_args(["--model", "llama2", "--output_path", str(directory), "--loop", "paddlenlp"]))
    return directory


def test_paddlenlp_loop_scores_stay_bit_identical(paddlenlp_loop, tmp_path):
    from paddlenlp_ext.predictor import PredictorArgument, decoding_settings, model_inputs

    unfixed, fixed, report = save_both(lambda: load_program(paddlenlp_loop), tmp_path)
    ids = np.array([[1, 17, 45, 300, 999, 5, 7, 80]], dtype="int64")
    inputs = model_inputs(ids, np.ones_like(ids), 12, decoding_settings(PredictorArgument(decode_strategy="greedy_search")))
    plain = run_predictor(plain_predictor(unfixed), inputs)
    assert [a.dtype for a in plain] == [np.int64, np.float32]
    assert_bit_identical(run_predictor(plain_predictor(fixed), inputs), plain)
    assert_bit_identical(run_program(load_files(fixed, "pir"), inputs), run_program(load_files(unfixed, "pir"), inputs))
    broken, _ = twice(paddle_default_predictor(unfixed), inputs)
    assert not np.array_equal(broken[0], plain[0])
    for run in twice(paddle_default_predictor(fixed), inputs):
        np.testing.assert_array_equal(run[0], plain[0])
    # StaticGenerationModel's configuration needs no guard: it has no inplace_pass
    for prefix in (unfixed, fixed):
        for run in twice(our_predictor(prefix), inputs):
            np.testing.assert_array_equal(run[0], plain[0])
    # every RMSNorm's pow (2 layers x 2 + the final norm), before the loop and in it
    assert report.ops["pd_op.pow"] == 10


def test_reads_in_a_loop_of_outer_values_and_block_arguments_are_guarded():
    """Condition 4 across iterations: a value defined before the loop and read once in
    its body is read again by the next iteration; a block argument shares its init's
    (or the last yield's) buffer. Body values read once are not guarded."""
    with static_mode(), paddle.pir_utils.IrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            x = paddle.static.data("x", [-1, 8], "float32")
            h = x * 3.0  # read once, inside the loop
            i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")

            def body(i, y):
                fresh = paddle.tanh(h.pow(2.0))  # h: guarded; h.pow(2.0) read once: not
                return [i + 1, paddle.exp(y) * 0.1 + fresh]  # y, read once: guarded (exp)

            out = paddle.static.nn.while_loop(lambda i, y: i < n, body, [i, x * 1.0])[1]
        report = guard_onednn_inplace(main, [out])
    assert report.ops == {"pd_op.pow": 1, "pd_op.exp": 1}


# -- issue 27: condition 3's dtypes, condition 4's merged reads, condition 5, the copies --


def test_the_dtypes_are_those_of_paddles_onednn_kernels():
    """Condition 3 rests on Paddle's kernel registry: the dtypes some oneDNN kernel is
    registered for, and cast's (the kernel key of a cast is its input's dtype). A wheel
    that registers another fails here."""
    import re

    from paddle.base import core

    from paddlenlp_ext.passes.onednn_inplace_guard import ONEDNN_KERNEL_DTYPES

    names = {"float": "float32", "::phi::dtype::bfloat16": "bfloat16", "::phi::dtype::float16": "float16",
             "int8_t": "int8", "uint8_t": "uint8"}
    registered = {}
    for op, keys in core._get_all_register_op_kernels("phi").items():
        for key in keys:
            if "MKLDNN" in key:
                dtype = re.search(r"data_type\[([^\]]*)\]", key).group(1)
                registered.setdefault(op, set()).add(getattr(paddle, names[dtype]))
    assert set().union(*registered.values()) == set(ONEDNN_KERNEL_DTYPES)
    assert registered["cast"] <= set(ONEDNN_KERNEL_DTYPES) and registered["shape"] <= set(ONEDNN_KERNEL_DTYPES)


def _int_program(main):
    x = paddle.static.data("x", [-1, 8], "float32")
    ids = paddle.cast(x * 3.0, "int64")  # oneDNN's cast: int64 it wrote
    i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")

    def body(i, total):
        return [i + 1, total + i]  # the counter: full, then i + 1, read by the condition too

    total = paddle.static.nn.while_loop(lambda i, t: i < n, body, [i, paddle.zeros([1], "int64")])[1]
    return [(ids + 1) * ids + total]


def test_int_values_from_a_onednn_cast_are_guarded_and_a_loop_counter_is_not():
    with static_mode(), paddle.pir_utils.IrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            outputs = _int_program(main)
        report = guard_onednn_inplace(main, outputs)
    # ids, read by the scale of `ids + 1` and by the multiply: both reads; nothing of the loop
    assert report.ops == {"pd_op.scale": 1, "pd_op.multiply": 1}


def _erased_by_paddles_pass(program) -> list:
    """Pre-order positions of the ops Paddle's own common_subexpression_elimination_pass
    erases from a clone of ``program``."""
    def walk(block):
        for op in block.ops:
            yield op
            for inner in op.blocks() if op.num_regions() else ():
                yield from walk(inner)

    clone = program.clone()
    before = [op.id() for op in walk(clone.global_block())]
    manager = paddle.pir.PassManager()
    manager.add_pass("common_subexpression_elimination_pass", {})
    manager.run(clone)
    after = {op.id() for op in walk(clone.global_block())}
    return [position for position, op_id in enumerate(before) if op_id not in after]


def test_merged_reads_are_a_superset_of_what_paddles_pass_merges():
    """Condition 4 counts reads as common_subexpression_elimination_pass leaves them: a
    value it merges into another is that value (checked against the pass itself)."""
    from paddlenlp_ext.passes.onednn_inplace_guard import _merged_values
    from paddlenlp_ext.passes.program_index import ProgramIndex

    with static_mode(), paddle.pir_utils.IrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            x = paddle.static.data("x", [-1, 8], "float32")
            w = paddle.static.create_parameter([8, 8], "float32")
            h = paddle.tanh(x)
            first, second = paddle.matmul(h, w), paddle.matmul(h, w)  # a layer called twice
            both = paddle.add(first, h) * paddle.add(h, second)  # merged: add commutes
            i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")

            def body(i, y):
                return [i + 1, y + paddle.nn.functional.silu(paddle.matmul(h, w))]  # merged into `first`

            out = paddle.static.nn.while_loop(lambda i, y: i < n, body, [i, both])[1]
        index = ProgramIndex.build(main)
        merged = _merged_values(index)
        erased = _erased_by_paddles_pass(main)
    assert erased, "Paddle's pass merged nothing: the test no longer tests anything"
    for position in erased:
        info = index.ops[list(index.order)[position]]
        assert all(key in merged for key in info.results), info.name
    matmuls = [info for info in index.ops.values() if info.name == "pd_op.matmul"]
    assert [merged.get(m.results[0], m.results[0]) for m in matmuls] == [matmuls[0].results[0]] * 3
    del out


DTYPES = ("bool", "int8", "uint8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64",
          "complex64", "complex128", "float8_e4m3fn", "float8_e5m2")


def test_copies_of_every_dtype_are_exact_and_never_merged():
    """The guard's copies: for every dtype a PIR value has, exact (same bits), and the
    copies of one value distinct expressions (common_subexpression_elimination_pass
    would otherwise merge them, or a copy with part of another)."""
    from paddlenlp_ext.passes.exact_copy import exact_copy
    from paddlenlp_ext.passes.onednn_inplace_guard import _merged_values
    from paddlenlp_ext.passes.program_index import ProgramIndex

    copies = 9  # more than 2 * rank: the axis lists grow
    with static_mode(), paddle.pir_utils.IrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            x = paddle.static.data("x", [2, 3], "float32")
            fetched, copied = [], []
            for dtype in DTYPES:
                value = paddle._C_ops.cast(x * 3.0, getattr(paddle, dtype))
                for v in (value, paddle.sum(value) if dtype == "float32" else None):  # and a 0-D value
                    if v is None:
                        continue
                    taken = set()
                    made = [exact_copy(v, taken) for _ in range(copies)]
                    copied += made
                    # float32 holds every bfloat16 and float8 value exactly (fetch takes neither)
                    wide = "bfloat16" in dtype or "float8" in dtype
                    fetched.append([paddle._C_ops.cast(c, paddle.float32) if wide else c for c in [v] + made])
        index = ProgramIndex.build(main)
        merged = _merged_values(index)
        assert not [c for c in copied if c.id in merged]
        feed = {"x": np.array([[-1.7, 0.2, 3e-3], [2.5, -0.0, 40.25]], dtype="float32")}
        runs = paddle.static.Executor(paddle.CPUPlace()).run(main, feed=feed, fetch_list=sum(fetched, []))
    k = 0
    for group in fetched:
        original = runs[k]
        assert original.any()  # the cast kept some nonzero value: the comparison means something
        for copy in runs[k + 1:k + len(group)]:
            assert copy.dtype == original.dtype and copy.shape == original.shape
            assert copy.tobytes() == original.tobytes()
        k += len(group)


def _conv_loop(init_from_conv: bool):
    x = paddle.static.data("x", [-1, 2, 5, 5], "float32")
    w = paddle.static.create_parameter([2, 2, 3, 3], "float32")
    init = paddle.nn.functional.relu(paddle.nn.functional.conv2d(x, w, padding=1)) if init_from_conv else x
    i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")

    def body(i, y):
        return [i + 1, paddle.nn.functional.relu(paddle.nn.functional.conv2d(y, w, padding=1))]

    return [paddle.static.nn.while_loop(lambda i, y: i < n, body, [i, init])[1]]


@pytest.mark.parametrize("init_from_conv", [False, True])
def test_a_loop_carrying_a_blocked_layout_carries_copies(init_from_conv):
    """Condition 5: a while's init and yielded value that may hold a blocked layout are
    copied (the counter and a fed init are not); a copy holds none, so a second run
    changes nothing."""
    with static_mode(), paddle.pir_utils.IrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            outputs = _conv_loop(init_from_conv)
        first = guard_onednn_inplace(main, outputs)
        second = guard_onednn_inplace(main, outputs)
    assert first.carried == (2 if init_from_conv else 1)
    assert first.summary().endswith(f"; copied {first.carried} loop-carried values")
    assert not second.modified


def test_a_second_run_builds_its_copies_unlike_the_first_runs():
    """A program guarded once and rewritten (our pipeline rewrites a converted directory
    before guarding it again) gets copies unlike those it holds: numbered from 0 again,
    common_subexpression_elimination_pass would merge a new copy with an old one."""
    with static_mode(), paddle.pir_utils.IrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            x = paddle.static.data("x", [-1, 8], "float32")
            h = x * 3.0
            first = h.pow(2) + h
        guard_onednn_inplace(main, [first])
        with paddle.static.program_guard(main):
            second = paddle.exp(h) + h  # new reads of h
        report = guard_onednn_inplace(main, [first, second])
        rolls = [op for op in main.global_block().ops if op.name() == "pd_op.roll"]
    assert report.ops == {"pd_op.exp": 1, "pd_op.add": 1}
    axes = [tuple(op.attrs()["axis"]) for op in rolls]
    assert len(rolls) == 4 and len(set(axes)) == 4, axes


def test_only_programs_holding_bfloat16_need_the_guard_with_onednn_off():
    """(Why: test_onednn_classes.test_onednn_off_runs_onednn_kernels_for_bfloat16_and_needs_the_guard.)"""
    from paddlenlp_ext.passes.onednn_inplace_guard import needs_guard_with_onednn_off

    def program(dtype):
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            x = paddle.static.data("x", [-1, 8], "float32")
            i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")
            body = lambda i, y: [i + 1, (paddle.exp(y.cast(dtype)) * 0.5).cast("float32")]  # noqa: E731
            paddle.static.nn.while_loop(lambda i, y: i < n, body, [i, x * 1.0])
        return main

    with static_mode(), paddle.pir_utils.IrGuard():
        assert needs_guard_with_onednn_off(program("bfloat16"))  # found in a loop body
        assert not needs_guard_with_onednn_off(program("float32"))


def _bfloat16_written_in_a_loop(x):
    """A bfloat16 activation from before a loop written in place (one position) in its
    body, the written buffer read by a ``scale`` (the oneDNN differential's seed 437):
    ``scale_`` would write the activation's buffer, which the next iteration writes and
    reads again."""
    from onednn_cases import linear
    from paddle import _C_ops

    h = paddle.nn.functional.hardswish(linear(x).cast("bfloat16"))
    i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")

    def step(i, y):
        written = _C_ops.set_value_with_tensor_(h, y.cast("bfloat16")[:, :, 1:2], [4], [5], [1], [2], [], [])
        return [i + 1, (written * 0.5).cast("float32")]

    return [paddle.static.nn.while_loop(lambda i, y: i < n, step, [i, x * 1.0])[1]]


@requires_bfloat16
def test_a_read_of_an_in_place_result_counts_the_reads_of_its_buffer(tmp_path):
    """Condition 4 over the buffer an in-place op writes: guarded, our oneDNN-off route is
    right; the program as saved is wrong there."""
    from onednn_cases import FEED, save

    from paddlenlp_ext.inference import StaticGenerationModel

    source = tmp_path / "source"
    save(str(source / "model"), _bfloat16_written_in_a_loop)
    flag = "FLAGS_pir_apply_inplace_pass"  # the Executor's own alias, off (test_onednn_classes)
    previous = paddle.get_flags([flag])
    paddle.set_flags({flag: False})
    try:
        (want,) = run_program(load_files(str(source / "model"), "pir"), FEED)
    finally:
        paddle.set_flags(previous)
    assert np.abs(run_predictor(plain_predictor(str(source / "model")), FEED)[0] - want).max() > 0.05
    model = StaticGenerationModel(source, onednn="off", fall_back=False)
    assert model.pipeline.get("onednn_inplace_guard").guarded > 0
    for _ in range(2):
        np.testing.assert_array_equal(model.run(FEED), want)
