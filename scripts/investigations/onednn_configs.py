"""Time Paddle Inference CPU configurations on a cleaned decoding loop: prefill and per token.

The model is made as ``scripts/benchmark.py`` makes it (PaddleNLP ``LlamaForCausalLM``,
random weights from ``paddle.seed``, greedy ``GenerationLoop``, legacy export), then
translated and cleaned by ``remove_loop_assign`` as ``StaticGenerationModel`` does,
and saved as PIR twice: as it is (``clean``) and after
``paddlenlp_ext.passes.onednn_inplace_guard`` (``guarded``). PaddleNLP 2.8's own
predictor configuration runs the legacy ``.pdmodel`` itself (old IR, oneDNN, new executor).

Per configuration: prefill = median run time with ``max_new_tokens`` 1; per token =
median over repeats of (run with 65 - run with 1) / 64; batch 1, one random prompt.
Every predictor keeps Paddle Inference's default of one math thread. All predictors
live in this one process and the repeats are interleaved (A B C ... A B C ...).
Correct = both warm-up runs and every timed run give the tokens of the first
configuration (``a``: oneDNN off, the reference).

    python scripts/investigations/onednn_configs.py [--configs a,P,g,n] [--repeats 7] [--context 1024] [--workdir DIR]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/: the benchmark's bench package
from bench.models import GREEDY_SETTINGS, default_intermediate_size
from bench.worker import run_once

from paddlenlp_ext.cli_flags import OneLineParser
from paddlenlp_ext.quiet import native_output_to, quiet_paddle

INPLACE_BLACKLIST = "FLAGS_ir_inplace_kernel_blacklist"

# name -> (program, settings). Programs: clean, guarded, legacy (the .pdmodel).
CONFIGS = {
    "a": ("clean", {"onednn": False}, "new IR, oneDNN off (create_paddle_predictor(onednn=\"off\"))"),
    "P": ("legacy", {"paddlenlp": True}, "PaddleNLP 2.8's config on the legacy .pdmodel (old IR, oneDNN)"),
    "b": ("clean", {"onednn": True, "delete": ["inplace_pass"]}, "new IR, oneDNN, inplace_pass deleted"),
    "c": ("clean", {"onednn": True, "blacklist": "pd_op.pow"}, "new IR, oneDNN, pd_op.pow not in-placed"),
    "g": ("guarded", {"onednn": True}, "guarded program, new IR, oneDNN, default passes"),
    "g'": ("guarded", {"default": True}, "guarded program, Paddle's default CPU config (disable_gpu only)"),
    "n": ("guarded", {"onednn": True, "delete": ["onednn_placement_pass"]},
          "guarded program, oneDNN for the fused matmuls only (onednn_placement_pass deleted: the removed \"matmul\" mode)"),
    "o": ("guarded", {"ours": True},
          "guarded program, create_paddle_predictor's default (StaticGenerationModel's configuration)"),
    "oc": ("clean", {"ours": True}, "clean program (not guarded), create_paddle_predictor's default"),
    "ni": ("clean", {"onednn": True, "delete": ["onednn_placement_pass", "inplace_pass"]},
           "clean program, onednn_placement_pass and inplace_pass deleted"),
    "x": ("clean", {"default": True}, "clean program, Paddle's default CPU config (wrong tokens)"),
}
DEFAULT_CONFIGS = "a,P,b,g,n,o,oc"


def create(prefix: str, onednn=False, delete=(), blacklist="", default=False, paddlenlp=False, ours=False):
    import paddle
    from paddle import inference

    if ours:
        from paddlenlp_ext.inference import create_paddle_predictor

        return create_paddle_predictor(prefix)
    config = inference.Config(prefix + (".pdmodel" if paddlenlp else ".json"), prefix + ".pdiparams")
    config.disable_gpu()
    config.disable_glog_info()
    if paddlenlp:  # PaddleNLP 2.8's static predictor
        config.enable_new_executor()
    elif not default:
        config.enable_new_ir(True)
        config.enable_mkldnn() if onednn else config.disable_mkldnn()
        for name in delete:
            config.delete_pass(name)
    previous = paddle.get_flags([INPLACE_BLACKLIST])
    paddle.set_flags({INPLACE_BLACKLIST: blacklist})  # read when the predictor is created
    try:
        return inference.create_predictor(config)
    finally:
        paddle.set_flags(previous)


def prepare(settings: dict, workdir: Path) -> dict:
    """Export the model and write the three programs: ``{program: prefix}``."""
    from bench.models import export_model

    from paddlenlp_ext.program_files import load_program, save_program
    from paddlenlp_ext.passes.onednn_inplace_guard import guard_onednn_inplace
    from paddlenlp_ext.passes.remove_loop_assign import remove_loop_assign

    legacy = export_model(settings, settings["layers"], workdir, formats=("legacy",))["legacy"]
    prefixes = {"legacy": str(legacy / "model")}
    for name in ("clean", "guarded"):
        loaded = load_program(legacy)
        remove_loop_assign(loaded.program, outputs=loaded.outputs)
        if name == "guarded":
            print(f"guard: {guard_onednn_inplace(loaded.program, loaded.outputs).summary()}", file=sys.stderr)
        prefixes[name] = str(workdir / name / "model")
        save_program(loaded, prefixes[name])
    return prefixes


def measure(prefixes: dict, names: list, repeats: int, context: int, vocab: int) -> dict:
    ids = np.random.default_rng([0, context]).integers(3, vocab, size=(1, context), dtype="int64")
    feeds = {n: {"input_ids": ids, "attention_mask": np.ones_like(ids), "max_new_tokens": np.array([n], "int64"),
                 **GREEDY_SETTINGS} for n in (1, 65)}
    predictors = {name: create(prefixes[CONFIGS[name][0]], **CONFIGS[name][1]) for name in names}
    reference, correct = None, {}
    for name, predictor in predictors.items():  # warm-up: two runs in a row must both be right
        first, second = run_once(predictor, feeds[65])[1], run_once(predictor, feeds[65])[1]
        run_once(predictor, feeds[1])
        reference = first if reference is None else reference
        correct[name] = bool(np.array_equal(first, reference) and np.array_equal(second, reference))
    prefill = {name: [] for name in names}
    per_token = {name: [] for name in names}
    for _ in range(repeats):
        for name, predictor in predictors.items():
            one, short = run_once(predictor, feeds[1])
            many, tokens = run_once(predictor, feeds[65])
            correct[name] &= bool(np.array_equal(tokens, reference) and np.array_equal(short, reference[:, :1]))
            prefill[name].append(one)
            per_token[name].append((many - one) / 64)
    return {name: {"prefill_ms": 1e3 * statistics.median(prefill[name]),
                   "per_token_ms": 1e3 * statistics.median(per_token[name]),
                   "min_prefill_ms": 1e3 * min(prefill[name]), "min_per_token_ms": 1e3 * min(per_token[name]),
                   "correct": correct[name]} for name in names}


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"comma-separated, the first is the token reference (default {DEFAULT_CONFIGS}); "
                             + "; ".join(f"{k}: {v[2]}" for k, v in CONFIGS.items()))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens (default 1024)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--workdir", help="where to write the model (default: a temporary directory)")
    args = parser.parse_args(argv)
    names = args.configs.split(",")
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}")
    settings = {"layers": args.layers, "hidden_size": args.hidden_size, "heads": 8, "kv_heads": 8, "vocab_size": 2000,
                "seed": 0, "max_position_embeddings": args.context + 128,
                "intermediate_size": default_intermediate_size(args.hidden_size)}
    # Paddle's C++ prints to stdout: sent to stderr, under the table.
    with tempfile.TemporaryDirectory(prefix="onednn_configs-") as scratch, quiet_paddle(), native_output_to(2, fds=(1,)):
        prefixes = prepare(settings, Path(args.workdir or scratch))
        rows = measure(prefixes, names, args.repeats, args.context, settings["vocab_size"])
    base = rows.get("P")
    print("| config | prefill ms (min) | per token ms (min) | correct |"
          + (" prefill / P | P per token / this |" if base else ""))
    print("|---|---:|---:|---|" + ("---:|---:|" if base else ""))
    for name, row in rows.items():
        line = (f"| {name}: {CONFIGS[name][2]} | {row['prefill_ms']:.0f} ({row['min_prefill_ms']:.0f}) | "
                f"{row['per_token_ms']:.2f} ({row['min_per_token_ms']:.2f}) | {'y' if row['correct'] else 'n'} |")
        if base:
            line += f" {row['prefill_ms'] / base['prefill_ms']:.2f} | {base['per_token_ms'] / row['per_token_ms']:.2f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
