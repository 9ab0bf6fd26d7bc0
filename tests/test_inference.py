"""Static model directories on Paddle Inference, and the program it really executes."""

import logging

import numpy as np
import pytest
from test_llama_loop import exported, feed  # noqa: F401 (a fixture)

from paddlenlp_ext.inference import ModelDirectoryError, StaticGenerationModel, executed_loop_copies, model_format

FEED = feed()


@pytest.mark.parametrize("clean, executed", [(False, 18), (True, 0)], ids=["as translated", "cleaned"])
def test_predictor_runs_the_program_we_hand_it(exported, tmp_path, caplog, clean, executed):
    directory, reference = exported
    caplog.set_level(logging.INFO, logger="paddlenlp_ext")
    model = StaticGenerationModel(directory, remove_loop_assign=clean, dump_optimized_to=str(tmp_path))
    logged = [r.getMessage() for r in caplog.records if r.name == "paddlenlp_ext"]
    assert logged == ([f"remove_loop_assign on {directory}: removed 18 copies from 1 loops; kept 0"] if clean else [])
    assert model.format == "legacy"
    assert (model.copies_before, model.copies_after) == (18, executed)
    assert executed_loop_copies(str(tmp_path)) == executed  # Paddle Inference's own dump
    np.testing.assert_array_equal(model.run(FEED), reference)
    if clean:
        assert model.report.removed == 18 and model.report.kept == ()


def test_onednn_breaks_the_loop_so_it_is_off(exported, tmp_path):
    """Why StaticGenerationModel disables oneDNN on CPU: with it, Paddle Inference
    3.3.1 decodes this loop wrongly whether or not the pass ran."""
    from paddle import inference

    directory, reference = exported
    StaticGenerationModel(directory, remove_loop_assign=False, dump_optimized_to=str(tmp_path))
    config = inference.Config(str(tmp_path / "_optimized.json"), str(tmp_path / "_optimized.pdiparams"))
    config.disable_gpu()
    config.enable_new_ir(True)
    config.enable_mkldnn()
    predictor = inference.create_predictor(config)
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(FEED[name])
    predictor.run()
    tokens = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    assert not np.array_equal(tokens, reference)


def test_model_directory_errors(tmp_path, exported):
    directory, _ = exported
    cases = {
        "missing": (tmp_path / "nope", "no such model directory"),
        "empty": (tmp_path / "empty", "expected one of model.json or model.pdmodel, found neither"),
        "both": (tmp_path / "both", "expected one of model.json or model.pdmodel, found both"),
        "noparams": (tmp_path / "noparams", "model.pdiparams is missing"),
        "corrupt": (tmp_path / "corrupt", "cannot read the legacy model"),
    }
    cases["truncated params"] = (tmp_path / "truncated", "cannot read the legacy model: ")
    for name in ("empty", "both", "noparams", "corrupt", "truncated params"):
        cases[name][0].mkdir()
    (tmp_path / "truncated" / "model.pdmodel").write_bytes((directory / "model.pdmodel").read_bytes())
    (tmp_path / "truncated" / "model.pdiparams").write_bytes((directory / "model.pdiparams").read_bytes()[:1000])
    (tmp_path / "both" / "model.json").write_text("{}")
    (tmp_path / "both" / "model.pdmodel").write_bytes(b"")
    (tmp_path / "both" / "model.pdiparams").write_bytes(b"")
    (tmp_path / "noparams" / "model.pdmodel").write_bytes((directory / "model.pdmodel").read_bytes())
    (tmp_path / "corrupt" / "model.pdmodel").write_bytes(b"not a program")
    (tmp_path / "corrupt" / "model.pdiparams").write_bytes((directory / "model.pdiparams").read_bytes())
    for name, (path, message) in cases.items():
        with pytest.raises(ModelDirectoryError) as caught:
            StaticGenerationModel(path)
        text = str(caught.value)
        assert message in text and "\n" not in text, (name, text)
        assert not text.endswith(("In user code:", ": ")), (name, text)  # says what went wrong
    assert model_format(directory) == "legacy"
