"""Issue 16: a predictor of ours holds the weights once, as PaddleNLP's config does.

Each route runs in a fresh process on a loop model with a 256 MiB parameter matrix;
its RSS after the predictor is made, after one run, and at its peak while it was made,
above the RSS before (Python, Paddle and our package loaded), must stay under 1.5x the
weights: a second copy (the translated program's scope, kept by Paddle until exit, or
held while Paddle Inference loads its own) makes it 2x and more. The loop's
product is one ``passes.loop_weight_matmul`` rewrites, so the rewritten program is
measured too.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from memory_child import WEIGHT_ELEMENTS, build_legacy_model

from paddlenlp_ext import host_memory
from paddlenlp_ext.program_files import load_program

WEIGHT_MIB = WEIGHT_ELEMENTS * 4 / 2**20
ROUTES = ("model", "second model", "hook", "paddle-default", "paddlenlp")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """The legacy model, and the directory ``convert`` makes of it."""
    from paddlenlp_ext.convert import convert

    legacy = tmp_path_factory.mktemp("memory") / "legacy"
    build_legacy_model(str(legacy))
    converted = legacy.parent / "converted"
    convert(legacy, converted)
    return {"legacy": legacy, "converted": converted}


def _predictor_mib(route: str, directory: Path, **env) -> subprocess.Popen:
    child_env = {name: value for name, value in os.environ.items() if name != host_memory.HUGE_PAGES_VARIABLE}
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("memory_child.py")), route, str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**child_env, **env})


@pytest.fixture(scope="module")
def route_sizes(model_dirs) -> dict:
    """``{route: what its child printed}``; "model, huge pages off": the user opted out."""
    # All children at once: each measures only its own process.
    children = {route: _predictor_mib(route, model_dirs["converted" if route == "paddle-default" else "legacy"])
                for route in ROUTES}
    children["model, huge pages off"] = _predictor_mib("model", model_dirs["legacy"],
                                                       **{host_memory.HUGE_PAGES_VARIABLE: "0"})
    sizes = {}
    for route, child in children.items():
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        sizes[route] = json.loads(out.strip().splitlines()[-1])
    return sizes


def test_every_route_holds_the_weights_once(route_sizes):
    above = {}
    for route in ROUTES:
        sizes = route_sizes[route]
        above[route] = (sizes["after_kib"] - sizes["before_kib"]) / 1024
        above[route + ", run"] = (sizes["after_run_kib"] - sizes["before_kib"]) / 1024
        above[route + ", peak"] = (sizes["peak_kib"] - sizes["before_kib"]) / 1024
    assert above["paddlenlp"] > 0.9 * WEIGHT_MIB, above  # the measure sees the weights at all
    for route in ("model", "second model", "hook", "paddle-default"):
        for when in ("", ", run", ", peak"):
            assert above[route + when] < 1.5 * WEIGHT_MIB, (route + when, above)


def test_our_cpu_predictors_hold_the_weights_on_huge_pages(route_sizes):
    """Our predictors' weights are collapsed into transparent huge pages (a decode step
    reads them faster: ``host_memory``), with the same RSS (the test above); Paddle's
    own configurations and a user who opted out get none (so the measure is of ours)."""
    if host_memory.huge_pages_refused():
        pytest.skip(f"no huge pages here: {host_memory.huge_pages_refused()}")
    huge = {route: sizes["huge_kib"] / 1024 for route, sizes in route_sizes.items()}
    for route in ("model", "second model", "hook"):
        assert huge[route] > 0.9 * WEIGHT_MIB, (route, huge)
    for route in ("paddle-default", "paddlenlp", "model, huge pages off"):
        assert huge[route] < 0.1 * WEIGHT_MIB, (route, huge)


def test_a_dropped_loaded_program_frees_its_parameters(model_dirs):
    loaded = load_program(model_dirs["legacy"])
    scope = loaded.scope
    assert scope.local_var_names()  # the parameter, and Paddle's feed/fetch lists
    del loaded
    assert scope.local_var_names() == []
