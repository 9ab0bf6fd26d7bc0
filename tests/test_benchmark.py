"""scripts/benchmark.py through its CLI: a tiny run writes the whole record and the plot
(its shape only: nothing here depends on timings), and a bad argument is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
VARIANTS = ["paddlenlp-default", "legacy", "legacy+seed", "legacy+pass", "pir", "static-cache"]
LOOPS = ["generation_loop", "paddlenlp"]
LOOP_VARIANTS = {"generation_loop": VARIANTS, "paddlenlp": VARIANTS[:-1]}  # PaddleNLP's loop: concat cache only
# --quick made smaller still: one layer, one short context, one repeat, a 1-layer deep program.
TINY = ["--quick", "--layers", "1", "--hidden-size", "64", "--contexts", "16", "--new-tokens", "4", "--repeats", "1",
        "--pass-layers", "1"]
RECORD_FIELDS = {"loop", "variant", "runtime", "context", "new_tokens", "batch_size", "tokens_per_s",
                 "min_tokens_per_s", "max_tokens_per_s", "iqr_tokens_per_s", "runs_s", "prefill_ms", "min_prefill_ms",
                 "max_prefill_ms", "prefill_runs_s", "decode_ms_per_token", "min_decode_ms_per_token",
                 "max_decode_ms_per_token", "ratio_to_legacy", "ratio_to_paddlenlp_default",
                 "prefill_speedup_vs_paddlenlp_default", "decode_speedup_vs_paddlenlp_default", "copies",
                 "bytes_per_token", "peak_rss_mib", "baseline_rss_mib", "pass_ms", "pass_report", "tokens_identical"}


def bench(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_tiny_run_writes_the_record_the_table_and_the_plot(tmp_path):
    output = tmp_path / "results" / "bench.json"
    result = bench(*TINY, "--output", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(output.read_text())
    assert set(data) >= {"results", "tokens_identical", "deep_pass", "machine", "versions", "model", "args"}
    assert set(data["machine"]) >= {"cpu", "cores", "os"}
    assert set(data["versions"]) == {"python", "paddle", "paddlenlp", "paddlenlp_ext"}
    assert data["model"]["num_hidden_layers"] == 1 and data["model"]["hidden_size"] == 64
    rows = data["results"]
    assert [(row["loop"], row["variant"], row["context"]) for row in rows] == [
        (loop, name, 16) for loop in LOOPS for name in LOOP_VARIANTS[loop]]
    for row in rows:
        assert set(row) >= RECORD_FIELDS
        assert row["new_tokens"] == 4 and len(row["runs_s"]) == len(row["prefill_runs_s"]) == 1
        assert row["tokens_per_s"] > 0 and row["prefill_ms"] > 0
        # one repeat: the per-token cost is that repeat's whole run minus its prefill run, over 3 tokens
        assert row["decode_ms_per_token"] == pytest.approx(
            (row["runs_s"][0] - row["prefill_runs_s"][0]) / 3 * 1e3, abs=0.02)
        assert row["tokens_identical"] is True
        assert row["peak_rss_mib"] > 0
        assert (row["pass_ms"] is None) == (row["variant"] in ("paddlenlp-default", "legacy", "pir"))
    for loop in LOOPS:
        by_variant = {row["variant"]: row for row in rows if row["loop"] == loop}
        baseline = by_variant["paddlenlp-default"]
        assert "PaddleNLP" in baseline["runtime"] and "PaddleNLP" not in by_variant["legacy"]["runtime"]
        assert baseline["copies"] == by_variant["legacy"]["copies"] > by_variant["legacy+seed"]["copies"]
        assert by_variant["legacy+pass"]["copies"] == by_variant["pir"]["copies"] == 0
        assert loop == "paddlenlp" or by_variant["static-cache"]["copies"] == 0
        assert by_variant["legacy"]["bytes_per_token"] > 0 and by_variant["legacy+pass"]["bytes_per_token"] == 0
        assert by_variant["legacy"]["ratio_to_legacy"] == 1.0
        assert baseline["ratio_to_paddlenlp_default"] == baseline["prefill_speedup_vs_paddlenlp_default"] == 1.0
        for name in LOOP_VARIANTS[loop]:  # the table: one row per record
            row = by_variant[name]
            assert f"| 16 | {name} | {row['prefill_ms']:.1f} | {row['decode_ms_per_token']:.2f} | " \
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
], ids=["not a number", "unknown variant", "unknown loop", "hidden size", "one new token"])
def test_bad_argument_is_one_error_line(tmp_path, args, message):
    result = bench("--quick", *args, "--output", str(tmp_path / "out.json"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert list(tmp_path.iterdir()) == []
