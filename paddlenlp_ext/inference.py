"""Run a static generation model directory on Paddle Inference: ``StaticGenerationModel``
and the predictors our tools make.

The program is loaded (``program_files``), rewritten by the passes
``passes.pipeline`` names for the device, oneDNN mode and batch (``prepare_program``),
saved to a staging directory and loaded by a predictor in our configuration
(``paddle_config``). Two of those rewrites are for speed on every route we run:

- A decode step multiplies one row per sequence by every weight matrix, and oneDNN's
  matmul reads the weights at about a third of the memory bandwidth there, so our CPU
  configuration runs a loop's large weight products on the plain GEMM
  (``passes.loop_weight_matmul``; in bfloat16, on our kernel).
- On every device, a loop's concat cache is carried in the layout its attention reads,
  so no step permutes the whole cache (``passes.loop_cache_layout``).

Where the prepared program cannot be built or run, ``StaticGenerationModel`` falls back
through ``runtime_stages``, never onto a configuration known wrong
(``paddle_config.known_wrong``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import error_line
from .files import MODEL_PREFIX
from .paddle_config import create_predictor, our_config, plain_paddle_config, register_native_ops
from .passes.pipeline import DEFAULT_ONEDNN, PipelineReport, check_options, run_passes, running_passes
from .passes.report import LoopAssignReport
from .program_files import (LoadedProgram, ModelDirectoryError, check_inputs, count_loop_copies, has_loop,
                            load_program, model_format, save_program)
from .quiet import library_quiet

logger = logging.getLogger("paddlenlp_ext")


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
        self.has_loop = has_loop(loaded.program)
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
        check_inputs(self.input_names, feed)
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
                                   lambda: (create_predictor(config), config)))
    return stages


def run_predictor(predictor, feed: dict, quiet: bool = False) -> list[np.ndarray]:
    """Feed a Paddle Inference predictor by its input names (``feed`` may hold more),
    run it once, and return every output in order. ``quiet``: with its C++ output
    dropped (``library_quiet``), for a predictor's first run, where Paddle 3.3.1's
    oneDNN kernel choice prints ``ReduceMeanCheckIfOneDNNSupport`` to stdout; later runs
    print nothing, and other threads' output is not held up by them."""
    names = predictor.get_input_names()
    check_inputs(names, feed)
    for name in names:
        predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(feed[name]))
    with library_quiet() if quiet else contextlib.nullcontext():
        predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


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
        return create_predictor(config), config


def create_paddle_predictor(prefix: str, device: str = "cpu", dump_optimized_to: str | None = None,
                            onednn: str = DEFAULT_ONEDNN, cpu_threads: int | None = None):
    """A Paddle Inference predictor for ``prefix``.json/.pdiparams in our configuration
    (``our_config``). A program our running passes prepared may hold our kernel's op
    (``passes.loop_bfloat16_gemv``): the op is registered in this process first."""
    register_native_ops(prefix + ".json")
    return create_predictor(our_config(prefix, device, dump_optimized_to, onednn, cpu_threads))


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
