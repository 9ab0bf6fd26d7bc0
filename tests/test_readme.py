"""The README is the truth about how to install and test: CI runs its test command."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick_start = text[text.index("## Quick start"):text.index("### GPU")]
    return re.findall(r"```\n(.+?)\n```", quick_start)


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert main_job.endswith("llm/predictor.py --model llama2 --remove_loop_assign") and "pytest" in tests
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def run_demo(*args):
    return subprocess.run([sys.executable, "-m", "paddlenlp_ext.demo", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_demo_reports_the_copies_it_removed_and_equal_tokens():
    result = run_demo("--prompt-length", "8", "--new-tokens", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.startswith(("translated ", "remove_loop_assign "))}
    translated, cleaned = int(rows["translated"][1]), int(rows["remove_loop_assign"][1])
    assert translated > 0 and cleaned == 0
    assert f"remove_loop_assign: removed {translated} copies from 1 loops; kept 0" in result.stdout
    assert rows["translated"][-1] == rows["remove_loop_assign"][-1] == "yes"


def test_demo_rejects_bad_arguments_in_one_line():
    result = run_demo("--new-tokens", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --new-tokens must be positive, got 0"
    assert "Traceback" not in result.stderr


def test_what_the_commands_write_is_not_in_the_repository():
    """The main command writes output.json, the README's routes write under out/: neither
    is tracked, and git ignores both (a clean clone stays clean after the README)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)

    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    assert git("ls-files", "output.json", "out").stdout == ""
    ignored = git("check-ignore", "output.json", "out/llama2-pir/model.json").stdout.split()
    assert ignored == ["output.json", "out/llama2-pir/model.json"]
