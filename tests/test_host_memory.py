"""host_memory: a process running one of our CPU predictors keeps freed host memory
mapped, so a run's large tensors do not page-fault afresh every time (at llama2-7B's
layer shape that was 5,000-18,000 faults and 25-70 ms of a concat loop's step); a
process that has not asked for our predictors, or whose user tuned glibc's allocator
or opted out, is left as it was.

Each route runs in a fresh process (the setting is process-wide): 64 MiB is 16,384
pages, so a route that maps its blocks afresh faults at least that often per block."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from host_memory_child import build_scale_model
from memory_child import build_legacy_model

BLOCK_PAGES = 16384


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("host_memory")
    build_scale_model(str(directory / "scale" / "model"))
    build_legacy_model(str(directory / "legacy"))
    return directory


def _start(route: str, directory: Path, **env) -> subprocess.Popen:
    child_env = {name: value for name, value in os.environ.items()
                 if not name.startswith("MALLOC_") and name not in ("GLIBC_TUNABLES", "PADDLENLP_EXT_KEEP_FREED_MEMORY")}
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("host_memory_child.py")), route,
                             str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**child_env, **env})


def _faults(child: subprocess.Popen) -> dict:
    out, err = child.communicate(timeout=600)
    assert child.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_our_predictors_keep_freed_memory_mapped_unless_the_user_tuned_the_allocator(model_dir):
    children = {
        "ours": _start("ours", model_dir),
        "ours, user-tuned": _start("ours", model_dir, MALLOC_MMAP_MAX_="65536"),  # glibc's default
        "ours, opted out": _start("ours", model_dir, PADDLENLP_EXT_KEEP_FREED_MEMORY="0"),
        "hook": _start("hook", model_dir),
        "paddlenlp": _start("paddlenlp", model_dir),
    }
    faults = {route: _faults(child) for route, child in children.items()}
    # A run copies its 64 MiB input in and its 64 MiB output out.
    assert faults["ours"]["run_faults"] < BLOCK_PAGES // 8, faults
    for route in ("ours, user-tuned", "ours, opted out"):
        assert faults[route]["run_faults"] > BLOCK_PAGES, (route, faults)
    for route in ("ours", "hook"):
        assert faults[route]["block_faults"] < BLOCK_PAGES // 8, (route, faults)
        # what one thread freed serves another thread's next block (one arena)
        assert faults[route]["threads_block_faults"] < BLOCK_PAGES // 8, (route, faults)
    for route in ("ours, user-tuned", "ours, opted out", "paddlenlp"):
        assert faults[route]["block_faults"] >= BLOCK_PAGES, (route, faults)
        assert faults[route]["threads_block_faults"] >= BLOCK_PAGES, (route, faults)
