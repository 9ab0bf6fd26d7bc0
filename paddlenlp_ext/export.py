"""Export a decoding loop in the legacy format and load it back as Paddle 3.x does."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paddle

from .compat import legacy_export_patches
from .generation import GreedyDecoder

GENERATION_INPUTS = [
    paddle.static.InputSpec([1, None], "int64", "input_ids"),
    paddle.static.InputSpec([1], "int64", "max_new_tokens"),
]


class ExportError(Exception):
    """An export that cannot be written: one line says why."""


@contextlib.contextmanager
def staged_directory(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a hidden sibling directory to write into; it becomes ``output_dir`` only
    when the block finishes, so a half-written export never looks complete.

    A non-empty ``output_dir`` is an error unless ``overwrite``; then it is replaced
    as a whole, after the new export is complete.
    """
    target = Path(output_dir)
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"{target} already exists and is not empty (choose a new directory or overwrite it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, retired / "previous")
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)


@contextlib.contextmanager
def dygraph_mode():
    """Run a block in dynamic mode and return to the mode the caller was in."""
    was_static = not paddle.in_dynamic_mode()
    paddle.disable_static()
    try:
        yield
    finally:
        if was_static:
            paddle.enable_static()


def export_legacy_generation(model, prefix: str, eos_token_id: int | None = None) -> None:
    """Trace greedy decoding of ``model`` and save ``prefix``.pdmodel/.pdiparams.

    This is the ProgramDesc format Paddle 2.x and PaddleNLP 2.8 exports have; Paddle
    3.x translates it to PIR at load time, which is where the loop copies appear.
    """
    with paddle.pir_utils.OldIrGuard(), legacy_export_patches(), dygraph_mode():
        decoder = paddle.jit.to_static(GreedyDecoder(model, eos_token_id), input_spec=GENERATION_INPUTS,
                                       full_graph=True)
        paddle.jit.save(decoder, prefix)


@dataclass
class TranslatedModel:
    program: object  # paddle.pir.Program, as Paddle Inference 3.x would run it
    feed_names: list
    outputs: list  # values to fetch; the program holds no fetch ops
    scope: object  # holds the parameters


def load_legacy_as_pir(prefix: str) -> TranslatedModel:
    """Load a legacy model and translate it to PIR, parameters in a fresh scope."""
    scope = paddle.static.Scope()
    was_dynamic = paddle.in_dynamic_mode()
    with paddle.pir_utils.OldIrGuard(), paddle.static.scope_guard(scope):
        paddle.enable_static()
        legacy, feed_names, _ = paddle.static.load_inference_model(prefix, paddle.static.Executor(paddle.CPUPlace()))
        program = paddle.pir.translate_to_pir(legacy.desc)
    if was_dynamic:
        paddle.disable_static()
    fetches = [op for op in program.global_block().ops if op.name() == "pd_op.fetch"]
    outputs = [op.operand_source(0) for op in fetches]
    for op in fetches:  # the executor adds its own fetch ops for the values asked for
        op.erase()
    return TranslatedModel(program, list(feed_names), outputs, scope)


def run_translated(model: TranslatedModel, feed: dict) -> list:
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(model.scope):
        return exe.run(model.program, feed=feed, fetch_list=model.outputs)
