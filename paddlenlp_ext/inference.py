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
  (``passes.onednn_inplace_guard``), and so are the programs we run on oneDNN that hold
  ops oneDNN may give a blocked layout (``guard_for_onednn``): the differential test
  found loops carrying convolutions wrong with ``inplace_pass`` deleted and right once
  guarded.
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
  (``prepare_for_cpu``, ``passes.loop_weight_matmul``).
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
from .compat import empty_scope, read_persistables_written_in_branches
from .passes.copy_ops import loop_copies
from .passes.program_index import ProgramIndex
from .errors import error_line
from .quiet import library_quiet
from .params_file import ParamsFileError, check_directory_params, check_params_file
from .unknown_ops import unknown_legacy_ops, unknown_ops_message, unknown_pir_file_ops, unknown_pir_ops
from .files import LEGACY_FILE, MODEL_PREFIX, PARAMS_FILE, PIR_FILE  # noqa: F401 (names of this module)
from .paddle_modes import static_mode
from .passes import remove_loop_assign as loop_assign_pass
from .passes.onednn_inplace_guard import guard_onednn_inplace
from .passes.loop_cache_layout import carry_loop_caches_permuted
from .passes.loop_weight_matmul import run_loop_weight_matmuls_as_addmm
from .passes.onednn_layouts import has_blocked_layout_ops
from .passes.report import LoopAssignReport

logger = logging.getLogger("paddlenlp_ext")


# Which kernels run on oneDNN on CPU (see the module docstring): Paddle's placement
# (every op with a oneDNN kernel), or none.
ONEDNN_MODES = ("all", "off")
DEFAULT_ONEDNN = "all"

# Up to this many sequences per run, our oneDNN configuration runs a decode loop's weight
# products on the plain GEMM (prepare_for_cpu). That GEMM (MKL) streams the weights once
# for one row, but its time grows with the rows (at llama2-7B's MLP shape, one thread:
# 10.4 ms for 1 row, 19.4 for 2, 41.4 for 4), while oneDNN's matmul costs about the same
# for a few rows as for one. A llama2-7B-shaped layer's step (static cache, 256 prompt
# tokens, medians of 3, same tokens), plain GEMM against oneDNN: 108 against 128 ms at
# batch 2, 168 against 136 at batch 3, 178 against 122 at batch 4.
ADDMM_MAX_BATCH = 2

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
    """The directory's program as PIR (translated if legacy), parameters in a new scope."""
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
    fetches = [op for op in block.ops if op.name() == "pd_op.fetch"]
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
    """Run a loaded program on ``paddle.static.Executor`` (CPU) and fetch its outputs."""
    _check_inputs(loaded.feed_names, feed)
    with paddle.pir_utils.IrGuard(), paddle.static.scope_guard(loaded.scope):
        return paddle.static.Executor(paddle.CPUPlace()).run(
            loaded.program, feed={name: feed[name] for name in loaded.feed_names}, fetch_list=loaded.outputs)


def save_program(loaded: LoadedProgram, prefix: str) -> None:
    """Write ``prefix``.json/.pdiparams: a PIR inference model Paddle Inference loads."""
    with static_mode(), paddle.static.scope_guard(loaded.scope):
        paddle.static.save_inference_model(prefix, loaded.inputs, loaded.outputs,
                                           paddle.static.Executor(paddle.CPUPlace()), program=loaded.program)


def count_loop_copies(program) -> int:
    return sum(len(found) for found in loop_copies(ProgramIndex.build(program)).values())


class StaticGenerationModel:
    """A static model directory running on a Paddle Inference predictor.

    The program is loaded (a legacy one translated to PIR), cleaned by
    ``remove_loop_assign`` unless told not to, prepared as ``prepare_program`` says
    and run on the new IR. Where that program cannot be built or run while the model's
    files are sound (Paddle's translator or a pass fails on a program shape we have not
    met), the model runs the way its users run it without us, as ``fallback_config``
    configures Paddle Inference: one warning on the ``paddlenlp_ext`` logger says so and
    why (``fallback_reason``), and the outputs are Paddle's. ``fall_back=False`` raises
    instead. A damaged directory is a ModelDirectoryError either way.

    ``batch_size``: how many sequences a run is fed (PaddleNLP's ``--batch_size``). It
    picks the decode's weight-product kernel on CPU (``prepare_for_cpu``); any batch
    runs, and gives the same tokens, whatever it is set to.
    """

    def __init__(self, model_dir, *, remove_loop_assign: bool = True, device: str = "cpu",
                 dump_optimized_to: str | None = None, onednn: str = DEFAULT_ONEDNN, fall_back: bool = True,
                 batch_size: int = 1):
        if batch_size < 1:  # before the try below: a caller's mistake, not a reason to fall back
            raise ValueError(f"batch_size must be 1 or more, got {batch_size}")
        self.model_dir = Path(model_dir)
        self.format = model_format(model_dir)
        self.device = device
        self.fall_back = fall_back
        self.fallback_reason: str | None = None
        self.report: LoopAssignReport | None = None
        self.copies_before = self.copies_after = 0
        self.has_loop: bool | None = None  # a while loop in the program (None: not known, after a fallback)
        self._runs = 0  # of self.predictor
        try:
            self.predictor = self._cleaned_predictor(remove_loop_assign, dump_optimized_to, onednn, batch_size)
        except ModelDirectoryError:
            raise
        except Exception as error:
            if not fall_back:
                raise
            self._use_fallback("built", error)
        self.input_names = self.predictor.get_input_names()

    def _cleaned_predictor(self, remove_loop_assign: bool, dump_optimized_to: str | None, onednn: str,
                           batch_size: int):
        loaded = load_program(self.model_dir)
        self.has_loop = any(op.name() == "pd_op.while" for op in loaded.program.global_block().ops)
        self.copies_before = count_loop_copies(loaded.program)
        if remove_loop_assign:
            self.report = loop_assign_pass.remove_loop_assign(loaded.program, outputs=loaded.outputs)
            logger.info("remove_loop_assign on %s: %s", self.model_dir, self.report.summary())
        self.copies_after = count_loop_copies(loaded.program)
        predictor = predictor_for(loaded, self.device, dump_optimized_to, onednn, batch_size)
        loaded.release()  # the predictor holds its own copy of the weights
        return predictor

    def _use_fallback(self, stage: str, error: Exception) -> None:
        self.fallback_reason = warn_fallback(self.model_dir, stage, error)
        self.report, self.copies_after = None, self.copies_before
        self.predictor, self._runs = None, 0  # one predictor's weights in memory at a time
        with library_quiet():
            self.predictor = inference.create_predictor(fallback_config(self.model_dir, self.device))

    def run(self, feed: dict) -> np.ndarray:
        """The program's first output (a generation model's token ids) for ``feed``."""
        _check_inputs(self.input_names, feed)
        try:
            return self._run(feed)
        except Exception as error:
            if self.fallback_reason is not None or not self.fall_back:
                raise
            self._use_fallback("run", error)
        return self._run(feed)

    def _run(self, feed: dict) -> np.ndarray:
        first, self._runs = self._runs == 0, self._runs + 1
        return run_predictor(self.predictor, feed, quiet=first)[0]


def warn_fallback(path, stage: str, error: Exception) -> str:
    """Log, once, that ``path`` now runs as Paddle runs it without us because the
    translated program could not be ``stage`` ("built" or "run"); returns the reason."""
    reason = f"the translated program could not be {stage}: {error_line(error)}"
    logger.warning("%s: running on Paddle Inference as configured without paddlenlp_ext (%s)", path, reason)
    return reason


def fallback_config(model_dir: str | os.PathLike, device: str = "cpu"):
    """Paddle Inference configured for ``model_dir`` as it runs without this package: a
    legacy directory as PaddleNLP 2.8's static predictor configures it
    (``paddlenlp_static_config``), a PIR one with Paddle's defaults."""
    directory = Path(model_dir)
    if model_format(directory) == "legacy":
        config = paddlenlp_static_config(directory)
    else:
        config = inference.Config(str(directory / PIR_FILE), str(directory / PARAMS_FILE))
    if device == "gpu":
        config.enable_use_gpu(100, 0)
    return config


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
    if onednn not in ONEDNN_MODES:
        raise ValueError(f"onednn must be one of {', '.join(ONEDNN_MODES)}, got {onednn!r}")
    if onednn == "off":
        config.disable_mkldnn()
    else:
        config.enable_mkldnn()
    for name in ONEDNN_DELETED_PASSES[onednn]:
        config.delete_pass(name)


def predictor_for(loaded: LoadedProgram, device: str = "cpu", dump_optimized_to: str | None = None,
                  onednn: str = DEFAULT_ONEDNN, batch_size: int = 1):
    """A predictor for ``loaded``: prepared as ``prepare_program`` says (this changes
    ``loaded.program``), saved to a staging directory and handed to
    ``create_paddle_predictor``."""
    prepare_program(loaded, device, onednn, batch_size)
    with tempfile.TemporaryDirectory(prefix="paddlenlp_ext-") as staging:
        # Paddle Inference reads the files while creating the predictor, so the
        # staged program need not outlive this block.
        prefix = os.path.join(staging, MODEL_PREFIX)
        save_program(loaded, prefix)
        return create_paddle_predictor(prefix, device, dump_optimized_to, onednn)


def prepare_program(loaded: LoadedProgram, device: str, onednn: str, batch_size: int = 1) -> None:
    """What our predictors run of ``loaded.program`` on ``device``: a loop's concat caches
    carried in their attention's layout (``passes.loop_cache_layout``: at llama2-7B's
    layer shape, permuting the whole cache took about half of a concat loop's step),
    then, on CPU, ``prepare_for_cpu`` for ``batch_size`` sequences at a time. The
    rewrites leave the outputs as they were, at every batch size."""
    report = carry_loop_caches_permuted(loaded.program, outputs=loaded.outputs)
    if report.modified:
        logger.debug("loop_cache_layout: %s", report.summary())
    if device == "cpu":
        prepare_for_cpu(loaded, onednn, batch_size)


def prepare_for_cpu(loaded: LoadedProgram, onednn: str, batch_size: int = 1) -> None:
    """What our CPU configuration runs of ``loaded.program``, fed ``batch_size``
    sequences at a time: up to ``ADDMM_MAX_BATCH`` of them (or with oneDNN off), the
    decode loop's weight matmuls on the plain GEMM (``passes.loop_weight_matmul``:
    oneDNN's matmul reads the weights at a third of the memory bandwidth for one row);
    then, with oneDNN on, ``guard_for_onednn``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, got {batch_size}")
    if onednn == "off" or batch_size <= ADDMM_MAX_BATCH:
        report = run_loop_weight_matmuls_as_addmm(loaded.program)
        if report.modified:
            logger.debug("loop_weight_matmul: %s", report.summary())
    if onednn != "off":
        guard_for_onednn(loaded)


def guard_for_onednn(loaded: LoadedProgram) -> None:
    """Guard ``loaded`` for our oneDNN configuration: when it holds ops oneDNN may give
    a blocked layout (``passes.onednn_layouts``). Without them ``inplace_pass``, which
    our configuration deletes, is the only source of the alias the guard breaks, and
    the guard's copies would cost time every step (12% of a token at 128 prompt tokens
    on the benchmark's llama); with them the differential test found programs wrong
    unguarded."""
    if has_blocked_layout_ops(loaded.program):
        guard_onednn_inplace(loaded.program, outputs=loaded.outputs)


def create_paddle_predictor(prefix: str, device: str = "cpu", dump_optimized_to: str | None = None,
                            onednn: str = DEFAULT_ONEDNN, cpu_threads: int | None = None):
    """A Paddle Inference predictor for ``prefix``.json/.pdiparams, configured as
    StaticGenerationModel runs it (new IR; on CPU, oneDNN as ``onednn`` says, and
    ``cpu_threads`` math threads, None for Paddle's default)."""
    config = inference.Config(prefix + ".json", prefix + ".pdiparams")
    config.enable_new_ir(True)
    config.disable_glog_info()
    if device == "gpu":
        config.enable_use_gpu(256, 0)
    elif device == "cpu":
        config.disable_gpu()
        configure_cpu(config, onednn)
        if cpu_threads is not None:
            config.set_cpu_math_library_num_threads(cpu_threads)
    else:
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if dump_optimized_to is not None:
        config.set_optim_cache_dir(dump_optimized_to)
        config.enable_save_optim_model(True)
    return _create_predictor(config)


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


def cleaned_legacy_config(config):
    """For a Paddle Inference ``Config`` naming a legacy ``.pdmodel`` decoding loop, a
    copy that runs it the way ``StaticGenerationModel`` does: translated, cleaned
    by ``remove_loop_assign``, saved as PIR, on the new IR. On CPU, oneDNN stays as the
    user set it: off when they disabled it, else ``DEFAULT_ONEDNN`` (Paddle's placement,
    ``inplace_pass`` deleted); the program prepared as ``prepare_program`` says.

    On CPU, the process is tuned as for our own predictors (``tune_cpu_process``).

    A truncated parameters file is a ModelDirectoryError (Paddle would load it and run on
    whatever its buffer held), and so is a program, legacy or PIR, naming ops this Paddle
    does not have (Paddle Inference's own error does not say so). Returns ``(config,
    report)``, or None for anything else (a PIR model, a model directory, a program
    without a while loop, a params file not beside the model), which the caller runs as
    it is. The user's config is not changed; every other setting (device, threads,
    logging...) is kept. The cleaned files stay until the process exits, so the copy can
    create more predictors.
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
    report = loop_assign_pass.remove_loop_assign(loaded.program, outputs=loaded.outputs)
    if not report.loops:  # not a decoding loop: nothing for us to do
        return None
    onednn = DEFAULT_ONEDNN if config.mkldnn_enabled() else "off"  # as the user set it
    prepare_program(loaded, "gpu" if config.use_gpu() else "cpu", onednn)
    staging = tempfile.TemporaryDirectory(prefix="paddlenlp_ext-cleaned-")
    _kept_staging.append(staging)  # removed when the process exits
    prefix = os.path.join(staging.name, MODEL_PREFIX)
    save_program(loaded, prefix)
    loaded.release()  # the predictor reads the weights from the saved files
    cleaned = inference.Config(config)
    cleaned.set_model(prefix + ".json", prefix + ".pdiparams")
    cleaned.enable_new_ir(True)
    if not cleaned.use_gpu():
        configure_cpu(cleaned, onednn)
        tune_cpu_process()
    return cleaned, report
