"""Small llama2-shaped models that need no download: PaddleNLP's ``LlamaForCausalLM``
with weights drawn from a fixed seed, and a ``LlamaTokenizer`` whose sentencepiece
model ships in ``data/``.

    model, tokenizer = load_model()            # the default, "llama2"
    model, tokenizer = load_model("llama2-gqa")
    model, tokenizer = load_model("path/to/a/save_pretrained/dir")

A known model is written once, in PaddleNLP's ``save_pretrained`` layout, to
``<cache>/<name>``, where ``<cache>`` is ``cache_dir``, else ``$PADDLENLP_EXT_HOME``,
else ``~/.cache/paddlenlp_ext``; later calls load it from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from .errors import error_line
from .files import HOME_VARIABLE, cache_home  # noqa: F401 (HOME_VARIABLE: a name of this module too)

# Paddle and PaddleNLP are imported where a model is built or loaded: checking a name or a
# directory (check_model_source) must stay fast, before any of them is imported.

# Trained from data/tokenizer_corpus.txt by scripts/build_tokenizer.py.
TOKENIZER_MODEL = Path(__file__).resolve().parent / "data" / "llama2_tokenizer.model"
DEFAULT_MODEL = "llama2"
# Written last into a known model's directory: what it was built from. A directory
# whose record differs (built by another version of this package) is rebuilt.
BUILD_RECORD = "paddlenlp_ext_model.json"

# PaddleNLP's names (paddlenlp.utils.env) for the weights save_pretrained writes,
# whole or sharded.
WEIGHTS_FILES = ("model_state.pdparams", "model_state.pdparams.index.json", "model.safetensors",
                 "model.safetensors.index.json")


class ModelError(Exception):
    """A model name or directory that cannot be loaded; the message is one line."""


@dataclass(frozen=True)
class KnownModel:
    description: str
    config: Mapping[str, object]  # LlamaConfig arguments
    seed: int  # of the numpy RandomState that draws the weights


_LLAMA2_CONFIG = {
    "vocab_size": 2000,  # the shipped tokenizer's pieces
    "hidden_size": 64,
    "intermediate_size": 176,  # llama's 8/3 * hidden, rounded up to a multiple of 16
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "dtype": "float32",
}

KNOWN_MODELS: Mapping[str, KnownModel] = MappingProxyType({
    "llama2": KnownModel("llama2 shape: 2 layers, hidden 64, 4 heads, RMSNorm, rotary, SwiGLU",
                         MappingProxyType(_LLAMA2_CONFIG), seed=0),
    "llama2-gqa": KnownModel("llama2 shape with grouped-query attention: 3 layers, 4 heads, 2 key/value heads",
                             MappingProxyType({**_LLAMA2_CONFIG, "num_hidden_layers": 3,
                                               "num_key_value_heads": 2}), seed=1),
})


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, cache_dir: str | os.PathLike | None = None,
               dtype: str | None = "float32"):
    """Return ``(model, tokenizer)`` for a known model name or a ``save_pretrained`` directory.

    The weights are cast to ``dtype`` as they load (None: the checkpoint's dtype), as
    PaddleNLP's ``--dtype`` does (``dtypes.load_dtype``): a float16 checkpoint loads in
    float32, the dtype Paddle computes in on CPU.

    The model is in eval mode; use it (``model.generate``, its parameters) in dynamic
    mode, though loading works in static mode too. ``cache_dir`` is for known names.
    A known name wins over a directory of the same name: pass ``./llama2`` for that.
    """
    from .quiet import library_quiet

    with library_quiet(paddlenlp=True):
        if isinstance(name_or_path, str) and name_or_path in KNOWN_MODELS:
            directory = _cached_model(name_or_path, cache_home(cache_dir))
            hint = " (delete the directory to rebuild it)"
        else:
            directory = _checkpoint_directory(name_or_path)
            hint = ""
        return _load_pretrained(directory, hint, dtype)


def check_model_source(name_or_path: str | os.PathLike) -> None:
    """Raise ModelError unless ``load_model`` can start on ``name_or_path``: a known
    name, or a directory with a checkpoint's files. Imports neither Paddle nor PaddleNLP."""
    if not (isinstance(name_or_path, str) and name_or_path in KNOWN_MODELS):
        _checkpoint_directory(name_or_path)


def _checkpoint_directory(name_or_path) -> Path:
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and not _looks_like_path(text):
        raise ModelError(f"unknown model {text!r}: known models are {', '.join(KNOWN_MODELS)}, "
                         "or give a save_pretrained directory")
    directory = Path(text).expanduser()
    if not directory.exists():
        raise ModelError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise ModelError(f"{directory}: not a directory (expected a save_pretrained model directory)")
    if not (directory / "config.json").is_file():
        raise ModelError(f"{directory}: no config.json (expected a save_pretrained model directory)")
    if not any((directory / name).is_file() for name in WEIGHTS_FILES):
        raise ModelError(f"{directory}: no model weights ({' or '.join(WEIGHTS_FILES)})")
    if not (directory / "tokenizer_config.json").is_file():
        raise ModelError(f"{directory}: no tokenizer (tokenizer_config.json); save the tokenizer with "
                         "tokenizer.save_pretrained there too")
    return directory


def _looks_like_path(text: str) -> bool:
    separators = tuple(s for s in (os.sep, os.altsep) if s)
    return text.startswith((".", "~")) or any(s in text for s in separators) or os.path.exists(text)


def build_record(name: str) -> dict:
    """What the embedded model ``name`` is built from (its config, seed and tokenizer):
    a build is reused while its record is this, and an export while it was made from it."""
    known = KNOWN_MODELS[name]
    tokenizer_sha256 = hashlib.sha256(TOKENIZER_MODEL.read_bytes()).hexdigest()
    return {"name": name, "config": dict(known.config), "seed": known.seed, "tokenizer_sha256": tokenizer_sha256}


def _read_build_record(directory: Path) -> dict | None:
    try:
        return json.loads((directory / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _cached_model(name: str, home: Path) -> Path:
    """The directory of a known model, written on first use.

    It is written to a scratch directory beside it and renamed into place, so a
    directory under its final name is always complete, even if a process dies while
    writing or two processes write at once.
    """
    directory = home / name
    record = build_record(name)
    if _read_build_record(directory) == record:
        return directory
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=home) as scratch:
            staging = Path(scratch) / name
            _write_known_model(name, staging, record)
            if directory.exists() and _read_build_record(directory) != record:  # from another definition
                os.rename(directory, Path(scratch) / "outdated")
            try:
                os.rename(staging, directory)
            except OSError:  # the directory is there: fine if another process put the same model first
                if _read_build_record(directory) != record:
                    raise
    except OSError as error:
        raise ModelError(f"cannot write {directory}: {error.strerror or error}") from None
    return directory


def _write_known_model(name: str, directory: Path, record: dict) -> None:
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from .paddle_modes import dygraph_mode

    known = KNOWN_MODELS[name]
    with dygraph_mode():
        with _generator_kept():
            model = LlamaForCausalLM(LlamaConfig(**known.config))
        _draw_weights(model, known.seed)
        model.save_pretrained(str(directory))
    # pad is unk (id 0), as in llama2 checkpoints, so that batches can be padded.
    tokenizer = LlamaTokenizer(vocab_file=str(TOKENIZER_MODEL), pad_token="<unk>")
    tokenizer.save_pretrained(str(directory))
    (directory / BUILD_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _draw_weights(model, seed: int) -> None:
    """Set every parameter from numpy's legacy ``RandomState(seed)``.

    numpy keeps that stream fixed across versions and platforms; Paddle's generator
    differs between CPU and GPU. The distribution is PaddleNLP's llama init: normal
    with ``initializer_range``, scaled by 1/sqrt(2 * layers) for the projections that
    write into the residual stream (o_proj, down_proj), and RMSNorm gains of one.
    """
    config = model.config
    rng = np.random.RandomState(seed)
    residual_scale = 1 / math.sqrt(2 * config.num_hidden_layers)
    for name, parameter in model.named_parameters():
        if name.endswith("norm.weight"):
            values = np.ones(parameter.shape)
        else:
            std = config.initializer_range
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                std *= residual_scale
            values = rng.normal(0.0, std, parameter.shape)
        parameter.set_value(values.astype("float32"))


def _load_pretrained(directory: Path, hint: str, dtype: str | None):
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    from .paddle_modes import dygraph_mode

    with _loading("model", directory, hint), dygraph_mode(), _generator_kept():
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
        model.eval()
    with _loading("tokenizer", directory, hint):
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return model, tokenizer


@contextlib.contextmanager
def _generator_kept():
    """Restore Paddle's global random generator on exit.

    PaddleNLP initialises a model's weights from it before they are replaced (by the
    checkpoint's, or by ``_draw_weights``); the caller's random stream should not
    depend on whether a model was loaded.
    """
    import paddle

    state = paddle.get_rng_state()
    try:
        yield
    finally:
        paddle.set_rng_state(state)


@contextlib.contextmanager
def _loading(what: str, directory: Path, hint: str):
    try:
        yield
    except Exception as error:  # Paddle, PaddleNLP and sentencepiece raise many types for unreadable files
        raise ModelError(f"cannot load the {what} in {directory}: {error_line(error)}{hint}") from None
