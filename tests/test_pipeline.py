"""passes.pipeline: the one place that says which passes run, in which order, on every
route (our predictors, the hook, convert, the save hook); and the export cache's key,
which covers the source of every module that shapes a program."""

import gc
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
from onednn_cases import CONV_FEED, CONV_SHAPE, conv_loop, save
from onednn_random import build_onednn_program

import paddlenlp_ext
import paddlenlp_ext.inference as inference
import paddlenlp_ext.program_files as program_files
from paddlenlp_ext import export_cache
from paddlenlp_ext.passes import pipeline


def names(steps):
    return [step.name for step in steps]


FIRST = ["float32_outputs", "transpose_perms"]  # every route
# The loop's float32 weight products: on our kernel first on AMD processors, then MKL's GEMM.
WEIGHTS = (["loop_float32_gemv"] if pipeline.float32_gemv_pays() else []) + ["loop_weight_matmul"]
# The loop's float32 attention products: on our batched kernel where the float32 weights' are.
FLOAT32_ATTENTION = ["loop_float32_batched_matmul"] if pipeline.float32_gemv_pays() else []
NORM = ["loop_rms_norm"]  # a loop's RMSNorms, where the kernels exist (the step says why not elsewhere)
GUARD = ["onednn_inplace_guard"]
BROADCAST = ["onednn_broadcast_add"]  # wherever oneDNN's fuse passes run


@pytest.mark.parametrize("device, onednn, batch_size, optimize, expected", [
    ("cpu", "all", 1, True,
     FIRST + ["remove_loop_assign", "loop_cache_layout", *WEIGHTS, "loop_bfloat16_gemv",
              "loop_bfloat16_batched_matmul", *FLOAT32_ATTENTION, *NORM] + BROADCAST + ["inplace_reads"] + GUARD),
    ("cpu", "all", pipeline.ADDMM_MAX_BATCH + 1, True,
     FIRST + ["remove_loop_assign", "loop_cache_layout", "loop_bfloat16_gemv", "loop_bfloat16_batched_matmul",
              *FLOAT32_ATTENTION, *NORM] + BROADCAST + ["inplace_reads"] + GUARD),
    ("cpu", "off", pipeline.ADDMM_MAX_BATCH + 1, True,
     FIRST + ["remove_loop_assign", "loop_cache_layout", *WEIGHTS, "loop_bfloat16_gemv",
              "loop_bfloat16_batched_matmul", *FLOAT32_ATTENTION, *NORM, "inplace_reads"] + GUARD),
    ("gpu", "all", 1, True, FIRST + ["remove_loop_assign", "loop_cache_layout", "inplace_reads"]),
    ("cpu", "all", 1, False, FIRST + BROADCAST + ["inplace_reads"] + GUARD),  # the fallback: what keeps oneDNN right
    ("cpu", "off", 1, False, FIRST + ["inplace_reads"] + GUARD),  # bfloat16 ops still run on oneDNN
    ("gpu", "all", 1, False, FIRST + ["inplace_reads"]),
])
def test_running_passes_per_configuration(device, onednn, batch_size, optimize, expected):
    assert names(pipeline.running_passes(device, onednn, batch_size, optimize=optimize)) == expected


def test_saving_passes_always_guard():
    assert names(pipeline.saving_passes()) == FIRST + ["remove_loop_assign"] + BROADCAST + ["inplace_reads"] + GUARD
    assert names(pipeline.saving_passes(remove_copies=False)) == FIRST + BROADCAST + ["inplace_reads"] + GUARD


@pytest.mark.parametrize("options", [{"onednn": "matmul"}, {"device": "xpu"}, {"batch_size": 0}])
def test_unknown_options_have_no_pipeline(options):
    with pytest.raises(ValueError):
        pipeline.running_passes(**options)


@pytest.fixture
def recorded(monkeypatch):
    """Every step the routes run, by name, as they run it."""
    ran = []
    for attribute in [name for name, value in vars(pipeline).items() if isinstance(value, pipeline.PassStep)]:
        step = getattr(pipeline, attribute)

        def run(program, outputs, step=step):
            ran.append(step.name)
            return step.run(program, outputs)

        monkeypatch.setattr(pipeline, attribute, pipeline.PassStep(step.name, run))
    return ran


def test_every_step_reports_as_every_pass_does(tmp_path):
    """One report protocol (passes.report.PassReport) for every step of every pipeline."""
    from paddlenlp_ext.passes.report import PassReport

    save(str(tmp_path / "model"), conv_loop, CONV_SHAPE)
    for steps in (pipeline.running_passes(), pipeline.running_passes(onednn="off"), pipeline.saving_passes()):
        loaded = program_files.load_program(tmp_path)
        report = pipeline.run_passes(loaded.program, loaded.outputs, steps)
        assert [name for name, _ in report.reports] == names(steps)
        assert all(isinstance(step_report, PassReport) for _, step_report in report.reports)



def _pass_functions() -> list:
    """Every function of ``paddlenlp_ext.passes`` that returns a pass report."""
    import importlib
    import inspect
    import pkgutil

    import paddlenlp_ext.passes as passes
    from paddlenlp_ext.passes.report import PassReport

    found = []
    for module_info in pkgutil.iter_modules(passes.__path__):
        module = importlib.import_module(f"paddlenlp_ext.passes.{module_info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != module.__name__:
                continue
            returned = inspect.signature(function, eval_str=True).return_annotation
            if inspect.isclass(returned) and issubclass(returned, PassReport):
                found.append(function)
    return found


def test_every_pass_is_called_the_same_way():
    """PassReport's protocol: ``name(program, outputs=None, *, options)``."""
    from inspect import Parameter, signature

    functions = _pass_functions()
    assert {function.__name__ for function in functions} == {
        "fetch_bfloat16_outputs_as_float32", "state_transpose_perms_non_negative", "remove_loop_assign",
        "remove_loop_assign_pr9002", "carry_loop_caches_permuted", "run_loop_weight_matmuls_as_addmm",
        "run_loop_float32_matmuls_on_gemv",
        "run_loop_bfloat16_matmuls_on_gemv", "run_loop_bfloat16_matmuls_on_batched_kernel",
        "run_loop_float32_matmuls_on_batched_kernel", "run_loop_rms_norms_on_kernel",
        "copy_broadcast_add_operands", "read_inplace_results", "guard_onednn_inplace"}
    for function in functions:
        parameters = list(signature(function).parameters.values())
        assert [(p.name, p.kind, p.default) for p in parameters[:2]] == [
            ("program", Parameter.POSITIONAL_OR_KEYWORD, Parameter.empty),
            ("outputs", Parameter.POSITIONAL_OR_KEYWORD, None)], function
        assert all(p.kind == Parameter.KEYWORD_ONLY for p in parameters[2:]), function


def _held_in_cycles(work) -> list[str]:
    """The types of the Paddle objects (IR wrappers: ops, values, blocks, programs) that
    only garbage ``work()`` left in reference cycles still holds."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        work()
        gc.collect()
        return sorted({type(held).__qualname__ for garbage in gc.garbage for held in gc.get_referents(garbage)
                       if type(held).__module__.startswith("paddle.base.libpaddle")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


# Random programs on which every rewriting pass changes something: loop matmuls (every
# weight counted as large: on our float32 kernel or MKL's GEMM, as the pipeline says), copies, in-place row writes, ifs, convolutions, bfloat16
# weights and attention (on our kernels where the CPU has them), a copy-free loop (7).
# Seed 15 is the first whose bfloat16 attention products go to our batched kernel, 9 the
# first after 0-7 whose broadcast add is copied (2 and 7 have float32 products of two
# activations: on the batched kernel where the pipeline runs it).
CYCLE_SEEDS = (*range(8), 9, 15)


def test_no_pass_leaves_a_reference_cycle(tmp_path, every_weight_is_large):
    """No step of any pipeline leaves a reference cycle: a cycle keeps the Python
    wrappers of a program's ops and values alive after the program is freed (until the
    cyclic collector runs), and with them alive Paddle 3.3.1 corrupted the programs built
    next (``passes.program_index._walk_block``)."""
    from paddlenlp_ext.native import load_bfloat16_gemv

    kernel, _ = load_bfloat16_gemv()  # our kernels built and registered before anything is measured
    modified = set()
    for seed in CYCLE_SEEDS:
        body, shape, _, _ = build_onednn_program(seed)
        prefix = str(tmp_path / str(seed) / "model")
        save(prefix, body, shape)
        for steps in (pipeline.running_passes(), pipeline.running_passes(onednn="off"), pipeline.saving_passes()):
            loaded = program_files.load_files(prefix, "pir")  # (outside: Paddle's Executor leaves its own)
            reports = []
            assert _held_in_cycles(lambda: reports.append(
                pipeline.run_passes(loaded.program, loaded.outputs, steps))) == [], (seed, names(steps))
            modified.update(name for name, report in reports[0].reports if report.modified)
        loaded = program_files.load_files(prefix, "pir")
        assert _held_in_cycles(lambda: (program_files.count_loop_copies(loaded.program),
                                        program_files.has_loop(loaded.program))) == [], seed
    # the walks of every rewriting pass ran to a change
    kernels = {"loop_bfloat16_gemv", "loop_bfloat16_batched_matmul"} if kernel is not None else set()
    on_amd = kernel is not None and pipeline.float32_gemv_pays()
    float32 = {"loop_float32_gemv", "loop_float32_batched_matmul"} if on_amd else {"loop_weight_matmul"}
    assert {"remove_loop_assign", *float32, "onednn_inplace_guard", "inplace_reads",
            "onednn_broadcast_add"} | kernels <= modified, modified


def test_every_route_runs_the_pipelines_passes(tmp_path, recorded):
    """StaticGenerationModel, convert and the save hook run exactly the steps the
    pipeline names for them, in its order."""
    from paddlenlp_ext.convert import convert

    save(str(tmp_path / "source" / "model"), conv_loop, CONV_SHAPE)
    model = inference.StaticGenerationModel(tmp_path / "source", fall_back=False)
    assert recorded == names(pipeline.running_passes()) == [name for name, _ in model.pipeline.reports]
    recorded.clear()
    convert(tmp_path / "source", tmp_path / "converted")
    assert recorded == names(pipeline.saving_passes())
    recorded.clear()
    with paddlenlp_ext.enable(), paddle.base.dygraph.guard():
        layer = paddle.nn.Linear(4, 4)
        paddle.jit.save(paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 4], "float32")],
                                             full_graph=True), str(tmp_path / "saved" / "model"))
    assert recorded == names(pipeline.saving_passes())
    np.testing.assert_allclose(model.run(CONV_FEED), program_files.run_program(
        program_files.load_program(tmp_path / "source"), CONV_FEED)[0], rtol=1e-4, atol=1e-4)


def test_the_export_cache_key_covers_every_module(tmp_path):
    """Issue 27, class 9: the key hashed a hand-kept list of modules that left out code
    shaping the saved program (program_index, copy_ops, the guard...): a change to any
    module of the package now changes it."""
    package = tmp_path / "paddlenlp_ext"
    shutil.copytree(Path(export_cache.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    before = export_cache.code_digest(package)
    modules = sorted(package.rglob("*.py"))
    assert {"passes/program_index.py", "passes/copy_ops.py", "passes/pipeline.py", "hook.py",
            "passes/onednn_inplace_guard.py"} <= {m.relative_to(package).as_posix() for m in modules}
    for module in modules:
        original = module.read_bytes()
        module.write_bytes(original + b"\n# changed\n")
        assert export_cache.code_digest(package) != before, module
        module.write_bytes(original)
    assert export_cache.code_digest(package) == before


def test_the_export_cache_key_holds_the_code_digest(tmp_path, monkeypatch):
    settings = dict(format="pir", cache=None, remove_loop_assign=True, dtype="float32")
    first = export_cache.cached_export_directory("llama2", tmp_path, **settings)
    assert export_cache.cached_export_directory("llama2", tmp_path, **{**settings, "dtype": "bfloat16"}) != first
    monkeypatch.setattr(export_cache, "code_digest", lambda: "another")
    assert export_cache.cached_export_directory("llama2", tmp_path, **settings) != first
