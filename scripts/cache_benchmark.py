"""Prefill and per-token time of the concat and the static KV cache on Paddle Inference (CPU).

One PaddleNLP llama (random weights from ``paddle.seed(0)``) is exported as a greedy
``GenerationLoop`` in the legacy format once per cache, translated and cleaned by
``remove_loop_assign`` (as ``StaticGenerationModel`` loads it), and run by
``inference.create_paddle_predictor``. Per prompt length, both are warmed up and must
give the same tokens; then the repeats run interleaved (concat n=1, concat n=N+1,
static n=1, static n=N+1, ...). Prefill is the median run with one new token; per
token is (median run with N + 1 - median run with 1) / N. Peak RSS (VmHWM) is
measured in one child process per cache, running the longest prompt.

    python scripts/cache_benchmark.py --output /tmp/cache_bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CACHES = ("concat", "static")


def build(directory: Path, args) -> dict:
    """Export, translate and clean one loop per cache: ``{cache: saved prefix}``."""
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    from paddlenlp_ext import remove_loop_assign
    from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop, export_legacy
    from paddlenlp_ext.inference import MODEL_PREFIX, count_loop_copies, load_program, save_program
    from paddlenlp_ext.paddle_modes import dygraph_mode

    with dygraph_mode():
        paddle.seed(0)
        config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                             intermediate_size=32 * math.ceil(8 * args.hidden_size / 3 / 32),  # as scripts/benchmark.py
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.heads,
                             max_position_embeddings=max(args.contexts) + args.new_tokens + 1, rms_norm_eps=1e-5,
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = LlamaForCausalLM(config)
        model.eval()
    prefixes = {}
    for cache in CACHES:
        with dygraph_mode():
            export_legacy(GenerationLoop(model, DecodingConfig(eos_token_id=None), cache=cache),
                          str(directory / cache / MODEL_PREFIX))
        loaded = load_program(directory / cache)
        before = count_loop_copies(loaded.program)
        report = remove_loop_assign(loaded.program, outputs=loaded.outputs)
        print(f"{cache}: {before} loop copies; remove_loop_assign: {report.summary()}", flush=True)
        prefixes[cache] = str(directory / cache / "clean")
        save_program(loaded, prefixes[cache])
    return prefixes


def feed(prompt: np.ndarray, new_tokens: int) -> dict:
    return {"input_ids": prompt, "attention_mask": np.ones_like(prompt),
            "max_new_tokens": np.array([new_tokens], dtype="int64")}


def timed(predictor, inputs: dict) -> tuple[float, np.ndarray]:
    from paddlenlp_ext.inference import run_predictor

    start = time.perf_counter()
    (tokens,) = run_predictor(predictor, inputs)
    return (time.perf_counter() - start) * 1e3, tokens


def measure(prefixes: dict, args) -> list:
    from paddlenlp_ext.inference import create_paddle_predictor

    predictors = {cache: create_paddle_predictor(prefix) for cache, prefix in prefixes.items()}
    rng = np.random.default_rng(0)
    rows = []
    for context in args.contexts:
        prompt = rng.integers(3, args.vocab_size, size=(1, context), dtype="int64")
        short, long = feed(prompt, 1), feed(prompt, args.new_tokens + 1)
        tokens = {cache: timed(predictor, long)[1] for cache, predictor in predictors.items()}
        for predictor in predictors.values():
            timed(predictor, short)
        identical = all(np.array_equal(tokens[cache], tokens[CACHES[0]]) for cache in CACHES)
        runs = {cache: {"1": [], "long": []} for cache in CACHES}
        for _ in range(args.repeats):
            for cache, predictor in predictors.items():
                runs[cache]["1"].append(timed(predictor, short)[0])
                runs[cache]["long"].append(timed(predictor, long)[0])
        for cache in CACHES:
            prefill = statistics.median(runs[cache]["1"])
            per_token = (statistics.median(runs[cache]["long"]) - prefill) / args.new_tokens
            rows.append({"context": context, "cache": cache, "prefill_ms": prefill, "per_token_ms": per_token,
                         "tokens_identical": identical, "runs_ms": runs[cache]})
            print(f"context {context} {cache}: prefill {prefill:.1f} ms, per token {per_token:.2f} ms, "
                  f"tokens identical {identical}", flush=True)
    return rows


def peak_rss_child(prefix: str, context: int, new_tokens: int, vocab_size: int) -> None:
    """In a child process: run the longest prompt once and print the peak RSS in MiB."""
    from paddlenlp_ext.inference import create_paddle_predictor

    predictor = create_paddle_predictor(prefix)
    prompt = np.random.default_rng(0).integers(3, vocab_size, size=(1, context), dtype="int64")
    timed(predictor, feed(prompt, new_tokens + 1))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 1024, 2048])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)  # PREFIX CONTEXT
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(args.rss_child[0], int(args.rss_child[1]), args.new_tokens, args.vocab_size)
        return 0
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as directory:
        prefixes = build(Path(directory), args)
        rows = measure(prefixes, args)
        rss = {}
        for cache, prefix in prefixes.items():
            child = subprocess.run([sys.executable, __file__, "--output", args.output, "--rss-child", prefix,
                                    str(max(args.contexts)), "--new-tokens", str(args.new_tokens),
                                    "--vocab-size", str(args.vocab_size)],
                                   capture_output=True, text=True, check=True)
            rss[cache] = float(child.stdout.strip().splitlines()[-1])
            print(f"{cache}: peak RSS {rss[cache]:.1f} MiB at context {max(args.contexts)}", flush=True)
    Path(args.output).write_text(json.dumps({"results": rows, "peak_rss_mib": rss, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
