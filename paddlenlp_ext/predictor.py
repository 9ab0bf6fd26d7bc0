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
(a PIR export has none).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .errors import error_line
from .cli_flags import boolean_flag
from .quiet import quiet_paddle, quiet_paddlenlp

DEFAULT_PROMPTS = ["hello world, how are you?", "What is the capital of France?"]
# decoding.CACHES, spelled out so that parsing the flags does not import Paddle (which
# reads its logging settings when it loads, in quiet_paddle()).
CACHES = ("concat", "static")


class PredictorError(Exception):
    """Bad input to the predictor: reported on one line, exit code 2."""


@dataclass
class PredictorArgument:
    model_name_or_path: str | None = None  # a save_pretrained checkpoint or a static model directory
    model: str | None = None  # an embedded model name (llama2 when neither is given)
    src_length: int = 512  # prompt tokens kept (the last ones); PaddleNLP's 1024 + 64 overflows llama2's 1024 positions
    max_length: int = 64  # new tokens to generate
    top_k: int = 1
    top_p: float = 1.0
    temperature: float = 0.95
    repetition_penalty: float = 1.0
    decode_strategy: str = "sampling"
    mode: str | None = None  # dynamic | static; static when --remove_loop_assign is given
    dtype: str | None = None
    device: str = "cpu"
    batch_size: int = 1
    benchmark: bool = False
    remove_loop_assign: bool = False
    export_format: str = "legacy"
    cache: str | None = None  # the exported GenerationLoop's KV cache; None: export_generation_model's choice
    seed: int = 42


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

    def _preprocess(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.tokenizer(texts, max_length=self.config.src_length, truncation=True,
                                 truncation_side="left", padding=True, return_attention_mask=True,
                                 return_tensors="np")
        return encoded["input_ids"].astype("int64"), encoded["attention_mask"].astype("int64")

    def generate_ids(self, texts: list[str]) -> np.ndarray:
        """The new token ids, int64 [B, n]; rows that stopped early end in padding."""
        return self._infer(*self._preprocess(texts))

    def _infer(self, input_ids, attention_mask) -> np.ndarray:
        raise NotImplementedError

    def _postprocess(self, ids: np.ndarray) -> list[str]:
        return self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)

    def predict(self, texts: str | list[str]) -> list[str]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._postprocess(self.generate_ids(texts))


class DygraphPredictor(BasePredictor):
    """PaddleNLP's dynamic ``generate`` (its own sampler: ``--seed`` seeds Paddle)."""

    def __init__(self, config: PredictorArgument, model, tokenizer):
        super().__init__(config, tokenizer)
        self.model = model

    def _infer(self, input_ids, attention_mask):
        import paddle

        from .paddle_modes import dygraph_mode

        config = self.config
        with dygraph_mode(), paddle.no_grad():
            paddle.seed(config.seed)
            mask = paddle.to_tensor(attention_mask)
            # Positions count real tokens only, as GenerationLoop does for left padding.
            positions = paddle.clip(paddle.cumsum(mask, axis=1) - 1, min=0)
            ids, _ = self.model.generate(
                paddle.to_tensor(input_ids), attention_mask=mask, position_ids=positions,
                max_new_tokens=config.max_length, decode_strategy=config.decode_strategy,
                top_k=config.top_k, top_p=config.top_p, temperature=config.temperature,
                repetition_penalty=config.repetition_penalty,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        return ids.numpy()


class StaticGraphPredictor(BasePredictor):
    """A static model directory on Paddle Inference (``inference.StaticGenerationModel``).

    It feeds the model by its own input names, as PaddleNLP 2.8's static predictor
    does: any of ``GENERATION_INPUTS`` (``model_inputs``), so a PaddleNLP
    ``to_static`` export (``input_ids``, ``attention_mask``, ``position_ids``,
    ``max_new_tokens``, ``top_k`` or ``top_p`` + ``temperature``) runs as well as
    this project's (``seed`` instead of the sampling knobs, which it bakes in).
    """

    def __init__(self, config: PredictorArgument, static_dir, tokenizer):
        super().__init__(config, tokenizer)
        from .inference import StaticGenerationModel

        self.static_model = StaticGenerationModel(static_dir, remove_loop_assign=config.remove_loop_assign,
                                                  device=config.device)
        self.report = self.static_model.report
        unknown = [name for name in self.static_model.input_names if name not in GENERATION_INPUTS]
        if unknown:
            raise PredictorError(f"{static_dir}: the model takes input {unknown[0]!r}, which this predictor does "
                                 f"not know (it feeds {', '.join(GENERATION_INPUTS)})")
        if config.decode_strategy == "greedy_search" and "top_p" in self.static_model.input_names \
                and "top_k" not in self.static_model.input_names:
            raise PredictorError(f"{static_dir}: the model samples with top-p (PaddleNLP's use_top_p export) and "
                                 "cannot decode greedily; use --decode_strategy sampling or export with top-k")

    def _infer(self, input_ids, attention_mask):
        inputs = model_inputs(input_ids, attention_mask, self.config)
        return self.static_model.run({name: inputs[name] for name in self.static_model.input_names})


# What PaddleNLP 2.8's static predictor feeds a generation model, by name
# (llm/predictor.py, StaticGraphPredictor._preprocess: the tokenizer's outputs, then
# the decoding settings), and this project's ``seed``.
GENERATION_INPUTS = ("input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_k", "top_p",
                     "temperature", "repetition_penalty", "seed")


def model_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, config: PredictorArgument) -> dict:
    """Every input of ``GENERATION_INPUTS`` for a left-padded batch, with PaddleNLP's
    dtypes: int64 ``[B, S]`` token arrays, ``[1]`` settings (its export's InputSpec).

    Position ids count real tokens from 0 and are 0 on the padding, as PaddleNLP's
    tokenizer pads them on the left. Greedy search is top-k sampling with k = 1.
    """
    positions = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None).astype("int64")
    top_k = 1 if config.decode_strategy == "greedy_search" else config.top_k
    return {
        "input_ids": input_ids.astype("int64"),
        "attention_mask": attention_mask.astype("int64"),
        "position_ids": positions,
        "max_new_tokens": np.array([config.max_length], dtype="int64"),
        "top_k": np.array([top_k], dtype="int64"),
        "top_p": np.array([config.top_p], dtype="float32"),
        "temperature": np.array([config.temperature], dtype="float32"),
        "repetition_penalty": np.array([config.repetition_penalty], dtype="float32"),
        "seed": np.array([config.seed], dtype="int64"),
    }


def _is_static_dir(path: Path) -> bool:
    from .inference import LEGACY_FILE, PIR_FILE

    return (path / PIR_FILE).is_file() or (path / LEGACY_FILE).is_file()


def _decoding(config: PredictorArgument, model_config):
    from .decoding import DecodingConfig

    if config.repetition_penalty != 1.0:
        raise PredictorError("--repetition_penalty: this project's generation loop has none; use --mode dynamic "
                             "or a static model exported with it")
    try:
        return DecodingConfig(config.decode_strategy, top_k=config.top_k, top_p=config.top_p,
                              temperature=config.temperature, eos_token_id=model_config.eos_token_id,
                              pad_token_id=model_config.pad_token_id or 0)
    except ValueError as error:
        raise PredictorError(str(error)) from None


def create_predictor(predictor_args: PredictorArgument, model_args: ModelArgument | None = None) -> BasePredictor:
    """The predictor ``predictor_args`` describe; raises PredictorError for bad input.

    ``model_args`` is accepted for PaddleNLP's signature; prompts and outputs are
    ``predict``'s business here.
    """
    from .inference import ModelDirectoryError
    from .models import DEFAULT_MODEL, ModelError, load_model

    config = predictor_args
    source = config.model_name_or_path
    if source is not None and _is_static_dir(Path(source)):
        if config.mode == "dynamic":
            raise PredictorError(f"{source} is a static model directory: run it with --mode static")
        if config.cache is not None:
            raise PredictorError(f"--cache {config.cache}: {source} is a static model directory, whose cache was "
                                 "chosen when it was exported")
        tokenizer = _static_tokenizer(Path(source))
        _check_lengths(config, _max_positions(Path(source)))
        return StaticGraphPredictor(config, source, tokenizer)
    try:
        model, tokenizer = load_model(source if source is not None else (config.model or DEFAULT_MODEL))
    except ModelError as error:
        raise PredictorError(str(error)) from None
    _check_lengths(config, model.config.max_position_embeddings)
    if config.mode == "dynamic":
        return DygraphPredictor(config, model, tokenizer)
    from .export import export_generation_model
    from .paddle_modes import dygraph_mode

    decoding = _decoding(config, model.config)
    with tempfile.TemporaryDirectory(prefix="paddlenlp_ext-export-") as staging:
        static_dir = Path(staging) / "model"
        with dygraph_mode():
            export_generation_model(model, static_dir, tokenizer=tokenizer, decoding=decoding,
                                    format=config.export_format, remove_loop_assign=config.remove_loop_assign,
                                    cache=config.cache)
        try:
            # Paddle Inference reads the files when it creates the predictor.
            return StaticGraphPredictor(config, static_dir, tokenizer)
        except ModelDirectoryError as error:
            raise PredictorError(str(error)) from None


def _static_tokenizer(directory: Path):
    from paddlenlp.transformers import AutoTokenizer

    if not (directory / "tokenizer_config.json").is_file():
        raise PredictorError(f"{directory}: no tokenizer (tokenizer_config.json) beside the static model")
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:  # PaddleNLP and sentencepiece raise many types for bad files
        raise PredictorError(f"{directory}: cannot load the tokenizer: {error_line(error)}") from None


def _max_positions(directory: Path) -> int | None:
    try:
        return json.loads((directory / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None


def _check_lengths(config: PredictorArgument, max_positions: int | None) -> None:
    if max_positions is not None and config.src_length + config.max_length > max_positions:
        raise PredictorError(f"--src_length + --max_length = {config.src_length + config.max_length} exceeds the "
                             f"model's max_position_embeddings ({max_positions})")


# -- command line ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predictor.py", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model_name_or_path", help="a PaddleNLP save_pretrained checkpoint or a static model directory")
    add("--model", help="an embedded model: llama2 (the default) or llama2-gqa")
    add("--src_length", type=int, default=512, help="prompt tokens kept, the last ones (default 512)")
    add("--max_length", type=int, default=64, help="new tokens to generate (default 64)")
    add("--top_k", type=int, default=1)
    add("--top_p", type=float, default=1.0)
    add("--temperature", type=float, default=0.95)
    add("--repetition_penalty", type=float, default=1.0,
        help="PaddleNLP's repetition penalty (dynamic mode, and static models that take it)")
    add("--decode_strategy", choices=["sampling", "greedy_search"], default="sampling")
    add("--mode", choices=["dynamic", "static"], help="default dynamic; static with --remove_loop_assign")
    add("--dtype", help="float32 (the only dtype on CPU)")
    add("--device", choices=["cpu", "gpu"], default="cpu")
    add("--batch_size", type=int, default=1)
    add("--data_file", help="JSONL prompts: {\"src\": ..., \"tgt\": ...} per line")
    add("--output_file", default="output.json", help="JSONL results (default output.json)")
    for name, text in (("benchmark", "time generation and print tokens/s and QPS"),
                       ("remove_loop_assign", "remove the loop copies (implies --mode static)")):
        add(f"--{name}", type=boolean_flag, nargs="?", const=True, default=False, help=text)
    add("--export_format", choices=["legacy", "pir"], default="legacy",
        help="format of the static model exported from a dygraph checkpoint (default legacy)")
    add("--cache", default=None,
        help="KV cache of the loop exported from a dygraph checkpoint: static (preallocated, written in place; "
             "the default where the model's attention allows it) or concat (PaddleNLP's, grown every step)")
    add("--seed", type=int, default=42, help="sampling seed (default 42)")
    return parser


def parse_arguments(argv=None) -> tuple[PredictorArgument, ModelArgument]:
    namespace = vars(build_parser().parse_args(argv))
    predictor_args = PredictorArgument(**{f.name: namespace[f.name] for f in fields(PredictorArgument)})
    model_args = ModelArgument(**{f.name: namespace[f.name] for f in fields(ModelArgument)})
    _validate(predictor_args)
    return predictor_args, model_args


def _validate(config: PredictorArgument) -> None:
    for name in ("src_length", "max_length", "batch_size"):
        if getattr(config, name) <= 0:
            raise PredictorError(f"--{name} must be positive, got {getattr(config, name)}")
    if config.remove_loop_assign:
        if config.mode == "dynamic":
            raise PredictorError("--remove_loop_assign rewrites the static graph; it cannot be used with "
                                 "--mode dynamic")
        config.mode = "static"
    config.mode = config.mode or "dynamic"
    if config.cache not in (None, *CACHES):
        raise PredictorError(f"--cache must be one of {', '.join(CACHES)}, got {config.cache!r}")
    if config.cache is not None and config.mode == "dynamic":
        raise PredictorError(f"--cache {config.cache} is the static loop's: use --mode static (--mode dynamic runs "
                             "PaddleNLP's generate)")
    if config.model is not None and config.model_name_or_path is not None:
        raise PredictorError("give --model or --model_name_or_path, not both")
    if config.dtype not in (None, "float32"):
        raise PredictorError(f"--dtype {config.dtype}: only float32 is supported (the embedded models and CPU)")
    if config.device == "gpu":
        import paddle

        if not paddle.is_compiled_with_cuda():
            raise PredictorError("--device gpu needs paddlepaddle-gpu (see the README's GPU section)")
    if config.model_name_or_path is not None and not Path(config.model_name_or_path).exists():
        raise PredictorError(f"{config.model_name_or_path}: no such model directory")


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
    from .files import write_atomically

    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda partial: Path(partial).write_text(text, encoding="utf-8"))
    except OSError as error:
        raise PredictorError(f"cannot write {path}: {error.strerror or error}") from None


def count_generated(ids: np.ndarray, eos_token_id: int | None) -> int:
    """Generated tokens: each row up to and including its eos, not the padding after."""
    total = 0
    for row in ids.tolist():
        length = len(row)
        if eos_token_id is not None and eos_token_id in row:
            length = row.index(eos_token_id) + 1
        total += length
    return total


def benchmark(predictor: BasePredictor, config: PredictorArgument, repeats: int = 3) -> str:
    """PaddleNLP's benchmark line, counting generated tokens (not characters)."""
    prompt = "hello world, how are you? " * config.src_length
    texts = [prompt] * config.batch_size
    predictor.generate_ids(texts)  # warm-up
    start = time.perf_counter()
    generated = sum(count_generated(predictor.generate_ids(texts), predictor.tokenizer.eos_token_id)
                    for _ in range(repeats))
    seconds = time.perf_counter() - start
    input_length = len(predictor._preprocess(texts[:1])[0][0])
    return (f"Input length is: {input_length}, Output length is: {config.max_length}, bs is: {config.batch_size}, "
            f"Generate speed is: {generated / seconds:.3f} tokens/s(ips), "
            f"QPS: {repeats * config.batch_size / seconds:.3f} requests/s. ")


def predict(predictor_args: PredictorArgument, model_args: ModelArgument) -> None:
    from tqdm import tqdm

    quiet_paddlenlp()
    logging.getLogger("paddlenlp_ext").setLevel(logging.WARNING)  # the pass report is printed below

    sources, targets = read_prompts(model_args.data_file)
    predictor = create_predictor(predictor_args, model_args)
    if isinstance(predictor, StaticGraphPredictor):
        report = predictor.report
        print(f"remove_loop_assign: {report.summary()}" if report is not None
              else f"remove_loop_assign: off ({predictor.static_model.copies_before} copies in the loop)")
    records = []
    batches = list(zip(batchfy_text(sources, predictor_args.batch_size), batchfy_text(targets, predictor_args.batch_size)))
    for batch_sources, batch_targets in tqdm(batches, disable=len(batches) <= 1, desc="batches"):
        for source, target, output in zip(batch_sources, batch_targets, predictor.predict(batch_sources)):
            print("***********Source**********")
            print(source)
            print("***********Target**********")
            print(target)
            print("***********Output**********")
            print(output)
            records.append({"src": source, "tgt": target, "output": output})
    write_results(model_args.output_file, records)
    if predictor_args.benchmark:
        print(benchmark(predictor, predictor_args))


def main(argv=None) -> int:
    try:
        predictor_args, model_args = parse_arguments(argv)
        with quiet_paddle():
            predict(predictor_args, model_args)
    except PredictorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
