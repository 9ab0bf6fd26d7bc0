"""Never worse than plain Paddle: where the translated program cannot be built or run on
a model whose files are sound, StaticGenerationModel and the load-time hook run it as
Paddle Inference runs it without us, with one warning that says why."""

import logging

import numpy as np
import paddle
import pytest
from branch_written_buffer import SAVED_ROWS, TRACED_ROWS, build, saved_row

import paddlenlp_ext
import paddlenlp_ext.inference as inference


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    path = tmp_path_factory.mktemp("branch_written_buffer")
    build(path)
    return path


def feed(k):
    return {"k": np.array([[k]], dtype="int64")}


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "paddlenlp_ext" and r.levelno == logging.WARNING]


def test_a_program_that_fails_at_run_time_runs_as_paddle_runs_it(directory, monkeypatch, caplog):
    # Without the translator patch, the translated program fails once k passes the traced rows.
    monkeypatch.setattr(inference, "read_persistables_written_in_branches", lambda desc: [])
    model = inference.StaticGenerationModel(directory)
    assert model.fallback_reason is None
    np.testing.assert_array_equal(model.run(feed(TRACED_ROWS)), saved_row(TRACED_ROWS))
    assert "could not be run" in model.fallback_reason and "has wrong value" in model.fallback_reason
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"{directory}: running on Paddle Inference as configured without paddlenlp_ext")
    assert "\n" not in warning
    for k in (5, SAVED_ROWS - 1):  # from now on the old IR's outputs
        np.testing.assert_array_equal(model.run(feed(k)), saved_row(k))


def test_a_program_that_cannot_be_built_runs_as_paddle_runs_it(directory, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("a pass failed")

    monkeypatch.setattr(inference, "predictor_for", broken)
    model = inference.StaticGenerationModel(directory)
    assert model.fallback_reason == "the translated program could not be built: a pass failed"
    assert len(warnings_of(caplog)) == 1
    np.testing.assert_array_equal(model.run(feed(5)), saved_row(5))
    with pytest.raises(RuntimeError, match="a pass failed"):
        inference.StaticGenerationModel(directory, fall_back=False)


def test_the_hook_falls_back_to_the_callers_config(directory, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot save")

    monkeypatch.setattr(inference.loop_assign_pass, "remove_loop_assign", broken)
    with paddlenlp_ext.enable():
        predictor = paddle.inference.create_predictor(inference.paddlenlp_static_config(directory))
    (warning,) = warnings_of(caplog)
    assert warning == (f"{directory / 'model.pdmodel'}: running on Paddle Inference as configured without "
                       "paddlenlp_ext (the translated program could not be built: cannot save)")
    np.testing.assert_array_equal(inference.run_predictor(predictor, feed(5))[0], saved_row(5))


def test_damaged_files_are_an_error_not_a_fallback(directory, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(directory, damaged)
    params = damaged / "model.pdiparams"
    params.write_bytes(params.read_bytes()[:100])
    # Paddle itself would load it and run on whatever the buffer held.
    message = f"^{damaged}: model.pdiparams: tensor 1: the file ends [0-9]+ bytes early \\(truncated\\?\\)$"
    with pytest.raises(inference.ModelDirectoryError, match=message):
        inference.StaticGenerationModel(damaged)


def test_the_hook_refuses_a_truncated_parameters_file(directory, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(directory, damaged)
    params = damaged / "model.pdiparams"
    params.write_bytes(params.read_bytes()[:-8])
    message = f"^{params}: tensor 1: the file ends 8 bytes early \\(truncated\\?\\)$"
    with paddlenlp_ext.enable(), pytest.raises(inference.ModelDirectoryError, match=message):
        paddle.inference.create_predictor(inference.paddlenlp_static_config(damaged))


def test_the_hook_falls_back_when_a_run_fails(directory, monkeypatch, caplog):
    """Inputs are fed again to the caller's config's predictor, by the handles the caller
    already holds, and the outputs are read by position (the names differ)."""
    from types import SimpleNamespace

    monkeypatch.setattr(inference, "read_persistables_written_in_branches", lambda desc: [])
    # The hook cleans loops only; this program has none, but it fails the same way.
    monkeypatch.setattr(inference.loop_assign_pass, "remove_loop_assign",
                        lambda program, outputs: SimpleNamespace(loops=["a loop"], summary=lambda: "cleaned"))
    with paddlenlp_ext.enable():
        predictor = paddle.inference.create_predictor(inference.paddlenlp_static_config(directory))
    (name,) = predictor.get_input_names()
    inputs = predictor.get_input_handle(name)
    output = predictor.get_output_handle(predictor.get_output_names()[0])
    k = feed(TRACED_ROWS)["k"]
    inputs.copy_from_cpu(k)
    k[0, 0] = 0  # the fallback must feed what was given, not the caller's array now
    assert warnings_of(caplog) == []
    predictor.run()  # fails on the cleaned program, then runs on the caller's config
    np.testing.assert_array_equal(output.copy_to_cpu(), saved_row(TRACED_ROWS))
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"{directory / 'model.pdmodel'}: running on Paddle Inference as configured without "
                              "paddlenlp_ext (the translated program could not be run: ")
    assert "has wrong value" in warning and "\n" not in warning
    for k in (5, SAVED_ROWS - 1):
        inputs.copy_from_cpu(feed(k)["k"])
        predictor.run()
        np.testing.assert_array_equal(output.copy_to_cpu(), saved_row(k))
    assert len(warnings_of(caplog)) == 1
