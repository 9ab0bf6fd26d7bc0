"""Export a decoding loop as a static model directory, written atomically."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import paddle

from .files import current_umask
from . import hook
from .kv_cache import supports_static_cache
from .options import CACHES, EXPORT_FORMATS, LOOPS
from .compat.architectures import export_patches
from .decoding import DecodingConfig, GenerationLoop, export_legacy, export_pir, generation_inputs
from .files import MODEL_PREFIX
from .interrupts import raise_if_interrupted
from .quiet import library_quiet
from .passes.report import LoopAssignReport



class ExportError(Exception):
    """An export that cannot be written: one line says why."""


class DirectoryExistsError(ExportError):
    """The output directory is not empty (or was filled by another export meanwhile)."""

    def __init__(self, target: Path, meanwhile: bool = False):
        self.target, self.meanwhile = target, meanwhile
        super().__init__(self.message("overwrite=True"))

    def message(self, replace_with: str) -> str:
        """The error line, naming how the caller's interface replaces a directory."""
        meanwhile = " (another export wrote it meanwhile)" if self.meanwhile else ""
        return f"{self.target} already exists and is not empty{meanwhile}: choose a new directory or use {replace_with}"


@contextlib.contextmanager
def staged_directory(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a hidden sibling directory to write into; it becomes ``output_dir`` only
    when the block finishes, so a half-written export never looks complete.

    A non-empty ``output_dir`` is an error unless ``overwrite``; then it is replaced
    as a whole, after the new export is complete. Without ``overwrite`` the rename
    never replaces a directory another process filled meanwhile (DirectoryExistsError).
    """
    target = Path(output_dir)
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise DirectoryExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        raise_if_interrupted()  # a Ctrl-C a library swallowed: nothing goes into place
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp made it private; mkdir would not
    if overwrite and target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, retired / "previous")
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
        return
    try:
        os.rename(staging, target)  # replaces an empty directory, never a filled one
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise DirectoryExistsError(target, meanwhile=True) from None
        raise


METADATA_FILE = "paddlenlp_ext.json"


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    format: str
    report: LoopAssignReport | None  # the pass on the saved program (PIR format only)
    seconds: float


PADDLENLP_INPUTS = ["input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_k"]


def export_generation_model(model, output_dir, *, tokenizer=None, decoding: DecodingConfig | None = None,
                            format: str = "pir", remove_loop_assign: bool = True,
                            overwrite: bool = False, loop: str = "generation_loop",
                            cache: str | None = None) -> ExportResult:
    """Export decoding of a PaddleNLP causal LM as a static model directory.

    The directory has PaddleNLP's static layout: ``model.json`` (``format="pir"``) or
    ``model.pdmodel`` (``"legacy"``) with ``model.pdiparams``, and beside them the
    model's ``config.json``, a ``generation_config.json`` with the decoding settings,
    the tokenizer's files, and ``paddlenlp_ext.json`` (how it was exported). It is
    written to a hidden staging directory and renamed into place.

    ``loop`` chooses the decoding loop: this project's ``GenerationLoop`` (every
    decoding setting an input, ``decoding``'s eos and pad ids built in, its settings
    recorded as the defaults), or ``"paddlenlp"``: PaddleNLP's own
    ``model.to_static`` (``sample_d2s``, what its ``llm/export_model.py`` exports),
    with top-k sampling whose ``top_k`` is an input (top-p has no CPU kernel:
    ``decoding.top_p`` < 1 is an error there).

    ``cache`` is the ``GenerationLoop``'s KV cache: ``"concat"`` (PaddleNLP's, grown
    every step) or ``"static"`` (buffers for the prompt and ``max_new_tokens``, written
    in place); PaddleNLP's own loop has its concat cache only. None (the default)
    chooses ``"static"``, faster at every context in ``scripts/benchmark.py``, when the
    loop is ours and the model's attention is one it covers
    (``kv_cache.supports_static_cache``), else ``"concat"``.

    With ``remove_loop_assign`` the pass runs on a PIR program before it is saved (the
    report is returned and logged); a legacy file cannot hold the cleaned loop, so
    ``paddlenlp_ext.inference`` cleans it when it loads it.
    """
    if format not in EXPORT_FORMATS:
        raise ExportError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    if loop not in LOOPS:
        raise ExportError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    if cache is None:
        cache = default_cache(model, loop)
    if cache not in CACHES:
        raise ExportError(f"cache must be one of {', '.join(CACHES)}, got {cache!r}")
    if loop == "paddlenlp" and cache != "concat":
        raise ExportError(f"cache {cache!r} needs loop generation_loop: PaddleNLP's own loop keeps its concat cache")
    if cache == "static" and not supports_static_cache(model):
        raise ExportError("cache 'static' covers PaddleNLP's plain llama attention only (no fused qkv or rope, "
                          "tensor/sequence parallelism, dynamic NTK or flash attention)")
    _check_bfloat16_export(model, format)
    config = model.config
    decoding = decoding or DecodingConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id or 0)
    save = _save_paddlenlp_loop if loop == "paddlenlp" else functools.partial(_save_generation_loop, cache=cache)
    start = time.perf_counter()
    report = None
    with library_quiet(paddlenlp=True), staged_directory(output_dir, overwrite=overwrite) as staging:
        prefix = str(staging / MODEL_PREFIX)
        with export_patches(model):
            if format == "pir" and remove_loop_assign:
                with hook.enable() as cleaning:
                    save(model, decoding, prefix, format)
                (_, report), = cleaning.reports
            else:
                save(model, decoding, prefix, format)
        config.save_pretrained(str(staging))
        _generation_config(decoding, config).save_pretrained(str(staging))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        metadata = {
            "format": format,
            "loop": loop,
            "cache": cache,
            "decoding": asdict(decoding),
            "inputs": PADDLENLP_INPUTS if loop == "paddlenlp" else [spec.name for spec in generation_inputs()],
            "remove_loop_assign": "load" if format == "legacy" and remove_loop_assign else remove_loop_assign,
            "report": None if report is None else report.record(),
            "versions": library_versions(),
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return ExportResult(Path(output_dir), format, report, time.perf_counter() - start)


def default_cache(model, loop: str) -> str:
    """The KV cache ``export_generation_model`` gives ``loop`` when none is asked for:
    "static" (faster at every context in ``scripts/benchmark.py``) for our loop when
    the model's attention is one it covers, else "concat"."""
    static = loop == "generation_loop" and supports_static_cache(model)
    return "static" if static else "concat"


def _is_bfloat16(model) -> bool:
    return model.config.dtype == "bfloat16"


def _check_bfloat16_export(model, format: str) -> None:
    """What a bfloat16 model cannot be exported as on Paddle 3.3.1 (CPU wheel), found
    by trying: a legacy bfloat16 program is saved but cannot be lowered to kernels when
    it is loaded."""
    if _is_bfloat16(model) and format != "pir":
        raise ExportError("a bfloat16 model exports in the pir format only (Paddle cannot lower a legacy "
                          "bfloat16 program to CPU kernels)")


def _weights_as_exported(model):
    """A bfloat16 model's weight matrices stored [out, in] while it is traced: a bfloat16
    product reads them twice as fast so (``transposed_weights``)."""
    from .transposed_weights import transposed_weights

    return transposed_weights(model) if _is_bfloat16(model) else contextlib.nullcontext()


def _save_generation_loop(model, decoding: DecodingConfig, prefix: str, format: str, cache: str) -> None:
    with _weights_as_exported(model):
        (export_legacy if format == "legacy" else export_pir)(GenerationLoop(model, decoding, cache=cache), prefix)


def _save_paddlenlp_loop(model, decoding: DecodingConfig, prefix: str, format: str) -> None:
    from .compat import TopPSamplingUnavailable, paddlenlp_export_patches
    from .paddle_modes import dygraph_mode

    guard = paddle.pir_utils.OldIrGuard if format == "legacy" else paddle.pir_utils.IrGuard
    # llm/export_model.py's config; top-k sampling, as top-p cannot be exported on CPU.
    settings = {"dtype": model.config.dtype or "float32", "export_precache": False,
                "use_top_p": decoding.top_p < 1.0}
    try:
        with guard(), paddlenlp_export_patches(), dygraph_mode(), _weights_as_exported(model):
            model.to_static(prefix, settings)
    except TopPSamplingUnavailable as error:
        raise ExportError(str(error)) from None


def _generation_config(decoding: DecodingConfig, config):
    from paddlenlp.generation import GenerationConfig

    return GenerationConfig(decode_strategy=decoding.decode_strategy, top_k=decoding.top_k, top_p=decoding.top_p,
                            temperature=decoding.temperature, eos_token_id=decoding.eos_token_id,
                            pad_token_id=decoding.pad_token_id, bos_token_id=config.bos_token_id)


def library_versions() -> dict:
    """What wrote a model directory: recorded in its ``paddlenlp_ext.json``."""
    import paddlenlp

    from . import __version__

    return {"paddle": paddle.__version__, "paddlenlp": paddlenlp.__version__, "paddlenlp_ext": __version__}
