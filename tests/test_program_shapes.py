"""The pass on the program shapes it meets: translated legacy loops, to_static loops,
hand-edited PIR, and loops nested in loops and ifs."""

import numpy as np
import paddle
import pytest
from loop_programs import build_legacy, build_pir, build_to_static, count_ops, run, same_bits
from pass_check import check_pass, outputs_change_under, remove_every_loop_copy
from paddle import _C_ops
from test_rules import FEED, loop, x_input

import paddlenlp_ext.passes.pr9002_rule as pr9002
from paddlenlp_ext.passes.copy_ops import SOURCE
from paddlenlp_ext.passes.program_index import ProgramIndex
import paddlenlp_ext.passes.loop_assign_analysis as analysis
from paddlenlp_ext import remove_loop_assign, remove_loop_assign_pr9002

# -- translated legacy programs -------------------------------------------------------


def legacy_while_loop():
    x = paddle.static.data("x", [2, 3], "float32")
    i = paddle.full([1], 0, "int64")
    n = paddle.full([1], 3, "int64")
    _, x2, y2 = paddle.static.nn.while_loop(
        lambda i, x, y: i < n, lambda i, x, y: [i + 1, x * 2 + 1, y + x], [i, x, x * 0]
    )
    return [x2 + 0, y2]


def legacy_while_with_chain():
    """``While`` with the value assigned twice, as dy2static writes KV caches."""
    x = paddle.static.data("x", [2, 3], "float32")
    total = paddle.full([2, 3], 0.0)
    i = paddle.full([1], 0, "int64")
    n = paddle.full([1], 3, "int64")
    cond = paddle.less_than(i, n)
    loop_op = paddle.static.nn.control_flow.While(cond)
    with loop_op.block():
        new = x * 2 + 1
        paddle.assign(new, x)
        paddle.assign(new, x)
        paddle.assign(total + x * 3, total)  # reads x through the chain's result
        paddle.increment(i)
        paddle.assign(paddle.less_than(i, n), cond)
    return [x, total]


def legacy_nested_while():
    """A ``While`` in a ``While`` writing the outer loop's variable, as PaddleNLP's
    legacy exports nest them: the inner loop's init is the outer block argument,
    and the outer loop yields the inner loop's result."""
    x = paddle.static.data("x", [2, 3], "float32")
    i, n = paddle.full([1], 0, "int64"), paddle.full([1], 3, "int64")
    outer_cond = paddle.less_than(i, n)
    outer = paddle.static.nn.control_flow.While(outer_cond)
    with outer.block():
        j, m = paddle.full([1], 0, "int64"), paddle.full([1], 2, "int64")
        inner_cond = paddle.less_than(j, m)
        inner = paddle.static.nn.control_flow.While(inner_cond)
        with inner.block():
            paddle.assign(x * 0.5 + 1, x)
            paddle.increment(j)
            paddle.assign(paddle.less_than(j, m), inner_cond)
        paddle.increment(i)
        paddle.assign(paddle.less_than(i, n), outer_cond)
    return [x]


def test_translated_nested_while_loses_every_copy():
    """Issue 8, defect 4a: the inner copy of ``x`` was kept as "init read after
    loop", the read being the outer yield of the inner loop's own result."""
    make = lambda: build_legacy(legacy_nested_while, FEED)  # noqa: E731
    assert count_ops(make().program) == 3  # x and the inner condition; the outer condition
    check_pass(make, removed=3)


def test_translated_while_loop_loses_every_copy():
    make = lambda: build_legacy(legacy_while_loop, FEED)  # noqa: E731
    assert count_ops(make().program) == 4  # i, x, y and the condition
    check_pass(make, removed=4)


def test_translated_chain_and_condition_are_removed():
    make = lambda: build_legacy(legacy_while_with_chain, FEED)  # noqa: E731
    assert count_ops(make().program) == 4  # chain of 2 for x, total, condition
    check_pass(make, removed=4)


def test_garbage_collector_off_keeps_every_copy(garbage_collector_off):
    make = lambda: build_legacy(legacy_while_loop, FEED)  # noqa: E731
    check_pass(make, removed=0, kept={analysis.GARBAGE_COLLECTOR_OFF: 4})
    # the pass removes all four with the collector on (test above); here that
    # changes the outputs
    assert outputs_change_under(remove_every_loop_copy, make)


def test_pr9002_rule_removes_no_chain_and_no_condition():
    built = build_legacy(legacy_while_with_chain, FEED)
    reference = run(build_legacy(legacy_while_with_chain, FEED))
    report = remove_loop_assign_pr9002(built.program)
    assert report.removed == 1  # only `total`'s copy
    # r1 feeds the second copy, r2 is also read by `total`'s update; the condition
    # is written into the outer condition value, not a block argument.
    assert report.kept_reasons == {pr9002.NOT_ONLY_YIELDED: 2, pr9002.DESTINATION_NOT_ARGUMENT: 1}
    assert same_bits(reference, run(built))


# -- to_static (PIR-native) programs ---------------------------------------------------

SPEC = [paddle.static.InputSpec([2, 3], "float32", "x")]


def plain_loop(x):
    i = paddle.zeros([1], "int64")
    while i < 3:
        x = x * 2 + 1
        i = i + 1
    return x


def loop_with_outer_buffer(x):
    buf = paddle.zeros([2, 3])
    i = paddle.zeros([1], "int64")
    while i < 3:
        paddle.assign(x * 2 + buf, output=buf)  # reads and writes the outer buffer
        x = x + 1
        i = i + 1
    return x


def loop_with_buffer_read_after(x):
    buf = paddle.zeros([2, 3])
    i = paddle.zeros([1], "int64")
    while i < 3:
        paddle.assign(x * 2, output=buf)
        x = x + 1
        i = i + 1
    return x, buf + 1


def loop_assigning_into_outer_buffer(x):
    """``y`` becomes ``buf`` from the second iteration; ``old`` is read after the write."""
    buf = paddle.zeros([2, 3])
    y, acc = x * 1, x * 0
    i = paddle.zeros([1], "int64")
    while i < 3:
        old = y
        y = paddle.assign(old * 2 + 1, output=buf)
        acc = acc + old
        i = i + 1
    return y, acc


def test_to_static_loop_has_no_copies_and_is_left_alone():
    make = lambda: build_to_static(plain_loop, SPEC, FEED)  # noqa: E731
    assert count_ops(make().program) == 0
    check_pass(make, removed=0)


def test_to_static_outer_buffer_write_is_kept():
    make = lambda: build_to_static(loop_with_outer_buffer, SPEC, FEED)  # noqa: E731
    check_pass(make, removed=0, kept={analysis.DESTINATION_READ_IN_LOOP: 1})


def test_to_static_outer_buffer_read_after_loop_is_kept():
    make = lambda: build_to_static(loop_with_buffer_read_after, SPEC, FEED)  # noqa: E731
    check_pass(make, removed=0, kept={analysis.DESTINATION_READ_AFTER_LOOP: 1})


def test_to_static_outer_buffer_yielded_and_read_through_its_argument_is_kept():
    """Issue 8, defect 1: the pass removed this copy and ``acc`` changed."""
    make = lambda: build_to_static(loop_assigning_into_outer_buffer, SPEC, FEED)  # noqa: E731
    dygraph_acc = _dygraph(loop_assigning_into_outer_buffer)[1]
    assert run(make())[1].tobytes() == dygraph_acc.tobytes()
    check_pass(make, removed=0, kept={analysis.DESTINATION_READ_AFTER_COPY: 1})
    assert outputs_change_under(remove_every_loop_copy, make)


def _dygraph(fn):
    paddle.disable_static()
    try:
        return [t.numpy() for t in fn(paddle.to_tensor(FEED["x"]))]
    finally:
        paddle.enable_static()


# -- hand-edited PIR ---------------------------------------------------------------------


def edited_legacy_loop():
    """The translated ``while_loop``, edited so ``y``'s copy reads ``%arg_x`` late.

    An op reading ``x``'s block argument is inserted before the yield and made the
    source of ``y``'s copy: it runs after ``x``'s copy and sees its data.
    """
    built = build_legacy(legacy_while_loop, FEED)
    loop_op = next(op for op in built.program.global_block().ops if op.name() == "pd_op.while")
    body = list(loop_op.blocks())[0]
    copies = [op for op in body.ops if op.name() == "pd_op.assign_out_"]
    producers = [op.operand_source(0).get_defining_op().name() for op in copies]
    copy_y = copies[producers.index("pd_op.add")]  # y + x
    copy_x = next(op for op in copies if op.operand_source(1).dtype == paddle.float32 and op is not copy_y
                  and op.operand_source(0).get_defining_op().name() == "pd_op.scale")
    with paddle.static.program_guard(built.program):
        paddle.pir.set_insertion_point(copy_y)  # after x's copy, before y's
        late = paddle.scale(copy_x.operand_source(1), 3.0)
        paddle.pir.set_insertion_point_to_block_end(built.program.global_block())
    copy_y.operand(0).set_source(late)
    return built


def test_hand_edited_read_of_argument_after_its_copy():
    check_pass(edited_legacy_loop, removed=3, kept={analysis.DESTINATION_READ_AFTER_COPY: 1})
    assert outputs_change_under(remove_loop_assign_pr9002, edited_legacy_loop)


# -- nesting ---------------------------------------------------------------------------------


def copy_loop(init):
    return loop(lambda y: [_C_ops.assign_out_(y * 0.5 + 1, y)], [init])[0]


def test_while_inside_while():
    def fn():
        def body(x):
            inner = copy_loop(x * 1)
            return [_C_ops.assign_out_(inner + x, x)]

        return loop(body, [x_input() * 1])

    check_pass(lambda: build_pir(fn, FEED), removed=2)


def test_while_inside_if():
    def fn():
        x = x_input()
        return [paddle.static.nn.cond(paddle.sum(x) > 0, lambda: copy_loop(x * 1), lambda: x * 2)]

    check_pass(lambda: build_pir(fn, FEED), removed=1)


def test_if_inside_while():
    def fn():
        def body(x):
            y = paddle.static.nn.cond(paddle.sum(x) > 0, lambda: x * 2, lambda: x * 3)
            return [_C_ops.assign_out_(y + 1, x)]

        return loop(body, [x_input() * 1])

    check_pass(lambda: build_pir(fn, FEED), removed=1)


def _while_inside_if_inside_while(other_branch: str, outer_copy: bool = False):
    """An inner loop starting from the outer block argument ``x``, in an if whose
    other branch yields ``x * 2`` or ``x`` itself (dy2static's ``if c: x = f(x)``),
    and whose result the outer loop carries into ``x`` (through a copy with
    ``outer_copy``)."""

    def fn():
        def body(x):
            otherwise = (lambda: x * 2) if other_branch == "x * 2" else (lambda: x)
            y = paddle.static.nn.cond(paddle.sum(x) > 0, lambda: copy_loop(x), otherwise)
            return [_C_ops.assign_out_(y * 1, x) if outer_copy else y]

        return loop(body, [x_input() * 1])

    return lambda: build_pir(fn, FEED)


@pytest.mark.parametrize(
    "other_branch, outer_copy",
    [("x * 2", False), ("x", False), ("x * 2", True)],
    ids=["if result carried", "other branch yields the init", "if result copied"],
)
def test_while_inside_if_inside_while(other_branch, outer_copy):
    """Issue 27: the inner copy was kept as "init read after loop", the read being
    the outer yield of the if's result. That result shares the inner init's buffer
    only as the previous outer iteration's value (carried into the argument), as
    the inner loop's result (its final value with or without the copy), or where
    the other branch ran (and the inner loop did not)."""
    check_pass(_while_inside_if_inside_while(other_branch, outer_copy), removed=2 if outer_copy else 1)


def test_while_inside_if_whose_other_branch_yields_the_init():
    """The same without an outer loop: the if's result is read after it."""

    def fn():
        y = x_input() * 1
        return [paddle.static.nn.cond(paddle.sum(y) > 0, lambda: copy_loop(y), lambda: y) + 1]

    check_pass(lambda: build_pir(fn, FEED), removed=1)


def _outer_buffer_carried_into_inner_init(through_if: bool):
    """The outer loop carries an outer ``buf`` into the argument ``x`` the inner loop
    starts from: written in place and yielded (``through_if`` False), or yielded by
    the if's other branch in the first outer iteration (True). From then on the
    inner copies write into ``buf``, which is read after the loop."""

    def fn():
        buf = x_input() * 3

        def body(x, t):
            if through_if:
                return [paddle.static.nn.cond(paddle.sum(t) > 0.5, lambda: copy_loop(x), lambda: buf), t + 1]
            y = paddle.static.nn.cond(paddle.sum(x) > 0, lambda: copy_loop(x), lambda: x * 2)
            return [_C_ops.scale_(buf, 1.0, 0.0, True), t + y]

        x, t = loop(body, [x_input() * 1, x_input() * 0])
        return [t, buf * 1 + x * 0]

    return lambda: build_pir(fn, FEED)


@pytest.mark.parametrize("through_if", [False, True], ids=["written in place", "yielded by the other branch"])
def test_outer_buffer_an_enclosing_loop_carries_into_the_init_is_kept(through_if):
    """The safety side of the tests above: what an earlier outer iteration yielded
    is read in that iteration only, but an outer buffer it shares is read after the
    loop; and in an earlier iteration the if may have run its other branch."""
    make = _outer_buffer_carried_into_inner_init(through_if)
    check_pass(make, removed=0, kept={analysis.INIT_READ_AFTER_LOOP: 1})
    assert outputs_change_under(remove_every_loop_copy, make)


def _one_value_carried_into_two_arguments():
    """The outer loop yields one value ``y`` into ``x`` (the inner loop's init) and
    into ``q``: from the second outer iteration on ``q`` *is* ``x``'s buffer, which
    the inner copies write, and ``q`` is read after the inner loop."""

    def fn():
        def body(x, q, acc):
            inner = copy_loop(x)
            seen = q * 1
            y = inner * 1 + 1
            return [y, y, acc + seen]

        x = x_input()
        return loop(body, [x * 1, x * 2, x * 0])

    return build_pir(fn, FEED)


def test_value_an_enclosing_loop_carries_into_the_init_and_another_argument_is_kept():
    """The carry edge walked back (``x`` is the previous iteration's ``y``), then
    forward (``q`` is that ``y`` too, in this iteration); ``q`` counts as this
    iteration's also through its init, which stands for every iteration."""
    make = _one_value_carried_into_two_arguments
    check_pass(make, removed=0, kept={analysis.INIT_READ_AFTER_LOOP: 1})
    assert outputs_change_under(remove_every_loop_copy, make)


def _outer_copy_of_inner_loop_init():
    """Seed 271 of the differential test, reduced: an inner loop takes the outer
    copy's source as its init (and writes it); the loop variable is read after
    that source is recomputed in the next iteration."""

    def fn():
        def body(x, z):
            v = z * 0.5 + 1
            z2 = x * 1 + z  # reads this iteration's x after `v` is recomputed
            copy_loop(v)
            return [_C_ops.assign_out_(v, x), z2]

        return loop(body, [x_input() * 1, x_input() * 2], steps=4)

    return build_pir(fn, FEED)


def erase_outer_loop_copies(program):
    """Erase the copies at the top level of the outermost loop only."""
    index = ProgramIndex.build(program)
    outer = next(op_id for op_id in index.order if index.name(op_id) == "pd_op.while")
    for op_id in [c for c in index.block_ops[(outer, 0)] if index.name(c) == "pd_op.assign_out_"]:
        index.erase_forwarding(op_id, SOURCE)


def test_source_that_a_nested_loop_takes_as_init_is_kept():
    report = check_pass(
        _outer_copy_of_inner_loop_init,
        removed=0,
        # the outer copy reads `v` after the inner loop, so the inner copy stays too
        kept={analysis.SOURCE_IN_NESTED_REGION: 1, analysis.INIT_READ_AFTER_LOOP: 1},
    )
    assert report.loops == 2
    assert outputs_change_under(erase_outer_loop_copies, _outer_copy_of_inner_loop_init)


def test_report_summary_names_counts_and_reasons():
    built = build_legacy(legacy_while_loop, FEED)
    report = remove_loop_assign(built.program, outputs=built.outputs)
    assert report.summary() == "removed 4 copies from 1 loops; kept 0"
    assert np.isfinite(run(built)[0]).all()
