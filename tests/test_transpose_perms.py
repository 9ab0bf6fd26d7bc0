"""passes.transpose_perms: a transpose with a negative perm entry, which Paddle Inference
3.3.1 with oneDNN cannot run (heap corruption), runs right on every route once its
permutation is stated with non-negative axes."""

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import paddle
import pytest
from onednn_cases import paddle_default_predictor, save

from paddlenlp_ext.inference import StaticGenerationModel, create_paddle_predictor, run_predictor
from paddlenlp_ext.program_files import load_files, save_program
from paddlenlp_ext.passes.transpose_perms import state_transpose_perms_non_negative


def negative_perm(x):
    """x [B, 1, 16] doubled (by a parameter, so that the directory has one), viewed as
    [B, 1, 4, 4], permuted with a negative axis; the permuted value is fetched too."""
    two = paddle.static.create_parameter([16], "float32", default_initializer=paddle.nn.initializer.Constant(2.0))
    permuted = paddle.transpose(paddle.reshape(x * two, [-1, 1, 4, 4]), [0, 2, 1, -1])
    return [permuted + 1.0, permuted]


def expected(feed):
    permuted = np.transpose(feed["x"].reshape(-1, 1, 4, 4) * 2.0, (0, 2, 1, 3))
    return [permuted + 1.0, permuted]


def test_paddle_inference_with_onednn_cannot_run_a_negative_perm(tmp_path):
    """The defect, pinned in a child process: glibc reports a corrupted heap in the first
    run (and the process then hangs: it is killed once the report is read). When this
    test fails, Paddle runs it, and the pass can go."""
    save(str(tmp_path / "model"), negative_perm)
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from onednn_cases import FEED
        from paddlenlp_ext.inference import create_paddle_predictor, run_predictor
        predictor = create_paddle_predictor({str(tmp_path / "model")!r}, onednn="all")
        for _ in range(3):
            run_predictor(predictor, FEED)
        print("ran", flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    timer = threading.Timer(120, process.kill)  # a bound, should neither report nor exit come
    timer.start()
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "corruption" in line or line.startswith("ran"):
                break
    finally:
        process.kill()
        process.wait()
        timer.cancel()
    assert any("double free or corruption" in line for line in seen), "".join(seen)[-2000:]


def test_the_permutation_is_stated_non_negative_and_the_fetched_value_follows(tmp_path):
    feed = save(str(tmp_path / "source" / "model"), negative_perm)
    loaded = load_files(str(tmp_path / "source" / "model"), "pir")
    report = state_transpose_perms_non_negative(loaded.program, loaded.outputs)
    assert (report.rewritten, report.modified) == (1, True)
    perms = [op.attrs()["perm"] for op in loaded.program.global_block().ops if op.name() == "pd_op.transpose"]
    assert perms == [[0, 2, 1, 3]]
    assert loaded.outputs[1].get_defining_op().name() == "pd_op.transpose"
    again = state_transpose_perms_non_negative(loaded.program, loaded.outputs)
    assert (again.rewritten, again.modified) == (0, False)
    save_program(loaded, str(tmp_path / "fixed" / "model"))
    for predictor in (create_paddle_predictor(str(tmp_path / "fixed" / "model"), onednn="all"),
                      paddle_default_predictor(str(tmp_path / "fixed" / "model"))):
        for _ in range(2):
            for got, want in zip(run_predictor(predictor, feed), expected(feed)):
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("onednn", ["all", "off"])
def test_static_generation_model_runs_a_negative_perm(tmp_path, onednn):
    feed = save(str(tmp_path / "model"), negative_perm)
    model = StaticGenerationModel(tmp_path, onednn=onednn, fall_back=False)
    assert model.pipeline.get("transpose_perms").rewritten == 1
    for _ in range(2):
        np.testing.assert_array_equal(model.run(feed), expected(feed)[0])
