"""Where a decoding run's time goes, per op type: the prefill and one decode step, per variant.

    python scripts/profile_ops.py [--context 1024] [--decode-steps 8] [--variants paddlenlp-default,legacy+pass]

The benchmark's llama (``bench.models``, ``--preset``'s shape, the toy's by default)
is exported by ``--loop``; each variant (``bench.variants``: the same predictors the
benchmark times) runs once untimed, then twice under Paddle's profiler (CPU): with 1 new
token (the prefill) and with 1 + ``--decode-steps``. Per op type the table gives the
prefill's self time (an op's time minus the ops it ran inside it, so a ``while`` counts
its own bookkeeping only) and one decode step's: the longer run's ops inside its
``while`` over ``--decode-steps`` (the loop's iterations), or, for a runtime whose trace
shows no while, (longer run - prefill run) / ``--decode-steps`` (then the prefill's
jitter lands on the ops both share); each with its share of its total. A profiled run is slower than a
timed one; the shares are what to read. Op names are the runtime's: legacy ops on the old
IR, ``pd_op.*`` / ``onednn_op.*`` on the new IR.

The script exports its model in the same process, running MKL before any predictor
is made, so the MKL code path our predictors set on AMD processors
(``paddlenlp_ext.mkl_dispatch``) is in force only if ``MKL_DEBUG_CPU_TYPE=5`` is in the
environment the script starts with; it applies to every variant then.
"""

from __future__ import annotations

import collections
import glob
import itertools
import json
import re
import sys
import tempfile
from pathlib import Path

from bench.models import PRESETS, default_intermediate_size, export_model, prompt
from bench.worker import create_predictor, run_once
from bench.variants import LOOP_VARIANTS, RUNNERS, VARIANTS, exported_formats

from paddlenlp_ext.cli_flags import OneLineParser
from paddlenlp_ext.options import LOOPS
from paddlenlp_ext.quiet import quiet_paddle, quiet_paddlenlp

SETTINGS = {"seed": 0, "batch_size": 1, "warmup": 0, "repeats": 1}


def build_parser():
    parser = OneLineParser(prog="scripts/profile_ops.py", description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens (default 1024)")
    parser.add_argument("--decode-steps", type=int, default=8, help="decode steps profiled (default 8)")
    parser.add_argument("--variants", default="paddlenlp-default,legacy+pass",
                        help=f"comma-separated, from {','.join(VARIANTS)} (default paddlenlp-default,legacy+pass)")
    parser.add_argument("--loop", choices=LOOPS, default="generation_loop", help="(default generation_loop)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="toy",
                        help="the model's shape, as benchmark.py's (default toy); the flags below override it")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument("--threads", type=int, help="Paddle Inference's CPU math threads (default: Paddle's)")
    parser.add_argument("--top", type=int, default=12, help="op types listed per variant (default 12)")
    return parser


def op_self_times(trace_dir: str) -> tuple[dict, dict]:
    """``({op type: self microseconds}, the same for the ops run inside a while op)``
    from the profiler's chrome trace in ``trace_dir``."""
    (path,) = glob.glob(f"{trace_dir}/*.json")
    data = json.loads(Path(path).read_text())
    events = [e for e in (data["traceEvents"] if isinstance(data, dict) else data) if e.get("cat") == "Operator"]
    totals, in_loop = collections.Counter(), collections.Counter()
    by_thread = collections.defaultdict(list)
    for event in events:
        by_thread[event["tid"]].append(event)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        open_ops = []  # [end time, name, run by a loop] of the ops enclosing the current one
        for event in thread_events:
            while open_ops and open_ops[-1][0] <= event["ts"]:
                open_ops.pop()
            name = re.sub(r"\[[^\]]*\]$", "", event["name"])  # the trace appends "[12.3 us]"
            # run by a loop: inside a while, or inside an op that is
            looped = bool(open_ops) and (open_ops[-1][2] or "while" in open_ops[-1][1])
            totals[name] += event["dur"]
            if looped:
                in_loop[name] += event["dur"]
            if open_ops:
                totals[open_ops[-1][1]] -= event["dur"]
                if open_ops[-1][2]:
                    in_loop[open_ops[-1][1]] -= event["dur"]
            open_ops.append([event["ts"] + event["dur"], name, looped])
    return totals, in_loop


def profiled_run(predictor, feed: dict) -> tuple[dict, dict]:
    import paddle.profiler as profiler

    with tempfile.TemporaryDirectory() as trace_dir:
        prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU],
                                 on_trace_ready=profiler.export_chrome_tracing(trace_dir))
        prof.start()
        run_once(predictor, feed)
        prof.stop()
        return op_self_times(trace_dir)


def profile(predictor, settings: dict, context: int, steps: int) -> tuple[dict, dict]:
    """(prefill µs per op type, one decode step's µs per op type)."""
    prefill_feed, long_feed = prompt(settings, context, 1), prompt(settings, context, 1 + steps)
    run_once(predictor, long_feed)  # untimed: first-run costs
    prefill, _ = profiled_run(predictor, prefill_feed)
    longer, in_loop = profiled_run(predictor, long_feed)
    if in_loop:
        return prefill, {name: value / steps for name, value in in_loop.items()}
    return prefill, {name: (longer[name] - prefill.get(name, 0)) / steps for name in longer}


def _top(times: dict, count: int) -> list[str]:
    total = sum(v for v in times.values() if v > 0)
    ranked = sorted(((v, k) for k, v in times.items() if v > 0), reverse=True)[:count]
    return [f"{name} {value / 1e3:.2f} ms ({100 * value / total:.0f}%)" for value, name in ranked] + \
        [f"total {total / 1e3:.1f} ms"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in LOOP_VARIANTS[args.loop]]
    if unknown or args.context < 1 or args.decode_steps < 1:
        print(f"error: unknown variant {unknown[0]!r} for --loop {args.loop}" if unknown else
              "error: --context and --decode-steps must be positive", file=sys.stderr)
        return 2
    given = {name: getattr(args, name) for name in ("layers", "hidden_size", "vocab_size")
             if getattr(args, name) is not None}
    settings = {**SETTINGS, **PRESETS[args.preset], **given,
                "max_position_embeddings": args.context + args.decode_steps + 1, "new_tokens": 1 + args.decode_steps}
    if settings["intermediate_size"] is None:
        settings["intermediate_size"] = default_intermediate_size(settings["hidden_size"])
    with quiet_paddle(), tempfile.TemporaryDirectory() as scratch:
        import paddle

        quiet_paddlenlp()
        exports = export_model(settings, args.layers, Path(scratch), args.loop, exported_formats(names))
        paddle.enable_static()
        for name in names:
            variant = RUNNERS[name](exports, Path(scratch) / "variants", settings)
            predictor = create_predictor(*variant.predictor_spec, args.threads)
            prefill, step = profile(predictor, settings, args.context, args.decode_steps)
            del predictor  # one predictor's weights in memory at a time
            print(f"\n{name} ({variant.runtime}), context {args.context}")
            print("| prefill | one decode step |\n|---|---|")
            for left, right in itertools.zip_longest(_top(prefill, args.top), _top(step, args.top), fillvalue=""):
                print(f"| {left} | {right} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
