"""Prefill and per-token time of two predictors held side by side, run in turn, round after round.

    python scripts/investigations/paired_steps.py A B [--threads 2] [--context 512] [--new-tokens 33] [--rounds 16]

A and B are ``KIND:PATH``, the benchmark's worker kinds (``bench.worker``): ``ours:PREFIX``
(a saved PIR program, ``create_paddle_predictor``), ``paddlenlp:DIR`` (PaddleNLP's static
predictor configuration), ``llama.cpp:FILE.gguf|F32`` or ``hf:DIR|bfloat16`` (the peers'
runners, ``bench.peers``: their extras installed). Each is created once in a child
process of its own and kept; then every round runs A's prefill (1 new token) and whole
run, then B's (B first in every other round). The prompt is the benchmark's
(``bench.models.prompt``, ``--vocab-size``), the per-token cost its definition (whole run
minus prefill, over the new tokens after the first).

Why, beside ``scripts/benchmark.py``: on a shared VM the memory bandwidth two threads get
swings 25-49 GiB/s between minutes, so the benchmark's rounds (a fresh child per variant,
minutes apart) give ratios that move 10-20% from run to run. Here the two runs of a
round are seconds apart and the ratio is taken per round, so a slow minute hits both.
It needs both predictors in memory at once (the benchmark never does): a layer's shape,
not a whole 7B model.

Found with it (2026-12-07, Zen 4, 2 vCPUs; a llama2-7B-shaped layer + 32000 head, 512
prompt tokens, 10-16 rounds): llama.cpp's BF16 step took 0.68x-0.71x the time of our
bfloat16 one at two threads, and Paddle's garbage-collector thread was half of why
(``compat.batch_cpu_garbage_collection``; after it 0.85x); kernel changes that helped
our products alone in a C++ loop were no faster or slower here
(``docs/benchmark-llama2-7b.md``, "Paired step for step").
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/: the benchmark's bench package
from paddlenlp_ext.cli_flags import OneLineParser


class PairedError(Exception):
    """A user error: one line, exit code 2."""


def build_parser():
    parser = OneLineParser(prog="scripts/investigations/paired_steps.py", description=__doc__.splitlines()[0])
    parser.add_argument("a", metavar="A", help="KIND:PATH, the reference (ratios are B's time over A's)")
    parser.add_argument("b", metavar="B", help="KIND:PATH")
    parser.add_argument("--threads", type=int, default=2, help="each predictor's threads (default 2)")
    parser.add_argument("--context", type=int, default=512, help="prompt tokens (default 512)")
    parser.add_argument("--new-tokens", type=int, default=33, help="tokens a whole run decodes (default 33)")
    parser.add_argument("--rounds", type=int, default=16, help="(default 16)")
    parser.add_argument("--vocab-size", type=int, default=32000, help="the models' (prompt ids are drawn below it)")
    parser.add_argument("--seed", type=int, default=0, help="the prompt's (default 0, the benchmark's)")
    return parser


def _job(spec: str, args) -> dict:
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise PairedError(f"{spec!r}: expected KIND:PATH, KIND one of ours, paddlenlp, llama.cpp, hf")
    return {"predictor": [kind, path], "threads": args.threads, "contexts": [args.context],
            "new_tokens": args.new_tokens,
            "prompt": {"seed": args.seed, "batch_size": 1, "vocab_size": args.vocab_size}}


def serve(job: dict) -> None:
    """The child: make the predictor, run both feeds once, then one run per line of stdin
    ("prefill" or "whole"), one JSON line each on stdout: seconds and the token ids."""
    from bench.models import prompt
    from bench.worker import create_runner

    from paddlenlp_ext.quiet import quiet_paddle

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what Paddle's C++ prints goes to stderr, not into the replies
    with quiet_paddle():
        runner = create_runner(job)
        context = job["contexts"][0]
        feeds = {"prefill": prompt(job["prompt"], context, 1),
                 "whole": prompt(job["prompt"], context, job["new_tokens"])}
        for feed in feeds.values():
            runner.run(feed)
        print("ready", file=replies, flush=True)
        for line in sys.stdin:
            seconds, tokens = runner.run(feeds[line.strip()])
            print(json.dumps({"s": seconds, "tokens": np.asarray(tokens).tolist()}), file=replies, flush=True)


class Child:
    def __init__(self, label: str, job: dict):
        self.name = f"{label} ({':'.join(job['predictor'])})"  # A and B may be the same spec
        self.log = tempfile.TemporaryFile("w+")  # not a pipe: a chatty child would fill it and stop
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(job)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise PairedError(f"{self.name}: its predictor could not be made: {self._last_words()}")

    def _last_words(self) -> str:
        self.process.wait()
        self.log.seek(0)
        return (self.log.read().strip().splitlines()[-1:] or [f"exit {self.process.returncode}"])[0]

    def run(self, what: str) -> tuple[float, list]:
        self.process.stdin.write(what + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise PairedError(f"{self.name}: it stopped in a {what} run: {self._last_words()}")
        reply = json.loads(reply)
        return reply["s"], reply["tokens"]

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # a child that stopped has no reader
            self.process.stdin.close()
        self.process.wait()
        self.log.close()


def paired(args) -> list[str]:
    children = [Child("A", _job(args.a, args))]
    try:
        children.append(Child("B", _job(args.b, args)))
        prefill = {child.name: [] for child in children}
        per_token = {child.name: [] for child in children}
        tokens = {}
        for round_index in range(args.rounds):
            for child in children if round_index % 2 == 0 else children[::-1]:
                first, _ = child.run("prefill")
                whole, ids = child.run("whole")
                prefill[child.name].append(first)
                per_token[child.name].append((whole - first) / (args.new_tokens - 1))
                tokens.setdefault(child.name, ids)
    finally:
        for child in children:
            child.close()
    lines = []
    for child in children:
        pre, tok = np.array(prefill[child.name]) * 1e3, np.array(per_token[child.name]) * 1e3
        lines.append(f"{child.name}: prefill {np.median(pre):.1f} ms [{pre.min():.1f}-{pre.max():.1f}], "
                     f"per token {np.median(tok):.2f} ms [{tok.min():.2f}-{tok.max():.2f}]")
    a, b = (child.name for child in children)
    for label, times in (("prefill", prefill), ("per token", per_token)):
        ratio = np.array(times[b]) / np.array(times[a])
        lines.append(f"{label}, B/A per round: median {np.median(ratio):.3f}, quartiles "
                     f"{np.quantile(ratio, 0.25):.3f}-{np.quantile(ratio, 0.75):.3f}")
    same = sum(x == y for x, y in zip(tokens[a][0], tokens[b][0]))
    lines.append(f"tokens: {same} of {len(tokens[a][0])} the same")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(json.loads(argv[1]))
        return 0
    args = build_parser().parse_args(argv)
    try:
        for name in ("threads", "rounds", "vocab_size", "context"):
            if getattr(args, name) <= 0:
                raise PairedError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        if args.new_tokens < 2:
            raise PairedError(f"--new-tokens must be at least 2, got {args.new_tokens}")
        for line in paired(args):
            print(line)
    except PairedError as error:
        print(f"paired_steps.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
