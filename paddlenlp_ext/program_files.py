"""A static model directory's program: loaded (a legacy one translated to PIR), run on
the Executor, saved.

A directory holds ``model.json`` (PIR format) or ``model.pdmodel`` (legacy format)
with ``model.pdiparams``. Paddle Inference 3.x runs PIR programs; a legacy file is
translated to PIR first, because ``create_predictor`` on a legacy ``.pdmodel`` with the
new IR fails at run time ("Tensor holds no memory") on a decoding loop on Paddle 3.3.1
(CPU), while the same program translated with ``paddle.pir.translate_to_pir`` and
saved as ``.json`` runs and gives the dynamic model's tokens. The passes run on the
translated program, so the cleaned program is the one a predictor executes
(``inference.executed_loop_copies`` checks that on Paddle's own optimized-model dump).

Paddle keeps every parameter scope until the process exits, so a ``LoadedProgram``
empties its own when dropped or released (``compat.empty_scope``): a predictor made
from it holds the weights once.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle

from . import host_memory
from .compat import empty_scope, executor_in_program_order, read_persistables_written_in_branches
from .errors import error_line
from .files import LEGACY_FILE, MODEL_PREFIX, PIR_FILE
from .paddle_modes import static_mode
from .params_file import ParamsFileError, check_directory_params
from .passes.copy_ops import loop_copies
from .passes.program_index import FEED_OPS, WHILE, ProgramIndex, walk_ops
from .quiet import library_quiet
from .unknown_ops import unknown_legacy_ops, unknown_ops_message, unknown_pir_ops

class ModelDirectoryError(Exception):
    """A static model directory that cannot be loaded: one line says why."""


class TranslationError(Exception):
    """A legacy program Paddle reads but cannot translate to PIR (its translator fails)."""


@dataclass
class LoadedProgram:
    program: object  # paddle.pir.Program
    inputs: list  # the values fed: pd_op.data results, or pd_op.feed results in a translated legacy program
    outputs: list  # values to fetch
    scope: object  # parameters
    # Paddle never frees a scope (compat.empty_scope): its parameters go with this object.
    _release: weakref.finalize = field(init=False, repr=False)

    def __post_init__(self):
        self._release = weakref.finalize(self, empty_scope, self.scope)
        self._release.atexit = False  # at exit the process's memory goes anyway

    def release(self) -> None:
        """Free the parameters now (the program can no longer run or be saved), and give
        their memory back to the system (``host_memory.return_free_memory``)."""
        self._release()
        host_memory.return_free_memory()

    @property
    def feed_names(self) -> list[str]:
        return [value.get_defining_op().attrs()["name"] for value in self.inputs]


def model_format(model_dir: str | os.PathLike) -> str:
    """``"pir"`` or ``"legacy"``; raises ModelDirectoryError for anything else."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirectoryError(f"{path}: no such model directory")
    found = [name for name in (PIR_FILE, LEGACY_FILE) if (path / name).is_file()]
    if len(found) != 1:
        what = "both" if found else "neither"
        raise ModelDirectoryError(f"{path}: expected one of {PIR_FILE} or {LEGACY_FILE}, found {what}")
    try:
        check_directory_params(path)
    except ParamsFileError as error:
        raise ModelDirectoryError(str(error)) from None
    return "pir" if found[0] == PIR_FILE else "legacy"


def load_program(model_dir: str | os.PathLike) -> LoadedProgram:
    """The directory's program as PIR (translated if legacy), parameters in a new scope.

    What the process freed before (a predictor dropped, its weights kept mapped by
    ``host_memory.keep_freed_memory``) goes back to the system first: a heap that
    cannot fit the new weights into those freed blocks would hold both (a second
    StaticGenerationModel made after one was dropped peaked at twice the weights, now
    and then: tests/test_memory.py)."""
    host_memory.return_free_memory()
    fmt = model_format(model_dir)
    try:
        return load_files(str(Path(model_dir) / MODEL_PREFIX), fmt)
    except (TranslationError, ModelDirectoryError):
        raise
    except Exception as error:  # Paddle raises RuntimeError, ValueError, json errors... for bad files
        raise ModelDirectoryError(f"{model_dir}: cannot read the {fmt} model: {error_line(error)}") from None


def load_files(prefix: str, fmt: str) -> LoadedProgram:
    """``prefix``.pdmodel (``fmt`` legacy, translated) or .json (pir) with ``prefix``.pdiparams.

    A program naming ops this Paddle does not have is a ModelDirectoryError.
    """
    scope = paddle.static.Scope()
    with static_mode(), paddle.static.scope_guard(scope):
        if fmt == "legacy":
            with paddle.pir_utils.OldIrGuard():
                paddle.enable_static()
                legacy, _, _ = paddle.static.load_inference_model(prefix, paddle.static.Executor(paddle.CPUPlace()))
                refuse_unknown_ops(prefix + ".pdmodel", unknown_legacy_ops(legacy.desc))
                read_persistables_written_in_branches(legacy.desc)
                try:
                    with library_quiet():  # the translator logs each control-flow op
                        program = paddle.pir.translate_to_pir(legacy.desc)
                except Exception as error:  # the translator raises what its C++ code throws
                    raise TranslationError(error_line(error)) from None
        else:
            program, _, _ = paddle.static.load_inference_model(prefix, paddle.static.Executor(paddle.CPUPlace()))
            refuse_unknown_ops(prefix + ".json", unknown_pir_ops(program, prefix + ".json"))
    block = program.global_block()
    feeds = [op for op in block.ops if op.name() in FEED_OPS]
    # A legacy program feeds by column; the translator emits its feed ops in reverse.
    # Paddle Inference names its inputs in op order, so the ops are put in column
    # order too (they read nothing, so moving them changes nothing else).
    feeds.sort(key=lambda op: op.attrs().get("col", 0))
    for op in reversed(feeds):
        first = block.ops[0]
        if first.id() != op.id():  # moving an op before itself crashes Paddle
            op.move_before(first)
    inputs = [op.result(0) for op in feeds]
    # By column: Paddle Inference orders a program's outputs so (the hook maps the
    # caller's output names onto ours by position).
    fetches = sorted((op for op in block.ops if op.name() == "pd_op.fetch"), key=lambda op: op.attrs().get("col", 0))
    outputs = [op.operand_source(0) for op in fetches]
    for op in fetches:  # the executor and save_inference_model add their own
        op.erase()
    return LoadedProgram(program, inputs, outputs, scope)


def refuse_unknown_ops(path: str, unknown: list[str]) -> None:
    if unknown:
        raise ModelDirectoryError(unknown_ops_message(path, unknown))


def check_inputs(names, feed: dict) -> None:
    missing = sorted(set(names) - set(feed))
    if missing:
        raise ValueError(f"missing model inputs: {', '.join(missing)}")


def run_program(loaded: LoadedProgram, feed: dict) -> list[np.ndarray]:
    """Run a loaded program on ``paddle.static.Executor`` (CPU), its ops in the program's
    order as Paddle Inference runs them, and fetch its outputs."""
    check_inputs(loaded.feed_names, feed)
    with paddle.pir_utils.IrGuard(), paddle.static.scope_guard(loaded.scope), executor_in_program_order():
        return paddle.static.Executor(paddle.CPUPlace()).run(
            loaded.program, feed={name: feed[name] for name in loaded.feed_names}, fetch_list=loaded.outputs)


def save_program(loaded: LoadedProgram, prefix: str) -> None:
    """Write ``prefix``.json/.pdiparams: a PIR inference model Paddle Inference loads."""
    with static_mode(), paddle.static.scope_guard(loaded.scope):
        paddle.static.save_inference_model(prefix, loaded.inputs, loaded.outputs,
                                           paddle.static.Executor(paddle.CPUPlace()), program=loaded.program)


def count_loop_copies(program) -> int:
    """The loop copies (``assign_out_`` in while bodies) of ``program``."""
    return sum(len(found) for found in loop_copies(ProgramIndex.build(program)).values())


def has_loop(program) -> bool:
    """Whether ``program`` holds a ``pd_op.while``, at any depth."""
    return any(op.name() == WHILE for op in walk_ops(program))
