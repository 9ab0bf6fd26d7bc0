"""One child process of the benchmark: it creates one variant's predictor, runs every
context (warm-up runs, then one timed prefill run and one timed whole run) and writes
what it measured as JSON. ``python worker.py JOB.json RESULT.json``.

Its own process, so that the benchmark holds one predictor's weights at a time and each
child's resident memory is that predictor's alone (Linux's ``/proc/self/status``).
The job: ``{"predictor": [kind, path], "threads": N or null, "contexts": [...],
"prompt": {seed, batch_size, vocab_size}, "new_tokens": N, "warmup": N}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: bench is a package of the scripts directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.models import prompt
from bench.peers import PEERS, import_engine
from bench.peers import create_runner as create_peer_runner


def status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field_name + ":"))


def reset_peak_rss() -> None:
    """Reset Linux's VmHWM to the current RSS (``clear_refs`` 5). Not ``getrusage``'s
    ru_maxrss: it cannot be reset."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def create_predictor(kind: str, path: str, threads: int | None):
    """``kind`` "paddlenlp": PaddleNLP's static-predictor config on the legacy directory
    ``path``; "ours": ``create_paddle_predictor`` on the saved PIR program ``path`` (a
    prefix). ``threads``: Paddle Inference's CPU math threads (None: Paddle's default)."""
    from paddle import inference

    from paddlenlp_ext.inference import create_paddle_predictor
    from paddlenlp_ext.paddle_config import paddlenlp_static_config

    if kind == "paddlenlp":
        config = paddlenlp_static_config(path)
        if threads is not None:
            config.set_cpu_math_library_num_threads(threads)
        return inference.create_predictor(config)
    return create_paddle_predictor(path, "cpu", None, cpu_threads=threads)


def run_once(predictor, feed: dict) -> tuple[float, np.ndarray]:
    """Seconds of ``predictor.run()`` alone (the inputs are copied in before the timer
    starts) and the first output, the token ids."""
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(feed[name])
    start = time.perf_counter()
    predictor.run()
    seconds = time.perf_counter() - start
    return seconds, predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


class PaddleRunner:
    """A Paddle Inference predictor (``create_predictor``) behind the peers' ``run(feed)``."""

    def __init__(self, kind: str, path: str, threads: int | None):
        self.predictor = create_predictor(kind, path, threads)

    def run(self, feed: dict) -> tuple[float, np.ndarray]:
        return run_once(self.predictor, feed)


PEER_KINDS = {peer.engine for peer in PEERS.values()}  # run without Paddle in the process


def create_runner(job: dict):
    kind, path = job["predictor"]
    if kind in PEER_KINDS:
        return create_peer_runner(kind, path, job["threads"], max(job["contexts"]) + job["new_tokens"])
    return PaddleRunner(kind, path, job["threads"])


def run_job(job: dict) -> dict:
    from paddlenlp_ext.quiet import quiet_paddle

    with quiet_paddle():
        # the engine's libraries before the baseline RSS: they are not the predictor
        if job["predictor"][0] in PEER_KINDS:
            import_engine(job["predictor"][0])
        else:
            import paddle  # noqa: F401

        baseline = status_kib("VmRSS")
        start = time.perf_counter()
        predictor = create_runner(job)
        result = {"baseline_rss_kib": baseline, "loaded_rss_kib": status_kib("VmRSS"),
                  "load_s": time.perf_counter() - start, "contexts": {}}
        for context in job["contexts"]:
            prefill_feed = prompt(job["prompt"], context, 1)
            full_feed = prompt(job["prompt"], context, job["new_tokens"])
            tokens = []  # every run's token ids, warm-up included: (prefill's, whole run's)
            for _ in range(job["warmup"]):
                tokens.append((predictor.run(prefill_feed)[1].tolist(), predictor.run(full_feed)[1].tolist()))
            prefill_s, first = predictor.run(prefill_feed)
            reset_peak_rss()  # contexts run in increasing order: what an earlier one left counts too
            full_s, whole = predictor.run(full_feed)
            tokens.append((first.tolist(), whole.tolist()))
            result["contexts"][str(context)] = {"prefill_s": prefill_s, "full_s": full_s, "tokens": tokens,
                                                "peak_rss_kib": status_kib("VmHWM")}
    return result


def main(argv: list[str]) -> None:
    job_path, result_path = argv
    result = run_job(json.loads(Path(job_path).read_text()))
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
