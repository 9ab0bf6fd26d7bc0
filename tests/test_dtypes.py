"""--dtype, as PaddleNLP passes it to ``from_pretrained``: a float16 checkpoint (what
real llama2 checkpoints ship) loads cast to float32 on CPU, in both modes, and a
float16 computation is refused in one line (test_predictor's bad-input cases)."""

import json

import numpy as np
import pytest
from hardware import requires_bfloat16

from paddlenlp_ext import cpu
from paddlenlp_ext.dtypes import DtypeError, check_exported_dtype, load_dtype
from paddlenlp_ext.models import load_model
from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.predictor import PredictorArgument, PredictorError, create_predictor

PROMPTS = ["The weather today", "My favourite recipe for a quick dinner with friends is"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The embedded llama2 saved in float16, and in float32 with the same (float16-rounded)
    weights, rounded here in numpy."""
    root = tmp_path_factory.mktemp("checkpoints")
    with dygraph_mode():
        model, tokenizer = load_model("llama2", cache_dir=root / "home")
        for parameter in model.parameters():
            parameter.set_value(parameter.numpy().astype(np.float16).astype(np.float32))
        model.save_pretrained(str(root / "float32"))
        model.to(dtype="float16")
        model.save_pretrained(str(root / "float16"))
    for name in ("float32", "float16"):
        tokenizer.save_pretrained(str(root / name))
    assert json.loads((root / "float16" / "config.json").read_text())["dtype"] == "float16"
    return root


def _greedy(source, **settings):
    predictor = create_predictor(PredictorArgument(model_name_or_path=str(source), decode_strategy="greedy_search",
                                                   max_length=8, batch_size=2, **settings))
    return predictor, predictor.generate_ids(PROMPTS)


def test_a_float16_checkpoint_runs_in_float32_in_both_modes(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLENLP_EXT_HOME", str(tmp_path))
    _, want = _greedy(checkpoints / "float32", mode="dynamic")
    for settings in ({"mode": "dynamic"}, {"mode": "dynamic", "dtype": "float32"}, {"mode": "static"}):
        predictor, got = _greedy(checkpoints / "float16", **settings)
        np.testing.assert_array_equal(got, want, err_msg=str(settings))
        if settings["mode"] == "dynamic":
            with dygraph_mode():
                assert {p.numpy().dtype for p in predictor.model.parameters()} == {np.dtype("float32")}
    exports = list((tmp_path / "exports").iterdir())
    assert len(exports) == 1
    assert json.loads((exports[0] / "config.json").read_text()).get("dtype", "float32") == "float32"


@requires_bfloat16
def test_a_bfloat16_export_is_made_and_run_in_static_mode(checkpoints, tmp_path, monkeypatch):
    """--dtype bfloat16 exports in the one format a bfloat16 model exports in (pir), with
    the static cache as float32 has it, and runs there; test_bfloat16 holds its tokens to
    float32's."""
    from paddlenlp_ext.export import METADATA_FILE

    monkeypatch.setenv("PADDLENLP_EXT_HOME", str(tmp_path))
    predictor, ids = _greedy(checkpoints / "float16", mode="static", dtype="bfloat16")
    assert predictor.config.export_format == "pir" and ids.shape == (len(PROMPTS), 8)
    (export,) = (tmp_path / "exports").iterdir()
    assert json.loads((export / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((export / METADATA_FILE).read_text())["cache"] == "static"
    with pytest.raises(PredictorError, match="^--dtype float32: .* was exported in bfloat16"):
        _greedy(export, dtype="float32")


def test_a_fresh_export_no_runtime_can_load_is_not_kept(checkpoints, tmp_path, monkeypatch):
    """A later run would otherwise be served the same unloadable directory."""
    from paddlenlp_ext import inference
    from paddlenlp_ext.predictor import UnloadableModelError

    def refuse(*args, **kwargs):
        raise inference.NoSafeRuntimeError("no runtime can run it")

    monkeypatch.setenv("PADDLENLP_EXT_HOME", str(tmp_path))
    monkeypatch.setattr(inference, "StaticGenerationModel", refuse)
    with pytest.raises(UnloadableModelError, match="no runtime can run it"):
        _greedy(checkpoints / "float32", mode="static")
    assert list((tmp_path / "exports").iterdir()) == []


@pytest.mark.parametrize("requested, device, static, loaded", [
    (None, "cpu", False, "float32"), ("float32", "cpu", False, "float32"), ("bfloat16", "cpu", True, "bfloat16"),
    (None, "gpu", False, None), ("float16", "gpu", True, "float16"), ("bfloat16", "gpu", False, "bfloat16")])
def test_the_dtype_loaded_on_each_device(requested, device, static, loaded, monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: cpu.BFLOAT16_FLAGS)  # a CPU oneDNN computes bfloat16 on
    assert load_dtype(requested, device, static=static) == loaded


def test_bfloat16_on_a_cpu_without_avx512_is_refused_in_one_line(monkeypatch):
    """oneDNN computes bfloat16 from AVX-512 up, and Paddle has no other bfloat16 CPU
    matmul: on an AVX2-only CPU a bfloat16 program would die in dnnl::error mid-run."""
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    with pytest.raises(DtypeError, match="^--dtype bfloat16: this CPU has no AVX-512 .*; use --dtype float32"):
        load_dtype("bfloat16", "cpu", static=True)
    with pytest.raises(DtypeError, match="^out/m: the model was exported in bfloat16 and this CPU has no AVX-512"):
        check_exported_dtype("bfloat16", None, "cpu", "out/m")
    assert load_dtype("bfloat16", "gpu", static=True) == "bfloat16"
    check_exported_dtype("bfloat16", None, "gpu", "out/m")
    check_exported_dtype("float32", None, "cpu", "out/m")


def test_the_cpu_check_agrees_with_paddles():
    from paddle.base import core

    assert cpu.computes_bfloat16() == core.supports_bfloat16()


@pytest.mark.parametrize("requested, static", [("float16", True), ("bfloat16", False), ("int8", True)])
def test_a_dtype_the_cpu_cannot_compute_in_is_refused(requested, static):
    with pytest.raises(DtypeError, match="^--dtype"):
        load_dtype(requested, "cpu", static=static)
