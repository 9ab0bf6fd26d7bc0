"""One helper for every pass test: the delta, the reasons, idempotence, equal outputs."""

from __future__ import annotations

from loop_programs import INFERENCE_CONFIGS, count_loop_copies, run, run_inference, same_bits

from paddlenlp_ext import remove_loop_assign
from paddlenlp_ext.passes.copy_ops import SOURCE, loop_copies
from paddlenlp_ext.passes.program_index import ProgramIndex


def check_pass(make, *, removed: int, kept: dict | None = None, inference: bool = True):
    """Run ``make()``'s program before and after the pass and check the contract.

    ``make`` builds a fresh program each call (the reference run and the rewritten
    run must not share one). The outputs must be bit-identical on the Executor and,
    unless ``inference`` is False (a program Paddle Inference cannot run itself),
    on Paddle Inference in every configuration ``paddlenlp_ext.inference`` creates
    on CPU, in two runs in a row. Returns the report.
    """
    reference = run(make())
    built = make()
    before = count_loop_copies(built.program)
    report = remove_loop_assign(built.program, outputs=built.outputs)
    assert report.removed == removed, report.summary()
    assert report.modified == (removed > 0)
    assert report.kept_reasons == (kept or {}), report.summary()
    assert count_loop_copies(built.program) == before - removed
    text = str(built.program)
    again = remove_loop_assign(built.program, outputs=built.outputs)
    assert again.removed == 0 and not again.modified
    assert str(built.program) == text
    assert again.kept_reasons == report.kept_reasons
    assert same_bits(reference, run(built)), "outputs changed"
    if inference and report.modified:
        for onednn in INFERENCE_CONFIGS:
            expected = run_inference(make(), onednn=onednn)
            got = run_inference(built, onednn=onednn)
            assert all(same_bits(a, b) for a, b in zip(expected, got)), f"outputs changed on Paddle Inference ({onednn})"
    return report


def remove_every_loop_copy(program) -> int:
    """The unsafe rule the tests compare against: erase every copy in a while body."""
    index = ProgramIndex.build(program)
    copies = [c for found in loop_copies(index).values() for c in found]
    for copy in reversed(copies):
        index.erase_forwarding(copy, SOURCE)
    return len(copies)


def outputs_change_under(rule, make) -> bool:
    """Whether applying ``rule`` (program -> anything) changes ``make()``'s outputs."""
    reference = run(make())
    built = make()
    rule(built.program)
    return not same_bits(reference, run(built))


def inference_outputs_change_under(rule, make) -> bool:
    """Whether applying ``rule`` changes ``make()``'s outputs on Paddle Inference, in
    either of two runs in a row, in any configuration ``paddlenlp_ext`` creates."""
    for onednn in INFERENCE_CONFIGS:
        reference = run_inference(make(), onednn=onednn)
        built = make()
        rule(built.program)
        if not all(same_bits(a, b) for a, b in zip(reference, run_inference(built, onednn=onednn))):
            return True
    return False
