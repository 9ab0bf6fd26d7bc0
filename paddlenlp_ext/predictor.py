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

import gc
import json
import logging
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import error_line
from .files import cache_home, write_atomically
from .host_memory import return_free_memory
from .predictor_args import (ModelArgument, PredictorArgument, PredictorError, UnloadableModelError, is_static_dir,
                             model_config, parse_arguments, read_prompts, validate)
from .quiet import library_quiet, quiet_paddle, quiet_paddlenlp, verbose


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

        from .compat.architectures import dynamic_patches
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
    if source is not None and is_static_dir(Path(source)):
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


def _vocab_size(directory: Path) -> int:
    vocab_size = model_config(directory).get("vocab_size")
    if not isinstance(vocab_size, int):
        raise PredictorError(f"--top_k 0 (off): {directory} has no config.json with the vocab_size it needs")
    return vocab_size


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
