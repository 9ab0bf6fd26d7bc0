"""float32_outputs: a program's bfloat16 outputs are fetched as float32.

Why. Paddle Inference 3.3.1's ``copy_to_cpu`` of a bfloat16 output returns a float32
array of the output's shape holding wrong values: its first elements are near the
right ones and the rest are zeros or garbage (a llama's bfloat16 logits were off by up
to 3e32 on our oneDNN configuration and 5e17 with oneDNN off, while the Executor
computed them within 0.005 of float32; ``tests/test_bfloat16.py``). numpy has no
bfloat16, so no array could carry one anyway. A float32 copy of the value is fetched
instead: every bfloat16 number is a float32 number, so the cast is exact.

Rule. For each fetched value ``%y`` of dtype bfloat16, at the end of the program's
global block (where the fetch reads it)::

    fetch %y                                     # bfloat16

becomes::

    (%z) = "pd_op.cast" (%y) {dtype:float32}
    fetch %z

Safety conditions (hold by construction):

1. The cast reads ``%y`` after every op of the program has run (it is appended last to
   the global block, where the fetch was), so it reads what the fetch would have read.
2. bfloat16 to float32 is exact (bfloat16 is float32 with its low 16 mantissa bits
   zero): the fetched numbers are the output's.
3. Only the fetched list changes: the outputs' names are the caller's to keep
   (``save_program`` and the hook name outputs by column), and no op reads ``%z``.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle

from ..paddle_modes import static_mode
from .report import PassReport


@dataclass(frozen=True)
class Float32OutputsReport(PassReport):
    cast: int  # bfloat16 outputs now fetched as float32

    @property
    def modified(self) -> bool:
        return self.cast > 0

    def summary(self) -> str:
        return f"{self.cast} bfloat16 outputs fetched as float32"


def fetch_bfloat16_outputs_as_float32(program, outputs: list | None = None) -> Float32OutputsReport:
    """Replace each bfloat16 value in ``outputs`` (the list the caller fetches; None:
    none) by a float32 cast of it appended to ``program``."""
    indices = [k for k, value in enumerate(outputs or ()) if value.dtype == paddle.bfloat16]
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        paddle.pir.reset_insertion_point_to_end()  # condition 1
        for k in indices:
            outputs[k] = paddle.cast(outputs[k], "float32")
    return Float32OutputsReport(len(indices))
