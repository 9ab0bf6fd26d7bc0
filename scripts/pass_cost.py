"""How long remove_loop_assign takes as programs grow: many loops, and a deep llama.

    python scripts/pass_cost.py [--loops 100 400 1600] [--layers 32] [--repeats 3]

- ``N loops``: a program of N while loops one after another, each feeding the
  next, each body ending with a translated-style copy chain (two copies of one
  value) and a second loop variable: 2N removable copies. The time per loop
  should stay flat as N grows (the pass is linear in the loops; it was quadratic
  before issue 27).
- ``llama L layers``: greedy decoding of a random llama (hidden 512) exported in
  the legacy format and translated, as ``StaticGenerationModel`` loads it.

Each program is rebuilt for every repeat; only the pass is timed; medians are
printed with min and max. ``--layers 0`` skips the llama (its export takes a while).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def chained_loops(count: int):
    """(program, outputs) of ``count`` loops in a row, 2 removable copies each."""
    import paddle
    from paddle import _C_ops

    def body(i, x, y):
        new = x * 2 + y
        first = _C_ops.assign_out_(new, x)
        return [i + 1, _C_ops.assign_out_(new, first), y + 1]

    main = paddle.static.Program()
    with paddle.static.program_guard(main, paddle.static.Program()):
        x = paddle.static.data("x", [2, 3], "float32")
        limit = paddle.full([1], 3, "int64")
        for _ in range(count):
            start = paddle.full([1], 0, "int64")
            _, x, _ = paddle.static.nn.while_loop(lambda i, x, y: i < limit, body, [start, x, x * 0])
    return main, [x]


# The benchmark's llama (bench.models), hidden 512, at this script's depth.
LLAMA = {"vocab_size": 1000, "hidden_size": 512, "intermediate_size": 1376, "heads": 8, "kv_heads": 8,
         "max_position_embeddings": 2048, "seed": 0}


def llama_program(layers: int, workdir: Path):
    """A function building (program, outputs) of a translated ``layers``-layer llama loop."""
    from bench.models import export_model

    from paddlenlp_ext.inference import load_program

    legacy = export_model(LLAMA, layers, workdir, formats=("legacy",))["legacy"]

    def build():
        loaded = load_program(legacy)
        return loaded.program, loaded.outputs

    return build


def time_pass(build, repeats: int) -> tuple[list[float], str]:
    from paddlenlp_ext import remove_loop_assign

    times, summary = [], ""
    for _ in range(repeats):
        program, outputs = build()
        start = time.perf_counter()
        report = remove_loop_assign(program, outputs=outputs)
        times.append(time.perf_counter() - start)
        summary = report.summary()
    return times, summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.loops) or args.layers < 0:
        print("error: --repeats and --loops must be positive, --layers not negative", file=sys.stderr)
        return 2
    from paddlenlp_ext.quiet import quiet_paddle, quiet_paddlenlp

    with quiet_paddle():
        quiet_paddlenlp()
        return _run(args)


def _run(args) -> int:
    import paddle

    paddle.enable_static()
    cases = [(f"{n} loops", lambda n=n: chained_loops(n), n) for n in args.loops]
    with tempfile.TemporaryDirectory() as workdir:
        if args.layers:
            cases.append((f"llama {args.layers} layers", llama_program(args.layers, Path(workdir)), 1))
        print("| program | pass s (median) | min-max | ms per loop | report |\n|---|---:|---:|---:|---|")
        for name, build, loops in cases:
            times, summary = time_pass(build, args.repeats)
            median = statistics.median(times)
            print(f"| {name} | {median:.3f} | {min(times):.3f}-{max(times):.3f} | {median * 1e3 / loops:.2f} "
                  f"| {summary} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
