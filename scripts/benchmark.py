"""Greedy decoding on Paddle Inference (CPU): what PaddleNLP users run today, vs the cleaned loop.

One llama2-shaped PaddleNLP ``LlamaForCausalLM`` (random weights from ``paddle.seed``)
is exported by each decoding loop of ``--loops`` (this project's ``GenerationLoop``,
and PaddleNLP's own ``to_static`` export, ``sample_d2s``), in both formats, and each
variant runs the same weights on the same random prompts:

- ``paddlenlp-default``: the legacy ``.pdmodel`` as PaddleNLP 2.8's static predictor
  runs it (``inference.paddlenlp_static_config``: Paddle's defaults, on 3.3.1 the old
  IR with oneDNN): the baseline;
- ``legacy``: the legacy export translated to PIR, as Paddle 3.x loads it, copies and all;
- ``legacy+pr9002``: the same after the rule of PaddleNLP PR #9002
  (``paddlenlp_ext.remove_loop_assign_pr9002``);
- ``legacy+pass``: the same after ``paddlenlp_ext.remove_loop_assign``;
- ``pir``: the PIR-native export, which has no loop copies;
- ``static-cache``: ``GenerationLoop(cache="static")`` (KV buffers preallocated and
  written in place, no per-token concat), legacy export after ``remove_loop_assign``.
  ``GenerationLoop`` only: PaddleNLP's loop has its concat cache.

Those are float32. ``--dtypes`` (comma-separated, from ``float32,bfloat16``; default
float32) chooses what runs: float32 the variants of ``--variants``, bfloat16 one more:

- ``bf16``: the same model object cast to bfloat16 after the float32 exports (so the
  weights are theirs rounded to bfloat16) and exported as a bfloat16 model exports
  (``paddlenlp_ext.export``: PIR, weight matrices transposed; the static cache on our
  loop, PaddleNLP's concat cache on its own), loaded as it is.

With both dtypes the bf16 row is timed in the same rounds as the float32 ones.
``--peers`` (comma-separated, from ``llama.cpp-f32,llama.cpp-bf16,llama.cpp-q8_0,
hf-float32,hf-bf16``; default none) adds the engines users leave us for, on the same
weights and prompt ids, in the same rounds, beside GenerationLoop's rows
(``bench.peers``; ``pip install -e ".[peers]"``).

All but the baseline are saved and run by their own predictor configured as
``StaticGenerationModel`` does (``inference.create_paddle_predictor``). ``--threads``
sets every predictor's CPU math threads (default: Paddle Inference's own, one on 3.3.1).

The variants are timed in rounds (``bench.timing``): each round runs every variant in
turn (A B C ... A B C ...), each in a fresh child process that creates its predictor
and, at each context in increasing order, runs ``--warmup`` untimed pairs, then one
timed prefill run (1 new token) and one timed whole run. So a slow phase of a shared
machine hits every variant alike, and one predictor's weights are in memory at a time,
whatever the model's size (``--preset llama2-7b --layers 1`` fits in 24 GB). Only
``predictor.run()`` is timed. The temporary directory (exports, saved programs) goes
on exit, on an error, on Ctrl-C and on SIGTERM.

    python scripts/benchmark.py --output docs/benchmark.json          # the full run (toy shape)
    python scripts/benchmark.py --quick --output /tmp/bench/out.json  # a small model, a few minutes
    python scripts/benchmark.py --preset llama2-7b --layers 1 --vocab-size 2000 --contexts 1024 \
        --new-tokens 32 --repeats 2 --variants paddlenlp-default,legacy+pass,static-cache \
        --pass-layers 0 --output /tmp/bench/7b.json                     # llama2-7B's layer shape
    python scripts/benchmark.py --quick --dtypes float32,bfloat16 --variants static-cache \
        --loops generation_loop --pass-layers 0 --output /tmp/bench/bf16.json  # bfloat16 beside float32

It writes PATH.json, PATH.png (same stem) and prints a markdown table; the JSON holds
everything printed. Each record of ``results`` is one (loop, variant, context):

- ``dtype``: "float32" or "bfloat16" (the bf16 variant's);

- ``prefill_ms`` (with ``min_``/``max_``, ``prefill_runs_s``): the median run with one
  new token: the prompt's forward pass and the first token (time to first token);
- ``decode_ms_per_token`` (with ``min_``/``max_``): per repeat, (whole run - the
  prefill run beside it) / (new_tokens - 1), the median over repeats: the loop's cost
  per token (time per output token);
- ``tokens_per_s``: median over the repeats of batch * new_tokens / whole-run seconds,
  with ``min_tokens_per_s``, ``max_tokens_per_s``, ``iqr_tokens_per_s`` (75th - 25th
  percentile) and ``runs_s``: every whole run in seconds;
- ``ratio_to_paddlenlp_default``: ``tokens_per_s`` / the baseline's (end to end);
  ``prefill_speedup_vs_paddlenlp_default``, ``decode_speedup_vs_paddlenlp_default``:
  the baseline's ``prefill_ms`` / ``decode_ms_per_token`` over this row's (above 1 is
  faster); ``ratio_to_legacy``: ``tokens_per_s`` / ``legacy``'s; all at the same loop
  and context, None when that variant did not run;
- ``runtime``: the Paddle Inference configuration that ran the variant;
- ``copies``: ``assign_out_`` ops left in the while loop of the program (the baseline's:
  those of its translation, the ones its ``.pdmodel`` loop has);
- ``bytes_per_token``: an estimate of the bytes those copies move per loop iteration
  (one new token per row), divided by the batch size. It is summed over the static
  shapes of the copies' sources: a -1 batch dimension counts as ``batch_size``; in a
  KV-cache shape ([batch, seq, kv_heads, head_dim]) the -1 sequence dimension counts as
  the average sequence length while decoding, context + new_tokens / 2; any other -1
  dimension counts as 1, as in the per-step values (the new token, its position, the
  last position's logits). That under-counts the attention mask (int64 [batch, seq]),
  8 bytes a position next to the cache's 8 * kv_heads * head_dim * layers, so the
  estimate is the cache's copies to within a fraction of a percent;
- ``weights_mib``, ``memory_bound_ms_per_token``, ``prefill_bound_ms``: the model's
  weights at the row's dtype, and what the machine's limits allow for a decode step
  (its weights and KV cache at the row's dtype) and for the prefill (``bench.roofline``
  says how each is computed, from ``limits``: the memory bandwidth and the float32 and
  bfloat16 GEMM throughputs measured once per run at ``threads``);
  ``prefill_bound_gemm_dtype``: whose GEMM throughput the prefill bound uses, the row's;
  ``roofline_ratio`` = ``decode_ms_per_token`` / ``memory_bound_ms_per_token`` and
  ``prefill_roofline_ratio`` = ``prefill_ms`` / ``prefill_bound_ms`` (1 is the limit);
- ``threads``: the predictor's CPU math threads;
- ``baseline_rss_mib``: the first round's child's RSS before it created the predictor
  (Python and Paddle alone); ``loaded_rss_mib``: its RSS once the predictor was made,
  above that (the predictor's weights and program: about ``weights_mib`` when the
  weights are held once); ``peak_rss_mib``: its peak resident set size during this
  context's whole run (Linux's VmHWM, reset before the run; the contexts run in
  increasing order, so what an earlier one left in Paddle's allocator cache is
  counted too, as in a server). Linux only;
- ``pass_ms``: the median wall time of the variant's pass over ``--repeats`` runs,
  each on a fresh translation of the legacy program, after ``--warmup`` untimed ones;
  None for the variants that run none. ``pass_report`` is its summary;
- ``tokens_identical``: every run of this variant at this loop and context (warm-up
  included) gave the tokens of the first run of the first variant of its dtype (the
  prefill run its first token): bf16 is held to its own runs, not to float32's;
- ``token_agreement_with_float32`` (bf16 rows; None on float32 rows and when no
  float32 variant ran): the share of the greedy tokens (every row of the batch, every
  new token) equal to those of ``static-cache``, or of the first float32 variant when
  it did not run, at the same loop and context. bfloat16's tokens part from float32's
  at near-ties (random weights have many), which is expected and fails nothing;
- ``prefill_speedup_vs_float32``, ``decode_speedup_vs_float32`` (bf16 rows; None
  otherwise and when ``static-cache`` did not run): ``static-cache``'s ``prefill_ms``
  and ``decode_ms_per_token`` at the same context over this row's (above 1 is faster);
- peer rows (``peer`` true; ``dtype`` "q8_0" for llama.cpp's 8-bit blocks, 34 bytes a
  32 values; ``kv_dtype`` the cache's, float16 in llama.cpp, counted at 2 bytes): ``ours``,
  our variant of the same precision (``static-cache``, ``bf16`` for the bfloat16 peers),
  ``ours_prefill_speedup``, ``ours_decode_speedup``: the peer's ``prefill_ms`` and
  ``decode_ms_per_token`` over that variant's at the same context (above 1: we are
  faster; None when it did not run), ``token_agreement_with_ours`` and
  ``tokens_equal_until`` (the new tokens equal to that variant's before the first
  difference, in the first row). A peer's tokens are held to its own runs only.

``deep_pass`` times both passes (median as for ``pass_ms``), once per run, on a
translated legacy export of ``--pass-layers`` layers (default 32, skipped where they
do not fit in float32, ``args.pass_layers_skipped`` saying why; 0 skips it; null when
skipped) at the model's hidden size. Its export costs about 1.5 s per layer on a
2-core machine whatever the hidden size (dy2static tracing dominates), so the hidden
size is not reduced for it. ``limits``, ``machine``, ``versions``, ``model`` and
``args`` (with the ``preset``) record where and what ran.

Variants of a dtype whose tokens differ at any context (float32 variants among
themselves, or a variant's own runs) make the run fail: the output is still written (so
the difference can be read), then an ``error:`` line and exit code 1. Bad
arguments print one ``error:`` line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.models import PRESETS, default_intermediate_size, export_model, llama_config
from bench.pass_timing import deep_pass
from bench.peers import PEERS, missing_extras
from bench.report import machine, plot, records, table, versions
from bench.roofline import measure_machine, weight_bytes
from bench.timing import ChildFailed, time_variants
from bench.variants import (BASELINE, DTYPE_OF, DTYPE_VARIANTS, EXPORT_DTYPE, LOOP_VARIANTS, RUNNERS,
                            VARIANTS, exported_formats)

from paddlenlp_ext.cli_flags import OneLineParser
from paddlenlp_ext.cpu import NO_BFLOAT16, computes_bfloat16
from paddlenlp_ext.files import write_atomically
from paddlenlp_ext.options import LOOPS
from paddlenlp_ext.quiet import quiet_paddle, quiet_paddlenlp

# The run's settings, lowest precedence first: the full run's or --quick's, then
# --preset's model shape (--quick makes the toy smaller), then every flag given.
FULL = {"contexts": [128, 512, 1024, 2048], "new_tokens": 64, "repeats": 5, "threads": None, "pass_layers": 32}
QUICK = {"contexts": [32, 64], "new_tokens": 16, "repeats": 3, "threads": None, "pass_layers": 32}
QUICK_TOY = {"layers": 2, "hidden_size": 128}


class BenchmarkError(Exception):
    """A bad argument: reported on one line, exit code 2."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(value <= 0 for value in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct positive integers, got {text!r}")
    return sorted(values)


def _names(choices: tuple, what: str):
    """An argparse type: comma-separated names from ``choices``, each once, in the given order."""
    def parse(text: str) -> list[str]:
        names = text.split(",")
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0]!r} (choose from {', '.join(choices)})")
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"a {what} is named twice in {text!r}")
        return names
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="scripts/benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmark.json",
                        help="the JSON file to write (a .json path); the plot goes beside it as .png "
                             "(default benchmark.json)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small run: contexts "
                             f"{','.join(map(str, QUICK['contexts']))}, {QUICK['new_tokens']} new tokens, "
                             f"{QUICK['repeats']} repeats; with the toy preset, {QUICK_TOY['layers']} layers, hidden "
                             f"{QUICK_TOY['hidden_size']} (flags given override these)")
    parser.add_argument("--variants", type=_names(VARIANTS, "variant"), default=list(VARIANTS),
                        help=f"comma-separated, run in this order (default {','.join(VARIANTS)})")
    parser.add_argument("--dtypes", type=_names(tuple(DTYPE_VARIANTS), "dtype"), default=["float32"],
                        help="comma-separated: float32 runs --variants, bfloat16 the bf16 variant (the same "
                             "weights cast; GenerationLoop only) (default float32)")
    parser.add_argument("--peers", type=_names(tuple(PEERS), "peer"), default=[],
                        help=f"comma-separated, from {','.join(PEERS)}: other engines on the same weights "
                             "(pip install -e \".[peers]\"; default none)")
    parser.add_argument("--loops", type=_names(LOOPS, "loop"), default=list(LOOPS),
                        help=f"the decoding loops to export the model with, comma-separated (default "
                             f"{','.join(LOOPS)})")
    parser.add_argument("--contexts", type=_int_list,
                        help=f"prompt lengths (default {','.join(map(str, FULL['contexts']))})")
    parser.add_argument("--new-tokens", type=int, help=f"tokens decoded per run (default {FULL['new_tokens']})")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per run (default 1)")
    parser.add_argument("--repeats", type=int, help=f"timed runs per variant and context (default {FULL['repeats']})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant and context first (default 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="paddle.seed for the weights; with the context, the numpy seed of the prompts (default 0)")
    parser.add_argument("--threads", type=int,
                        help="Paddle Inference's CPU math threads, for every variant and the roofline (default: "
                             "Paddle's own)")
    model = parser.add_argument_group("model (PaddleNLP LlamaForCausalLM)")
    model.add_argument("--preset", choices=tuple(PRESETS), default="toy",
                       help="the model's shape; the flags below override it. " + "; ".join(
                           f"{name}: " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in shape.items())
                           for name, shape in PRESETS.items()) + " (default toy)")
    model.add_argument("--layers", type=int, help="decoder layers")
    model.add_argument("--hidden-size", type=int)
    model.add_argument("--heads", type=int, help="attention heads")
    model.add_argument("--kv-heads", type=int, help="key/value heads")
    model.add_argument("--intermediate-size", type=int,
                       help="MLP size (toy: llama's 8/3 of the hidden size rounded up to a multiple of 32)")
    model.add_argument("--vocab-size", type=int)
    model.add_argument("--max-position-embeddings", type=int,
                       help="(default the largest context + --new-tokens)")
    model.add_argument("--pass-layers", type=int,
                       help="layers of the extra program the passes are timed on once per run; 0 skips it "
                            "(default 32, or 0 where 32 such layers do not fit in float32)")
    return parser


def resolve(args: argparse.Namespace) -> dict:
    """The run's settings: the full or quick defaults, under the preset, under the flags
    given. Checked."""
    given = {name: value for name, value in vars(args).items() if value is not None}
    settings = {**(QUICK if args.quick else FULL), **PRESETS[args.preset],
                **(QUICK_TOY if args.quick and args.preset == "toy" else {}), **given}
    if settings["threads"] is not None and settings["threads"] <= 0:
        raise BenchmarkError(f"--threads must be positive, got {settings['threads']}")
    for name in ("layers", "hidden_size", "heads", "kv_heads", "vocab_size", "batch_size", "repeats"):
        if settings[name] <= 0:
            raise BenchmarkError(f"--{name.replace('_', '-')} must be positive, got {settings[name]}")
    if settings["new_tokens"] < 2:  # the per-token cost is the difference to a 1-token run
        raise BenchmarkError(f"--new-tokens must be at least 2, got {settings['new_tokens']}")
    for name in ("warmup", "pass_layers"):
        if settings[name] < 0:
            raise BenchmarkError(f"--{name.replace('_', '-')} must be 0 or more, got {settings[name]}")
    if settings["hidden_size"] % settings["heads"] or (settings["hidden_size"] // settings["heads"]) % 2:
        # rotary embeddings rotate pairs of a head's dimensions
        raise BenchmarkError(f"--hidden-size must be an even multiple of --heads, got {settings['hidden_size']} "
                             f"and {settings['heads']}")
    if settings["heads"] % settings["kv_heads"]:
        raise BenchmarkError(f"--heads must be a multiple of --kv-heads, got {settings['heads']} and "
                             f"{settings['kv_heads']}")
    missing = missing_extras(settings["peers"])
    if missing is not None:
        raise BenchmarkError(missing)
    if settings["peers"] and "generation_loop" not in settings["loops"]:
        raise BenchmarkError("--peers run beside --loops generation_loop's rows: add it to --loops")
    if "bfloat16" in settings["dtypes"] and not computes_bfloat16():
        raise BenchmarkError(f"--dtypes bfloat16: {NO_BFLOAT16}; run --dtypes float32")
    if settings["vocab_size"] <= 3:
        raise BenchmarkError(f"--vocab-size must be above 3 (prompts draw ids from 3 up), got {settings['vocab_size']}")
    if settings["intermediate_size"] is None:
        settings["intermediate_size"] = default_intermediate_size(settings["hidden_size"])
    if settings["intermediate_size"] <= 0:
        raise BenchmarkError(f"--intermediate-size must be positive, got {settings['intermediate_size']}")
    _check_fits(settings, pass_layers_given="pass_layers" in given)
    needed = max(settings["contexts"]) + settings["new_tokens"]
    settings.setdefault("max_position_embeddings", needed)
    if settings["max_position_embeddings"] < needed:
        raise BenchmarkError(f"--max-position-embeddings must be at least the largest context + --new-tokens "
                             f"({needed}), got {settings['max_position_embeddings']}")
    if not any(loop_variants(settings, loop) for loop in settings["loops"]):
        raise BenchmarkError(f"no variant of --variants {','.join(settings['variants'])} runs on --loops "
                             f"{','.join(settings['loops'])} (static-cache runs on generation_loop only)")
    _check_scratch_space(settings)
    output = Path(settings["output"])
    if output.suffix != ".json":
        raise BenchmarkError(f"--output must be a .json path (the plot is written beside it), got {output}")
    if output.is_dir():
        raise BenchmarkError(f"--output {output} is a directory")
    return settings


# A predictor holds the weights once, plus its activations and KV cache; the export
# holds the model and one transposed matrix. Leave this share of the memory for those.
WEIGHTS_SHARE_OF_MEMORY = 0.85


def _check_fits(settings: dict, pass_layers_given: bool) -> None:
    """A dtype of ``--dtypes`` whose weights do not fit this machine's available memory
    (``/proc/meminfo``; no check elsewhere) is refused before anything runs, saying why;
    so is a ``--pass-layers`` program (float32) that does not, which would otherwise be
    found after every timing. The default one is skipped instead (a whole llama2-7B's
    does not fit), and ``settings["pass_layers_skipped"]`` says why."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return
    for dtype in settings["dtypes"]:
        weights = weight_bytes(settings, dtype)["all"]
        if weights > WEIGHTS_SHARE_OF_MEMORY * available:
            raise BenchmarkError(
                f"--dtypes {dtype} cannot fit: this model's {dtype} weights are {weights / 2**30:.1f} GiB and the "
                f"machine has {available / 2**30:.1f} GiB available (a predictor needs them once, plus its "
                f"activations); use fewer --layers, or --dtypes bfloat16 alone")
    pass_program = weight_bytes({**settings, "layers": settings["pass_layers"]}, "float32")["all"]
    if settings["pass_layers"] and pass_program > WEIGHTS_SHARE_OF_MEMORY * available:
        why = (f"the float32 program the passes are timed on holds {pass_program / 2**30:.1f} GiB of weights and "
               f"the machine has {available / 2**30:.1f} GiB available")
        if pass_layers_given:
            raise BenchmarkError(f"--pass-layers {settings['pass_layers']} cannot fit: {why}; use fewer "
                                 "--pass-layers, or 0 to skip it")
        settings["pass_layers_skipped"] = f"{settings['pass_layers']} layers do not fit: {why}"
        settings["pass_layers"] = 0


def scratch_bytes(settings: dict) -> int:
    """The bytes the run writes under TMPDIR, all held until it ends: per loop each
    export and each prepared program (every variant but the baseline, which runs its
    export) holds the weights in its dtype, and so does the ``--pass-layers`` program."""
    def weights(dtype: str, layers: int = settings["layers"]) -> int:
        return weight_bytes({**settings, "layers": layers}, dtype)["all"]

    total = weights("float32", settings["pass_layers"]) if settings["pass_layers"] else 0
    for loop in settings["loops"]:
        names = loop_variants(settings, loop)
        total += sum(weights(EXPORT_DTYPE[fmt]) for fmt in exported_formats(names))
        total += sum(weights(DTYPE_OF[name]) for name in names if name != BASELINE)
    return total


def _check_scratch_space(settings: dict) -> None:
    """A run whose files do not fit TMPDIR's free space is refused before anything runs
    (a whole bfloat16 llama2-7B writes 25 GiB: its export and its prepared program);
    otherwise Paddle fails to write a tensor after the export, with no word of space."""
    directory = tempfile.gettempdir()
    needed, free = scratch_bytes(settings), shutil.disk_usage(directory).free
    if needed > free:
        raise BenchmarkError(f"the run writes {needed / 2**30:.1f} GiB of exports and prepared programs under "
                             f"{directory} and it has {free / 2**30:.1f} GiB free; free some, or set TMPDIR to a "
                             "larger disk")


def loop_variants(settings: dict, loop: str) -> list[str]:
    """The variants run on ``loop``, float32's (``--variants``) first, as ``--dtypes`` asks."""
    chosen = [name for dtype, names in DTYPE_VARIANTS.items() if dtype in settings["dtypes"] for name in names
              if dtype != "float32" or name in settings["variants"]]
    return [name for name in chosen + settings["peers"] if name in LOOP_VARIANTS[loop]]


def progress(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)  # stdout holds the table only


def benchmark(settings: dict) -> dict:
    import paddle
    from paddle import inference

    quiet_paddlenlp()  # it logs every config it saves with the exports
    if settings["threads"] is None:  # Paddle's own default, read rather than assumed
        settings["threads"] = inference.Config().cpu_math_library_num_threads()
    progress(f"measuring memory bandwidth and GEMM throughput at {settings['threads']} threads")
    limits = measure_machine(settings["threads"], quick=settings["quick"])
    rows, deep = [], None
    with tempfile.TemporaryDirectory(prefix="paddlenlp_ext-bench-") as scratch:
        workdir = Path(scratch)
        for loop in settings["loops"]:
            names = loop_variants(settings, loop)
            if not names:
                continue
            start = time.perf_counter()
            formats = exported_formats(names)
            exports = export_model(settings, settings["layers"], workdir / "exports", loop, formats)
            progress(f"{loop}: exported {' and '.join(formats)} in {time.perf_counter() - start:.1f} s")
            paddle.enable_static()
            variants = [RUNNERS[name](exports, workdir / loop, settings) for name in names]
            progress(f"{loop}: timing {len(variants)} variants in {settings['repeats']} rounds of child processes")
            timings = time_variants(variants, settings, workdir, lambda message: progress(f"{loop}: {message}"))
            rows += records(loop, variants, timings, settings, limits)
        if "pass_layers_skipped" in settings:
            progress(f"passes not timed on a deep program: {settings['pass_layers_skipped']}")
        deep = deep_pass(settings, workdir, progress)
        model = llama_config(settings, settings["layers"]).to_dict()
    return {
        "results": rows,
        "tokens_identical": all(row["tokens_identical"] for row in rows),
        "deep_pass": deep,
        "limits": {**limits, "threads": settings["threads"]},
        "machine": machine(),
        "versions": versions(),
        "model": {key: model[key] for key in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                              "num_attention_heads", "num_key_value_heads", "vocab_size",
                                              "max_position_embeddings", "rms_norm_eps", "dtype")}
                 | {"seed": settings["seed"]},
        "args": settings,
    }


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = resolve(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = Path(settings["output"])
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with quiet_paddle():
            # Imported first: on import, Paddle installs a SIGTERM handler that kills the
            # process, and PaddleNLP resets SIGTERM to the default action (3.3.1, 2.8.1).
            import paddle  # noqa: F401
            import paddlenlp.transformers  # noqa: F401

            signal.signal(signal.SIGTERM, _terminate)  # so that the temporary directory goes on SIGTERM too
            result = benchmark(settings)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the child and the temporary files are gone
        print("error: interrupted", file=sys.stderr)
        return 130
    except ChildFailed as error:  # nothing is written: a table without that variant would read as complete
        print(f"error: {error}", file=sys.stderr)
        return 1
    result["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2) + "\n"
    write_atomically(output, lambda tmp: Path(tmp).write_text(text))
    result = json.loads(text)  # print exactly what was written
    plot(result, output.with_suffix(".png"))
    print(table(result))
    print(f"\nwrote {output} and {output.with_suffix('.png')} in {result['wall_s']} s")
    if not result["tokens_identical"]:
        print("error: the variants decoded different tokens (see tokens_identical in the table and JSON)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
