"""Builders for the small loop programs the pass tests run, in three shapes.

- ``build_pir``: PIR static mode; copies are written with ``_C_ops.assign_out_``
  inside ``while_loop`` bodies, which gives the same ops the translator emits.
- ``build_legacy``: a ProgramDesc under ``OldIrGuard``, translated with
  ``paddle.pir.translate_to_pir_with_param_map`` as Paddle Inference does.
- ``build_to_static``: ``paddle.jit.to_static`` in PIR mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import paddle

from paddlenlp_ext.passes.copy_ops import ASSIGN_OUT, loop_copies
from paddlenlp_ext.passes.program_index import ProgramIndex


@dataclass
class Built:
    program: object
    outputs: list
    feed: dict = field(default_factory=dict)


def build_pir(fn, feed=None) -> Built:
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        outputs = fn()
    return Built(main, list(outputs), dict(feed or {}))


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
    exe = paddle.static.Executor(paddle.CPUPlace())
    return [np.asarray(a) for a in exe.run(built.program, feed=built.feed, fetch_list=built.outputs)]


def same_bits(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b)
    )


def count_loop_copies(program) -> int:
    return sum(len(c) for c in loop_copies(ProgramIndex.build(program)).values())


def count_ops(program, name: str = ASSIGN_OUT) -> int:
    index = ProgramIndex.build(program)
    return sum(1 for op_id in index.order if index.name(op_id) == name)
