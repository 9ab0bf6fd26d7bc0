"""One test per safety condition of remove_loop_assign, on programs built in PIR.

Copies are written with ``_C_ops.assign_out_`` inside ``while_loop`` bodies: the
same op the translator emits for legacy loops. Where a condition keeps a copy, the
test also shows the copy matters: erasing every loop copy changes the outputs, so
a pass without that condition would fail the same check.
"""

from collections import defaultdict

import numpy as np
import paddle
import pytest
from loop_programs import build_pir, count_loop_copies
from pass_check import check_pass, inference_outputs_change_under, outputs_change_under, remove_every_loop_copy
from paddle import _C_ops

from paddlenlp_ext import remove_loop_assign_pr9002
import paddlenlp_ext.passes.loop_assign_analysis as analysis
import paddlenlp_ext.passes.remove_loop_assign as rla

FEED = {"x": np.arange(6, dtype="float32").reshape(2, 3) / 7}


def x_input():
    """The program's input ``x``, declared on first use (Paddle Inference refuses two
    inputs of one name)."""
    block = paddle.static.default_main_program().global_block()
    for op in block.ops:
        if op.name() == "pd_op.data" and op.attrs()["name"] == "x":
            return op.result(0)
    return paddle.static.data("x", [2, 3], "float32")


def loop(body, inits, steps=3):
    """``while_loop`` over ``inits`` with a hidden counter; ``body(*xs) -> xs``."""
    i = paddle.full([1], 0, "int64")
    limit = paddle.full([1], steps, "int64")
    outs = paddle.static.nn.while_loop(
        lambda i, *xs: i < limit, lambda i, *xs: [i + 1, *body(*xs)], [i, *inits]
    )
    return list(outs[1:])


def program(fn):
    """A zero-argument builder of ``fn``'s program fed with FEED."""
    return lambda: build_pir(fn, FEED)


def assert_copy_matters(make):
    assert outputs_change_under(remove_every_loop_copy, make)


# -- removed --------------------------------------------------------------------------


def test_copy_into_block_argument_is_removed():
    def fn():
        return loop(lambda x: [_C_ops.assign_out_(x * 2 + 1, x)], [x_input() * 1])

    check_pass(program(fn), removed=1)


def test_chain_is_removed_whole():
    def fn():
        def body(x):
            new = x * 2 + 1
            r1 = _C_ops.assign_out_(new, x)
            return [_C_ops.assign_out_(new, r1)]

        return loop(body, [x_input() * 1])

    check_pass(program(fn), removed=2)


def test_reads_through_the_result_are_redirected_to_the_source():
    def fn():
        def body(x, y):
            r = _C_ops.assign_out_(x * 2 + 1, x)
            return [r, r * 3 + y]

        return loop(body, [x_input() * 1, x_input() * 0])

    check_pass(program(fn), removed=1)


def test_reads_between_copies_of_a_chain_read_that_copy_source():
    def fn():
        def body(x, y):
            first, second = x * 2, x * 3
            r1 = _C_ops.assign_out_(first, x)
            y2 = r1 + y  # reads `first`
            return [_C_ops.assign_out_(second, r1), y2]

        return loop(body, [x_input() * 1, x_input() * 0])

    check_pass(program(fn), removed=2)


def test_dead_write_into_outer_buffer_is_removed():
    def fn():
        buf = paddle.full([2, 3], 5.0)

        def body(x):
            _C_ops.assign_out_(x * 4, buf)
            return [x + 1]

        return loop(body, [x_input() * 1])

    check_pass(program(fn), removed=1)


def test_outputs_none_means_no_extra_outputs():
    built = build_pir(lambda: loop(lambda x: [_C_ops.assign_out_(x * 2 + 1, x)], [x_input() * 1]), FEED)
    assert analysis.analyze_loop_assign(built.program, outputs=None).removable
    assert rla.remove_loop_assign(built.program, outputs=None).removed == 1


def test_an_output_of_another_program_is_an_error():
    built = build_pir(lambda: loop(lambda x: [_C_ops.assign_out_(x * 2 + 1, x)], [x_input() * 1]), FEED)
    clone = built.program.clone()
    for check in (rla.remove_loop_assign, analysis.analyze_loop_assign):
        with pytest.raises(ValueError, match="not values of this program") as error:
            check(clone, outputs=built.outputs)
        assert "\n" not in str(error.value)
    assert count_loop_copies(clone) == 1  # nothing was changed


def test_the_program_is_indexed_once_however_many_loops(monkeypatch):
    """Issue 8, defect 6: the pass rebuilt its whole-program alias analysis for
    every loop and every rewrite, cubic in the number of loops (3 s for 40 loops).
    Now one index is built and updated in place. (Timed on a deep llama: scripts/benchmark.py --pass-layers.)"""
    builds = []
    original = analysis.ProgramIndex.build.__func__
    monkeypatch.setattr(analysis.ProgramIndex, "build", classmethod(lambda cls, p: builds.append(p) or original(cls, p)))

    def fn():
        x = x_input() * 1
        for _ in range(12):
            x = loop(lambda x: [_C_ops.assign_out_(x * 2 + 1, x)], [x])[0]
        return [x]

    built = build_pir(fn, FEED)
    assert rla.remove_loop_assign(built.program, outputs=built.outputs).removed == 12
    assert len(builds) == 1


def test_work_on_loops_in_a_row_grows_linearly(monkeypatch):
    """Issue 27: condition 6 checked every loop's init against the aliases of every
    earlier loop (each init is the previous loop's result, which may share every
    earlier init: a loop may run no iteration), quadratic in the number of loops
    (1.3 s at 400 here). Counted, not timed: the alias edges the pass looks up and
    the values whose reads it checks, at 10 loops and at 40 (linear: 4 times the
    work, 4.1 measured; quadratic: 16 times, 13.7 before the fix).
    (Timed on a deep llama: scripts/benchmark.py --pass-layers.)"""
    looked_up = []  # alias-graph edge lists and value uses the pass asked for

    class CountingEdges(defaultdict):
        def get(self, key, default=None):
            looked_up.append(key)
            return super().get(key, default)

    build_index, reads = analysis.ProgramIndex.build.__func__, analysis.ProgramIndex.reads

    def build(cls, program):
        index = build_index(cls, program)
        index.aliases.edges = CountingEdges(list, index.aliases.edges)
        return index

    monkeypatch.setattr(analysis.ProgramIndex, "build", classmethod(build))
    monkeypatch.setattr(analysis.ProgramIndex, "reads", lambda index, key: looked_up.append(key) or reads(index, key))

    def work(loops):
        def fn():
            x = x_input() * 1
            for _ in range(loops):
                x = loop(lambda x: [_C_ops.assign_out_(x * 2 + 1, x)], [x])[0]
            return [x]

        built = build_pir(fn, FEED)
        looked_up.clear()
        assert rla.remove_loop_assign(built.program, outputs=built.outputs).removed == loops
        return len(looked_up)

    small, large = work(10), work(40)
    assert large < 6 * small, (small, large)


def test_program_without_loops_is_left_alone():
    check_pass(program(lambda: [_C_ops.assign_out_(x_input() * 2, paddle.full([2, 3], 0.0))]), removed=0)


# -- condition 1: nested copies ---------------------------------------------------------


def test_copy_inside_if_in_loop_body_is_kept():
    def fn():
        buf = paddle.full([2, 3], 1.0)

        def body(x):
            def write():
                _C_ops.assign_out_(x * 3, buf)
                return x + 1

            y = paddle.static.nn.cond(paddle.sum(x) > 1000.0, write, lambda: x - 1)
            return [y + buf]

        return loop(body, [x_input() * 1])

    check_pass(program(fn), removed=0, kept={analysis.NESTED_COPY: 1})


# -- condition 2: branching chains ------------------------------------------------------


def test_result_overwritten_by_two_copies_is_kept():
    def fn():
        def body(x, y):
            r1 = _C_ops.assign_out_(x * 2, x)
            r2 = _C_ops.assign_out_(x * 3, r1)
            r3 = _C_ops.assign_out_(y * 5, r1)
            return [r2, r3 + y]

        return loop(body, [x_input() * 1, x_input() * 2])

    check_pass(program(fn), removed=0, kept={analysis.BRANCHING_CHAIN: 3})


# -- condition 3: destination local to the body -------------------------------------------


def test_copy_into_body_local_value_is_kept():
    def fn():
        def body(x):
            t = x * 1
            r = _C_ops.assign_out_(x * 2, t)
            return [t + r]

        return loop(body, [x_input() * 1])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.LOCAL_DESTINATION: 1})
    assert_copy_matters(make)


# -- condition 4: how the results are used ------------------------------------------------


def test_result_read_after_it_is_overwritten_is_kept():
    def fn():
        def body(x, y):
            r1 = _C_ops.assign_out_(x * 2, x)
            r2 = _C_ops.assign_out_(x * 3, r1)
            return [r2, r1 + y]  # r1 now holds x * 3

        return loop(body, [x_input() * 1, x_input() * 0])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.RESULT_READ_AFTER_OVERWRITE: 2})
    assert_copy_matters(make)


def test_result_written_in_place_is_kept():
    def fn():
        def body(x, y):
            new = x * 2 + 1
            r = _C_ops.assign_out_(new, x)
            s = _C_ops.scale_(r, 2.0, 0.0, True)  # would scale `new` once redirected
            return [s, new + y]

        return loop(body, [x_input() * 1, x_input() * 0])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.RESULT_WRITTEN_OR_ALIASED: 1})
    assert_copy_matters(make)


# -- condition 5: reads of the destination ------------------------------------------------


def _read_after_copy(nested: bool):
    def fn():
        def body(x, y):
            r = _C_ops.assign_out_(x * 2 + 1, x)
            if nested:
                y2 = paddle.static.nn.cond(paddle.sum(y) > -1.0, lambda: x * 3 + y, lambda: y)
            else:
                y2 = x * 3 + y  # %arg read after the copy: sees the new data
            return [r, y2]

        return loop(body, [x_input() * 1, x_input() * 0])

    return program(fn)


@pytest.mark.parametrize("nested", [False, True], ids=["same block", "nested region"])
def test_destination_read_after_copy_is_kept(nested):
    make = _read_after_copy(nested)
    check_pass(make, removed=0, kept={analysis.DESTINATION_READ_AFTER_COPY: 1})
    assert_copy_matters(make)
    assert outputs_change_under(remove_loop_assign_pr9002, make)  # PR #9002 misses this read


def _outer_write(read_in_body: bool, read_after: bool, as_output: bool = False):
    def fn():
        buf = paddle.full([2, 3], 1.0)

        def body(x):
            y = x + buf if read_in_body else x + 1
            _C_ops.assign_out_(y * 2, buf)
            return [y]

        (x,) = loop(body, [x_input() * 1])
        outputs = [x]
        if read_after:
            outputs.append(buf * 1)
        if as_output:
            outputs.append(buf)
        return outputs

    return program(fn)


@pytest.mark.parametrize(
    "read_in_body, read_after, as_output, reason",
    [
        (True, False, False, analysis.DESTINATION_READ_IN_LOOP),
        (False, True, False, analysis.DESTINATION_READ_AFTER_LOOP),
        (False, False, True, analysis.DESTINATION_READ_AFTER_LOOP),
    ],
    ids=["read in body", "read after loop", "fetched"],
)
def test_outer_destination_that_is_read_again_is_kept(read_in_body, read_after, as_output, reason):
    make = _outer_write(read_in_body, read_after, as_output)
    check_pass(make, removed=0, kept={reason: 1})
    assert_copy_matters(make)


def _outer_buffer_yielded(read_argument_after_copy: bool):
    """The copy into an outer ``buf`` is yielded as ``y``: from iteration 2 on, the
    block argument ``y`` *is* ``buf``, so the copy writes into it."""

    def fn():
        buf = paddle.full([2, 3], 1.0)

        def body(y, acc):
            new = y * 2 + 1
            r = _C_ops.assign_out_(new, buf)
            seen = y * 1 if read_argument_after_copy else new * 1
            return [r, acc + seen]

        x = x_input()
        return loop(body, [x * 1, x * 0])

    return program(fn)


def test_outer_destination_yielded_and_read_through_its_argument_is_kept():
    make = _outer_buffer_yielded(read_argument_after_copy=True)
    check_pass(make, removed=0, kept={analysis.DESTINATION_READ_AFTER_COPY: 1})
    assert_copy_matters(make)


def test_outer_destination_yielded_and_its_argument_read_only_before_is_removed():
    check_pass(_outer_buffer_yielded(read_argument_after_copy=False), removed=1)


def test_outer_destination_used_as_loop_input_is_kept():
    def fn():
        buf = paddle.full([2, 3], 1.0)

        def body(x, b):
            y = x + b
            r = _C_ops.assign_out_(y * 2, buf)  # writes the buffer `b` shares in iteration 1
            return [y, b + r * 0]  # `r * 0` orders the read of `b` after the write

        return loop(body, [x_input() * 1, buf])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.DESTINATION_IS_LOOP_INPUT: 1})
    assert_copy_matters(make)


def test_persistable_destination_is_kept():
    def fn():
        weight = paddle.static.create_parameter([2, 3], "float32", name="w")

        def body(x):
            _C_ops.assign_out_(x * 2, weight)
            return [x + 1]

        return loop(body, [x_input() * 1])

    built = build_pir(fn, FEED)
    report = rla.remove_loop_assign(built.program, outputs=built.outputs)
    assert report.removed == 0 and report.kept_reasons == {analysis.DESTINATION_PERSISTABLE: 1}


# -- condition 6: the block argument's init -----------------------------------------------


def test_copy_result_yielded_at_another_position_is_kept():
    def fn():
        def body(x, y):
            r = _C_ops.assign_out_(x + y, x)
            return [y * 1, r]

        return loop(body, [x_input() * 1, x_input() * 2])

    check_pass(program(fn), removed=0, kept={analysis.RESULT_NOT_YIELDED_AT_ARG: 1})


def test_init_read_after_loop_is_kept():
    def fn():
        init = x_input() * 1

        def outer(acc):
            seen = acc + init * 1  # in iteration 2: what the inner copies wrote into `init`
            (x,) = loop(lambda x: [_C_ops.assign_out_(x * 2 + 1, x)], [init])
            return [seen + x * 0]

        return loop(outer, [x_input() * 0], steps=2)

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.INIT_READ_AFTER_LOOP: 1})
    assert_copy_matters(make)  # the copies wrote into `init`
    assert outputs_change_under(remove_loop_assign_pr9002, make)


def test_init_an_enclosing_loop_runs_the_loop_again_from_is_kept():
    """Found while fixing issue 27: the loop's own read of its init was always
    allowed, but with the init defined outside an enclosing loop the loop starts
    from it again in the next outer iteration, where the copies have written it
    (the pass removed this copy and the outputs changed)."""

    def fn():
        init = x_input() * 1

        def outer(acc):
            (x,) = loop(lambda x: [_C_ops.assign_out_(x * 2 + 1, x)], [init])
            return [acc + x]

        return loop(outer, [x_input() * 0], steps=2)

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.INIT_READ_AFTER_LOOP: 1})
    assert_copy_matters(make)


def test_init_read_in_loop_body_is_kept():
    def fn():
        init = x_input() * 1
        return loop(lambda x: [_C_ops.assign_out_(x * 2 + init, x)], [init])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.INIT_READ_IN_LOOP: 1})
    assert_copy_matters(make)


def test_init_shared_by_two_loop_variables_is_kept():
    def fn():
        init = x_input() * 1

        def body(x, y):
            r = _C_ops.assign_out_(x * 2 + 1, x)  # in iteration 1 this also writes y
            return [r, y + r]

        return loop(body, [init, init])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.INIT_SHARED: 1})
    assert_copy_matters(make)


# -- condition 7: the sources -------------------------------------------------------------


def test_source_mutated_after_copy_is_kept():
    def fn():
        def body(x):
            new = x * 2 + 1
            r = _C_ops.assign_out_(new, x)
            _C_ops.scale_(new, 3.0, 0.0, True)
            return [r]

        return loop(body, [x_input() * 1])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.SOURCE_MUTATED: 1})
    assert_copy_matters(make)


def test_source_from_outside_the_loop_is_kept():
    def fn():
        constant = paddle.full([2, 3], 5.0)
        (x,) = loop(lambda x: [_C_ops.assign_out_(constant, x)], [x_input() * 1])
        # Yielding `constant` itself would make `x` share its buffer, so this
        # write would change `constant`.
        written = _C_ops.assign_out_(x_input() * 3, x)
        return [written, constant + written * 0]

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.SOURCE_NOT_LOCAL: 1})
    assert_copy_matters(make)


def _loop_invariant_source(kind: str):
    """The copy's source is computed in the body from a constant or a parameter only;
    the block argument it becomes is scaled in place in the next iteration."""

    def fn():
        weight = paddle.static.create_parameter(
            [2, 3], "float32", name="invariant_w", default_initializer=paddle.nn.initializer.Constant(0.5))

        def body(x, acc):
            total = acc + _C_ops.scale_(x, 2.0, 0.0, True)
            invariant = (paddle.full([2, 3], 1.0) if kind == "constant" else weight) * 3.0
            return [_C_ops.assign_out_(invariant, x), total]

        x = x_input()
        return loop(body, [x * 1, x * 0])

    return program(fn)


@pytest.mark.parametrize("kind", ["constant", "parameter"])
def test_source_computed_from_constants_only_is_kept(kind):
    """Issue 8, defect 2: Paddle Inference folds ``invariant`` into a constant; with
    the copy gone the in-place scale of ``x`` scaled the constant, a little more on
    every run. The Executor does not fold, so only Paddle Inference shows it."""
    make = _loop_invariant_source(kind)
    check_pass(make, removed=0, kept={analysis.SOURCE_CONSTANT: 1})
    assert not outputs_change_under(remove_every_loop_copy, make)
    assert inference_outputs_change_under(remove_every_loop_copy, make)


# -- condition 8: one buffer, one loop variable --------------------------------------------


def test_source_yielded_at_two_positions_is_kept():
    def fn():
        def body(x, y):
            xs = _C_ops.scale_(x, 2.0, 0.0, True)  # would scale y too if they shared
            new = xs + y
            return [_C_ops.assign_out_(new, x), _C_ops.assign_out_(new, y)]

        return loop(body, [x_input() * 1, x_input() + 1])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.SOURCE_YIELDED_TWICE: 2})
    assert_copy_matters(make)


# -- vectors (builtin.combine) --------------------------------------------------------------


def test_packing_values_into_a_vector_does_not_alias_them():
    def fn():
        def body(x, y):
            fresh = y * 2 + 1
            total = paddle.add_n([x, fresh])  # combine(x, fresh): x and fresh stay apart
            return [x + total, _C_ops.assign_out_(fresh, y)]

        return loop(body, [x_input() * 1, x_input() * 2])

    check_pass(program(fn), removed=1)


def test_vector_is_read_where_its_consumer_runs():
    def make():
        def fn():
            def body(x, y):
                r = _C_ops.assign_out_(y * 2 + 1, x)
                total = paddle.add_n([x, y])  # reads x's new data
                return [r, total]

            return loop(body, [x_input() * 1, x_input() * 2])

        built = build_pir(fn, FEED)
        # Move the combine before the copy: the vector is built early, read late.
        block = next(op for op in built.program.global_block().ops if op.name() == "pd_op.while")
        body_ops = list(block.blocks())[0].ops
        combine = next(op for op in body_ops if op.name() == "builtin.combine")
        copy = next(op for op in body_ops if op.name() == "pd_op.assign_out_")
        combine.move_before(copy)
        return built

    check_pass(make, removed=0, kept={analysis.DESTINATION_READ_AFTER_COPY: 1})
    assert_copy_matters(make)


# -- single checks that others would otherwise mask ------------------------------------------


def test_first_result_of_chain_into_outer_buffer_yielded_is_kept():
    def fn():
        buf = paddle.full([2, 3], 1.0)

        def body(x):
            first, second = x * 2, x * 3
            r1 = _C_ops.assign_out_(first, buf)
            _C_ops.assign_out_(second, r1)
            return [r1]  # holds `second` by now

        return loop(body, [x_input() * 1])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.RESULT_READ_AFTER_OVERWRITE: 2})
    assert_copy_matters(make)


def test_write_into_loop_condition_not_yielded_as_condition_is_kept():
    def fn():
        conditions = []

        def cond(i, x):
            conditions.append(i < 3)
            return conditions[-1]

        def body(i, x):
            _C_ops.assign_out_(paddle.full([1], True, "bool"), conditions[0])  # the outer condition
            return [i + 1, x * 2]

        i = paddle.full([1], 0, "int64")
        return paddle.static.nn.while_loop(cond, body, [i, x_input() * 1])[1:]

    check_pass(program(fn), removed=0, kept={analysis.DESTINATION_IS_CONDITION: 1})


def test_persistable_init_is_kept():
    def fn():
        weight = paddle.static.create_parameter([2, 3], "float32", name="w0")
        return loop(lambda x: [_C_ops.assign_out_(x * 2, x)], [weight])

    built = build_pir(fn, FEED)
    report = rla.remove_loop_assign(built.program, outputs=built.outputs)
    assert report.removed == 0 and report.kept_reasons == {analysis.INIT_PERSISTABLE: 1}


def test_init_that_is_a_program_output_is_kept():
    """Conservative: on 3.3.1 a fetch of the init did not see the loop's writes
    (an op reading it after the loop starts does: test_init_read_after_loop_is_kept),
    but nothing promises when a fetch reads, so a fetched init keeps its copies."""

    def fn():
        init = x_input() * 1
        return loop(lambda x: [_C_ops.assign_out_(x * 2 + 1, x)], [init]) + [init]

    check_pass(program(fn), removed=0, kept={analysis.INIT_READ_AFTER_LOOP: 1})


def test_source_produced_by_an_if_is_kept():
    def fn():
        def body(x):
            y = paddle.static.nn.cond(paddle.sum(x) > 0, lambda: x * 2, lambda: x * 3)
            return [_C_ops.assign_out_(y, x)]

        return loop(body, [x_input() * 1])

    check_pass(program(fn), removed=0, kept={analysis.SOURCE_IN_NESTED_REGION: 1})


def test_source_read_inside_an_if_branch_is_removed():
    def fn():
        def body(x, z):
            new = x * 2 + 1
            z2 = paddle.static.nn.cond(paddle.sum(new) > 0, lambda: new + z, lambda: z)
            return [_C_ops.assign_out_(new, x), z2]

        return loop(body, [x_input() * 1, x_input() * 2])

    check_pass(program(fn), removed=1)


def test_source_read_inside_a_nested_loop_is_kept():
    """Conservative: only reads inside ifs are allowed. An inner loop reading the
    source every inner iteration was not shown to break, but a nested loop is where
    the fresh-buffer premise was seen to fail (its init), so it is not trusted."""

    def fn():
        def body(x, z):
            new = x * 2 + 1
            inner = loop(lambda y: [y + new], [z * 1], steps=2)[0]
            return [_C_ops.assign_out_(new, x), inner]

        x = x_input()
        return loop(body, [x * 1, x * 2])

    check_pass(program(fn), removed=0, kept={analysis.SOURCE_IN_NESTED_REGION: 1})


def test_source_written_inside_an_if_branch_is_kept():
    def fn():
        def body(x, z):
            new = x * 2 + 1
            r = _C_ops.assign_out_(new, x)

            def write():
                _C_ops.scale_(new, 3.0, 0.0, True)  # would scale the loop variable once yielded
                return z + 1

            z2 = paddle.static.nn.cond(paddle.sum(z) > 0, write, lambda: z)
            return [r, z2]

        return loop(body, [x_input() * 1, x_input() * 2])

    make = program(fn)
    check_pass(make, removed=0, kept={analysis.SOURCE_IN_NESTED_REGION: 1})
    assert_copy_matters(make)
