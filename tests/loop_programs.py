"""Builders for the small loop programs the pass tests run, in three shapes.

- ``build_pir``: PIR static mode; copies are written with ``_C_ops.assign_out_``
  inside ``while_loop`` bodies, which gives the same ops the translator emits.
- ``build_legacy``: a ProgramDesc under ``OldIrGuard``, translated with
  ``paddle.pir.translate_to_pir_with_param_map`` as Paddle Inference does.
- ``build_to_static``: ``paddle.jit.to_static`` in PIR mode.

``run`` runs a built program on ``paddle.static.Executor``; ``run_inference`` saves
it and runs it on Paddle Inference, configured as ``paddlenlp_ext`` configures it
(``INFERENCE_CONFIGS``: oneDNN as Paddle places it, the default, or off).
Neither changes the program (no fetch ops are left in it; checked on 3.3.1).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import paddle

from paddlenlp_ext.inference import predictor_for, run_predictor
from paddlenlp_ext.passes.pipeline import DEFAULT_ONEDNN, ONEDNN_MODES
from paddlenlp_ext.program_files import load_files

from paddlenlp_ext.passes.copy_ops import ASSIGN_OUT, loop_copies
from paddlenlp_ext.passes.program_index import ProgramIndex


# Every CPU configuration StaticGenerationModel can run (its onednn modes).
INFERENCE_CONFIGS = ONEDNN_MODES


@dataclass
class Built:
    program: object
    outputs: list
    feed: dict = field(default_factory=dict)
    # The startup program that initialises the program's parameters; None or empty
    # when it has none. A program with parameters runs in a fresh scope each time.
    startup: object = None
    tags: frozenset = frozenset()  # the shapes a generator drew (random_loops)


def _has_parameters(built: Built) -> bool:
    return built.startup is not None and len(built.startup.global_block().ops) > 0


def build_pir(fn, feed=None) -> Built:
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        outputs = fn()
    return Built(main, list(outputs), dict(feed or {}), startup)


def build_legacy(fn, feed=None) -> Built:
    with paddle.pir_utils.OldIrGuard():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            names = [v.name for v in fn()]
        program, values = paddle.pir.translate_to_pir_with_param_map(main.desc)
    return Built(program, [values[name][-1] for name in names], dict(feed or {}))


def build_to_static(fn, specs, feed) -> Built:
    paddle.disable_static()
    try:
        concrete = paddle.jit.to_static(fn, input_spec=specs, full_graph=True).concrete_program
    finally:
        paddle.enable_static()
    return Built(concrete.main_program, list(concrete.outputs), dict(feed))


def run(built: Built) -> list[np.ndarray]:
    """``built``'s outputs on the Executor, in a scope of its own: with the garbage
    collector off, the global scope keeps an earlier run's variables, which a program
    whose names collide with them could start from (the suspected cause of one failure
    of test_garbage_collector_off_keeps_every_copy in a full suite: not reproduced)."""
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        if _has_parameters(built):
            exe.run(built.startup)
        return [np.asarray(a) for a in exe.run(built.program, feed=built.feed, fetch_list=built.outputs)]


def feed_values(built: Built) -> list:
    """The program's ``pd_op.data`` results, in ``built.feed``'s order."""
    data = {op.attrs()["name"]: op.result(0) for op in built.program.global_block().ops if op.name() == "pd_op.data"}
    return [data[name] for name in built.feed]


def save_inference(built: Built, prefix: str) -> None:
    """Write ``prefix``.json (and .pdiparams, with the startup program's parameter values)."""
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        if _has_parameters(built):
            exe.run(built.startup)
        paddle.static.save_inference_model(prefix, feed_values(built), built.outputs, exe, program=built.program)


def inference_predictor(built: Built, onednn: str = DEFAULT_ONEDNN):
    """A Paddle Inference predictor for ``built`` as ``StaticGenerationModel`` makes one
    (``predictor_for``: guarded when oneDNN runs it, on a reloaded copy, so ``built`` is
    left as it is)."""
    with tempfile.TemporaryDirectory(prefix="loop_programs-") as staging:
        prefix = os.path.join(staging, "model")
        save_inference(built, prefix)
        return predictor_for(load_files(prefix, "pir"), onednn=onednn)


def run_inference(built: Built, runs: int = 2, onednn: str = DEFAULT_ONEDNN) -> list[list[np.ndarray]]:
    """Save ``built`` and run it ``runs`` times in a row on one Paddle Inference predictor.

    State that leaks from one run into the next (a buffer Paddle Inference keeps,
    such as a folded constant, written in place) shows up as runs that differ.
    """
    # Outputs in order: "fetch_name_<i>", or the name of a named value (a feed, a
    # parameter) when that is what save_inference_model fetches.
    predictor = inference_predictor(built, onednn)
    return [run_predictor(predictor, built.feed) for _ in range(runs)]


def same_bits(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b)
    )


def count_loop_copies(program) -> int:
    return sum(len(c) for c in loop_copies(ProgramIndex.build(program)).values())


def count_ops(program, name: str = ASSIGN_OUT) -> int:
    index = ProgramIndex.build(program)
    return sum(1 for op_id in index.order if index.name(op_id) == name)
