"""Demo: the loop copies of a translated legacy llama, before and after the pass.

Builds a small llama with PaddleNLP (random weights from a fixed seed, nothing
downloaded), exports greedy decoding in the legacy format, loads it back the way
Paddle 3.x does (translation to PIR), then runs the decoding loop before and after
``remove_loop_assign`` and after PR #9002's rule, and prints what each removed and
whether the tokens match.

    python -m paddlenlp_ext.demo [--layers 2] [--prompt-length 64] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from .cli_flags import OneLineParser
from .quiet import quiet_paddle


class DemoError(Exception):
    """A bad argument: reported on one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m paddlenlp_ext.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the demo llama (default 2)")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden size (default 64)")
    parser.add_argument("--prompt-length", type=int, default=64, help="prompt tokens (default 64)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens to generate (default 16)")
    return parser


def _check(args) -> None:
    for name in ("layers", "hidden_size", "prompt_length", "new_tokens"):
        if getattr(args, name) <= 0:
            raise DemoError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.hidden_size % 4:
        raise DemoError(f"--hidden-size must be a multiple of 4 (4 attention heads), got {args.hidden_size}")
    if args.prompt_length + args.new_tokens > 1024:
        raise DemoError("--prompt-length + --new-tokens must be at most 1024 (the demo model's positions)")


def _demo_llama(layers: int, hidden_size: int):
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    paddle.seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=1024,
                         rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def _timed_run(model, feed) -> tuple[np.ndarray, float]:
    from .program_files import run_program

    run_program(model, feed)  # warm-up
    start = time.perf_counter()
    (tokens,) = run_program(model, feed)
    return tokens, time.perf_counter() - start


def run_demo(args) -> int:
    import paddle

    from . import remove_loop_assign, remove_loop_assign_pr9002
    from .decoding import DecodingConfig, GenerationLoop, export_legacy
    from .paddle_modes import dygraph_mode
    from .program_files import count_loop_copies as copies
    from .program_files import load_program

    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 1000, size=(1, args.prompt_length), dtype="int64")
    feed = {"input_ids": prompt, "attention_mask": np.ones_like(prompt),
            "max_new_tokens": np.array([args.new_tokens], dtype="int64"), **DecodingConfig().feed()}
    with tempfile.TemporaryDirectory() as tmp:
        with dygraph_mode():
            model = _demo_llama(args.layers, args.hidden_size)
            start = time.perf_counter()
            # greedy, no eos: every run decodes all the tokens
            export_legacy(GenerationLoop(model, DecodingConfig()), f"{tmp}/model")
            print(f"exported a {args.layers}-layer llama (hidden {args.hidden_size}) as a legacy model "
                  f"in {time.perf_counter() - start:.1f} s")
        paddle.enable_static()
        rows = []
        for label, rewrite in (("translated", None), ("PR #9002 rule", remove_loop_assign_pr9002),
                               ("remove_loop_assign", remove_loop_assign)):
            translated = load_program(tmp)
            before = copies(translated.program)
            if rewrite is remove_loop_assign:
                start = time.perf_counter()
                report = rewrite(translated.program, outputs=translated.outputs)
                print(f"remove_loop_assign: {report.summary()} ({(time.perf_counter() - start) * 1e3:.0f} ms)")
            elif rewrite is not None:
                print(f"PR #9002 rule: {rewrite(translated.program).summary()}")
            tokens, seconds = _timed_run(translated, feed)
            rows.append((label, before, copies(translated.program), tokens, seconds))
    reference = rows[0][3]
    print(f"\nprompt {args.prompt_length} tokens, {args.new_tokens} new tokens, one run each after a warm-up "
          "(a demo, not a benchmark)")
    print(f"{'program':<20} {'copies in loop':>14} {'tokens/s':>9}  tokens equal")
    for label, before, after, tokens, seconds in rows:
        same = "yes" if np.array_equal(tokens, reference) else "NO"
        print(f"{label:<20} {after:>14} {tokens.shape[1] / seconds:>9.1f}  {same}")
    print(f"\ntokens: {reference[0].tolist()}")
    return 0 if all(np.array_equal(row[3], reference) for row in rows) else 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check(args)
    except DemoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with quiet_paddle():
        return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
