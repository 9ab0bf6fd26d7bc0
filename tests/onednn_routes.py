"""Every route a program takes to a CPU predictor we ship, for the oneDNN tests.

A program is what ``make()`` returns, built in dygraph mode from a fixed seed: a
function or layer of the inputs ``specs`` names (``InputSpec``), saved with
``paddle.jit.to_static`` + ``paddle.jit.save`` (loops are PIR-native, with no
``assign_out_``). ``run_every_route`` saves it, then runs it, twice in a row, on:

- ``StaticGenerationModel`` with oneDNN ``"all"`` and ``"off"`` (``fall_back=False``:
  the prepared program, not a fallback), on the directory as saved;
- Paddle's default CPU config (``Config(model.json, model.pdiparams)`` +
  ``disable_gpu()``) on the directory ``convert`` writes from it;
- Paddle's default CPU config on the directory ``paddle.jit.save`` writes while the
  save hook is enabled (``paddlenlp_ext.enable()``: the hook guards it);

and returns the two runs of each route with the reference: the saved program on
``paddle.static.Executor``, with its inplace_pass off (the Executor runs oneDNN kernels
for bfloat16 ops that have no plain bfloat16 kernel, and has the in-place alias then:
``test_onednn_classes``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from onednn_cases import paddle_default_predictor

import paddlenlp_ext
from paddlenlp_ext.convert import convert
from paddlenlp_ext.inference import StaticGenerationModel, run_predictor
from paddlenlp_ext.program_files import load_files, run_program
from paddlenlp_ext.paddle_modes import dygraph_mode

ROUTES = ("StaticGenerationModel, oneDNN all", "StaticGenerationModel, oneDNN off", "convert, Paddle's default",
          "save hook, Paddle's default")


def spec(name: str, shape, dtype: str = "float32"):
    return paddle.static.InputSpec(list(shape), dtype, name)


def save_function(make, specs, directory: Path, hooked: bool = False) -> Path:
    """``paddle.jit.save`` of ``make()`` (inputs ``specs``) to ``directory``/model.json,
    with the save hook enabled when ``hooked``."""
    directory.mkdir(parents=True, exist_ok=True)
    with dygraph_mode():
        paddle.seed(0)
        static = paddle.jit.to_static(make(), input_spec=list(specs), full_graph=True)
        if hooked:
            with paddlenlp_ext.enable():
                paddle.jit.save(static, str(directory / "model"))
        else:
            paddle.jit.save(static, str(directory / "model"))
    return directory


def run_every_route(make, specs, feed: dict, tmp_path: Path, routes=ROUTES) -> tuple[list, dict]:
    """``(reference outputs, {route: [first run's outputs, second run's outputs]})``; the
    saved directory is ``tmp_path``/source."""
    source = save_function(make, specs, tmp_path / "source")
    flag = "FLAGS_pir_apply_inplace_pass"
    previous = paddle.get_flags([flag])
    paddle.set_flags({flag: False})
    try:
        reference = run_program(load_files(str(source / "model"), "pir"), feed)
    finally:
        paddle.set_flags(previous)
    runs = {}
    for route in routes:
        if route.startswith("StaticGenerationModel"):
            model = StaticGenerationModel(source, onednn=route.rsplit(" ", 1)[1], fall_back=False)
            runs[route] = [[model.run(feed)] for _ in range(2)]
            continue
        if route.startswith("convert"):
            directory = convert(source, tmp_path / "converted").directory
        else:
            directory = save_function(make, specs, tmp_path / "hooked", hooked=True)
        predictor = paddle_default_predictor(str(Path(directory) / "model"))
        runs[route] = [run_predictor(predictor, feed) for _ in range(2)]
    return reference, runs


def wrong_routes(reference, runs: dict, tolerance: float = 1e-5) -> dict:
    """``{route: what is wrong}`` for each route whose runs differ from the reference:
    oneDNN off bit for bit (the Executor's own plain kernels), the others to
    ``tolerance`` (oneDNN's kernels round differently; the defects these tests pin
    were off by 0.1 and more)."""
    wrong = {}
    for route, outputs in runs.items():
        for k, run in enumerate(outputs):
            for out, ref in zip(run, reference):
                out, ref = np.asarray(out), np.asarray(ref)
                if out.shape != ref.shape or out.dtype != ref.dtype:
                    wrong[route] = f"run {k + 1}: {out.dtype}{list(out.shape)}, expected {ref.dtype}{list(ref.shape)}"
                elif route.endswith("oneDNN off"):
                    if out.tobytes() != ref.tobytes():
                        wrong[route] = f"run {k + 1}: bits differ"
                elif not np.allclose(out.astype("float64"), ref.astype("float64"), rtol=tolerance, atol=tolerance):
                    off = np.abs(out.astype("float64") - ref.astype("float64")).max()
                    wrong[route] = f"run {k + 1}: off by {off:.3g}"
            if route in wrong:
                break
    return wrong
