"""A legacy loop model with one large parameter matrix, and a fresh process's RSS once a
predictor is made on it by one route: ``python memory_child.py ROUTE DIR`` prints
``{"before_kib": ..., "after_kib": ..., "peak_kib": ..., "after_run_kib": ..., "huge_kib": ...}``
(VmRSS before the predictor, once it is made, its peak while it was made, and after one
run; how much more of the process's anonymous memory is on transparent huge pages once
the predictor is made than before).

Routes: ``model`` (StaticGenerationModel), ``second model`` (a StaticGenerationModel made
after another one was made and dropped in the same process: what our predictors free
stays mapped for reuse, ``host_memory``, so the translated weights the second one frees
must be given back), ``hook`` (PaddleNLP's static config under
``paddlenlp_ext.enable()``), ``paddle-default`` (Paddle's default config on DIR's
``model.json``: a converted directory), ``paddlenlp`` (PaddleNLP's config as it is).
"""

from __future__ import annotations

import gc
import json
import sys

import numpy as np

WEIGHT_ROWS = 8192  # one 8192 x 8192 float32 matrix: 256 MiB
WEIGHT_ELEMENTS = WEIGHT_ROWS * WEIGHT_ROWS


def build_legacy_model(directory: str, rows: int = WEIGHT_ROWS) -> None:
    """``model.pdmodel``/``.pdiparams``: a while loop that multiplies its input row by a
    ``rows`` x ``rows`` parameter matrix (the product ``passes.loop_weight_matmul`` rewrites)."""
    import paddle

    from paddlenlp_ext.compat import legacy_export_patches

    with paddle.pir_utils.OldIrGuard(), legacy_export_patches():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [1, rows], "float32")
            weight = paddle.static.create_parameter(
                [rows, rows], "float32", default_initializer=paddle.nn.initializer.Constant(1e-4))
            i = paddle.full([1], 0, "int64")
            limit = paddle.full([1], 2, "int64")
            _, h = paddle.static.nn.while_loop(lambda i, h: i < limit,
                                               lambda i, h: [i + 1, paddle.matmul(h, weight)], [i, x])
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            paddle.static.save_inference_model(f"{directory}/model", [x], [h], exe, program=main)


def _rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def _huge_pages_kib() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        return next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages:"))


def _reset_peak_rss() -> None:
    """Start VmHWM (the peak RSS) again from the current RSS (Linux 4.0 and later)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def main(route: str, directory: str) -> None:
    import paddle  # noqa: F401 (imported before the baseline: Paddle alone is not the predictor)
    from paddle import inference

    import paddlenlp_ext
    from paddlenlp_ext.inference import StaticGenerationModel, run_predictor
    from paddlenlp_ext.paddle_config import paddlenlp_static_config

    gc.collect()
    before, huge_before = _rss_kib(), _huge_pages_kib()
    _reset_peak_rss()
    if route == "model":
        kept = StaticGenerationModel(directory)
    elif route == "second model":
        first = StaticGenerationModel(directory)
        del first
        gc.collect()
        kept = StaticGenerationModel(directory)
    elif route == "hook":
        with paddlenlp_ext.enable():
            kept = inference.create_predictor(paddlenlp_static_config(directory))
    elif route == "paddle-default":
        kept = inference.create_predictor(inference.Config(f"{directory}/model.json", f"{directory}/model.pdiparams"))
    elif route == "paddlenlp":
        kept = inference.create_predictor(paddlenlp_static_config(directory))
    else:
        raise SystemExit(f"unknown route {route!r}")
    gc.collect()
    after, peak, huge = _rss_kib(), _rss_kib("VmHWM"), _huge_pages_kib() - huge_before
    predictor = kept.predictor if isinstance(kept, StaticGenerationModel) else kept
    run_predictor(predictor, {"x": np.full([1, WEIGHT_ROWS], 0.5, "float32")})
    print(json.dumps({"before_kib": before, "after_kib": after, "peak_kib": peak, "after_run_kib": _rss_kib(),
                      "huge_kib": huge}))


if __name__ == "__main__":
    main(*sys.argv[1:])
