"""Both loop-copy passes timed on a deep translated export."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .models import export_model


def time_rewrite(model_dir: Path, rewrite, warmup: int, repeats: int) -> tuple[float, str, object]:
    """Median ms of ``rewrite(loaded)`` over ``repeats`` runs, each on a fresh translation
    (a pass runs once per program) after ``warmup`` untimed ones; with the last run's
    report summary and program."""
    from paddlenlp_ext.program_files import load_program

    times = []
    for _ in range(warmup + repeats):
        loaded = load_program(model_dir)
        start = time.perf_counter()
        report = rewrite(loaded)
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times[warmup:]), 2), report.summary(), loaded


def deep_pass(settings: dict, workdir: Path, progress) -> dict | None:
    """Both passes timed on a translated legacy export of ``--pass-layers`` layers."""
    if not settings["pass_layers"]:
        return None
    from paddlenlp_ext import remove_loop_assign, remove_loop_assign_pr9002
    from paddlenlp_ext.program_files import count_loop_copies, load_program

    progress(f"passes on a {settings['pass_layers']}-layer program")
    start = time.perf_counter()
    legacy = export_model(settings, settings["pass_layers"], workdir / "deep", formats=("legacy",))["legacy"]
    export_s = time.perf_counter() - start
    rules = {"remove_loop_assign": lambda loaded: remove_loop_assign(loaded.program, outputs=loaded.outputs),
             "pr9002": lambda loaded: remove_loop_assign_pr9002(loaded.program)}
    result = {"layers": settings["pass_layers"], "hidden_size": settings["hidden_size"],
              "export_s": round(export_s, 1), "copies": count_loop_copies(load_program(legacy).program)}
    for name, rule in rules.items():
        ms, report, _ = time_rewrite(legacy, rule, settings["warmup"], settings["repeats"])
        result[name] = {"ms": ms, "report": report}
    return result
