"""The benchmark's record (one row per loop, variant and context), its table and its plot."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import numpy as np

from paddlenlp_ext.files import write_atomically

from .peers import PEERS
from .roofline import bounds
from .variants import BASELINE, bytes_per_token

LEGACY = "legacy"
# The float32 variant a bfloat16 row is compared with, when it ran (else the first float32 one).
FLOAT32_REFERENCE = "static-cache"
MIB = 2**20


def machine() -> dict:
    from paddle import inference

    from paddlenlp_ext.cpu import computes_bfloat16, first_processor, has_avx512_bf16, read_cpuinfo

    cpu = first_processor(read_cpuinfo()).get("model name") or platform.processor() or platform.machine()
    # "AMD EPYC" names Zen 3 (AVX2 only) and Zen 4 (AVX-512 with BF16) alike: what bfloat16 can run on
    isa = "AVX-512 with AVX512-BF16" if has_avx512_bf16() else "AVX-512" if computes_bfloat16() else "no AVX-512"
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "os": platform.platform(),
            # Paddle Inference's default, read rather than assumed (--threads overrides it)
            "predictor_math_threads": inference.Config().cpu_math_library_num_threads(),
            # what our predictors' workers set (the baseline's keep MKL's own choice)
            "our_mkl_path": _our_mkl_path()}


def _our_mkl_path() -> str:
    from paddlenlp_ext import mkl_dispatch

    reason = mkl_dispatch.reason_to_leave_alone(mkl_dispatch.read_cpuinfo(), os.environ)
    return "AVX2 (MKL_DEBUG_CPU_TYPE=5)" if reason is None else f"as MKL and the environment choose ({reason})"


def versions() -> dict:
    import paddle
    import paddlenlp

    import paddlenlp_ext

    return {"python": platform.python_version(), "paddle": paddle.__version__, "paddlenlp": paddlenlp.__version__,
            "paddlenlp_ext": paddlenlp_ext.__version__}


def _spread(values: list, scale: float = 1.0, digits: int = 2) -> tuple:
    """(median, min, max) of ``values`` times ``scale``, rounded."""
    return tuple(round(v * scale, digits) for v in (statistics.median(values), min(values), max(values)))


def records(loop: str, variants: list, timings: dict, settings: dict, limits: dict) -> list:
    """One row per (variant, context) of one loop; ratios against the same loop's rows.
    ``limits``: the machine's, from ``roofline.measure_machine``."""
    new_tokens, batch = settings["new_tokens"], settings["batch_size"]
    rows = []
    for context in settings["contexts"]:
        for variant in variants:
            timing = timings[context][variant.name]
            bound = bounds(settings, limits, context, variant.dtype, variant.kv_dtype)
            rates = [batch * new_tokens / s for s in timing.full_s]
            q25, q75 = np.percentile(rates, [25, 75])
            # per repeat: the whole run minus the prefill run beside it, per decoded token
            per_token = [(full - prefill) / (new_tokens - 1) for full, prefill in zip(timing.full_s, timing.prefill_s)]
            prefill = _spread(timing.prefill_s, 1e3, 1)
            decode = _spread(per_token, 1e3, 2)
            rows.append({
                "loop": loop, "variant": variant.name, "dtype": variant.dtype, "runtime": variant.runtime,
                "threads": settings["threads"],
                "context": context, "new_tokens": new_tokens, "batch_size": batch,
                "tokens_per_s": round(statistics.median(rates), 2),
                "min_tokens_per_s": round(min(rates), 2), "max_tokens_per_s": round(max(rates), 2),
                "iqr_tokens_per_s": round(float(q75 - q25), 2),
                "runs_s": [round(s, 5) for s in timing.full_s],
                "prefill_ms": prefill[0], "min_prefill_ms": prefill[1], "max_prefill_ms": prefill[2],
                "prefill_runs_s": [round(s, 5) for s in timing.prefill_s],
                "decode_ms_per_token": decode[0], "min_decode_ms_per_token": decode[1],
                "max_decode_ms_per_token": decode[2],
                "ratio_to_legacy": None, "ratio_to_paddlenlp_default": None,
                "prefill_speedup_vs_paddlenlp_default": None, "decode_speedup_vs_paddlenlp_default": None,
                "prefill_speedup_vs_float32": None, "decode_speedup_vs_float32": None,
                "token_agreement_with_float32": None,
                **bound,
                "roofline_ratio": round(decode[0] / bound["memory_bound_ms_per_token"], 2),
                "prefill_roofline_ratio": (None if bound["prefill_bound_ms"] is None
                                           else round(prefill[0] / bound["prefill_bound_ms"], 2)),
                "peer": variant.peer, "kv_dtype": variant.kv_dtype or variant.dtype,
                "copies": variant.copies, "bytes_per_token": bytes_per_token(variant, settings, context),
                "peak_rss_mib": timing.peak_rss_mib, "baseline_rss_mib": timing.baseline_rss_mib,
                "loaded_rss_mib": timing.loaded_rss_mib,
                "pass_ms": variant.pass_ms, "pass_report": variant.pass_report,
                "tokens_identical": timing.tokens_identical,
            })
    by_key = {(row["variant"], row["context"]): row for row in rows}
    float32_names = [variant.name for variant in variants if variant.dtype == "float32"]
    reference = FLOAT32_REFERENCE if FLOAT32_REFERENCE in float32_names else next(iter(float32_names), None)
    for row in rows:
        if row["peer"]:
            _compare_with_ours(row, by_key, timings)
            continue
        if row["dtype"] != "float32":
            speed = by_key.get((FLOAT32_REFERENCE, row["context"]))
            if speed is not None:
                row["prefill_speedup_vs_float32"] = round(speed["prefill_ms"] / row["prefill_ms"], 3)
                row["decode_speedup_vs_float32"] = round(speed["decode_ms_per_token"] / row["decode_ms_per_token"], 3)
            if reference is not None:
                row["token_agreement_with_float32"] = token_agreement(
                    timings[row["context"]][row["variant"]].tokens, timings[row["context"]][reference].tokens)
        legacy, base = by_key.get((LEGACY, row["context"])), by_key.get((BASELINE, row["context"]))
        if legacy is not None:
            row["ratio_to_legacy"] = round(row["tokens_per_s"] / legacy["tokens_per_s"], 3)
        if base is not None:
            row["ratio_to_paddlenlp_default"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
            row["prefill_speedup_vs_paddlenlp_default"] = round(base["prefill_ms"] / row["prefill_ms"], 3)
            row["decode_speedup_vs_paddlenlp_default"] = round(
                base["decode_ms_per_token"] / row["decode_ms_per_token"], 3)
    return rows


def _compare_with_ours(row: dict, by_key: dict, timings: dict) -> None:
    """A peer row's comparison with our variant of its precision (``bench.peers``)."""
    ours = PEERS[row["variant"]].ours
    mine = by_key.get((ours, row["context"]))
    row.update(ours=ours, ours_prefill_speedup=None, ours_decode_speedup=None, token_agreement_with_ours=None,
               tokens_equal_until=None)
    if mine is None:
        return
    row["ours_prefill_speedup"] = round(row["prefill_ms"] / mine["prefill_ms"], 3)
    row["ours_decode_speedup"] = round(row["decode_ms_per_token"] / mine["decode_ms_per_token"], 3)
    tokens, reference = timings[row["context"]][row["variant"]].tokens, timings[row["context"]][ours].tokens
    row["token_agreement_with_ours"] = token_agreement(tokens, reference)
    first, want = tokens[0], reference[0]
    row["tokens_equal_until"] = next((i for i, (a, b) in enumerate(zip(first, want)) if a != b), min(len(first),
                                                                                                   len(want)))


def token_agreement(tokens: list, reference: list) -> float:
    """The fraction of ``reference``'s positions (every row of the batch, every new
    token) at which ``tokens`` hold the same token; one ``tokens`` lacks counts as
    different (its shape is checked by ``tokens_identical``)."""
    equal = sum(got == want for row, reference_row in zip(tokens, reference) for got, want in zip(row, reference_row))
    return round(equal / sum(len(row) for row in reference), 4)


# -- output ----------------------------------------------------------------------------------


def _size(count: int) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _number(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _peer_table(rows: list) -> list:
    """The peers, each beside our variant of its precision (``bench.peers``)."""
    if not rows:
        return []
    lines = ["", "peers (bench.peers): ours faster = the peer's time over our variant's (above 1: we are faster); "
             "tokens = ours: the share of greedy tokens equal to our variant's, equal until: the first row's new "
             "tokens before the first difference", "",
             "| context | peer | weights | KV | prefill ms | ms/token | ms/token ÷ bound | ours | ours faster: "
             "prefill | per token | tokens = ours | equal until | loaded MiB |",
             "|---:|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        agreement = row["token_agreement_with_ours"]
        lines.append(
            f"| {row['context']} | {row['variant']} | {row['dtype']} | {row['kv_dtype']} | {row['prefill_ms']:.1f} | "
            f"{row['decode_ms_per_token']:.2f} | {row['roofline_ratio']:.2f} | {row['ours']} | "
            f"{_ratio(row['ours_prefill_speedup'])} | {_ratio(row['ours_decode_speedup'])} | "
            f"{'–' if agreement is None else f'{agreement:.1%}'} | {'–' if row['tokens_equal_until'] is None else row['tokens_equal_until']} | "
            f"{row['loaded_rss_mib']:.1f} |")
    return lines


def table(result: dict) -> str:
    """The markdown report, from the JSON record alone."""
    m, args = result["model"], result["args"]
    lines = [
        f"llama {m['num_hidden_layers']} layers, hidden {m['hidden_size']}, {m['num_attention_heads']} heads "
        f"({m['num_key_value_heads']} kv), vocab {m['vocab_size']}; batch {args['batch_size']}, "
        f"{args['new_tokens']} new tokens, {args['repeats']} repeats; preset {args['preset']}, "
        f"{args['threads']} math threads; "
        f"{result['machine']['cpu']} ({result['machine'].get('isa', 'ISA not recorded')}), "
        f"{result['machine']['usable_cores']} cores, Paddle {result['versions']['paddle']}; "
        f"MKL's code path in our predictors: {result['machine'].get('our_mkl_path', 'not recorded')}",
        "",
        "prefill: a run with 1 new token; ms/token: (whole run - prefill run) / (new tokens - 1); "
        f"speed-ups are {BASELINE}'s time over the row's (end to end: tokens/s over {BASELINE}'s).",
        f"bounds, at {args['threads']} threads on this machine"
        f"{' (--quick: smaller products)' if args.get('quick') else ''}: memory bandwidth "
        f"{result['limits']['bandwidth_gib_s']} GiB/s (the fastest of "
        + ", ".join(f"{name} {speed}" for name, speed in result["limits"].get("bandwidth_readers_gib_s", {}).items())
        + ") for the bytes a decode step reads (at the row's dtype), "
        f"GEMM {result['limits']['gemm_gflops']} GFLOP/s in float32 and "
        f"{result['limits']['gemm_gflops_bfloat16'] or 'none (no AVX-512)'} in bfloat16 for the prefill's matmuls "
        "(at the row's dtype); "
        "weights " + ", ".join(f"{mib} MiB in {dtype}" for dtype, mib in
                               {row["dtype"]: row["weights_mib"] for row in result["results"]}.items()) + "; "
        "loaded MiB: a predictor's RSS once made, above Python and Paddle.",
    ]
    if any(row["dtype"] != "float32" and not row.get("peer") for row in result["results"]):
        lines.append(f"vs float32: {FLOAT32_REFERENCE}'s time over the row's; tokens = float32: the share of greedy "
                     f"tokens equal to float32's ({FLOAT32_REFERENCE}'s, else the first float32 variant's); "
                     "bfloat16 may part from float32 at near-ties, which does not fail the run.")
    for loop in args["loops"]:
        rows = [r for r in result["results"] if r["loop"] == loop and not r.get("peer")]
        if not rows:  # e.g. static-cache alone on PaddleNLP's loop, which keeps its concat cache
            continue
        lines += [
            "", f"loop: {loop}", "",
            "| dtype | context | variant | prefill ms | ms/token | tokens/s | min–max | vs default: e2e | prefill "
            "| per token | vs legacy | prefill ÷ bound | ms/token ÷ bound | copies | copied/token "
            "| loaded MiB | peak RSS MiB | pass ms | vs float32: prefill | per token | tokens = float32 |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            pass_ms = "–" if row["pass_ms"] is None else f"{row['pass_ms']:.2f}"
            agreement = row["token_agreement_with_float32"]
            lines.append(
                f"| {row['dtype']} | {row['context']} | {row['variant']} | {row['prefill_ms']:.1f} | "
                f"{row['decode_ms_per_token']:.2f} | {row['tokens_per_s']:.2f} | "
                f"{row['min_tokens_per_s']:.2f}–{row['max_tokens_per_s']:.2f} | "
                f"{_ratio(row['ratio_to_paddlenlp_default'])} | {_ratio(row['prefill_speedup_vs_paddlenlp_default'])} "
                f"| {_ratio(row['decode_speedup_vs_paddlenlp_default'])} | {_ratio(row['ratio_to_legacy'])} | "
                f"{_number(row['prefill_roofline_ratio'])} | {row['roofline_ratio']:.2f} | "
                f"{row['copies']} | {_size(row['bytes_per_token'])} | {row['loaded_rss_mib']:.1f} | "
                f"{row['peak_rss_mib']:.1f} | {pass_ms} | {_ratio(row['prefill_speedup_vs_float32'])} | "
                f"{_ratio(row['decode_speedup_vs_float32'])} | {'–' if agreement is None else f'{agreement:.1%}'} |")
    lines += _peer_table([r for r in result["results"] if r.get("peer")])
    lines.append("")
    deep = result["deep_pass"]
    if deep is not None:
        lines.append(f"passes on a translated {deep['layers']}-layer export (hidden {deep['hidden_size']}, "
                     f"{deep['copies']} loop copies; exported in {deep['export_s']} s): remove_loop_assign "
                     f"{deep['remove_loop_assign']['ms']:.2f} ms ({deep['remove_loop_assign']['report']}), "
                     f"PR #9002 rule {deep['pr9002']['ms']:.2f} ms ({deep['pr9002']['report']})")
    differing = sorted({f"{row['loop']} {row['variant']} at {row['context']}" for row in result["results"]
                        if not row["tokens_identical"]})
    lines.append("tokens identical across the variants of a dtype and their runs: " +
                 ("yes" if result["tokens_identical"] else "NO (" + ", ".join(differing) + ")"))
    return "\n".join(lines)


# (record field, axis label, panel title)
PANELS = (("prefill_ms", "ms (a run with 1 new token)", "prefill"),
          ("decode_ms_per_token", "ms per decoded token", "per token"),
          ("ratio_to_paddlenlp_default", f"tokens/s ÷ {BASELINE}'s", "end to end, vs PaddleNLP's config"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    loops = [loop for loop in result["args"]["loops"] if any(r["loop"] == loop for r in result["results"])]
    contexts = result["args"]["contexts"]
    figure, axes = plt.subplots(len(loops), len(PANELS), figsize=(14, 4 * len(loops)), squeeze=False)
    for loop, row_axes in zip(loops, axes):
        for (key, label, title), axis in zip(PANELS, row_axes):
            for name in dict.fromkeys(r["variant"] for r in result["results"]):  # float32's, then bf16
                rows = [r for r in result["results"] if r["loop"] == loop and r["variant"] == name]
                if not rows or rows[0][key] is None:
                    continue
                xs, median = [r["context"] for r in rows], np.array([r[key] for r in rows])
                if key == "ratio_to_paddlenlp_default":
                    axis.plot(xs, median, marker="o", label=name)
                else:  # bars: min–max over the repeats
                    low = np.array([r["min_" + key] for r in rows])
                    high = np.array([r["max_" + key] for r in rows])
                    axis.errorbar(xs, median, yerr=[median - low, high - median], marker="o", capsize=3, label=name)
            if key == "ratio_to_paddlenlp_default":
                axis.axhline(1.0, color="grey", linewidth=0.8)
            if key == "prefill_ms":  # it grows with the context faster than linearly
                axis.set_yscale("log")
            axis.set(xscale="log", xlabel="context (prompt tokens)", ylabel=label, title=f"{loop}: {title}")
            axis.set_xlim(contexts[0] / 1.25, contexts[-1] * 1.25)
            axis.set_xticks(contexts, [str(c) for c in contexts])
            axis.minorticks_off()
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:  # not the 1.0 line alone
                axis.legend(fontsize=8)
    m = result["model"]
    figure.suptitle(f"greedy decoding on Paddle Inference (CPU): llama {m['num_hidden_layers']} layers, hidden "
                    f"{m['hidden_size']}; batch {result['args']['batch_size']}, {result['args']['new_tokens']} new "
                    f"tokens; medians, bars min–max; {result['machine']['cpu']}, Paddle "
                    f"{result['versions']['paddle']}", fontsize=9)
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
