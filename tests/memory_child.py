"""A legacy loop model with one large parameter, and a fresh process's RSS once a
predictor is made on it by one route: ``python memory_child.py ROUTE DIR`` prints
``{"before_kib": ..., "after_kib": ...}`` (VmRSS before and after the predictor).

Routes: ``model`` (StaticGenerationModel), ``hook`` (PaddleNLP's static config under
``paddlenlp_ext.enable()``), ``paddle-default`` (Paddle's default config on DIR's
``model.json``: a converted directory), ``paddlenlp`` (PaddleNLP's config as it is).
"""

from __future__ import annotations

import gc
import json
import sys

WEIGHT_ELEMENTS = 64 * 1024 * 1024  # 256 MiB of float32


def build_legacy_model(directory: str, elements: int = WEIGHT_ELEMENTS) -> None:
    """``model.pdmodel``/``.pdiparams``: a while loop that scales its input by a parameter
    of ``elements`` float32 values."""
    import paddle

    with paddle.pir_utils.OldIrGuard():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [elements], "float32")
            weight = paddle.static.create_parameter(
                [elements], "float32", default_initializer=paddle.nn.initializer.Constant(0.5))
            i = paddle.full([1], 0, "int64")
            limit = paddle.full([1], 2, "int64")
            _, h = paddle.static.nn.while_loop(lambda i, h: i < limit, lambda i, h: [i + 1, h * weight], [i, x])
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            paddle.static.save_inference_model(f"{directory}/model", [x], [h], exe, program=main)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def main(route: str, directory: str) -> None:
    import paddle  # noqa: F401 (imported before the baseline: Paddle alone is not the predictor)
    from paddle import inference

    import paddlenlp_ext
    from paddlenlp_ext.inference import StaticGenerationModel, paddlenlp_static_config

    gc.collect()
    before = _rss_kib()
    if route == "model":
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
    print(json.dumps({"before_kib": before, "after_kib": _rss_kib(), "kept": type(kept).__name__}))


if __name__ == "__main__":
    main(*sys.argv[1:])
