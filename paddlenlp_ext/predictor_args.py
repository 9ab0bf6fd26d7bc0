"""The predictor's arguments: PaddleNLP's ``PredictorArgument`` and ``ModelArgument``,
the command line that fills them, and their checks against the model they name, made
before Paddle is imported or a model is loaded (``validate``): a mistake is one line,
a ``PredictorError``."""

from __future__ import annotations

import argparse
import json
import numbers
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .cli_flags import OneLineParser, add_paddlenlp_only_flags, boolean_flag, refused_flag
from .dtypes import DTYPES
from .files import LEGACY_FILE, PIR_FILE
from .options import CACHES, DECODE_STRATEGIES, DEVICES, EXPORT_FORMATS, MODES


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


def is_static_dir(path: Path) -> bool:
    return (path / PIR_FILE).is_file() or (path / LEGACY_FILE).is_file()


# The architectures (config.json's model_type) a checkpoint exports for static mode, in
# either format (measured on tiny models, Paddle 3.3.1, PaddleNLP 2.8.1: the tokens of
# PaddleNLP's generate; GPT, QWen, Mixtral and Bloom with compat.architectures' patches).
STATIC_ARCHITECTURES = ("llama", "gpt", "chatglm_v2", "qwen", "mixtral", "bloom")


def _export_format(config: PredictorArgument, mode: str, dtype: str | None) -> str:
    """The format a dygraph model is exported in for static mode: ``--export_format``,
    else legacy (PaddleNLP 2.8's), pir for bfloat16. PredictorError for an architecture
    static mode cannot export."""
    source = config.model_name_or_path
    if mode == "static" and source is not None and not is_static_dir(Path(source)):
        model_type = model_config(Path(source)).get("model_type")
        if model_type is not None and model_type not in STATIC_ARCHITECTURES:
            raise PredictorError(f"{source}: static mode cannot export a {model_type} model (it exports "
                                 f"{', '.join(STATIC_ARCHITECTURES)}); run it with --mode dynamic")
    return config.export_format or ("pir" if dtype == "bfloat16" else "legacy")


def model_config(directory: Path) -> dict:
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
        return model_config(Path(config.model_name_or_path)).get("max_position_embeddings")
    return KNOWN_MODELS[config.model or DEFAULT_MODEL].config.get("max_position_embeddings")


def _check_static_context(config: PredictorArgument) -> None:
    """A QWen export (of a checkpoint, or a directory of one) computes with dynamic NTK's
    alpha at 1 and a rotary cache of seq_length positions (compat.architectures): as
    PaddleNLP does up to seq_length tokens, and not beyond."""
    if config.model_name_or_path is None:
        return
    found = model_config(Path(config.model_name_or_path))
    limit = found.get("seq_length") if found.get("model_type") == "qwen" else None
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
        check_exported_dtype(model_config(directory).get("dtype"), config.dtype, config.device, str(directory))
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
    if source is not None and is_static_dir(Path(source)):
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
