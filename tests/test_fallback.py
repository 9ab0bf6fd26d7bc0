"""Never wrong: where the prepared program cannot be built or run on a model whose files
are sound, StaticGenerationModel and the load-time hook fall back, one warning a step,
first to the untouched program on our own configuration with the caller's oneDNN
choice, then to the configuration its users run without us, and never to one
``docs/onednn.md`` documents as wrong; an invalid option is an error, not a fallback."""

import logging

import numpy as np
import paddle
import pytest
from branch_written_buffer import SAVED_ROWS, TRACED_ROWS, build, saved_row
from onednn_cases import FEED, linear, paddle_default_predictor, read_once_in_loop, save

import paddlenlp_ext
import paddlenlp_ext.hook_config as hook_config
import paddlenlp_ext.inference as inference
import paddlenlp_ext.paddle_config as paddle_config
import paddlenlp_ext.program_files as program_files
from paddlenlp_ext.passes import pipeline


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    path = tmp_path_factory.mktemp("branch_written_buffer")
    build(path)
    return path


@pytest.fixture(scope="module")
def onednn_trap(tmp_path_factory):
    """A PIR directory whose unguarded program Paddle's default CPU config gets wrong
    (oneDNN's in-place alias: a value computed before the loop and read once inside it;
    a linear layer first, so that the directory has parameters), and the Executor's
    outputs for ``FEED``."""
    path = tmp_path_factory.mktemp("onednn_trap")
    save(str(path / "model"), lambda x: read_once_in_loop(linear(x)))
    reference = program_files.run_program(program_files.load_program(path), FEED)
    wrong = inference.run_predictor(paddle_default_predictor(str(path / "model")), FEED)
    assert not np.allclose(wrong[0], reference[0], rtol=1e-4, atol=1e-4)  # the trap is armed
    return path, reference


def feed(k):
    return {"k": np.array([[k]], dtype="int64")}


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "paddlenlp_ext" and r.levelno == logging.WARNING]


def failing_step(monkeypatch, message="a pass failed"):
    """A pass of the prepared program's pipeline fails, as on a shape no test met."""
    def broken(program, outputs):
        raise RuntimeError(message)

    monkeypatch.setattr(pipeline, "LOOP_CACHE_LAYOUT", pipeline.PassStep("loop_cache_layout", broken))


@pytest.mark.parametrize("onednn", pipeline.ONEDNN_MODES)
def test_a_failing_pass_falls_back_to_the_untouched_program_on_our_config(onednn_trap, monkeypatch, caplog, onednn):
    """Issue 27, class 5: it used to land on Paddle's default config, which gets this
    program wrong, and ignored ``onednn="off"``."""
    path, reference = onednn_trap
    failing_step(monkeypatch)
    model = inference.StaticGenerationModel(path, onednn=onednn)
    assert model.runtime == f"the untouched program on paddlenlp_ext's configuration (oneDNN {onednn})"
    assert model.config.mkldnn_enabled() == (onednn == "all")
    assert model.fallback_reason == "the prepared program could not be built: a pass failed"
    (warning,) = warnings_of(caplog)
    assert warning == (f"{path}: running the untouched program on paddlenlp_ext's configuration (oneDNN {onednn}) "
                       "(the prepared program could not be built: a pass failed)")
    for _ in range(2):
        np.testing.assert_allclose(model.run(FEED), reference[0], rtol=1e-5, atol=1e-5)


def test_a_pir_directory_never_falls_back_to_paddles_default_onednn_config(onednn_trap, monkeypatch, caplog):
    """When our configuration cannot run it at all, a PIR directory with oneDNN on has no
    configuration left that is known right: an error, not Paddle's default config."""
    path, reference = onednn_trap

    def broken(loaded, config_for):
        raise RuntimeError("cannot create")

    monkeypatch.setattr(inference, "_staged_predictor", broken)
    with pytest.raises(inference.NoSafeRuntimeError) as raised:
        inference.StaticGenerationModel(path)
    assert str(raised.value) == (f"{path}: no configuration known to run it right is left (the prepared program "
                                 "could not be built: cannot create; the untouched program could not be built: "
                                 "cannot create)")
    assert len(warnings_of(caplog)) == 1
    # With oneDNN off, Paddle's default config with oneDNN off is the last resort, and right.
    model = inference.StaticGenerationModel(path, onednn="off")
    assert model.runtime == "the model's own program on Paddle Inference's default configuration (oneDNN off)"
    assert not model.config.mkldnn_enabled()
    np.testing.assert_array_equal(model.run(FEED), reference[0])


@pytest.mark.parametrize("options, message", [
    ({"onednn": "fast"}, "onednn must be one of all, off, got 'fast'"),
    ({"device": "tpu"}, "device must be one of cpu, gpu, got 'tpu'"),
    ({"batch_size": 0}, "batch_size must be 1 or more, got 0"),
])
def test_an_invalid_option_is_an_error_not_a_fallback(onednn_trap, caplog, options, message):
    path, _ = onednn_trap
    with pytest.raises(ValueError, match=f"^{message}$"):
        inference.StaticGenerationModel(path, **options)
    assert warnings_of(caplog) == []


def test_a_program_that_fails_at_run_time_runs_as_paddlenlp_runs_it(directory, monkeypatch, caplog):
    # Without the translator patch, the translated program fails once k passes the traced
    # rows: the prepared and the untouched program alike, so the legacy directory ends on
    # PaddleNLP's own configuration (the old IR), which is right.
    monkeypatch.setattr(program_files, "read_persistables_written_in_branches", lambda desc: [])
    model = inference.StaticGenerationModel(directory)
    assert model.fallback_reason is None
    np.testing.assert_array_equal(model.run(feed(TRACED_ROWS)), saved_row(TRACED_ROWS))
    assert model.fallback_reason.startswith("the prepared program could not be run: ")
    assert "has wrong value" in model.fallback_reason
    assert model.runtime == "the model's own program on PaddleNLP's static predictor configuration"
    first, second = warnings_of(caplog)
    assert first.startswith(f"{directory}: running the untouched program on paddlenlp_ext's configuration "
                            "(oneDNN all) (the prepared program could not be run: ")
    assert second.startswith(f"{directory}: running the model's own program on PaddleNLP's static predictor "
                             "configuration (the untouched program could not be run: ")
    assert "\n" not in first + second
    for k in (5, SAVED_ROWS - 1):  # from now on the old IR's outputs
        np.testing.assert_array_equal(model.run(feed(k)), saved_row(k))


def test_fall_back_false_raises_the_first_failure(onednn_trap, monkeypatch):
    failing_step(monkeypatch)
    with pytest.raises(RuntimeError, match="^a pass failed$"):
        inference.StaticGenerationModel(onednn_trap[0], fall_back=False)


def test_damaged_files_are_an_error_not_a_fallback(directory, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(directory, damaged)
    params = damaged / "model.pdiparams"
    params.write_bytes(params.read_bytes()[:100])
    # Paddle itself would load it and run on whatever the buffer held.
    message = f"^{damaged}: model.pdiparams: tensor 1: the file ends [0-9]+ bytes early \\(truncated\\?\\)$"
    with pytest.raises(program_files.ModelDirectoryError, match=message):
        inference.StaticGenerationModel(damaged)


def test_the_hook_refuses_a_truncated_parameters_file(directory, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(directory, damaged)
    params = damaged / "model.pdiparams"
    params.write_bytes(params.read_bytes()[:-8])
    message = f"^{params}: tensor 1: the file ends 8 bytes early \\(truncated\\?\\)$"
    with paddlenlp_ext.enable(), pytest.raises(program_files.ModelDirectoryError, match=message):
        paddle.inference.create_predictor(paddle_config.paddlenlp_static_config(damaged))


@pytest.fixture
def a_loop_everywhere(monkeypatch):
    """The hook cleans loops only; this program has none, but fails the same way."""
    monkeypatch.setattr(hook_config, "has_loop", lambda program: True)


def test_the_hook_falls_back_to_the_untouched_program_then_the_callers_config(directory, monkeypatch, caplog,
                                                                              a_loop_everywhere):
    failing_step(monkeypatch, "cannot prepare")
    with paddlenlp_ext.enable():
        predictor = paddle.inference.create_predictor(paddle_config.paddlenlp_static_config(directory))
    (warning,) = warnings_of(caplog)
    assert warning == (f"{directory / 'model.pdmodel'}: running the untouched program on paddlenlp_ext's "
                       "configuration (the cleaned program on paddlenlp_ext's configuration could not be built: "
                       "cannot prepare)")
    assert predictor._stage == 1
    np.testing.assert_array_equal(inference.run_predictor(predictor, feed(5))[0], saved_row(5))


def test_the_hook_never_falls_back_to_a_config_documented_wrong(directory, monkeypatch, caplog):
    """A caller's config running the legacy loop on the new IR with oneDNN (Paddle
    translates it, unguarded, with inplace_pass): an error, where it used to be used."""
    def broken(config, optimize=True):
        raise RuntimeError("cannot clean")

    monkeypatch.setattr(hook_config, "cleaned_legacy_config", broken)
    config = paddle_config.paddlenlp_static_config(directory)
    config.enable_new_ir(True)
    with paddlenlp_ext.enable(), pytest.raises(inference.NoSafeRuntimeError, match="the caller's config is not "
                                                                                  "used: its new IR with oneDNN"):
        paddle.inference.create_predictor(config)
    # PaddleNLP's own config (the old IR) is the last resort, and right.
    with paddlenlp_ext.enable():
        predictor = paddle.inference.create_predictor(paddle_config.paddlenlp_static_config(directory))
    assert predictor._stage == 2
    np.testing.assert_array_equal(inference.run_predictor(predictor, feed(5))[0], saved_row(5))


def test_the_hook_falls_back_when_a_run_fails(directory, monkeypatch, caplog, a_loop_everywhere):
    """Inputs are fed again, by the handles the caller already holds, to the next stage's
    predictor; the caller's names keep resolving."""
    monkeypatch.setattr(program_files, "read_persistables_written_in_branches", lambda desc: [])
    own = paddle.inference.create_predictor(paddle_config.paddlenlp_static_config(directory))
    with paddlenlp_ext.enable():
        predictor = paddle.inference.create_predictor(paddle_config.paddlenlp_static_config(directory))
    assert predictor.get_input_names() == own.get_input_names() == ["k"]
    assert predictor.get_output_names() == own.get_output_names()
    (name,) = predictor.get_output_names()
    inputs = predictor.get_input_handle("k")
    output = predictor.get_output_handle(name)
    k = feed(TRACED_ROWS)["k"]
    inputs.copy_from_cpu(k)
    k[0, 0] = 0  # the fallback must feed what was given, not the caller's array now
    assert warnings_of(caplog) == []
    predictor.run()  # fails on the cleaned and the untouched program, then runs on the caller's config
    np.testing.assert_array_equal(output.copy_to_cpu(), saved_row(TRACED_ROWS))
    first, second = warnings_of(caplog)
    assert first.startswith(f"{directory / 'model.pdmodel'}: running the untouched program on paddlenlp_ext's "
                            "configuration (the cleaned program on paddlenlp_ext's configuration could not be run: ")
    assert second.startswith(f"{directory / 'model.pdmodel'}: running Paddle Inference as configured without "
                             "paddlenlp_ext (the untouched program on paddlenlp_ext's configuration could not be run: ")
    assert "has wrong value" in second and "\n" not in first + second
    for k in (5, SAVED_ROWS - 1):
        inputs.copy_from_cpu(feed(k)["k"])
        predictor.run()
        np.testing.assert_array_equal(predictor.get_output_handle(name).copy_to_cpu(), saved_row(k))
    assert len(warnings_of(caplog)) == 2
