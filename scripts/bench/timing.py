"""Timing the variants side by side (interleaved) and their peak RSS (a child process each)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from paddlenlp_ext.quiet import quiet_paddle

from .models import prompt


@dataclass
class ContextTiming:
    """One variant's runs at one context: whole runs of ``new_tokens`` and prefill
    runs (1 new token), in seconds, paired by repeat."""

    full_s: list = field(default_factory=list)
    prefill_s: list = field(default_factory=list)
    tokens_identical: bool = True


def run_once(predictor, feed: dict) -> tuple[float, np.ndarray]:
    """Seconds of ``predictor.run()`` alone (the inputs are copied in before the timer
    starts) and the first output, the token ids."""
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(feed[name])
    start = time.perf_counter()
    predictor.run()
    seconds = time.perf_counter() - start
    return seconds, predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def time_context(variants: list, settings: dict, context: int) -> dict:
    """``{variant: ContextTiming}`` at one context.

    Every variant is warmed up (both run lengths), then each repeat runs every variant in
    turn, prefill then whole run (A B C ... A B C ...), so that a slow phase of a shared
    machine hits every variant alike and each prefill sits next to its whole run. Tokens
    are checked on every run, warm-up included, against the first variant's first run.
    """
    full_feed = prompt(settings, context, settings["new_tokens"])
    prefill_feed = prompt(settings, context, 1)
    expected_shape = (settings["batch_size"], settings["new_tokens"])
    reference = None
    timings = {v.name: ContextTiming() for v in variants}

    def run_both(variant) -> tuple[float, float]:
        nonlocal reference
        prefill, first = run_once(variant.predictor, prefill_feed)
        full, tokens = run_once(variant.predictor, full_feed)
        if reference is None:
            reference = tokens
        timings[variant.name].tokens_identical &= (
            tokens.shape == expected_shape and np.array_equal(tokens, reference)
            and np.array_equal(first, reference[:, :1]))
        return prefill, full

    for variant in variants:
        for _ in range(settings["warmup"]):
            run_both(variant)
    for _ in range(settings["repeats"]):
        for variant in variants:
            prefill, full = run_both(variant)
            timings[variant.name].prefill_s.append(prefill)
            timings[variant.name].full_s.append(full)
    return timings


# -- peak RSS, in a child process per variant --------------------------------------------------


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field_name + ":"))


def child_peak_rss(predictor_spec: tuple, feeds: list) -> tuple[int, list]:
    """In a fresh process: (RSS in KiB before the predictor, peak RSS of each feed's run).

    The peak is Linux's VmHWM, reset to the current RSS (``clear_refs`` 5) before each
    run. Not ``getrusage``'s ru_maxrss: it cannot be reset, and a spawned child's
    starts at the size of the parent it was forked from (Linux keeps it across exec).
    """
    with quiet_paddle():
        from .variants import create_predictor

    baseline = _status_kib("VmRSS")
    predictor = create_predictor(*predictor_spec)
    peaks = []
    for feed in feeds:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        run_once(predictor, feed)
        peaks.append(_status_kib("VmHWM"))
    return baseline, peaks


def measure_rss(variant, settings: dict) -> dict:
    """``{context: (baseline MiB, peak MiB)}`` of whole runs, from a spawned child (not
    forked: a fork would start with this process's memory, every predictor in it)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    feeds = [prompt(settings, context, settings["new_tokens"]) for context in settings["contexts"]]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        baseline, peaks = pool.submit(child_peak_rss, variant.predictor_spec, feeds).result()
    return {context: (round(baseline / 1024, 1), round(peak / 1024, 1))
            for context, peak in zip(settings["contexts"], peaks)}
