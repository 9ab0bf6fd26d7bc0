"""Greedy decoding tokens/s on Paddle Inference (CPU): a legacy export, with and without the loop-copy passes, vs PIR.

One llama2-shaped PaddleNLP ``LlamaForCausalLM`` (random weights from ``paddle.seed``)
is exported once as a greedy ``GenerationLoop`` in both formats, and each variant runs
the same weights on the same random prompts:

- ``legacy``: the legacy (``.pdmodel``) export translated to PIR, as Paddle 3.x loads
  it, copies and all;
- ``legacy+seed``: the same after the rule of PaddleNLP PR #9002
  (``paddlenlp_ext.remove_loop_assign_pr9002``);
- ``legacy+pass``: the same after ``paddlenlp_ext.remove_loop_assign``;
- ``pir``: the PIR-native export, which has no loop copies: the reference.

Each variant's program is saved and run by its own Paddle Inference predictor, configured
as ``StaticGenerationModel`` does (new IR, CPU, oneDNN off: oneDNN decodes these loops
wrongly), with Paddle Inference's default of one math thread. Per context, every variant
is warmed up, then the repeats are interleaved across variants (A B C D A B C D ...) so
that a slow phase of a shared machine hits every variant alike. Only
``predictor.run()`` is timed: the inputs are copied in before the timer starts.

    python scripts/benchmark.py --output results/bench.json           # the full run
    python scripts/benchmark.py --quick --output /tmp/bench/out.json   # a small model, about a minute or two

It writes PATH.json, PATH.png (same stem) and prints a markdown table; the JSON holds
everything printed. Each record of ``results`` is one (variant, context):

- ``tokens_per_s``: median over the repeats of batch * new_tokens / run seconds. A run
  is the whole generate call: the prefill of ``context`` tokens (identical in every
  variant), then new_tokens - 1 loop iterations;
- ``min_tokens_per_s``, ``max_tokens_per_s``, ``iqr_tokens_per_s`` (75th - 25th
  percentile): the spread; ``runs_s``: every timed run in seconds;
- ``ratio_to_legacy``: ``tokens_per_s`` / that of ``legacy`` at the same context;
- ``copies``: ``assign_out_`` ops left in the while loop of the program handed to the
  predictor (``inference.count_loop_copies``);
- ``bytes_per_token``: an estimate of the bytes those copies move per loop iteration
  (one new token per row), divided by the batch size. It is summed over the static
  shapes of the copies' sources: a -1 batch dimension counts as ``batch_size``; in a
  KV-cache shape ([batch, seq, kv_heads, head_dim]) the -1 sequence dimension counts as
  the average sequence length while decoding, context + new_tokens / 2; any other -1
  dimension counts as 1, as in the per-step values (the new token, its position, the
  last position's logits). That under-counts the attention mask (int64 [batch, seq]),
  8 bytes a position next to the cache's 8 * kv_heads * head_dim * layers, so the
  estimate is the cache's copies to within a fraction of a percent;
- ``peak_rss_mib``: the peak resident set size during this context's run, in a child
  process that holds this variant's predictor only. One child per variant, one at a
  time, so the numbers are separable; it runs the contexts in increasing order,
  resetting Linux's peak (VmHWM, through ``/proc/self/clear_refs``) before each run, so
  what an earlier context left in Paddle's allocator cache is counted too, as in a
  server. ``baseline_rss_mib`` is that child's RSS before it created the predictor
  (Python and Paddle alone); peak - baseline is the predictor's weights, program and
  run. Linux only;
- ``pass_ms``: the median wall time of the variant's pass over ``--repeats`` runs,
  each on a fresh translation of the legacy program, after ``--warmup`` untimed ones
  (the first run in a process pays one-time costs); None for ``legacy`` and ``pir``,
  which run none. ``pass_report`` is its summary;
- ``tokens_identical``: every run of this variant at this context (warm-up included)
  gave the tokens of the first variant's warm-up.

``deep_pass`` times both passes (median as for ``pass_ms``), once per run, on a
translated legacy export of ``--pass-layers`` layers (default 32; 0 skips it and
leaves null) at the model's hidden size. Its export costs
about 1.5 s per layer on a 2-core machine whatever the hidden size (dy2static
tracing dominates), so the hidden size is not reduced for it. ``machine``,
``versions``, ``model`` and ``args`` record where and what ran.

Variants whose tokens differ at any context make the run fail: the output is still
written (so the difference can be read), then an ``error:`` line and exit code 1. Bad
arguments print one ``error:`` line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddlenlp_ext.cli_flags import OneLineParser
from paddlenlp_ext.files import write_atomically
from paddlenlp_ext.quiet import quiet_paddle

VARIANTS = ("legacy", "legacy+seed", "legacy+pass", "pir")
REFERENCE = "legacy"  # the ratios are to this variant

# --quick and the full run differ only in these settings; a flag given on the command
# line overrides either.
FULL = {"layers": 4, "hidden_size": 512, "contexts": [128, 512, 1024, 2048], "new_tokens": 128, "repeats": 5}
QUICK = {"layers": 2, "hidden_size": 128, "contexts": [32, 64], "new_tokens": 16, "repeats": 3}

MIB = 2**20


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


def _variant_list(text: str) -> list[str]:
    names = text.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant {unknown[0]!r} (choose from {', '.join(VARIANTS)})")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a variant is named twice in {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="scripts/benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmark.json",
                        help="the JSON file to write (a .json path); the plot goes beside it as .png "
                             "(default benchmark.json)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small run: {QUICK['layers']} layers, hidden {QUICK['hidden_size']}, contexts "
                             f"{','.join(map(str, QUICK['contexts']))}, {QUICK['new_tokens']} new tokens, "
                             f"{QUICK['repeats']} repeats (flags given override these)")
    parser.add_argument("--variants", type=_variant_list, default=list(VARIANTS),
                        help=f"comma-separated, run in this order (default {','.join(VARIANTS)})")
    parser.add_argument("--contexts", type=_int_list,
                        help=f"prompt lengths (default {','.join(map(str, FULL['contexts']))})")
    parser.add_argument("--new-tokens", type=int, help=f"tokens decoded per run (default {FULL['new_tokens']})")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per run (default 1)")
    parser.add_argument("--repeats", type=int, help=f"timed runs per variant and context (default {FULL['repeats']})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant and context first (default 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="paddle.seed for the weights; with the context, the numpy seed of the prompts (default 0)")
    model = parser.add_argument_group("model (PaddleNLP LlamaForCausalLM)")
    model.add_argument("--layers", type=int, help=f"decoder layers (default {FULL['layers']})")
    model.add_argument("--hidden-size", type=int, help=f"(default {FULL['hidden_size']})")
    model.add_argument("--heads", type=int, default=8, help="attention heads (default 8)")
    model.add_argument("--kv-heads", type=int, default=8, help="key/value heads (default 8)")
    model.add_argument("--intermediate-size", type=int,
                       help="MLP size (default llama's 8/3 of the hidden size rounded up to a multiple of 32: "
                            "1376 for 512)")
    model.add_argument("--vocab-size", type=int, default=2000, help="(default 2000)")
    model.add_argument("--max-position-embeddings", type=int,
                       help="(default the largest context + --new-tokens)")
    model.add_argument("--pass-layers", type=int, default=32,
                       help="layers of the extra program the passes are timed on once per run; 0 skips it "
                            "(default 32)")
    return parser


def resolve(args: argparse.Namespace) -> dict:
    """The run's settings: the full or quick defaults under the flags given. Checked."""
    given = {name: value for name, value in vars(args).items() if value is not None}
    settings = {**(QUICK if args.quick else FULL), **given}
    for name in ("layers", "hidden_size", "heads", "kv_heads", "vocab_size", "new_tokens", "batch_size", "repeats"):
        if settings[name] <= 0:
            raise BenchmarkError(f"--{name.replace('_', '-')} must be positive, got {settings[name]}")
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
    if settings["vocab_size"] <= 3:
        raise BenchmarkError(f"--vocab-size must be above 3 (prompts draw ids from 3 up), got {settings['vocab_size']}")
    settings.setdefault("intermediate_size", 32 * math.ceil(8 * settings["hidden_size"] / 3 / 32))
    if settings["intermediate_size"] <= 0:
        raise BenchmarkError(f"--intermediate-size must be positive, got {settings['intermediate_size']}")
    needed = max(settings["contexts"]) + settings["new_tokens"]
    settings.setdefault("max_position_embeddings", needed)
    if settings["max_position_embeddings"] < needed:
        raise BenchmarkError(f"--max-position-embeddings must be at least the largest context + --new-tokens "
                             f"({needed}), got {settings['max_position_embeddings']}")
    output = Path(settings["output"])
    if output.suffix != ".json":
        raise BenchmarkError(f"--output must be a .json path (the plot is written beside it), got {output}")
    if output.is_dir():
        raise BenchmarkError(f"--output {output} is a directory")
    return settings


# -- the model and its two exports ---------------------------------------------------------


def llama_config(settings: dict, layers: int):
    from paddlenlp.transformers import LlamaConfig

    return LlamaConfig(vocab_size=settings["vocab_size"], hidden_size=settings["hidden_size"],
                       intermediate_size=settings["intermediate_size"], num_hidden_layers=layers,
                       num_attention_heads=settings["heads"], num_key_value_heads=settings["kv_heads"],
                       max_position_embeddings=settings["max_position_embeddings"], rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def export_model(settings: dict, layers: int, directory: Path, formats=("legacy", "pir")) -> dict:
    """Export greedy decoding of a fresh llama in each format: ``{format: directory}``."""
    import paddle
    from paddlenlp.transformers import LlamaForCausalLM

    from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop, export_legacy, export_pir
    from paddlenlp_ext.inference import MODEL_PREFIX
    from paddlenlp_ext.paddle_modes import dygraph_mode

    exporters = {"legacy": export_legacy, "pir": export_pir}
    with dygraph_mode():
        paddle.seed(settings["seed"])
        model = LlamaForCausalLM(llama_config(settings, layers))
        model.eval()
        # No eos: every run decodes exactly new_tokens tokens, so runs are comparable.
        loop = GenerationLoop(model, DecodingConfig(eos_token_id=None))
        for fmt in formats:
            exporters[fmt](loop, str(directory / fmt / MODEL_PREFIX))
    return {fmt: directory / fmt for fmt in formats}


# -- the variants ----------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    prefix: str  # the saved program the predictor runs (and the RSS child reloads)
    predictor: object
    copies: int
    copy_sources: list  # (shape, bytes per element) of every copy left in the loop
    pass_ms: float | None
    pass_report: str | None


def run_legacy(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The legacy export as Paddle 3.x translates it: every loop copy left in."""
    return _prepare("legacy", exports["legacy"], workdir, settings, rewrite=None)


def run_legacy_seed(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The translated legacy export after PaddleNLP PR #9002's rule."""
    from paddlenlp_ext import remove_loop_assign_pr9002

    return _prepare("legacy+seed", exports["legacy"], workdir, settings,
                    rewrite=lambda loaded: remove_loop_assign_pr9002(loaded.program))


def run_legacy_pass(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The translated legacy export after ``remove_loop_assign``."""
    from paddlenlp_ext import remove_loop_assign

    return _prepare("legacy+pass", exports["legacy"], workdir, settings,
                    rewrite=lambda loaded: remove_loop_assign(loaded.program, outputs=loaded.outputs))


def run_pir(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The PIR-native export, loaded as it is: the copy-free reference."""
    return _prepare("pir", exports["pir"], workdir, settings, rewrite=None)


RUNNERS = {"legacy": run_legacy, "legacy+seed": run_legacy_seed, "legacy+pass": run_legacy_pass, "pir": run_pir}


def _prepare(name: str, model_dir: Path, workdir: Path, settings: dict, rewrite) -> Variant:
    """Load the program, time ``rewrite`` on fresh translations, save it, create its predictor."""
    from paddlenlp_ext.inference import (MODEL_PREFIX, count_loop_copies, create_paddle_predictor, load_program,
                                         save_program)

    pass_ms = report = None
    if rewrite is None:
        loaded = load_program(model_dir)
    else:
        times = []
        # Each on a fresh translation: a pass runs once per program. The last one is run.
        for _ in range(settings["warmup"] + settings["repeats"]):
            loaded = load_program(model_dir)
            start = time.perf_counter()
            report = rewrite(loaded).summary()
            times.append((time.perf_counter() - start) * 1e3)
        pass_ms = round(statistics.median(times[settings["warmup"]:]), 2)
    prefix = str(workdir / name / MODEL_PREFIX)
    save_program(loaded, prefix)
    # StaticGenerationModel's own configuration: the same predictor a user of the package gets.
    predictor = create_paddle_predictor(prefix, "cpu", None)
    return Variant(name, prefix, predictor, count_loop_copies(loaded.program), _copy_sources(loaded.program),
                   pass_ms, report)


def _copy_sources(program) -> list:
    from paddlenlp_ext.passes.copy_ops import SOURCE, loop_copies
    from paddlenlp_ext.passes.program_index import ProgramIndex

    index = ProgramIndex.build(program)
    sources = [index.op(copy).operand_source(SOURCE) for copies in loop_copies(index).values() for copy in copies]
    return [(list(value.shape), np.dtype(str(value.dtype).split(".")[-1]).itemsize) for value in sources]


def bytes_per_token(variant: Variant, settings: dict, context: int) -> int:
    """The estimate described in the module docstring."""
    batch = settings["batch_size"]
    cache_tail = [settings["kv_heads"], settings["hidden_size"] // settings["heads"]]
    average_length = context + settings["new_tokens"] / 2
    total = 0.0
    for shape, itemsize in variant.copy_sources:
        is_cache = len(shape) == 4 and shape[2:] == cache_tail
        dims = [batch if k == 0 and d == -1 else average_length if is_cache and k == 1 and d == -1
                else 1 if d == -1 else d for k, d in enumerate(shape)]
        total += math.prod(dims) * itemsize
    return round(total / batch)


# -- timing ----------------------------------------------------------------------------------


def prompt(settings: dict, context: int) -> dict:
    ids = np.random.default_rng([settings["seed"], context]).integers(
        3, settings["vocab_size"], size=(settings["batch_size"], context), dtype="int64")
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "max_new_tokens": np.array([settings["new_tokens"]], dtype="int64")}


def run_once(predictor, feed: dict) -> tuple[float, np.ndarray]:
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(feed[name])
    start = time.perf_counter()
    predictor.run()
    seconds = time.perf_counter() - start
    return seconds, predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def time_context(variants: list, settings: dict, context: int) -> dict:
    """``{variant: (run seconds, tokens identical)}`` at one context, repeats interleaved."""
    feed = prompt(settings, context)
    expected_shape = (settings["batch_size"], settings["new_tokens"])
    reference = None
    identical = {v.name: True for v in variants}

    def check(variant, tokens):
        nonlocal reference
        if reference is None:
            reference = tokens
        identical[variant.name] &= tokens.shape == expected_shape and np.array_equal(tokens, reference)

    for variant in variants:
        for _ in range(settings["warmup"]):
            check(variant, run_once(variant.predictor, feed)[1])
    seconds = {v.name: [] for v in variants}
    for _ in range(settings["repeats"]):
        for variant in variants:
            took, tokens = run_once(variant.predictor, feed)
            seconds[variant.name].append(took)
            check(variant, tokens)
    return {name: (seconds[name], identical[name]) for name in seconds}


# -- peak RSS, in a child process per variant --------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def child_peak_rss(prefix: str, feeds: list) -> tuple[int, list]:
    """In a fresh process: (RSS in KiB before the predictor, peak RSS of each feed's run).

    The peak is Linux's VmHWM, reset to the current RSS (``clear_refs`` 5) before each
    run. Not ``getrusage``'s ru_maxrss: it cannot be reset, and a spawned child's
    starts at the size of the parent it was forked from (Linux keeps it across exec).
    """
    with quiet_paddle():
        from paddlenlp_ext.inference import create_paddle_predictor

    baseline = _status_kib("VmRSS")
    predictor = create_paddle_predictor(prefix, "cpu", None)
    peaks = []
    for feed in feeds:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        run_once(predictor, feed)
        peaks.append(_status_kib("VmHWM"))
    return baseline, peaks


def measure_rss(variant: Variant, settings: dict) -> dict:
    """``{context: (baseline MiB, peak MiB)}`` from a spawned child (not forked: a fork
    would start with this process's memory, every predictor in it)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    feeds = [prompt(settings, context) for context in settings["contexts"]]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        baseline, peaks = pool.submit(child_peak_rss, variant.prefix, feeds).result()
    return {context: (round(baseline / 1024, 1), round(peak / 1024, 1))
            for context, peak in zip(settings["contexts"], peaks)}


# -- the passes on a deep program --------------------------------------------------------------


def deep_pass(settings: dict, workdir: Path) -> dict | None:
    """Both passes timed on a translated legacy export of ``--pass-layers`` layers."""
    if not settings["pass_layers"]:
        return None
    from paddlenlp_ext import remove_loop_assign, remove_loop_assign_pr9002
    from paddlenlp_ext.inference import count_loop_copies, load_program

    progress(f"passes on a {settings['pass_layers']}-layer program")
    start = time.perf_counter()
    legacy = export_model(settings, settings["pass_layers"], workdir / "deep", formats=("legacy",))["legacy"]
    export_s = time.perf_counter() - start
    rules = {"remove_loop_assign": lambda loaded: remove_loop_assign(loaded.program, outputs=loaded.outputs),
             "pr9002": lambda loaded: remove_loop_assign_pr9002(loaded.program)}
    result = {"layers": settings["pass_layers"], "hidden_size": settings["hidden_size"],
              "export_s": round(export_s, 1), "copies": count_loop_copies(load_program(legacy).program)}
    for name, rule in rules.items():
        times = []
        for _ in range(settings["warmup"] + settings["repeats"]):
            loaded = load_program(legacy)
            start = time.perf_counter()
            report = rule(loaded)
            times.append((time.perf_counter() - start) * 1e3)
        result[name] = {"ms": round(statistics.median(times[settings["warmup"]:]), 2), "report": report.summary()}
    return result


# -- the record ------------------------------------------------------------------------------


def machine() -> dict:
    from paddle import inference

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "os": platform.platform(),
            # create_paddle_predictor leaves Paddle Inference's default, read here rather than assumed
            "predictor_math_threads": inference.Config().cpu_math_library_num_threads()}


def versions() -> dict:
    import paddle
    import paddlenlp

    import paddlenlp_ext

    return {"python": platform.python_version(), "paddle": paddle.__version__, "paddlenlp": paddlenlp.__version__,
            "paddlenlp_ext": paddlenlp_ext.__version__}


def records(variants: list, timings: dict, rss: dict, settings: dict) -> list:
    rows = []
    for context in settings["contexts"]:
        for variant in variants:
            seconds, identical = timings[context][variant.name]
            rates = [settings["batch_size"] * settings["new_tokens"] / s for s in seconds]
            q25, q75 = np.percentile(rates, [25, 75])
            baseline, peak = rss[variant.name][context]
            rows.append({
                "variant": variant.name, "context": context, "new_tokens": settings["new_tokens"],
                "batch_size": settings["batch_size"],
                "tokens_per_s": round(statistics.median(rates), 2),
                "min_tokens_per_s": round(min(rates), 2), "max_tokens_per_s": round(max(rates), 2),
                "iqr_tokens_per_s": round(float(q75 - q25), 2),
                "runs_s": [round(s, 5) for s in seconds],
                "ratio_to_legacy": None,
                "copies": variant.copies, "bytes_per_token": bytes_per_token(variant, settings, context),
                "peak_rss_mib": peak, "baseline_rss_mib": baseline,
                "pass_ms": variant.pass_ms, "pass_report": variant.pass_report,
                "tokens_identical": identical,
            })
    legacy = {row["context"]: row["tokens_per_s"] for row in rows if row["variant"] == REFERENCE}
    for row in rows:
        if row["context"] in legacy:
            row["ratio_to_legacy"] = round(row["tokens_per_s"] / legacy[row["context"]], 3)
    return rows


# -- output ----------------------------------------------------------------------------------


def _size(count: int) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def table(result: dict) -> str:
    """The markdown report, from the JSON record alone."""
    m = result["model"]
    lines = [
        f"llama {m['num_hidden_layers']} layers, hidden {m['hidden_size']}, {m['num_attention_heads']} heads "
        f"({m['num_key_value_heads']} kv), vocab {m['vocab_size']}; batch {result['args']['batch_size']}, "
        f"{result['args']['new_tokens']} new tokens, {result['args']['repeats']} repeats; "
        f"{result['machine']['cpu']}, {result['machine']['usable_cores']} cores, Paddle {result['versions']['paddle']}",
        "",
        "| context | variant | tokens/s (median) | min–max | IQR | vs legacy | copies | copied/token "
        "| peak RSS MiB | pass ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["results"]:
        ratio = "–" if row["ratio_to_legacy"] is None else f"{row['ratio_to_legacy']:.3f}"
        pass_ms = "–" if row["pass_ms"] is None else f"{row['pass_ms']:.2f}"
        lines.append(
            f"| {row['context']} | {row['variant']} | {row['tokens_per_s']:.2f} | "
            f"{row['min_tokens_per_s']:.2f}–{row['max_tokens_per_s']:.2f} | {row['iqr_tokens_per_s']:.2f} | "
            f"{ratio} | {row['copies']} | {_size(row['bytes_per_token'])} | {row['peak_rss_mib']:.1f} | {pass_ms} |")
    lines.append("")
    deep = result["deep_pass"]
    if deep is not None:
        lines.append(f"passes on a translated {deep['layers']}-layer export (hidden {deep['hidden_size']}, "
                     f"{deep['copies']} loop copies; exported in {deep['export_s']} s): remove_loop_assign "
                     f"{deep['remove_loop_assign']['ms']:.2f} ms ({deep['remove_loop_assign']['report']}), "
                     f"PR #9002 rule {deep['pr9002']['ms']:.2f} ms ({deep['pr9002']['report']})")
    differing = sorted({f"{row['variant']} at {row['context']}" for row in result["results"]
                        if not row["tokens_identical"]})
    lines.append("tokens identical across variants and runs: " +
                 ("yes" if result["tokens_identical"] else "NO (" + ", ".join(differing) + ")"))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    figure, (rates, ratios) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in result["args"]["variants"]:
        rows = [row for row in result["results"] if row["variant"] == name]
        contexts = [row["context"] for row in rows]
        median = np.array([row["tokens_per_s"] for row in rows])
        low = np.array([row["min_tokens_per_s"] for row in rows])
        high = np.array([row["max_tokens_per_s"] for row in rows])
        rates.errorbar(contexts, median, yerr=[median - low, high - median], marker="o", capsize=3, label=name)
        if rows[0]["ratio_to_legacy"] is not None:
            ratios.plot(contexts, [row["ratio_to_legacy"] for row in rows], marker="o", label=name)
    rates.set(xscale="log", xlabel="context (prompt tokens)", ylabel="tokens/s (median, bars min–max)",
              title="greedy decoding, Paddle Inference CPU")
    ratios.axhline(1.0, color="grey", linewidth=0.8)
    ratios.set(xscale="log", xlabel="context (prompt tokens)", ylabel="tokens/s ÷ legacy", title="ratio to legacy")
    contexts = result["args"]["contexts"]
    for axis in (rates, ratios):
        axis.set_xlim(contexts[0] / 1.25, contexts[-1] * 1.25)  # also when the ratio panel is empty
        axis.set_xticks(contexts, [str(c) for c in contexts])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
    rates.legend()
    if REFERENCE in result["args"]["variants"]:
        ratios.legend()
    else:
        ratios.text(0.5, 0.5, "legacy not run", ha="center", transform=ratios.transAxes)
    m = result["model"]
    figure.suptitle(f"llama {m['num_hidden_layers']} layers, hidden {m['hidden_size']}; batch "
                    f"{result['args']['batch_size']}, {result['args']['new_tokens']} new tokens; "
                    f"{result['machine']['cpu']}, Paddle {result['versions']['paddle']}", fontsize=9)
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def progress(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)  # stdout holds the table only


def benchmark(settings: dict) -> dict:
    import paddle

    with tempfile.TemporaryDirectory(prefix="paddlenlp_ext-bench-") as scratch:
        workdir = Path(scratch)
        start = time.perf_counter()
        needed = tuple(fmt for fmt in ("legacy", "pir") if any(v.startswith(fmt) for v in settings["variants"]))
        exports = export_model(settings, settings["layers"], workdir / "exports", formats=needed)
        progress(f"exported {' and '.join(needed)} in {time.perf_counter() - start:.1f} s")
        paddle.enable_static()
        variants = [RUNNERS[name](exports, workdir, settings) for name in settings["variants"]]
        timings = {}
        for context in settings["contexts"]:
            progress(f"timing context {context}")
            timings[context] = time_context(variants, settings, context)
        rss = {}
        for variant in variants:
            progress(f"peak RSS of {variant.name}")
            rss[variant.name] = measure_rss(variant, settings)
        deep = deep_pass(settings, workdir)
        model = llama_config(settings, settings["layers"]).to_dict()
    rows = records(variants, timings, rss, settings)
    return {
        "results": rows,
        "tokens_identical": all(row["tokens_identical"] for row in rows),
        "deep_pass": deep,
        "machine": machine(),
        "versions": versions(),
        "model": {key: model[key] for key in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                              "num_attention_heads", "num_key_value_heads", "vocab_size",
                                              "max_position_embeddings", "rms_norm_eps", "dtype")}
                 | {"seed": settings["seed"]},
        "args": settings,
    }


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
    with quiet_paddle():
        result = benchmark(settings)
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
