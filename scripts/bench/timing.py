"""Timing the variants in rounds of child processes, one predictor in memory at a time.

Round after round (``--repeats``), every variant in turn gets a fresh child process
(``worker.py``): it creates the variant's predictor, then at each context runs the
warm-up runs and one timed prefill run and one timed whole run. Variants are
interleaved (A B C ... A B C ...), so that a slow phase of a shared machine hits every
variant alike, each prefill sits next to its whole run, and only one predictor's
weights are in memory at any time, whatever the model's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

WORKER = Path(__file__).resolve().with_name("worker.py")


class ChildFailed(RuntimeError):
    """A variant's child process failed (a crash of an engine included): one line says which and how."""


@dataclass
class ContextTiming:
    """One variant's runs at one context: whole runs of ``new_tokens`` and prefill runs
    (1 new token), in seconds, one of each per round; and its first round's memory."""

    full_s: list = field(default_factory=list)
    prefill_s: list = field(default_factory=list)
    tokens_identical: bool = True
    tokens: list | None = None  # the first whole run's token ids (batch rows)
    baseline_rss_mib: float = 0.0  # the child before the predictor: Python and Paddle
    loaded_rss_mib: float = 0.0  # the child once the predictor is made, above the baseline
    peak_rss_mib: float = 0.0  # the child's peak during its whole run at this context


def run_child(job: dict, scratch: Path) -> dict:
    """Run ``worker.py`` on ``job`` and return what it wrote. Whatever interrupts the
    wait (an error, Ctrl-C, SIGTERM turned into an exception) stops the child first."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix="job-") as directory:
        job_path, result_path = Path(directory) / "job.json", Path(directory) / "result.json"
        job_path.write_text(json.dumps(job))
        child = subprocess.Popen([sys.executable, str(WORKER), str(job_path), str(result_path)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = child.communicate()
        except BaseException:
            child.kill()
            child.wait()
            raise
        if child.returncode != 0:
            tail = stderr.strip().splitlines()[-1:] or ["no message"]
            raise ChildFailed(f"the {job['predictor'][0]} child for {job['predictor'][1]} failed "
                               f"(exit {child.returncode}): {tail[0]}")
        return json.loads(result_path.read_text())


def time_variants(variants: list, settings: dict, scratch: Path, progress) -> dict:
    """``{context: {variant: ContextTiming}}``. Tokens are checked on every run, warm-up
    included, against the first whole run of the first variant of the same dtype: a
    bfloat16 variant's greedy tokens may part from float32's (near-ties), so dtypes are
    compared by ``report.records`` (``token_agreement_with_float32``), not here."""
    job = {"contexts": settings["contexts"], "new_tokens": settings["new_tokens"], "warmup": settings["warmup"],
           "threads": settings["threads"],
           "prompt": {name: settings[name] for name in ("seed", "batch_size", "vocab_size")}}
    timings = {context: {v.name: ContextTiming() for v in variants} for context in settings["contexts"]}
    reference = {}
    for repeat in range(settings["repeats"]):
        for variant in variants:
            progress(f"round {repeat + 1}/{settings['repeats']}: {variant.name}")
            result = run_child({**job, "predictor": list(variant.predictor_spec)}, scratch)
            for context in settings["contexts"]:
                measured = result["contexts"][str(context)]
                timing = timings[context][variant.name]
                timing.prefill_s.append(measured["prefill_s"])
                timing.full_s.append(measured["full_s"])
                group = variant.name if variant.peer else variant.dtype  # a peer: its own runs (report.records)
                expected = reference.setdefault((context, group), measured["tokens"][0][1])
                if timing.tokens is None:
                    timing.tokens = measured["tokens"][0][1]
                timing.tokens_identical &= (
                    _shape(expected) == (settings["batch_size"], settings["new_tokens"])
                    and all(whole == expected and first == [row[:1] for row in expected]
                            for first, whole in measured["tokens"]))
                if repeat == 0:
                    timing.baseline_rss_mib = round(result["baseline_rss_kib"] / 1024, 1)
                    timing.loaded_rss_mib = round((result["loaded_rss_kib"] - result["baseline_rss_kib"]) / 1024, 1)
                    timing.peak_rss_mib = round(measured["peak_rss_kib"] / 1024, 1)
    return timings


def _shape(rows: list) -> tuple:
    return (len(rows), len(rows[0]) if rows else 0)
