"""The load-time hook's rewrite of a caller's Paddle Inference ``Config``: a legacy
decoding loop it names is translated, rewritten by our passes, saved as PIR and run on
the new IR, every other setting of the caller's kept (``hook.py`` decides when)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from paddle import inference

from .files import MODEL_PREFIX
from .paddle_config import configure_cpu, tune_cpu_process
from .params_file import ParamsFileError, check_params_file
from .passes.pipeline import DEFAULT_ONEDNN, run_passes, running_passes
from .passes.report import LoopAssignReport
from .program_files import ModelDirectoryError, TranslationError, has_loop, load_files, refuse_unknown_ops, \
    save_program
from .unknown_ops import unknown_pir_file_ops


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
        refuse_unknown_ops(prog, unknown_pir_file_ops(prog))
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
