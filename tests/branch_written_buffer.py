"""A legacy program whose saved buffer a ``conditional_block`` may rebuild before anything
reads it: the shape of PaddleNLP 2.8.1's qwen export (``if seqlen > self._seq_len_cached:``
rebuilds the rotary cos/sin cache), small enough to build in a second.

    k (int64 [1, 1]) -> table[k] (gather_nd)
    table: persistable, saved with SAVED_ROWS rows (row r holds 10 r), declared with
           TRACED_ROWS rows by the rebuild
    conditional_block(k > SAVED_ROWS - 1): table = full([TRACED_ROWS, WIDTH], -1)

For every k below SAVED_ROWS the branch is not taken and the output is the saved row.
"""

from __future__ import annotations

import os

import numpy as np
import paddle

SAVED_ROWS, TRACED_ROWS, WIDTH = 80, 16, 4


def saved_row(k: int) -> np.ndarray:
    """What the program outputs for ``k`` < SAVED_ROWS: the saved row, [1, WIDTH]."""
    return np.full((1, WIDTH), 10.0 * k, dtype="float32")


def _legacy_op(op_type: str, inputs: dict, attrs: dict, dtype):
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(dtype)
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": [out]}, attrs=attrs)
    return out


def build(directory) -> None:
    """Write ``directory``/model.pdmodel and model.pdiparams (the legacy format)."""
    from paddle.static.nn.control_flow import ConditionalBlock

    from paddlenlp_ext.paddle_modes import static_mode

    with static_mode(), paddle.pir_utils.OldIrGuard():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            k = paddle.static.data("k", [1, 1], "int64")
            table = paddle.static.create_global_var([SAVED_ROWS, WIDTH], 0.0, "float32", persistable=True,
                                                    name="table")
            last = _legacy_op("fill_constant", {}, {"shape": [1, 1], "dtype": int(paddle.int64),
                                                    "value": float(SAVED_ROWS - 1)}, paddle.int64)
            past_the_table = _legacy_op("greater_than", {"X": [k], "Y": [last]}, {}, paddle.bool)
            branch = ConditionalBlock([past_the_table], is_scalar_condition=True)
            with branch.block():  # Out: table, no Input: nothing read it before
                rebuilt = _legacy_op("fill_constant", {}, {"shape": [TRACED_ROWS, WIDTH],
                                                           "dtype": int(paddle.float32), "value": -1.0},
                                     paddle.float32)
                paddle.assign(rebuilt, table)
            row = _legacy_op("gather_nd", {"X": [table], "Index": [k]}, {}, paddle.float32)
        executor = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            executor.run(startup)
            rows = np.concatenate([saved_row(r) for r in range(SAVED_ROWS)])
            scope.find_var("table").get_tensor().set(rows, paddle.CPUPlace())
            paddle.static.save_inference_model(os.path.join(directory, "model"), [k], [row], executor, program=main)
