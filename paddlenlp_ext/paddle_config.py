"""Paddle Inference's configuration on CPU: ours, PaddleNLP's, Paddle's own, and the
ones known wrong.

Facts seen on Paddle 3.3.1 (CPU) that shape it:

- oneDNN (on by default for CPU) gives wrong outputs on Paddle 3.3.1's new IR, with or
  without the pass: Paddle's ``inplace_pass`` lets a plain kernel write over the buffer
  that ``onednn_to_paddle_layout`` shares with its oneDNN input
  (``scripts/investigations/onednn_bisect.py`` found it; ``tests/test_inference.py``
  shows it on a three-op program). Which reads it hits is decided after us, by Paddle's
  placement and fuse passes, so every configuration this module creates with oneDNN on
  deletes ``inplace_pass`` (``ONEDNN_DELETED_PASSES``). Programs saved for Paddle's
  default config (``convert``, the save hook) are guarded
  (``passes.onednn_inplace_guard``), and the programs we run on oneDNN get as much of
  the guard as a configuration without ``inplace_pass`` needs (``passes.pipeline``:
  which passes run on which route is said there, and only there).
- Which kernels run on oneDNN (``ONEDNN_MODES``): ``"all"`` (the default) is Paddle's
  own placement, ``"off"`` plain kernels only. A third mode, oneDNN for the fused
  matmuls only (``onednn_placement_pass`` deleted), was faster per token but is a
  pipeline Paddle 3.3.1 gets wrong: a fused matmul with a residual computed in a loop
  body raises, and a plain op taking a vector (``concat``) gets no layout transform for
  a oneDNN input, so two such reads of one fused matmul's output give wrong values
  (``tests/test_onednn_classes.py`` pins both).
- Paddle's CPU tensors come from glibc's ``malloc``, which maps every large block afresh
  and unmaps it when freed: at llama2-7B's layer shape the page faults were about half
  of a concat loop's step. A process running our CPU predictors keeps freed memory
  mapped (``host_memory``), on AMD processors MKL takes its AVX2 path
  (``mkl_dispatch``), and the executor frees dead tensors in batches rather than one
  task each on a thread that spins between them (``compat.runtime``):
  ``tune_cpu_process``.
"""

from __future__ import annotations

import os
from pathlib import Path

from paddle import inference

from . import host_memory, mkl_dispatch
from .compat import batch_cpu_garbage_collection
from .files import LEGACY_FILE, PARAMS_FILE, PIR_FILE
from .passes.pipeline import DEFAULT_ONEDNN, check_options
from .program_files import ModelDirectoryError, model_format
from .quiet import library_quiet



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
    that runs free stays mapped for their next allocations (``host_memory``), on an AMD
    processor MKL takes its AVX2 path (``mkl_dispatch``), and the executor frees dead
    tensors in batches (``compat.batch_cpu_garbage_collection``: its thread no longer
    spins through a core the computation needs)."""
    host_memory.keep_freed_memory()
    mkl_dispatch.use_avx2_path_on_amd()
    batch_cpu_garbage_collection()


def create_predictor(config):
    """Paddle Inference's predictor for ``config``. On CPU, the process is tuned
    (``tune_cpu_process``), what loading the predictor freed is given back, and the
    weights it holds are put on huge pages (``settle_cpu_weights``)."""
    if not config.use_gpu():
        tune_cpu_process()
    with library_quiet():  # glog lines, and oneDNN's passes print to stdout
        predictor = inference.create_predictor(config)
    settle_cpu_weights(config)
    return predictor


# Weights from which on a CPU predictor's memory is collapsed into huge pages: below,
# a step reads little enough from memory that the collapse (a copy of the process's
# resident memory, 0.1-3 s a GiB) costs more than it saves.
HUGE_PAGES_FROM_BYTES = 64 << 20


def settle_cpu_weights(config) -> None:
    """After a predictor for ``config`` loaded its weights: what loading freed goes back
    to the system, and on CPU, for weights of ``HUGE_PAGES_FROM_BYTES`` or more, what
    stays (the weights above all) is collapsed into transparent huge pages, which a
    decode step reads faster (``host_memory``)."""
    host_memory.return_free_memory()
    if not config.use_gpu() and _params_bytes(config) >= HUGE_PAGES_FROM_BYTES:
        host_memory.collapse_into_huge_pages()


def _params_bytes(config) -> int:
    """The size of ``config``'s parameters file (0 when it names none)."""
    params_file = config.params_file()
    try:
        return os.path.getsize(params_file) if params_file else 0
    except OSError:
        return 0


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
