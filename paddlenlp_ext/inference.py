"""Load a static generation model directory and run it on Paddle Inference.

A directory holds ``model.json`` (PIR format) or ``model.pdmodel`` (legacy format)
with ``model.pdiparams``. Paddle Inference 3.x runs PIR programs; a legacy file is
translated to PIR first. Two facts seen on Paddle 3.3.1 (CPU) shape this module:

- ``create_predictor`` on a legacy ``.pdmodel`` with the new IR fails at run time
  ("Tensor holds no memory") on a decoding loop, while the same program translated
  with ``paddle.pir.translate_to_pir`` and saved as ``.json`` runs and gives the
  dynamic model's tokens. So legacy models are always translated here, and the pass
  runs on the translated program when asked: the cleaned program is the one the
  predictor executes (``executed_loop_copies`` checks that on Paddle's own
  optimized-model dump).
- oneDNN (on by default for CPU) gives wrong outputs on Paddle 3.3.1's new IR, with or
  without the pass: Paddle's ``inplace_pass`` lets a plain kernel write over the buffer
  that ``onednn_to_paddle_layout`` shares with its oneDNN input (``scripts/onednn_bisect.py``
  found it; ``tests/test_inference.py`` shows it on a three-op program). Which reads it
  hits is decided after us, by Paddle's placement and fuse passes, so every configuration
  this module creates with oneDNN on deletes ``inplace_pass`` (``ONEDNN_DELETED_PASSES``).
  Programs saved for Paddle's default config (``convert``, the save hook) are guarded
  (``passes.onednn_inplace_guard``), and the programs we run on oneDNN get as much of
  the guard as a configuration without ``inplace_pass`` needs (``passes.pipeline``: which
  passes run on which route is said there, and only there).
- Which kernels run on oneDNN (``ONEDNN_MODES``): ``"all"`` (the default) is Paddle's
  own placement, ``"off"`` plain kernels only. A third mode, oneDNN for the fused matmuls
  only (``onednn_placement_pass`` deleted), was faster per token but is a pipeline
  Paddle 3.3.1 gets wrong: a fused matmul with a residual computed in a loop body
  raises, and a plain op taking a vector (``concat``) gets no layout transform for a
  oneDNN input, so two such reads of one fused matmul's output give wrong values
  (``tests/test_onednn_classes.py`` pins both).
- A decode step multiplies one row per sequence by every weight matrix, and oneDNN's
  matmul reads the weights at about a third of the memory bandwidth there, so our CPU
  configuration runs a loop's large weight products on the plain GEMM
  (``prepare_program``, ``passes.loop_weight_matmul``).
- On every device, a loop's concat cache is carried in the layout its attention reads,
  so no step permutes the whole cache (``prepare_program``, ``passes.loop_cache_layout``).
- Paddle keeps every parameter scope until the process exits, so a ``LoadedProgram``
  empties its own when dropped or released (``compat.empty_scope``): a predictor made
  from it holds the weights once.
- Paddle's CPU tensors come from glibc's ``malloc``, which maps every large block afresh
  and unmaps it when freed: at llama2-7B's layer shape the page faults were about half of
  a concat loop's step. Our CPU predictors keep freed memory mapped (``host_memory``).
- That plain GEMM is the MKL Paddle ships, which takes a generic code path on AMD
  processors; our CPU predictors set its AVX2 path there (``mkl_dispatch``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle
from paddle import inference

from . import host_memory, mkl_dispatch
from .compat import empty_scope, executor_in_program_order, read_persistables_written_in_branches
from .passes.copy_ops import loop_copies
from .passes.program_index import WHILE, ProgramIndex, walk_ops
from .errors import error_line
from .quiet import library_quiet
from .params_file import ParamsFileError, check_directory_params, check_params_file
from .unknown_ops import unknown_legacy_ops, unknown_ops_message, unknown_pir_file_ops, unknown_pir_ops
from .files import LEGACY_FILE, MODEL_PREFIX, PARAMS_FILE, PIR_FILE  # noqa: F401 (names of this module)
from .paddle_modes import static_mode
from .passes.pipeline import (  # noqa: F401 (ADDMM_MAX_BATCH, ONEDNN_MODES: names of this module too)
    ADDMM_MAX_BATCH,
    DEFAULT_ONEDNN,
    ONEDNN_MODES,
    PipelineReport,
    check_options,
    run_passes,
    running_passes,
)
from .passes.report import LoopAssignReport

logger = logging.getLogger("paddlenlp_ext")


# Paddle Inference passes each oneDNN mode deletes.
ONEDNN_DELETED_PASSES = {
    "all": (
        # Paddle 3.3.1: inplace_pass does not see that onednn_to_paddle_layout's result
        # shares its oneDNN input's buffer, and turns the plain reader into a write over it
        # (wrong outputs, no error). Deleted, no kernel writes in place unless the program
        # says so.
        "inplace_pass",
        # Paddle 3.3.1: a biased linear under two activations or two scales,
        # act2(act1(x @ W + b)), gives wrong values (each pass fuses the second op into
        # the oneDNN fc as well; seen for tanh, gelu, sigmoid, sqrt and scale).
        # tests/test_onednn_classes.py pins it on Paddle's default config.
        "fc_activation_fuse_pass",
        "operator_scale_onednn_fuse_pass",
    ),
    "off": (),
}


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
                _refuse_unknown_ops(prefix + ".pdmodel", unknown_legacy_ops(legacy.desc))
                read_persistables_written_in_branches(legacy.desc)
                try:
                    with library_quiet():  # the translator logs each control-flow op
                        program = paddle.pir.translate_to_pir(legacy.desc)
                except Exception as error:  # the translator raises what its C++ code throws
                    raise TranslationError(error_line(error)) from None
        else:
            program, _, _ = paddle.static.load_inference_model(prefix, paddle.static.Executor(paddle.CPUPlace()))
            _refuse_unknown_ops(prefix + ".json", unknown_pir_ops(program, prefix + ".json"))
    block = program.global_block()
    feeds = [op for op in block.ops if op.name() in ("pd_op.data", "pd_op.feed")]
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


def _refuse_unknown_ops(path: str, unknown: list[str]) -> None:
    if unknown:
        raise ModelDirectoryError(unknown_ops_message(path, unknown))


def _check_inputs(names, feed: dict) -> None:
    missing = sorted(set(names) - set(feed))
    if missing:
        raise ValueError(f"missing model inputs: {', '.join(missing)}")


def run_program(loaded: LoadedProgram, feed: dict) -> list[np.ndarray]:
    """Run a loaded program on ``paddle.static.Executor`` (CPU), its ops in the program's
    order as Paddle Inference runs them, and fetch its outputs."""
    _check_inputs(loaded.feed_names, feed)
    with paddle.pir_utils.IrGuard(), paddle.static.scope_guard(loaded.scope), executor_in_program_order():
        return paddle.static.Executor(paddle.CPUPlace()).run(
            loaded.program, feed={name: feed[name] for name in loaded.feed_names}, fetch_list=loaded.outputs)


def save_program(loaded: LoadedProgram, prefix: str) -> None:
    """Write ``prefix``.json/.pdiparams: a PIR inference model Paddle Inference loads."""
    with static_mode(), paddle.static.scope_guard(loaded.scope):
        paddle.static.save_inference_model(prefix, loaded.inputs, loaded.outputs,
                                           paddle.static.Executor(paddle.CPUPlace()), program=loaded.program)


def count_loop_copies(program) -> int:
    return sum(len(found) for found in loop_copies(ProgramIndex.build(program)).values())


class NoSafeRuntimeError(RuntimeError):
    """Every way we know to run a model right failed: one line names each failure."""


@dataclass(frozen=True)
class RuntimeStage:
    """One way to run a model, in the order ``StaticGenerationModel`` tries them
    (``runtime_stages``): ``create()`` returns ``(predictor, config)``; ``name`` is what it runs
    ("the prepared program"), ``description`` where ("paddlenlp_ext's configuration")."""

    name: str
    description: str
    create: object  # () -> (predictor, Config)


class StaticGenerationModel:
    """A static model directory running on a Paddle Inference predictor.

    The program is loaded (a legacy one translated to PIR) and rewritten by the passes
    ``passes.pipeline.running_passes`` names for ``device``, ``onednn`` and
    ``batch_size`` (``remove_loop_assign`` first unless told not to), then run on the
    new IR in our configuration (``our_config``).

    Where that program cannot be built or run while the model's files are sound
    (Paddle's translator or a pass fails on a program shape we have not met), the model
    falls back, one warning on the ``paddlenlp_ext`` logger for each step saying why
    (``fallback_reason`` keeps the first), through ``runtime_stages``: the untouched
    program on our configuration with the same ``onednn`` (only the passes that keep
    that configuration right), then, for a legacy directory, PaddleNLP's static
    predictor configuration (oneDNN off if ``onednn`` is), and never a configuration
    ``docs/onednn.md`` documents as wrong: a PIR directory is never run on Paddle's
    default oneDNN configuration. When none is left, NoSafeRuntimeError.
    ``fall_back=False`` raises the first failure instead. A damaged directory is a
    ModelDirectoryError either way, and an unknown ``device``, ``onednn`` or
    ``batch_size`` a ValueError.

    ``batch_size``: how many sequences a run is fed (PaddleNLP's ``--batch_size``). It
    picks the decode's weight-product kernel on CPU (``passes.pipeline``); any batch
    runs, and gives the same tokens, whatever it is set to.
    """

    def __init__(self, model_dir, *, remove_loop_assign: bool = True, device: str = "cpu",
                 dump_optimized_to: str | None = None, onednn: str = DEFAULT_ONEDNN, fall_back: bool = True,
                 batch_size: int = 1):
        check_options(device, onednn, batch_size)  # a caller's mistake, not a reason to fall back
        self.model_dir = Path(model_dir)
        self.format = model_format(model_dir)
        self.device, self.onednn = device, onednn
        self.fall_back = fall_back
        self.fallback_reason: str | None = None
        self.report: LoopAssignReport | None = None
        self.pipeline: PipelineReport | None = None
        self.copies_before = self.copies_after = 0
        self.has_loop: bool | None = None  # a while loop in the program (None: not known)
        self.predictor = self.config = None
        self._runs = 0  # of self.predictor
        self._stages = runtime_stages(self, remove_loop_assign, dump_optimized_to, batch_size)
        self._stage = -1
        self._failures: list[str] = []
        self._next_stage()
        self.input_names = self.predictor.get_input_names()

    @property
    def runtime(self) -> str:
        """What runs the model: "the prepared program on paddlenlp_ext's configuration"..."""
        stage = self._stages[self._stage]
        return f"{stage.name} on {stage.description}"

    def _prepared_predictor(self, remove_loop_assign: bool, optimize: bool, dump_optimized_to: str | None,
                            batch_size: int):
        loaded = load_program(self.model_dir)
        self.has_loop = any(op.name() == "pd_op.while" for op in loaded.program.global_block().ops)
        self.copies_before = count_loop_copies(loaded.program)
        steps = running_passes(self.device, self.onednn, batch_size, remove_copies=remove_loop_assign,
                               optimize=optimize)
        self.pipeline = run_passes(loaded.program, loaded.outputs, steps)
        self.report = self.pipeline.get("remove_loop_assign")
        if self.report is not None:
            logger.info("remove_loop_assign on %s: %s", self.model_dir, self.report.summary())
        self.copies_after = count_loop_copies(loaded.program)
        return _staged_predictor(loaded, lambda prefix: our_config(prefix, self.device, dump_optimized_to,
                                                                     self.onednn))

    def _next_stage(self, failed: str | None = None, error: Exception | None = None) -> None:
        """Create the next stage's predictor (the first at ``failed`` None), skipping
        those that cannot be built; ``failed`` says what the current stage could not be."""
        while True:
            if failed is not None:
                stage = self._stages[self._stage]
                reason = f"{stage.name} could not be {failed}: {error_line(error)}"
                self._failures.append(reason)
                if self.fallback_reason is None:
                    self.fallback_reason = reason
                if self._stage + 1 == len(self._stages):
                    raise NoSafeRuntimeError(f"{self.model_dir}: no configuration known to run it right is left "
                                             f"({'; '.join(self._failures)})") from None
                after = self._stages[self._stage + 1]
                logger.warning("%s: running %s on %s (%s)", self.model_dir, after.name, after.description, reason)
            self._stage += 1
            self.predictor = self.config = None  # one predictor's weights in memory at a time
            self._runs = 0
            try:
                self.predictor, self.config = self._stages[self._stage].create()
                return
            except ModelDirectoryError:
                raise
            except Exception as caught:
                if not self.fall_back:
                    raise
                failed, error = "built", caught

    def run(self, feed: dict) -> np.ndarray:
        """The program's first output (a generation model's token ids) for ``feed``."""
        _check_inputs(self.input_names, feed)
        while True:
            try:
                return self._run(feed)
            except NoSafeRuntimeError:
                raise
            except Exception as error:
                if not self.fall_back or self._stage + 1 == len(self._stages):
                    raise
                self._next_stage("run", error)

    def _run(self, feed: dict) -> np.ndarray:
        first, self._runs = self._runs == 0, self._runs + 1
        return run_predictor(self.predictor, feed, quiet=first)[0]


def runtime_stages(model: StaticGenerationModel, remove_loop_assign: bool, dump_optimized_to: str | None,
                   batch_size: int) -> list[RuntimeStage]:
    """The ways ``model`` may run, in the order tried (``StaticGenerationModel``'s
    docstring says why)."""
    ours = f"paddlenlp_ext's configuration (oneDNN {model.onednn})" if model.device == "cpu" else \
        "paddlenlp_ext's configuration"
    stages = [
        RuntimeStage("the prepared program", ours,
                     lambda: model._prepared_predictor(remove_loop_assign, True, dump_optimized_to, batch_size)),
        RuntimeStage("the untouched program", ours,
                     lambda: model._prepared_predictor(False, False, dump_optimized_to, batch_size)),
    ]
    plain = plain_paddle_config(model.model_dir, model.device, model.onednn)
    if plain is not None:
        description, config = plain
        stages.append(RuntimeStage("the model's own program", description,
                                   lambda: (_create_predictor(config), config)))
    return stages


def plain_paddle_config(model_dir: str | os.PathLike, device: str = "cpu", onednn: str = DEFAULT_ONEDNN):
    """``(description, Config)``: Paddle Inference configured for ``model_dir`` as it runs
    without this package, with oneDNN off where ``onednn`` is: a legacy directory as
    PaddleNLP 2.8's static predictor configures it (``paddlenlp_static_config``: the old
    IR), a PIR one with Paddle's defaults. None where that configuration is one
    ``docs/onednn.md`` documents as wrong: Paddle's default CPU config (new IR, oneDNN,
    ``inplace_pass``) on a program we have not guarded."""
    directory = Path(model_dir)
    if model_format(directory) == "legacy":
        config, description = paddlenlp_static_config(directory), "PaddleNLP's static predictor configuration"
    else:
        config = inference.Config(str(directory / PIR_FILE), str(directory / PARAMS_FILE))
        config.disable_glog_info()
        description = "Paddle Inference's default configuration"
    if device == "gpu":
        config.enable_use_gpu(100, 0)
    elif onednn == "off":
        config.disable_mkldnn()
        description += " (oneDNN off)"
    return None if known_wrong(config) else (description, config)


def known_wrong(config) -> str | None:
    """Why Paddle Inference's ``config`` is one ``docs/onednn.md`` documents as giving
    wrong outputs on a program we have not guarded, or None: Paddle 3.3.1's new IR (asked
    for, or a PIR ``.json`` program) with oneDNN on CPU, with ``inplace_pass``."""
    new_ir = config.new_ir_enabled() or config.prog_file().endswith(".json")
    if new_ir and config.mkldnn_enabled() and not config.use_gpu():
        return "its new IR with oneDNN gives wrong outputs on an unguarded program (docs/onednn.md)"
    return None


def run_predictor(predictor, feed: dict, quiet: bool = False) -> list[np.ndarray]:
    """Feed a Paddle Inference predictor by its input names (``feed`` may hold more),
    run it once, and return every output in order. ``quiet``: with its C++ output
    dropped (``library_quiet``), for a predictor's first run, where Paddle 3.3.1's
    oneDNN kernel choice prints ``ReduceMeanCheckIfOneDNNSupport`` to stdout; later runs
    print nothing, and other threads' output is not held up by them."""
    names = predictor.get_input_names()
    _check_inputs(names, feed)
    for name in names:
        predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(feed[name]))
    with library_quiet() if quiet else contextlib.nullcontext():
        predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


def configure_cpu(config, onednn: str = DEFAULT_ONEDNN) -> None:
    """Set ``config``'s oneDNN use on CPU to ``onednn`` (one of ``ONEDNN_MODES``), with
    the passes that mode deletes (``ONEDNN_DELETED_PASSES``)."""
    check_options("cpu", onednn)
    if onednn == "off":
        config.disable_mkldnn()
    else:
        config.enable_mkldnn()
    for name in ONEDNN_DELETED_PASSES[onednn]:
        config.delete_pass(name)


def prepare_program(loaded: LoadedProgram, device: str, onednn: str, batch_size: int = 1, *,
                    optimize: bool = True) -> PipelineReport:
    """Rewrite ``loaded.program`` as our predictors run it on ``device`` (oneDNN as
    ``onednn`` says) for ``batch_size`` sequences a run: ``passes.pipeline.running_passes``
    without ``remove_loop_assign`` (the caller decides that one). The rewrites leave the
    outputs as they were, at every batch size."""
    steps = running_passes(device, onednn, batch_size, remove_copies=False, optimize=optimize)
    return run_passes(loaded.program, loaded.outputs, steps)


def predictor_for(loaded: LoadedProgram, device: str = "cpu", dump_optimized_to: str | None = None,
                  onednn: str = DEFAULT_ONEDNN, batch_size: int = 1):
    """A predictor for ``loaded``: prepared as ``prepare_program`` says (this changes
    ``loaded.program``), saved to a staging directory, in our configuration; ``loaded``'s
    weights are released (``_staged_predictor``)."""
    prepare_program(loaded, device, onednn, batch_size)
    predictor, _ = _staged_predictor(loaded, lambda prefix: our_config(prefix, device, dump_optimized_to, onednn))
    return predictor


def _staged_predictor(loaded: LoadedProgram, config_for):
    """``(predictor, config)`` for ``loaded`` saved to a staging directory,
    ``config_for(prefix)`` the configuration. ``loaded``'s weights are released once
    saved, before the predictor loads its own copy: a process holds them once (a whole
    bfloat16 llama2-7B is 12.6 GiB; twice that does not fit 24 GiB)."""
    with tempfile.TemporaryDirectory(prefix="paddlenlp_ext-") as staging:
        # Paddle Inference reads the files while creating the predictor, so the
        # staged program need not outlive this block.
        prefix = os.path.join(staging, MODEL_PREFIX)
        save_program(loaded, prefix)
        loaded.release()
        config = config_for(prefix)
        return _create_predictor(config), config


def our_config(prefix: str, device: str = "cpu", dump_optimized_to: str | None = None,
               onednn: str = DEFAULT_ONEDNN, cpu_threads: int | None = None):
    """Paddle Inference's config for ``prefix``.json/.pdiparams as StaticGenerationModel
    runs it: new IR; on CPU, oneDNN as ``onednn`` says (``configure_cpu``), and
    ``cpu_threads`` math threads, None for Paddle's default."""
    check_options(device, onednn)
    config = inference.Config(prefix + ".json", prefix + ".pdiparams")
    config.enable_new_ir(True)
    config.disable_glog_info()
    if device == "gpu":
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
        configure_cpu(config, onednn)
        if cpu_threads is not None:
            config.set_cpu_math_library_num_threads(cpu_threads)
    if dump_optimized_to is not None:
        config.set_optim_cache_dir(dump_optimized_to)
        config.enable_save_optim_model(True)
    return config


def create_paddle_predictor(prefix: str, device: str = "cpu", dump_optimized_to: str | None = None,
                            onednn: str = DEFAULT_ONEDNN, cpu_threads: int | None = None):
    """A Paddle Inference predictor for ``prefix``.json/.pdiparams in our configuration
    (``our_config``). A program our running passes prepared may hold our kernel's op
    (``passes.loop_bfloat16_gemv``): the op is registered in this process first."""
    register_native_ops(prefix + ".json")
    return _create_predictor(our_config(prefix, device, dump_optimized_to, onednn, cpu_threads))


def register_native_ops(program_file: str) -> None:
    """Register our kernels' ops in this process when the saved PIR program
    ``program_file`` holds them (Paddle Inference fails on an op it does not know)."""
    from .native import NATIVE_OPS, load_bfloat16_gemv

    with open(program_file, encoding="utf-8", errors="replace") as text:
        program = text.read()
    held = [name for name in NATIVE_OPS if name in program]
    if not held:
        return
    gemv, why = load_bfloat16_gemv()  # (every kernel is built and registered at once)
    if gemv is None:
        raise ModelDirectoryError(f"{program_file} holds {held[0]}, and {why}")


def tune_cpu_process() -> None:
    """The process-wide settings a process running our CPU predictors gets: host memory
    that runs free stays mapped for their next allocations (``host_memory``), and on an
    AMD processor MKL takes its AVX2 path (``mkl_dispatch``)."""
    host_memory.keep_freed_memory()
    mkl_dispatch.use_avx2_path_on_amd()


def _create_predictor(config):
    """Paddle Inference's predictor for ``config``. On CPU, the process is tuned
    (``tune_cpu_process``), and what loading the predictor freed is given back."""
    if not config.use_gpu():
        tune_cpu_process()
    with library_quiet():  # glog lines, and oneDNN's passes print to stdout
        predictor = inference.create_predictor(config)
    host_memory.return_free_memory()
    return predictor


def paddlenlp_static_config(model_dir: str | os.PathLike):
    """Paddle Inference configured as PaddleNLP 2.8's static predictor configures it
    (``llm/predictor.py``, ``StaticGraphPredictor`` on CPU) for a legacy model directory:
    what its users run today. Paddle's defaults otherwise: on 3.3.1 that is the old IR
    with oneDNN on."""
    directory = Path(model_dir)
    config = inference.Config(str(directory / LEGACY_FILE), str(directory / PARAMS_FILE))
    config.disable_gpu()
    config.disable_glog_info()
    config.enable_new_executor()
    return config


def executed_loop_ops(dump_dir: str) -> Counter:
    """``{op name: count}`` of the ops in while loops of the program Paddle Inference
    optimized and ran (its own dump), names without their dialect (``assign_out_``).

    Read from the dump's JSON rather than loaded as a program: with oneDNN it holds
    ``onednn_op`` ops, which Paddle's program loader does not know. An op is
    ``{"#": "<dialect id>.<name>", "regions": [{"blocks": [{"ops": [...]}]}]}``.
    """
    path = os.path.join(dump_dir, "_optimized.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dump_dir}: no optimized-model dump (_optimized.json)")
    with open(path) as dump:
        program = json.load(dump)["program"]

    def ops_in(regions):
        for region in regions:
            for block in region["blocks"]:
                yield from block["ops"]

    counts = Counter()

    def walk(ops, in_loop: bool) -> None:
        for op in ops:
            name = op["#"].split(".", 1)[-1]
            if in_loop:
                counts[name] += 1
            walk(ops_in(op.get("regions", [])), in_loop or name == "while")

    walk(ops_in(program["regions"]), False)
    return counts


def executed_loop_copies(dump_dir: str) -> int:
    """Loop copies (``assign_out_``) in the program Paddle Inference optimized and ran."""
    return executed_loop_ops(dump_dir)["assign_out_"]


_kept_staging: list = []  # directories of cleaned programs that predictors were created from


@dataclass(frozen=True)
class CleanedConfig:
    """What ``cleaned_legacy_config`` makes of a caller's config."""

    config: object  # a copy of the caller's Config, naming the rewritten PIR program
    report: LoopAssignReport | None  # remove_loop_assign's, None for the untouched program


def cleaned_legacy_config(config, *, optimize: bool = True) -> CleanedConfig | None:
    """For a Paddle Inference ``Config`` naming a legacy ``.pdmodel`` decoding loop, a
    copy that runs it the way ``StaticGenerationModel`` does: translated, rewritten by
    ``passes.pipeline.running_passes`` (``remove_loop_assign`` first), saved as PIR, on
    the new IR. ``optimize=False``: the untouched program, with only the passes that keep
    the configuration right (the hook's fallback). On CPU, oneDNN stays as the user set
    it: off when they disabled it, else ``DEFAULT_ONEDNN`` (Paddle's placement,
    ``inplace_pass`` deleted), and the process is tuned as for our own predictors
    (``tune_cpu_process``).

    A truncated parameters file is a ModelDirectoryError (Paddle would load it and run on
    whatever its buffer held), and so is a program, legacy or PIR, naming ops this Paddle
    does not have (Paddle Inference's own error does not say so). Returns None for
    anything else (a PIR model, a model directory, a program without a while loop, a
    params file not beside the model), which the caller runs as it is. The user's
    config is not changed; every other setting (device, threads, logging...) is kept.
    The cleaned files stay until the process exits, so the copy can create more
    predictors.
    """
    prog, params = config.prog_file(), config.params_file()
    if prog.endswith(".json") and os.path.isfile(prog):
        _refuse_unknown_ops(prog, unknown_pir_file_ops(prog))
    if not prog.endswith(".pdmodel") or params != prog[: -len(".pdmodel")] + ".pdiparams":
        return None
    try:
        check_params_file(params)
    except ParamsFileError as error:  # Paddle would run on whatever the buffer held
        raise ModelDirectoryError(f"{params}: {error}") from None
    except OSError:
        return None  # no such file: Paddle's own predictor reports it
    try:
        loaded = load_files(prog[: -len(".pdmodel")], "legacy")
    except (TranslationError, ModelDirectoryError):
        raise
    except Exception:  # not a program we can read: Paddle's own predictor reports it
        return None
    if not has_loop(loaded.program):  # not a decoding loop: nothing for us to do
        loaded.release()
        return None
    device = "gpu" if config.use_gpu() else "cpu"
    onednn = DEFAULT_ONEDNN if config.mkldnn_enabled() else "off"  # as the user set it
    steps = running_passes(device, onednn, remove_copies=optimize, optimize=optimize)
    report = run_passes(loaded.program, loaded.outputs, steps).get("remove_loop_assign")
    staging = tempfile.TemporaryDirectory(prefix="paddlenlp_ext-cleaned-")
    _kept_staging.append(staging)  # removed when the process exits
    prefix = os.path.join(staging.name, MODEL_PREFIX)
    save_program(loaded, prefix)
    loaded.release()  # the predictor reads the weights from the saved files
    cleaned = inference.Config(config)
    cleaned.set_model(prefix + ".json", prefix + ".pdiparams")
    cleaned.enable_new_ir(True)
    if device == "cpu":
        configure_cpu(cleaned, onednn)
        tune_cpu_process()
    return CleanedConfig(cleaned, report)


def has_loop(program) -> bool:
    """Whether ``program`` holds a ``pd_op.while``, at any depth."""
    return any(op.name() == WHILE for op in walk_ops(program))
