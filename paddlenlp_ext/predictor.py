"""A drop-in for PaddleNLP's ``llm/predictor.py``, with the loop cleanup built in.

The names are PaddleNLP's (``PredictorArgument``, ``ModelArgument``,
``DygraphPredictor``, ``StaticGraphPredictor``, ``create_predictor``,
``predictor.predict(texts)``) and so are the flags, the prompt file (JSONL with
``src`` and optional ``tgt``) and the output file (JSONL ``{"src", "tgt", "output"}``).
Added: ``--model NAME`` (an embedded model, ``llama2`` by default), ``--remove_loop_assign``,
``--export_format``, ``--cache`` and ``--seed``.

    python llm/predictor.py --model llama2 --remove_loop_assign

Static mode runs on Paddle Inference. A static model directory is used as it is; a
dygraph checkpoint (or an embedded model) is first exported, in ``--export_format``,
to a temporary directory. The default is ``legacy``: the format PaddleNLP 2.8 models
are exported in, and the one whose translated loop carries the copies the pass removes
(a PIR export has none); ``pir`` for ``--dtype bfloat16``, the only format a bfloat16
model exports in (``export.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import numbers
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from .errors import error_line
from .files import LEGACY_FILE, PIR_FILE, cache_home, write_atomically
from .host_memory import return_free_memory
from .cli_flags import OneLineParser, add_paddlenlp_only_flags, boolean_flag, refused_flag
from .dtypes import DTYPES
from .options import CACHES, DECODE_STRATEGIES, DEVICES, EXPORT_FORMATS, MODES
from .quiet import library_quiet, quiet_paddle, quiet_paddlenlp, verbose

DEFAULT_PROMPTS = ["hello world, how are you?", "What is the capital of France?"]


class PredictorError(ValueError):
    """Bad input to the predictor: reported on one line, exit code 2."""


class UnloadableModelError(PredictorError):
    """A static model no runtime here can load."""


@dataclass
class PredictorArgument:
    model_name_or_path: str | None = None  # a save_pretrained checkpoint or a static model directory
    model: str | None = None  # an embedded model name (llama2 when neither is given)
    src_length: int = 512  # prompt tokens kept (the last ones); PaddleNLP's 1024 + 64 overflows llama2's 1024 positions
    max_length: int = 64  # new tokens to generate
    # The decoding settings. None: the value a static model fixes, if it fixes one, else
    # PaddleNLP 2.8's default (decoding_settings.DEFAULTS: top_k 0, top_p 0.7,
    # temperature 0.95, repetition_penalty 1.0: it samples; seed 42). A value a model
    # cannot honour is an error.
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    decode_strategy: str = "sampling"
    mode: str | None = None  # dynamic | static; static when remove_loop_assign is True
    dtype: str | None = None
    device: str = "cpu"
    batch_size: int = 1
    benchmark: bool = False
    # The loop cleanup. None: on in static mode (validate resolves it); True also
    # chooses static mode; False runs the program as PaddleNLP's predictor would.
    remove_loop_assign: bool | None = None
    export_format: str | None = None  # None: legacy; pir for bfloat16 and for gpt/chatglm_v2 (_export_format)
    cache: str | None = None  # the exported GenerationLoop's KV cache; None: export_generation_model's choice
    seed: int | None = None  # of the sampling; see top_k


@dataclass
class ModelArgument:
    data_file: str | None = None
    output_file: str = "output.json"


def batchfy_text(texts: list, batch_size: int) -> list:
    return [texts[start:start + batch_size] for start in range(0, len(texts), batch_size)]


class BasePredictor:
    def __init__(self, config: PredictorArgument, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        tokenizer.padding_side = "left"
        # A long prompt keeps its last src_length tokens. An attribute: PaddleNLP 2.8.1's
        # tokenizer call ignores a truncation_side keyword and keeps the first ones.
        tokenizer.truncation_side = "left"

    def _preprocess(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.tokenizer(texts, max_length=self.config.src_length, truncation=True, padding=True,
                                 return_attention_mask=True, return_tensors="np")
        return encoded["input_ids"].astype("int64"), encoded["attention_mask"].astype("int64")

    def generate_ids(self, texts: list[str], max_new_tokens: int | None = None) -> np.ndarray:
        """The new token ids, int64 [B, n], n <= ``max_new_tokens`` (default: the
        config's ``max_length``); rows that stopped early end in padding."""
        return self._infer(*self._preprocess(texts), max_new_tokens or self.config.max_length)

    def _infer(self, input_ids, attention_mask, max_new_tokens: int) -> np.ndarray:
        raise NotImplementedError

    def _postprocess(self, ids: np.ndarray) -> list[str]:
        # A model whose vocabulary is larger than its tokenizer's (padded for speed, or a
        # mismatched tokenizer) can generate an id the tokenizer has no piece for;
        # sentencepiece raises IndexError (OUT_OF_RANGE) for it.
        pieces = len(self.tokenizer)
        unknown = ids[(ids >= pieces) | (ids < 0)]
        if unknown.size:
            raise PredictorError(f"the model generated token id {int(unknown[0])}, which its tokenizer (ids 0 to "
                                 f"{pieces - 1}) cannot decode: the tokenizer beside the model does not match it")
        return self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)

    def predict(self, texts: str | list[str]) -> list[str]:
        """The outputs for a prompt or a list of prompts, ``batch_size`` at a time."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(text, str) for text in texts):
            raise PredictorError("predict() takes a prompt or a non-empty list of prompts (str)")
        return [output for batch in batchfy_text(texts, self.config.batch_size)
                for output in self._postprocess(self.generate_ids(batch))]


class DygraphPredictor(BasePredictor):
    """PaddleNLP's dynamic ``generate`` (its own sampler: ``--seed`` seeds Paddle)."""

    def __init__(self, config: PredictorArgument, model, tokenizer):
        super().__init__(config, tokenizer)
        self.model = model

    def _infer(self, input_ids, attention_mask, max_new_tokens):
        import paddle

        from .compat_architectures import dynamic_patches
        from .paddle_modes import dygraph_mode

        config = self.config
        settings = decoding_settings(config)
        with dygraph_mode(), paddle.no_grad(), dynamic_patches(self.model):
            paddle.seed(settings["seed"])
            mask = paddle.to_tensor(attention_mask)
            # Positions count real tokens only, as GenerationLoop does for left padding.
            positions = paddle.clip(paddle.cumsum(mask, axis=1) - 1, min=0)
            ids, _ = self.model.generate(
                paddle.to_tensor(input_ids), attention_mask=mask, position_ids=positions,
                max_new_tokens=max_new_tokens, decode_strategy=config.decode_strategy,
                top_k=settings["top_k"], top_p=settings["top_p"], temperature=settings["temperature"],
                repetition_penalty=settings["repetition_penalty"],
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        return ids.numpy()


class StaticGraphPredictor(BasePredictor):
    """A static model directory on Paddle Inference (``inference.StaticGenerationModel``).

    It feeds the model by its own input names, as PaddleNLP 2.8's static predictor
    does: any of ``GENERATION_INPUTS`` (``model_inputs``), so a PaddleNLP
    ``to_static`` export (``input_ids``, ``attention_mask``, ``position_ids``,
    ``max_new_tokens``, ``top_k`` or ``top_p`` + ``temperature``) runs as well as
    this project's (every decoding setting, ``repetition_penalty`` and ``seed`` too).
    A setting asked for that the model takes no input for, and does not already use,
    is an error (``decoding_settings.resolve_settings``).
    """

    def __init__(self, config: PredictorArgument, static_dir, tokenizer):
        super().__init__(config, tokenizer)
        from .inference import NoSafeRuntimeError, StaticGenerationModel

        try:
            self.static_model = StaticGenerationModel(static_dir, remove_loop_assign=config.remove_loop_assign,
                                                      device=config.device, batch_size=config.batch_size)
        except NoSafeRuntimeError as error:  # one line says what was tried
            raise UnloadableModelError(str(error)) from None
        if "input_ids" not in self.static_model.input_names or self.static_model.has_loop is False:
            raise PredictorError(f"{static_dir}: not a generation model (it needs input_ids and a decoding loop; "
                                 f"it takes {', '.join(self.static_model.input_names)}"
                                 f"{'' if self.static_model.has_loop else ' and has no loop'})")
        unknown = [name for name in self.static_model.input_names if name not in GENERATION_INPUTS]
        if unknown:
            raise PredictorError(f"{static_dir}: the model takes input {unknown[0]!r}, which this predictor does "
                                 f"not know (it feeds {', '.join(GENERATION_INPUTS)})")
        self.settings = decoding_settings(config, self.static_model.input_names)
        if "position_ids" in self.static_model.input_names and config.top_k == 0:
            # PaddleNLP's loop (sample_d2s) clips top_k to at least 1, so 0 would be greedy
            # there; --top_k 0 asks for top-k over the whole vocabulary ("off"), as 0 is
            # everywhere else. Unset, top_k is fed as PaddleNLP's predictor feeds its
            # default (0): that loop then decodes greedily, as it does under PaddleNLP.
            self.settings["top_k"] = _vocab_size(Path(static_dir))

    def _infer(self, input_ids, attention_mask, max_new_tokens):
        from .inference import NoSafeRuntimeError

        inputs = model_inputs(input_ids, attention_mask, max_new_tokens, self.settings)
        try:
            return self.static_model.run({name: inputs[name] for name in self.static_model.input_names})
        except NoSafeRuntimeError as error:
            raise PredictorError(str(error)) from None


# What PaddleNLP 2.8's static predictor feeds a generation model, by name
# (llm/predictor.py, StaticGraphPredictor._preprocess: the tokenizer's outputs, then
# the decoding settings), and this project's ``seed``.
GENERATION_INPUTS = ("input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_k", "top_p",
                     "temperature", "repetition_penalty", "seed")


def _pass_line(static_model) -> str:
    if static_model.fallback_reason is not None:
        return f"not applied: {static_model.runtime} runs the model (see the warning above)"
    if static_model.report is not None:
        return static_model.report.summary()
    return f"off by --remove_loop_assign false ({static_model.copies_before} copies in the loop)"


def decoding_settings(config: PredictorArgument, input_names=GENERATION_INPUTS) -> dict:
    """The value of each decoding setting (``SETTING_INPUTS``) for a model taking
    ``input_names``; greedy search is top_k 1. PredictorError for one it cannot honour."""
    from .decoding_settings import SETTING_INPUTS, fixed_settings, resolve_settings

    requested = {name: getattr(config, name) for name in SETTING_INPUTS}
    try:
        return resolve_settings(requested, config.decode_strategy == "greedy_search", fixed_settings(input_names))
    except ValueError as error:
        raise PredictorError(str(error)) from None


def model_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int, settings: dict) -> dict:
    """Every input of ``GENERATION_INPUTS`` for a left-padded batch and the
    ``decoding_settings``, with PaddleNLP's dtypes: int64 ``[B, S]`` token arrays,
    ``[1]`` settings (its export's InputSpec).

    Position ids count real tokens from 0 and are 0 on the padding, as PaddleNLP's
    tokenizer pads them on the left.
    """
    from .decoding_settings import settings_feed

    positions = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None).astype("int64")
    return {
        "input_ids": input_ids.astype("int64"),
        "attention_mask": attention_mask.astype("int64"),
        "position_ids": positions,
        "max_new_tokens": np.array([max_new_tokens], dtype="int64"),
        **settings_feed(**settings),
    }


def _is_static_dir(path: Path) -> bool:
    return (path / PIR_FILE).is_file() or (path / LEGACY_FILE).is_file()


def create_predictor(predictor_args: PredictorArgument, model_args: ModelArgument | None = None, *,
                     progress=None) -> BasePredictor:
    """The predictor ``predictor_args`` describe; raises PredictorError (a ValueError)
    for bad input, checked first (``validate``).

    In static mode a dygraph model (an embedded one or a checkpoint) is exported once
    and kept (``export_cache``); later calls load the kept directory. ``progress(line)``
    is called before each long step. ``model_args`` is accepted for PaddleNLP's
    signature; prompts and outputs are ``predict``'s business here.
    """
    from .models import DEFAULT_MODEL

    config = validate(predictor_args)
    say = progress or (lambda line: None)
    source = config.model_name_or_path
    if source is not None and _is_static_dir(Path(source)):
        say(f"loading {source} on Paddle Inference")
        return _static_predictor(config, Path(source))
    source = source if source is not None else (config.model or DEFAULT_MODEL)
    if config.mode == "dynamic":
        say(f"loading {source}")
        model, tokenizer = _load(source, config.dtype)
        return DygraphPredictor(config, model, tokenizer)
    directory, exported = _cached_export(config, source, say)
    try:
        return _static_predictor(config, directory)
    except UnloadableModelError:
        if exported:  # never served again: a later run would fail the same way without exporting anew
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _load(source: str, dtype: str | None):
    from .models import ModelError, load_model

    try:
        return load_model(source, dtype=dtype)
    except ModelError as error:
        raise PredictorError(str(error)) from None


def _static_predictor(config: PredictorArgument, directory: Path) -> StaticGraphPredictor:
    from .program_files import ModelDirectoryError

    try:
        return StaticGraphPredictor(config, directory, _static_tokenizer(directory))
    except ModelDirectoryError as error:
        raise UnloadableModelError(str(error)) from None


def _cached_export(config: PredictorArgument, source: str, say) -> tuple[Path, bool]:
    """The static directory of ``source``'s export for ``config``, exported first if no
    earlier run kept one, and whether this call exported it."""
    from .export_cache import cached_export_directory

    directory = cached_export_directory(source, cache_home(), format=config.export_format, cache=config.cache,
                                        remove_loop_assign=config.remove_loop_assign, dtype=config.dtype)
    if directory.is_dir():
        say(f"loading {directory} on Paddle Inference (kept from an earlier export)")
        return directory, False
    say(f"exporting {source} ({config.export_format}) to {directory}, once")
    model, tokenizer = _load(source, config.dtype)
    from .decoding import DecodingConfig
    from .export import DirectoryExistsError, ExportError, export_generation_model
    from .paddle_modes import dygraph_mode

    # The decoding settings are inputs: the ones recorded are the model's defaults.
    decoding = DecodingConfig(eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id or 0)
    try:
        with dygraph_mode():
            export_generation_model(model, directory, tokenizer=tokenizer, decoding=decoding,
                                    format=config.export_format, remove_loop_assign=config.remove_loop_assign,
                                    cache=config.cache)
    except DirectoryExistsError:  # another process exported the same model meanwhile: its directory is as good
        say(f"loading {directory} on Paddle Inference")
        return directory, False
    except ExportError as error:
        raise PredictorError(str(error)) from None
    except (TypeError, ValueError, AttributeError, NotImplementedError) as error:
        # dy2static failing on a model's Python (an architecture's forward Paddle cannot
        # trace): one line, the traceback under PADDLENLP_EXT_VERBOSE=1
        if verbose():
            raise
        last = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise PredictorError(f"{source}: the static export failed ({type(error).__name__}: {last}); run it with "
                             "--mode dynamic (PADDLENLP_EXT_VERBOSE=1 shows the traceback)") from None
    finally:
        # The dygraph model goes before the predictor loads the weights again: a whole
        # bfloat16 llama2-7B is 12.6 GiB, twice that does not fit 24 GiB. A traced
        # program and PaddleNLP's layers hold it through reference cycles.
        del model
        gc.collect()
        return_free_memory()
    say(f"loading {directory} on Paddle Inference")
    return directory, True


def _static_tokenizer(directory: Path):
    from paddlenlp.transformers import AutoTokenizer

    try:
        with library_quiet(paddlenlp=True):
            return AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:  # PaddleNLP and sentencepiece raise many types for bad files
        raise PredictorError(f"{directory}: cannot load the tokenizer: {error_line(error)}") from None


# The architectures (config.json's model_type) a checkpoint exports for static mode, in
# either format (measured on tiny models, Paddle 3.3.1, PaddleNLP 2.8.1: the tokens of
# PaddleNLP's generate; GPT, QWen, Mixtral and Bloom with compat_architectures' patches).
STATIC_ARCHITECTURES = ("llama", "gpt", "chatglm_v2", "qwen", "mixtral", "bloom")


def _export_format(config: PredictorArgument, mode: str, dtype: str | None) -> str:
    """The format a dygraph model is exported in for static mode: ``--export_format``,
    else legacy (PaddleNLP 2.8's), pir for bfloat16. PredictorError for an architecture
    static mode cannot export."""
    source = config.model_name_or_path
    if mode == "static" and source is not None and not _is_static_dir(Path(source)):
        model_type = _model_config(Path(source)).get("model_type")
        if model_type is not None and model_type not in STATIC_ARCHITECTURES:
            raise PredictorError(f"{source}: static mode cannot export a {model_type} model (it exports "
                                 f"{', '.join(STATIC_ARCHITECTURES)}); run it with --mode dynamic")
    return config.export_format or ("pir" if dtype == "bfloat16" else "legacy")


def _model_config(directory: Path) -> dict:
    """The directory's ``config.json``, or {} when it has none that parses."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _max_positions(config: PredictorArgument) -> int | None:
    """The model's position limit, from its files (no model is loaded)."""
    from .models import DEFAULT_MODEL, KNOWN_MODELS

    if config.model_name_or_path is not None:
        return _model_config(Path(config.model_name_or_path)).get("max_position_embeddings")
    return KNOWN_MODELS[config.model or DEFAULT_MODEL].config.get("max_position_embeddings")


def _vocab_size(directory: Path) -> int:
    vocab_size = _model_config(directory).get("vocab_size")
    if not isinstance(vocab_size, int):
        raise PredictorError(f"--top_k 0 (off): {directory} has no config.json with the vocab_size it needs")
    return vocab_size


def _check_static_context(config: PredictorArgument) -> None:
    """A QWen export (of a checkpoint, or a directory of one) computes with dynamic NTK's
    alpha at 1 and a rotary cache of seq_length positions (compat_architectures): as
    PaddleNLP does up to seq_length tokens, and not beyond."""
    if config.model_name_or_path is None:
        return
    model_config = _model_config(Path(config.model_name_or_path))
    limit = model_config.get("seq_length") if model_config.get("model_type") == "qwen" else None
    if isinstance(limit, int) and config.src_length + config.max_length > limit:
        raise PredictorError(f"--src_length + --max_length = {config.src_length + config.max_length}: a static "
                             f"qwen export computes contexts of up to {limit} tokens as PaddleNLP does (its "
                             "seq_length); lower them or run with --mode dynamic")


def _check_lengths(config: PredictorArgument, max_positions: int | None) -> None:
    if max_positions is not None and config.src_length + config.max_length > max_positions:
        raise PredictorError(f"--src_length + --max_length = {config.src_length + config.max_length} exceeds the "
                             f"model's max_position_embeddings ({max_positions})")


# -- command line ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="predictor.py", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model_name_or_path", help="a PaddleNLP save_pretrained checkpoint or a static model directory")
    add("--model", help="an embedded model: llama2 (the default) or llama2-gqa")
    add("--src_length", type=int, default=512, help="prompt tokens kept, the last ones (default 512)")
    add("--max_length", type=int, default=64, help="new tokens to generate (default 64)")
    unset = "; unset: what a static model fixes, else "
    add("--top_k", type=int, help=f"sample from the k most likely tokens (0: off, 1: greedy){unset}0")
    add("--top_p", type=float, help=f"sample from the smallest set of this mass (1.0: off){unset}0.7")
    add("--temperature", type=float, help=f"divides the logits before sampling{unset}0.95")
    add("--repetition_penalty", type=float, help=f"PaddleNLP's repetition penalty (1.0: off){unset}1.0")
    add("--decode_strategy", choices=DECODE_STRATEGIES, default="sampling",
        help="greedy_search is top_k 1 (default sampling)")
    add("--mode", choices=MODES,
        help="default dynamic; static for a static model directory or with --remove_loop_assign")
    add("--dtype", help=f"{', '.join(DTYPES)}: the dtype the weights load in (from_pretrained's dtype); on CPU "
        "float32, also the default there (a float16 checkpoint is cast); unset on GPU: the checkpoint's")
    add("--device", choices=DEVICES, default="cpu")
    add("--batch_size", type=int, default=1)
    add("--data_file", help="JSONL prompts: {\"src\": ..., \"tgt\": ...} per line")
    add("--output_file", default="output.json", help="JSONL results (default output.json)")
    add("--benchmark", type=boolean_flag, nargs="?", const=True, default=False,
        help="time generation: prefill and per-token cost, tokens/s")
    add("--remove_loop_assign", type=boolean_flag, nargs="?", const=True, default=None,
        help="remove the loop copies: on by default in static mode; given alone it chooses --mode static; "
             "false runs the static program as PaddleNLP's predictor does")
    add("--export_format", choices=EXPORT_FORMATS,
        help="format of the static model exported from a dygraph checkpoint (default legacy; pir for bfloat16, "
             "the only one a bfloat16 model exports in)")
    add("--cache", default=None,
        help="KV cache of the loop exported from a dygraph checkpoint: static (preallocated, written in place; "
             "the default where the model's attention allows it) or concat (PaddleNLP's, grown every step)")
    add("--seed", type=int, help=f"sampling seed{unset}42")
    add_paddlenlp_only_flags(parser)
    return parser


def parse_arguments(argv=None) -> tuple[PredictorArgument, ModelArgument]:
    parsed = build_parser().parse_args(argv)
    refused = refused_flag(parsed)
    if refused is not None:
        raise PredictorError(refused)
    namespace = vars(parsed)
    predictor_args = PredictorArgument(**{f.name: namespace[f.name] for f in fields(PredictorArgument)})
    model_args = ModelArgument(**{f.name: namespace[f.name] for f in fields(ModelArgument)})
    return validate(predictor_args, model_args), model_args




def validate(config: PredictorArgument, model_args: ModelArgument | None = None) -> PredictorArgument:
    """Check the arguments, the same way for the command line and ``create_predictor``,
    before Paddle is imported or a model is loaded: a copy with the mode and the cleanup resolved.

    The mode left unset is static for a static model directory or with
    ``remove_loop_assign`` True, else dynamic; ``remove_loop_assign`` left unset is on
    in static mode: the command a PaddleNLP user already types gets the cleanup (it
    keeps any copy it cannot prove redundant, and the tokens are the same).
    PredictorError (a ValueError), one line, for
    anything wrong; ``model_args``' data file is read and its output file's directory
    checked too.
    """
    for name in ("src_length", "max_length", "batch_size"):
        value = getattr(config, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise PredictorError(f"--{name} must be a positive integer, got {value!r}")
    for name, choices in (("decode_strategy", DECODE_STRATEGIES), ("mode", (None, *MODES)),
                          ("export_format", (None, *EXPORT_FORMATS)), ("device", DEVICES), ("cache", (None, *CACHES))):
        if getattr(config, name) not in choices:
            raise PredictorError(f"--{name} must be one of {', '.join(c for c in choices if c)}, "
                                 f"got {getattr(config, name)!r}")
    _check_settings(config)
    if config.device == "gpu" and not _paddle_gpu_installed():
        raise PredictorError("--device gpu needs paddlepaddle-gpu (see the README's GPU section)")
    if config.model is not None and config.model_name_or_path is not None:
        raise PredictorError("give --model or --model_name_or_path, not both")
    mode = _check_source(config)
    dtype = _load_dtype(config, mode)
    _check_lengths(config, _max_positions(config))
    if mode == "static":
        _check_static_context(config)
    if config.remove_loop_assign is True and mode == "dynamic":
        raise PredictorError("--remove_loop_assign rewrites the static graph; it cannot be used with --mode dynamic")
    if config.cache is not None and mode == "dynamic":
        raise PredictorError(f"--cache {config.cache} is the static loop's: use --mode static (--mode dynamic runs "
                             "PaddleNLP's generate)")
    if model_args is not None:
        read_prompts(model_args.data_file)
        check_writable(model_args.output_file)
    export_format = _export_format(config, mode, dtype)
    remove_loop_assign = mode == "static" if config.remove_loop_assign is None else config.remove_loop_assign
    return replace(config, mode=mode, dtype=dtype, export_format=export_format, remove_loop_assign=remove_loop_assign)


def _check_exported_dtype(config: PredictorArgument, directory: Path) -> None:
    from .dtypes import DtypeError, check_exported_dtype

    try:
        check_exported_dtype(_model_config(directory).get("dtype"), config.dtype, config.device, str(directory))
    except DtypeError as error:
        raise PredictorError(str(error)) from None


def _load_dtype(config: PredictorArgument, mode: str) -> str | None:
    from .dtypes import DtypeError, load_dtype

    try:
        return load_dtype(config.dtype, config.device, static=mode == "static")
    except DtypeError as error:
        raise PredictorError(str(error)) from None


def _check_settings(config: PredictorArgument) -> None:
    from .decoding_settings import DEFAULTS, check_settings

    values = {name: DEFAULTS[name] if getattr(config, name) is None else getattr(config, name)
              for name in ("top_k", "top_p", "temperature", "repetition_penalty", "seed")}
    for name, value in values.items():
        kind, what = (numbers.Integral, "an integer") if name in ("top_k", "seed") else (numbers.Real, "a number")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise PredictorError(f"--{name} must be {what}, got {value!r}")
    try:
        check_settings(values["top_k"], values["top_p"], values["temperature"], values["repetition_penalty"])
    except ValueError as error:
        raise PredictorError(f"--{error}") from None


def _paddle_gpu_installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("paddlepaddle-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def _check_source(config: PredictorArgument) -> str:
    """The mode for the model ``config`` names, which must exist."""
    from .models import DEFAULT_MODEL, ModelError, check_model_source

    source = config.model_name_or_path
    if source is not None and _is_static_dir(Path(source)):
        if config.mode == "dynamic":
            raise PredictorError(f"{source} is a static model directory: run it with --mode static")
        if config.cache is not None:
            raise PredictorError(f"--cache {config.cache}: {source} is a static model directory, whose cache was "
                                 "chosen when it was exported")
        if not (Path(source) / "tokenizer_config.json").is_file():
            raise PredictorError(f"{source}: no tokenizer (tokenizer_config.json) beside the static model")
        _check_params(Path(source))
        _check_exported_dtype(config, Path(source))
        return "static"
    if source is not None and not Path(source).exists():
        hub_id = source.count("/") == 1 and not source.startswith(("/", ".", "~"))
        raise PredictorError(f"{source}: no such model directory" + (
            " (a model hub name? this predictor never downloads: give a local save_pretrained directory)"
            if hub_id else ""))
    if source is not None:
        _check_static_prefix(Path(source))
    try:
        check_model_source(source if source is not None else (config.model or DEFAULT_MODEL))
    except ModelError as error:
        raise PredictorError(str(error)) from None
    return config.mode or ("static" if config.remove_loop_assign else "dynamic")


def _check_static_prefix(directory: Path) -> None:
    """A static model saved under another prefix than ``model`` (``--model_prefix``)
    is named as such, not reported as a checkpoint without weights."""
    if not directory.is_dir():
        return
    others = sorted(path.name for path in directory.glob("*.pdmodel")) + sorted(
        path.name for path in directory.glob("*.json") if path.with_suffix(".pdiparams").is_file())
    if others:
        raise PredictorError(f"{directory}: a static model saved as {others[0]}; this predictor reads "
                             f"{PIR_FILE} or {LEGACY_FILE} (PaddleNLP's --model_prefix model): rename its files")


def _check_params(directory: Path) -> None:
    from .params_file import ParamsFileError, check_directory_params

    try:
        check_directory_params(directory)
    except ParamsFileError as error:
        raise PredictorError(str(error)) from None


def check_writable(path: str) -> None:
    """PredictorError unless a file can be written at ``path`` (its directory may not
    exist yet): found before any prompt is generated."""
    target = Path(path)
    if target.is_dir():
        raise PredictorError(f"cannot write {path}: it is a directory")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PredictorError(f"cannot write {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PredictorError(f"cannot write {path}: {parent} is not writable")


def read_prompts(data_file: str | None) -> tuple[list[str], list[str]]:
    """``(sources, targets)`` from a JSONL file, or the default prompts."""
    if data_file is None:
        return list(DEFAULT_PROMPTS), [""] * len(DEFAULT_PROMPTS)
    try:
        lines = Path(data_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise PredictorError(f"cannot read {data_file}: {reason}") from None
    sources, targets = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except ValueError as error:
            raise PredictorError(f"{data_file} line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(example, dict) or not isinstance(example.get("src"), str):
            raise PredictorError(f"{data_file} line {number}: expected an object with a string \"src\"")
        sources.append(example["src"])
        targets.append(str(example.get("tgt", "")))
    if not sources:
        raise PredictorError(f"{data_file}: no prompts")
    return sources, targets


def write_results(path: str, records: list[dict]) -> None:
    """Write the JSONL results; a file under ``path`` is always complete."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda partial: Path(partial).write_text(text, encoding="utf-8"))
    except OSError as error:
        raise PredictorError(f"cannot write {path}: {error.strerror or error}") from None


@dataclass(frozen=True)
class BenchmarkResult:
    """``--benchmark``'s timing of the prompts: medians and ranges over the repeats."""

    prompts: int
    batches: int
    repeats: int
    prefill_ms: tuple[float, float, float]  # (median, min, max): every batch's first token
    decode_ms_per_token: tuple[float, float, float]  # each later step of a batch
    tokens: int  # generated per repeat, each row up to its eos

    def line(self) -> str:
        def spread(values):
            median, low, high = values
            return f"{median:.1f} ms (min {low:.1f}, max {high:.1f})"

        per_second = 1000 / self.decode_ms_per_token[0] if self.decode_ms_per_token[0] > 0 else float("inf")
        return (f"benchmark: {self.prompts} prompts in {self.batches} batches, {self.repeats} repeats after a "
                f"warm-up: prefill {spread(self.prefill_ms)} per batch; decode {spread(self.decode_ms_per_token)} "
                f"per token ({per_second:.1f} tokens/s per batch); {self.tokens} tokens generated per repeat")


def benchmark(predictor: BasePredictor, sources: list[str], repeats: int = 3) -> BenchmarkResult:
    """Time the prefill and the decode of ``sources`` apart, in the predictor's batches.

    Each batch runs twice per repeat: with one new token (the prefill: the prompt and
    the first token) and with ``max_length`` (everything). A decode step costs the
    difference over the steps after the first. A warm-up pass runs first. Repeats are
    reported by their median, min and max: these machines are noisy.
    """
    batches = batchfy_text(sources, predictor.config.batch_size)
    eos = predictor.tokenizer.eos_token_id
    for batch in batches:  # warm-up
        predictor.generate_ids(batch, 1)
    prefill, decode, tokens = [], [], 0
    for _ in range(repeats):
        prefill_s = decode_s = 0.0
        steps = tokens = 0
        for batch in batches:
            start = time.perf_counter()
            predictor.generate_ids(batch, 1)
            first = time.perf_counter() - start
            start = time.perf_counter()
            ids = predictor.generate_ids(batch)
            whole = time.perf_counter() - start
            prefill_s += first
            decode_s += max(whole - first, 0.0)
            steps += ids.shape[1] - 1
            tokens += count_generated(ids, eos)
        prefill.append(1000 * prefill_s / len(batches))
        decode.append(1000 * decode_s / steps if steps else 0.0)

    def summary(values):
        return (statistics.median(values), min(values), max(values))

    return BenchmarkResult(len(sources), len(batches), repeats, summary(prefill), summary(decode), tokens)


def count_generated(ids: np.ndarray, eos_token_id: int | None) -> int:
    """Generated tokens: each row up to and including its eos, not the padding after."""
    total = 0
    for row in ids.tolist():
        length = len(row)
        if eos_token_id is not None and eos_token_id in row:
            length = row.index(eos_token_id) + 1
        total += length
    return total


def progress(line: str) -> None:
    """A line of progress, on stderr (stdout holds the outputs)."""
    print(line, file=sys.stderr, flush=True)


def predict(predictor_args: PredictorArgument, model_args: ModelArgument) -> None:
    from tqdm import tqdm

    sources, targets = read_prompts(model_args.data_file)
    progress(f"{len(sources)} prompts; starting Paddle")
    with quiet_paddle():
        quiet_paddlenlp()
        logging.getLogger("paddlenlp_ext").setLevel(logging.WARNING)  # the pass report is printed below
        predictor = create_predictor(predictor_args, model_args, progress=progress)
        if isinstance(predictor, StaticGraphPredictor):
            print(f"remove_loop_assign: {_pass_line(predictor.static_model)}", flush=True)
        records = []
        batches = list(zip(batchfy_text(sources, predictor_args.batch_size),
                           batchfy_text(targets, predictor_args.batch_size)))
        # The bar goes to stderr, on a terminal only (disable=None); tqdm.write puts each
        # output on its own lines above it.
        for batch_sources, batch_targets in tqdm(batches, disable=True if len(batches) <= 1 else None,
                                                 desc="batches"):
            for source, target, output in zip(batch_sources, batch_targets, predictor.predict(batch_sources)):
                tqdm.write("\n".join(["***********Source**********", source, "***********Target**********", target,
                                      "***********Output**********", output]))
                records.append({"src": source, "tgt": target, "output": output})
        write_results(model_args.output_file, records)
        if predictor_args.benchmark:
            progress("benchmarking")
            print(benchmark(predictor, sources).line())


def main(argv=None) -> int:
    from .interrupts import recording_interrupts

    try:
        with recording_interrupts():
            predictor_args, model_args = parse_arguments(argv)
            predict(predictor_args, model_args)
    except PredictorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # temporary directories and staged exports are gone; no output file is half-written
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
