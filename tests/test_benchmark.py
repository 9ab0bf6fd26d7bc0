"""scripts/benchmark.py through its CLI: a tiny run writes the whole record and the plot
(its shape only: nothing here depends on timings), and a bad argument is one line."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hardware import requires_bfloat16

from paddlenlp_ext.cpu import computes_bfloat16

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
VARIANTS = ["paddlenlp-default", "legacy", "legacy+pr9002", "legacy+pass", "pir", "static-cache"]
LOOPS = ["generation_loop", "paddlenlp"]
LOOP_VARIANTS = {"generation_loop": VARIANTS, "paddlenlp": VARIANTS[:-1]}  # PaddleNLP's loop: concat cache only
# --quick made smaller still: one layer, one short context, one repeat, a 1-layer deep program.
TINY = ["--quick", "--threads", "1", "--layers", "1", "--hidden-size", "64", "--contexts", "16", "--new-tokens", "4", "--repeats", "1",
        "--pass-layers", "1"]
RECORD_FIELDS = {"loop", "variant", "runtime", "context", "new_tokens", "batch_size", "tokens_per_s",
                 "min_tokens_per_s", "max_tokens_per_s", "iqr_tokens_per_s", "runs_s", "prefill_ms", "min_prefill_ms",
                 "max_prefill_ms", "prefill_runs_s", "decode_ms_per_token", "min_decode_ms_per_token",
                 "max_decode_ms_per_token", "ratio_to_legacy", "ratio_to_paddlenlp_default",
                 "prefill_speedup_vs_paddlenlp_default", "decode_speedup_vs_paddlenlp_default", "copies",
                 "bytes_per_token", "peak_rss_mib", "baseline_rss_mib", "loaded_rss_mib", "pass_ms", "pass_report",
                 "tokens_identical", "threads", "weights_mib", "memory_bound_ms_per_token", "roofline_ratio",
                 "prefill_bound_ms", "prefill_roofline_ratio", "dtype", "prefill_bound_gemm_dtype",
                 "token_agreement_with_float32", "prefill_speedup_vs_float32", "decode_speedup_vs_float32"}


def bench(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


# The dtypes the shared tiny run times: bfloat16 beside float32 where oneDNN computes it.
TINY_DTYPES = ["float32", "bfloat16"] if computes_bfloat16() else ["float32"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run of every variant on both loops, in every dtype this CPU computes:
    ``(completed process, record, output path)``. The runs cost most of this file's time
    (the exports), so the tests of the record, the table and bfloat16 read one run."""
    output = tmp_path_factory.mktemp("tiny") / "results" / "bench.json"
    result = bench(*TINY, "--dtypes", ",".join(TINY_DTYPES), "--output", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    return result, json.loads(output.read_text()), output


def test_tiny_run_writes_the_record_the_table_and_the_plot(tiny_run):
    result, data, output = tiny_run
    assert set(data) >= {"results", "tokens_identical", "deep_pass", "limits", "machine", "versions", "model", "args"}
    assert data["limits"]["threads"] == 1 and data["args"]["preset"] == "toy"
    assert data["limits"]["bandwidth_gib_s"] > 0 and data["limits"]["gemm_gflops"] > 0
    readers = data["limits"]["bandwidth_readers_gib_s"]  # the bound is the fastest reader's
    assert {"numpy_float32_gemv", "paddle_float32_matmul"} <= set(readers)
    assert data["limits"]["bandwidth_gib_s"] == max(readers.values())
    # measured only where oneDNN computes bfloat16 (None elsewhere: no bfloat16 row can run)
    assert (data["limits"]["gemm_gflops_bfloat16"] or 0) > 0 if computes_bfloat16() else (
        data["limits"]["gemm_gflops_bfloat16"] is None)
    assert set(data["machine"]) >= {"cpu", "cores", "os"}
    assert set(data["versions"]) == {"python", "paddle", "paddlenlp", "paddlenlp_ext"}
    assert data["model"]["num_hidden_layers"] == 1 and data["model"]["hidden_size"] == 64
    every_row = data["results"]
    bf16 = ("bf16",) if "bfloat16" in TINY_DTYPES else ()  # after float32's rows on each loop
    assert [(row["loop"], row["variant"], row["context"]) for row in every_row] == [
        (loop, name, 16) for loop in LOOPS for name in [*LOOP_VARIANTS[loop], *bf16]]
    rows = [row for row in every_row if row["dtype"] == "float32"]
    for row in rows:
        assert set(row) >= RECORD_FIELDS
        assert row["new_tokens"] == 4 and len(row["runs_s"]) == len(row["prefill_runs_s"]) == 1
        assert row["tokens_per_s"] > 0 and row["prefill_ms"] > 0
        # one repeat: the per-token cost is that repeat's whole run minus its prefill run, over 3 tokens
        assert row["decode_ms_per_token"] == pytest.approx(
            (row["runs_s"][0] - row["prefill_runs_s"][0]) / 3 * 1e3, abs=0.02)
        assert row["tokens_identical"] is True
        assert row["peak_rss_mib"] > row["baseline_rss_mib"] > 0 and row["loaded_rss_mib"] > 0
        assert row["threads"] == 1
        assert row["roofline_ratio"] == pytest.approx(row["decode_ms_per_token"] / row["memory_bound_ms_per_token"],
                                                      rel=0.01)
        assert row["prefill_roofline_ratio"] == pytest.approx(row["prefill_ms"] / row["prefill_bound_ms"], rel=0.01)
        assert (row["pass_ms"] is None) == (row["variant"] in ("paddlenlp-default", "legacy", "pir"))
        assert row["token_agreement_with_float32"] is None and row["prefill_speedup_vs_float32"] is None
    for loop in LOOPS:
        by_variant = {row["variant"]: row for row in rows if row["loop"] == loop}
        baseline = by_variant["paddlenlp-default"]
        assert "PaddleNLP" in baseline["runtime"] and "PaddleNLP" not in by_variant["legacy"]["runtime"]
        assert baseline["copies"] == by_variant["legacy"]["copies"] > by_variant["legacy+pr9002"]["copies"]
        assert by_variant["legacy+pass"]["copies"] == by_variant["pir"]["copies"] == 0
        assert loop == "paddlenlp" or by_variant["static-cache"]["copies"] == 0
        assert by_variant["legacy"]["bytes_per_token"] > 0 and by_variant["legacy+pass"]["bytes_per_token"] == 0
        assert by_variant["legacy"]["ratio_to_legacy"] == 1.0
        assert baseline["ratio_to_paddlenlp_default"] == baseline["prefill_speedup_vs_paddlenlp_default"] == 1.0
        for name in LOOP_VARIANTS[loop]:  # the table: one row per record
            row = by_variant[name]
            assert f"| float32 | 16 | {name} | {row['prefill_ms']:.1f} | {row['decode_ms_per_token']:.2f} | " \
                   f"{row['tokens_per_s']:.2f} |" in result.stdout
    assert data["tokens_identical"] is True
    assert data["deep_pass"]["layers"] == 1 and "kept 0" in data["deep_pass"]["remove_loop_assign"]["report"]
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("args, message", [
    (["--contexts", "16,abc"], "argument --contexts: expected comma-separated integers, got '16,abc'"),
    (["--variants", "legacy,fast"], "argument --variants: unknown variant 'fast'"),
    (["--loops", "paddlenlp,beam"], "argument --loops: unknown loop 'beam'"),
    (["--hidden-size", "60"], "--hidden-size must be an even multiple of --heads, got 60 and 8"),
    (["--new-tokens", "1"], "--new-tokens must be at least 2, got 1"),
    (["--threads", "0"], "--threads must be positive, got 0"),
    (["--preset", "llama4"], "argument --preset: invalid choice: 'llama4'"),
    (["--dtypes", "float32,float16"], "argument --dtypes: unknown dtype 'float16' (choose from float32, bfloat16)"),
    (["--dtypes", "bfloat16,bfloat16"], "argument --dtypes: a dtype is named twice in 'bfloat16,bfloat16'"),
    (["--variants", "static-cache", "--loops", "paddlenlp"],
     "no variant of --variants static-cache runs on --loops paddlenlp (static-cache runs on generation_loop only)"),
    # 1000 layers of 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096 float32 values, and two
    # 32000 x 4096 tables: 754.9 GiB
    (["--preset", "llama2-7b", "--layers", "1000"],
     "--dtypes float32 cannot fit: this model's float32 weights are 754.9 GiB and the machine has"),
    (["--preset", "llama2-7b", "--layers", "1", "--pass-layers", "1000"],
     "--pass-layers 1000 cannot fit: the float32 program the passes are timed on holds 754.9 GiB of weights"),
], ids=["not a number", "unknown variant", "unknown loop", "hidden size", "one new token", "threads", "preset",
        "unknown dtype", "dtype twice", "static-cache on paddlenlp's loop", "does not fit", "pass program does not fit"])
def test_bad_argument_is_one_error_line(tmp_path, args, message):
    result = bench("--quick", *args, "--output", str(tmp_path / "out.json"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert list(tmp_path.iterdir()) == []


def _benchmark_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import benchmark
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return benchmark


def test_a_preset_sets_the_shape_and_flags_override_it(monkeypatch):
    benchmark = _benchmark_module()
    monkeypatch.setattr(benchmark, "_check_scratch_space", lambda settings: None)  # 66 GiB at llama3-8b's shape
    settings = benchmark.resolve(benchmark.build_parser().parse_args(
        ["--preset", "llama2-7b", "--layers", "1", "--vocab-size", "2000", "--contexts", "1024"]))
    assert {key: settings[key] for key in ("layers", "hidden_size", "heads", "kv_heads", "intermediate_size",
                                           "vocab_size", "preset")} == {
        "layers": 1, "hidden_size": 4096, "heads": 32, "kv_heads": 32, "intermediate_size": 11008,
        "vocab_size": 2000, "preset": "llama2-7b"}
    gqa = benchmark.resolve(benchmark.build_parser().parse_args(["--quick", "--preset", "llama3-8b", "--layers", "1"]))
    assert (gqa["hidden_size"], gqa["kv_heads"], gqa["intermediate_size"], gqa["vocab_size"]) == (4096, 8, 14336, 128256)


def test_a_failed_child_is_one_error_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    """A variant's child that fails (an engine that crashes: llama.cpp's AMX kernels
    segfaulted on Q8_0 on one CPU) stops the run with one line naming the child and how
    it ended, exit 1, and no record: a table without that variant would read as complete."""
    benchmark = _benchmark_module()
    from bench.timing import ChildFailed, run_child

    job = {"contexts": [16], "new_tokens": 2, "warmup": 0, "threads": 1,
           "prompt": {"seed": 0, "batch_size": 1, "vocab_size": 64}, "predictor": ["ours", str(tmp_path / "model")]}
    with pytest.raises(ChildFailed) as failed:
        run_child(job, tmp_path)  # no such program: the child raises and exits 1
    assert str(failed.value).startswith(f"the ours child for {tmp_path / 'model'} failed (exit 1): FileNotFoundError")

    def failing(settings):
        raise failed.value

    monkeypatch.setattr(benchmark, "benchmark", failing)
    output = tmp_path / "out" / "bench.json"
    assert benchmark.main([*TINY, "--output", str(output)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {failed.value}"]
    assert not output.exists()


def test_a_run_whose_files_do_not_fit_tmpdir_is_refused_before_it_starts(monkeypatch):
    """A whole bfloat16 llama2-7B writes its export and its prepared program, two copies
    of 12,852.5 MiB of weights (``docs/benchmark-llama2-7b.md``); Paddle's own error on
    a full disk comes after the export and says nothing of space."""
    import collections

    benchmark = _benchmark_module()
    monkeypatch.setattr(benchmark, "computes_bfloat16", lambda: True)  # a CPU oneDNN computes bfloat16 on
    args = benchmark.build_parser().parse_args(["--preset", "llama2-7b", "--dtypes", "bfloat16", "--loops",
                                                "generation_loop", "--pass-layers", "0"])
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(benchmark.shutil, "disk_usage", lambda path: usage(100 * 2**30, 0, 25 * 2**30))
    with pytest.raises(benchmark.BenchmarkError, match=r"^the run writes 25\.1 GiB of exports and prepared "
                                                        r"programs under .* and it has 25\.0 GiB free"):
        benchmark.resolve(args)
    monkeypatch.setattr(benchmark.shutil, "disk_usage", lambda path: usage(100 * 2**30, 0, 26 * 2**30))
    assert benchmark.resolve(args)["dtypes"] == ["bfloat16"]


def test_bfloat16_on_a_cpu_without_avx512_is_refused_before_it_starts(monkeypatch):
    benchmark = _benchmark_module()
    monkeypatch.setattr(benchmark, "computes_bfloat16", lambda: False)
    with pytest.raises(benchmark.BenchmarkError, match=r"^--dtypes bfloat16: this CPU has no AVX-512 .*; run "
                                                        r"--dtypes float32$"):
        benchmark.resolve(benchmark.build_parser().parse_args(["--quick", "--dtypes", "float32,bfloat16"]))


def test_a_default_pass_program_that_cannot_fit_is_skipped_saying_why(monkeypatch):
    """Given, ``--pass-layers`` is refused when it cannot fit ("pass program does not
    fit" above); the default 32 layers are skipped. 32 float32 layers four times
    llama2-7B's width hold about 400 GiB; the bfloat16 model itself, one such layer, 8.3."""
    benchmark = _benchmark_module()
    monkeypatch.setattr(benchmark, "_check_scratch_space", lambda settings: None)
    monkeypatch.setattr(benchmark, "computes_bfloat16", lambda: True)
    settings = benchmark.resolve(benchmark.build_parser().parse_args(
        ["--preset", "llama2-7b", "--layers", "1", "--hidden-size", "16384", "--intermediate-size", "44032",
         "--dtypes", "bfloat16"]))
    assert settings["pass_layers"] == 0
    assert settings["pass_layers_skipped"].startswith(
        "32 layers do not fit: the float32 program the passes are timed on holds 3")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kv_heads", [4, 1])
def test_the_weights_the_roofline_counts_are_the_models_parameters(kv_heads, dtype):
    """bench.roofline's formula against the parameters of the PaddleNLP llama it
    describes, built in ``dtype`` (as the benchmark builds a bfloat16-only model)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from bench.models import random_llama
        from bench.roofline import weight_bytes
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from paddlenlp_ext.paddle_modes import dygraph_mode

    settings = {"layers": 2, "hidden_size": 64, "heads": 4, "kv_heads": kv_heads, "intermediate_size": 96,
                "vocab_size": 50, "max_position_embeddings": 32, "seed": 0}
    with dygraph_mode():
        model = random_llama(settings, settings["layers"], dtype)
        assert {str(p.dtype) for p in model.parameters()} == {f"paddle.{dtype}"}
        parameters = sum(p.numel().item() * p.element_size() for p in model.parameters())
        embedding = model.llama.embed_tokens.weight.numel().item() * model.llama.embed_tokens.weight.element_size()
    assert weight_bytes(settings, dtype) == {"all": parameters, "embedding": embedding}


def test_sigterm_stops_the_run_and_removes_its_files(tmp_path):
    """SIGTERM during the timing rounds: exit 130, no temporary directory, no child left."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # one loop and one variant: a single export before the rounds
    run = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, "--loops", "generation_loop", "--variants", "legacy",
                            "--output", str(tmp_path / "out" / "bench.json")], stderr=subprocess.PIPE, text=True,
                           env=env)
    for line in run.stderr:
        if "round 1/1" in line:
            break
    scratch = [path for path in tmp_path.iterdir() if path.name.startswith("paddlenlp_ext-bench-")]
    assert len(scratch) == 1
    for _ in range(600):  # the round's line comes just before its job is written
        if any(scratch[0].rglob("job.json")):  # a child is at work
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no job was started")
    run.send_signal(signal.SIGTERM)
    rest = run.stderr.read()
    assert run.wait(timeout=60) == 130
    assert rest.strip().splitlines()[-1] == "error: interrupted"
    assert not scratch[0].exists() and not (tmp_path / "out" / "bench.json").exists()
    workers = subprocess.run(["pgrep", "-f", str(scratch[0])], capture_output=True, text=True)
    assert workers.stdout == ""


def _step_bytes_by_hand(data: dict, itemsize: int) -> float:
    """What one decode step must read, from the recorded shape: every weight but the
    embedding table, plus the K and V caches at the average decoding length."""
    m, args = data["model"], data["args"]
    h, layers, vocab, inter = m["hidden_size"], m["num_hidden_layers"], m["vocab_size"], m["intermediate_size"]
    kv = m["num_key_value_heads"] * h // m["num_attention_heads"]
    # per layer: q and o (h x h), k and v (h x kv), gate, up and down (h x inter), two norms
    weights = layers * (2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h) + vocab * h + h  # + the lm_head, final norm
    cache = 2 * layers * args["batch_size"] * (16 + args["new_tokens"] / 2) * kv
    return itemsize * (weights + cache)


@requires_bfloat16
def test_bfloat16_runs_beside_float32_on_the_same_weights(tiny_run):
    result, data, output = tiny_run
    rows = [row for row in data["results"] if row["loop"] == "generation_loop" and row["variant"] in (
        "static-cache", "bf16")]
    assert [(row["variant"], row["dtype"]) for row in rows] == [("static-cache", "float32"), ("bf16", "bfloat16")]
    float32, bf16 = rows
    for row in rows:
        assert set(row) >= RECORD_FIELDS and row["tokens_identical"] is True and row["loaded_rss_mib"] > 0
        assert row["prefill_bound_gemm_dtype"] == row["dtype"]
    bandwidth = data["limits"]["bandwidth_gib_s"] * 2**30
    for row, itemsize in ((float32, 4), (bf16, 2)):  # the bound is rounded to 4 decimals
        assert row["memory_bound_ms_per_token"] == pytest.approx(
            _step_bytes_by_hand(data, itemsize) / bandwidth * 1e3, rel=1e-3, abs=5e-5)
    assert bf16["weights_mib"] == pytest.approx(float32["weights_mib"] / 2, abs=0.1)
    # the same FLOPs, each over its dtype's GEMM throughput (bounds rounded to 4 decimals)
    limits = data["limits"]
    assert bf16["prefill_bound_ms"] == pytest.approx(
        float32["prefill_bound_ms"] * limits["gemm_gflops"] / limits["gemm_gflops_bfloat16"], abs=2e-4)
    assert bf16["copies"] == 0 and bf16["runtime"] == float32["runtime"]
    assert 0.0 <= bf16["token_agreement_with_float32"] <= 1.0 and float32["token_agreement_with_float32"] is None
    # The record rounds the speed-ups to 3 decimals (5e-4 at most): at a tiny model's
    # times (a per-token difference of runs can be near 0, or below under load) the
    # rounding is what is left, so the bound is absolute there.
    assert bf16["prefill_speedup_vs_float32"] == pytest.approx(float32["prefill_ms"] / bf16["prefill_ms"], rel=0.01,
                                                               abs=1e-3)
    assert bf16["decode_speedup_vs_float32"] == pytest.approx(
        float32["decode_ms_per_token"] / bf16["decode_ms_per_token"], rel=0.01, abs=1e-3)
    assert float32["prefill_speedup_vs_float32"] is None
    assert f"| bfloat16 | 16 | bf16 | {bf16['prefill_ms']:.1f} |" in result.stdout
    assert f"| {bf16['token_agreement_with_float32']:.1%} |" in result.stdout
    # PaddleNLP's loop has its bf16 row too (no static-cache row to score it against)
    (on_paddlenlp,) = [row for row in data["results"] if row["loop"] == "paddlenlp" and row["dtype"] == "bfloat16"]
    assert on_paddlenlp["variant"] == "bf16" and on_paddlenlp["tokens_identical"] is True
    assert on_paddlenlp["prefill_speedup_vs_float32"] is None
    assert result.stdout.count("| bfloat16 | 16 | bf16 |") == 2
    assert data["tokens_identical"] is True and data["args"]["dtypes"] == ["float32", "bfloat16"]
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def _bench_module(name):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module(f"bench.{name}")
    finally:
        sys.path.remove(str(SCRIPT.parent))


# The settings of a run whose children _fake_child plays.
FAKE_SETTINGS = {"contexts": [16], "new_tokens": 4, "warmup": 0, "threads": 1, "seed": 0, "batch_size": 1,
                 "vocab_size": 50, "repeats": 2, "layers": 1, "hidden_size": 64, "heads": 4, "kv_heads": 4,
                 "intermediate_size": 96}
LIMITS = {"bandwidth_gib_s": 10.0, "gemm_gflops": 100.0, "gemm_gflops_bfloat16": 200.0}


def _fake_child(tokens: dict):
    """run_child for time_variants: each variant's whole runs give ``tokens[name]``'s
    next entry (one run a round, no warm-up), at context 16."""
    runs = {name: iter(whole) for name, whole in tokens.items()}

    def run_child(job, scratch):
        whole = next(runs[job["predictor"][1]])
        return {"baseline_rss_kib": 1024, "loaded_rss_kib": 2048,
                "contexts": {"16": {"prefill_s": 0.01, "full_s": 0.04, "peak_rss_kib": 4096,
                                    "tokens": [([row[:1] for row in whole], whole)]}}}
    return run_child


@pytest.mark.parametrize("tokens, identical, agreement", [
    # bf16 parts from float32 after two tokens, the same in both its runs: not a failure
    ({"pir": [[[5, 6, 7, 8]]] * 2, "static-cache": [[[5, 6, 7, 8]]] * 2, "bf16": [[[5, 6, 9, 9]]] * 2},
     {"pir": True, "static-cache": True, "bf16": True}, 0.5),
    # bf16's own runs differ: that fails, float32's stand
    ({"pir": [[[5, 6, 7, 8]]] * 2, "static-cache": [[[5, 6, 7, 8]]] * 2, "bf16": [[[5, 6, 7, 8]], [[5, 6, 7, 9]]]},
     {"pir": True, "static-cache": True, "bf16": False}, 1.0),
    # float32 variants that disagree still fail; bf16 is compared with static-cache, not the first variant
    ({"pir": [[[5, 6, 7, 8]]] * 2, "static-cache": [[[5, 9, 9, 9]]] * 2, "bf16": [[[5, 9, 9, 8]]] * 2},
     {"pir": True, "static-cache": False, "bf16": True}, 0.75),
], ids=["bf16 parts from float32", "bf16 runs differ", "float32 variants differ"])
def test_bf16_tokens_are_checked_against_bf16_runs_and_scored_against_float32(monkeypatch, tmp_path, tokens,
                                                                              identical, agreement):
    timing, report, variants = _bench_module("timing"), _bench_module("report"), _bench_module("variants")
    monkeypatch.setattr(timing, "run_child", _fake_child(tokens))
    ran = [variants.Variant(name, "ours", ("ours", name), 0, [], None, None, dtype)
           for name, dtype in (("pir", "float32"), ("static-cache", "float32"), ("bf16", "bfloat16"))]
    timings = timing.time_variants(ran, FAKE_SETTINGS, tmp_path, lambda message: None)
    assert {name: timings[16][name].tokens_identical for name in tokens} == identical
    rows = report.records("generation_loop", ran, timings, FAKE_SETTINGS, LIMITS)
    assert [row["token_agreement_with_float32"] for row in rows] == [None, None, agreement]


def test_bfloat16_alone_runs_the_bf16_variant_only_on_both_loops(monkeypatch, tmp_path):
    """--dtypes bfloat16 alone: the bf16 variant only, on each loop, and nothing scored
    against a float32 run that did not happen."""
    benchmark, timing, report = _benchmark_module(), _bench_module("timing"), _bench_module("report")
    chosen = {"dtypes": ["bfloat16"], "variants": ["legacy", "static-cache"], "peers": []}
    assert [benchmark.loop_variants(chosen, loop) for loop in LOOPS] == [["bf16"], ["bf16"]]
    monkeypatch.setattr(timing, "run_child", _fake_child({"bf16": [[[5, 6, 7, 8]]] * 2}))
    ran = [_bench_module("variants").Variant("bf16", "ours", ("ours", "bf16"), 0, [], None, None, "bfloat16")]
    timings = timing.time_variants(ran, FAKE_SETTINGS, tmp_path, lambda message: None)
    (row,) = report.records("paddlenlp", ran, timings, FAKE_SETTINGS, LIMITS)
    assert row["tokens_identical"] is True and row["dtype"] == "bfloat16"
    assert row["token_agreement_with_float32"] is None and row["decode_speedup_vs_float32"] is None
    assert row["prefill_speedup_vs_float32"] is None


def test_a_random_checkpoint_loads_as_a_user_checkpoint_and_decodes_every_id(tmp_path):
    """``scripts/random_checkpoint.py``: what the whole-model runs through the drop-in
    predictor load (``docs/benchmark-llama2-7b.md``). Its vocabulary outgrows the shipped
    tokenizer's, which is padded to it, so every id the model may generate decodes."""
    from paddlenlp_ext.models import load_model
    from paddlenlp_ext.paddle_modes import dygraph_mode

    script = SCRIPT.parent / "random_checkpoint.py"
    output = tmp_path / "checkpoint"
    args = [sys.executable, str(script), "--preset", "toy", "--layers", "1", "--vocab-size", "2100", "--output"]
    result = subprocess.run([*args, str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    with dygraph_mode():
        model, tokenizer = load_model(output, dtype="bfloat16")
        assert {str(p.dtype) for p in model.parameters()} == {"paddle.bfloat16"}
    assert model.config.vocab_size == len(tokenizer) == 2100
    assert tokenizer.decode([5, 2099]).endswith("<pad99>")
    again = subprocess.run([*args, str(output)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: --output {output} exists; name a new directory"]
    small = subprocess.run([*args[:-3], "--vocab-size", "100", "--output", str(tmp_path / "small")],
                           capture_output=True, text=True, timeout=600)
    assert small.stderr.strip().splitlines()[-1] == (
        "error: --vocab-size must be at least the shipped tokenizer's 2000 pieces, got 100")
    assert not (tmp_path / "small").exists()
