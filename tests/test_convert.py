"""python -m paddlenlp_ext.convert: a legacy export of the embedded llama becomes a PIR
directory without loop copies, with the same tokens, and bad input writes nothing."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from paddle import inference
from test_decoding import paddlenlp_greedy
from test_export import TEXTS, encode, feed

from paddlenlp_ext.decoding_settings import SETTING_INPUTS
from paddlenlp_ext.export import METADATA_FILE, export_generation_model
from paddlenlp_ext.files import current_umask
from paddlenlp_ext.inference import StaticGenerationModel, executed_loop_copies, run_predictor
from paddlenlp_ext.program_files import count_loop_copies, load_program
from paddlenlp_ext.models import load_model
from paddlenlp_ext.paddle_modes import dygraph_mode

REPORT = "remove_loop_assign: removed 14 copies from 1 loops; kept 0"


def run_convert(*args):
    return subprocess.run([sys.executable, "-m", "paddlenlp_ext.convert", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def snapshot(root):
    """Every file and directory under ``root``, files with their content's hash."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(root.rglob("*"))}


def assert_one_line_error(result, message):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == ""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A legacy export of the embedded llama2, shared by every test here (read only):
    (directory, its snapshot, greedy tokens of PaddleNLP's generate on TEXTS, feed)."""
    cache = tmp_path_factory.mktemp("models")
    directory = tmp_path_factory.mktemp("legacy") / "llama2"
    with dygraph_mode():
        model, tokenizer = load_model("llama2", cache_dir=cache)
        # the concat cache: its loop has 18 copies to remove (the static cache's has 8)
        export_generation_model(model, directory, tokenizer=tokenizer, format="legacy", cache="concat")
    ids, mask = encode(tokenizer, TEXTS)
    reference = paddlenlp_greedy(model, ids, mask, eos_token_id=tokenizer.eos_token_id)
    return directory, snapshot(directory), reference, feed(ids, mask)


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    """(converted directory, the CLI's result)."""
    directory = tmp_path_factory.mktemp("converted") / "llama2-pir"
    return directory, run_convert(source[0], directory)


def test_convert_reports_the_pass_and_writes_a_pir_directory(source, converted):
    src, before, _, _ = source
    dst, result = converted
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [REPORT, f"wrote {dst} (pir: model.json, model.pdiparams) from {src} (legacy)"]
    assert "Traceback" not in result.stderr
    files = {path.name for path in dst.iterdir()}
    companions = {path.name for path in src.iterdir()} - {"model.pdmodel", "model.pdiparams", "model.pdiparams.info"}
    assert files == companions | {"model.json", "model.pdiparams"}
    for name in companions - {METADATA_FILE}:  # configs and tokenizer, byte for byte
        assert (dst / name).read_bytes() == (src / name).read_bytes(), name
    assert [path.name for path in dst.parent.iterdir()] == [dst.name]  # no staging directory left
    exported = json.loads((src / METADATA_FILE).read_text())
    metadata = json.loads((dst / METADATA_FILE).read_text())
    assert metadata["format"] == "pir" and metadata["remove_loop_assign"] == "convert"
    assert metadata["report"] == {"removed": 14, "kept": {}}
    assert metadata["onednn_guard"].startswith("guarded ") and "pd_op.pow" in metadata["onednn_guard"]
    assert metadata["conversion"]["source"] == str(src.resolve())
    assert metadata["conversion"]["source_format"] == "legacy"
    assert {key: metadata[key] for key in ("decoding", "inputs", "versions")} == \
        {key: exported[key] for key in ("decoding", "inputs", "versions")}
    assert snapshot(src) == before


def test_converted_inputs_keep_the_source_order_and_the_directory_the_umask(source, converted):
    """Issue 9: the translator emits legacy feed ops in reverse, and Paddle Inference
    names inputs in op order; the staging directory was created private (0700)."""
    src, dst = source[0], converted[0]
    order = ["input_ids", "attention_mask", "max_new_tokens", *SETTING_INPUTS]
    assert StaticGenerationModel(src, remove_loop_assign=False).input_names == order
    assert StaticGenerationModel(dst, remove_loop_assign=False).input_names == order
    # the CLI ran in a child process with this process's umask
    assert dst.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_converted_loop_has_no_copies(source, converted):
    assert count_loop_copies(load_program(source[0]).program) == 14
    assert count_loop_copies(load_program(converted[0]).program) == 0


def test_converted_model_gives_the_same_tokens(source, converted, tmp_path):
    src, _, reference, inputs = source
    dst, _ = converted
    assert reference.shape == (2, 8)
    runs = {
        "source": StaticGenerationModel(src, remove_loop_assign=False),
        "source+pass": StaticGenerationModel(src, remove_loop_assign=True),
        "converted": StaticGenerationModel(dst, remove_loop_assign=False),
    }
    assert runs["converted"].format == "pir" and runs["converted"].copies_before == 0
    for name, model in runs.items():
        np.testing.assert_array_equal(model.run(inputs), reference, err_msg=name)
    # Plain Paddle Inference on the directory, without paddlenlp_ext's loader, runs the
    # loop without copies: its own optimized-program dump has none.
    config = inference.Config(str(dst / "model.json"), str(dst / "model.pdiparams"))
    config.enable_new_ir(True)
    config.disable_gpu()
    config.disable_mkldnn()
    config.set_optim_cache_dir(str(tmp_path))
    config.enable_save_optim_model(True)
    np.testing.assert_array_equal(run_predictor(inference.create_predictor(config), inputs)[0], reference)
    assert executed_loop_copies(str(tmp_path)) == 0
    # Issue 10: the directory leaves our hands, and Paddle's default CPU config (oneDNN
    # and its inplace pass on; wrong tokens on an unguarded loop) runs it right too.
    default = inference.Config(str(dst / "model.json"), str(dst / "model.pdiparams"))
    default.disable_gpu()
    predictor = inference.create_predictor(default)
    for _ in range(2):
        np.testing.assert_array_equal(run_predictor(predictor, inputs)[0], reference)


def test_a_pir_source_is_converted_too(source, converted, tmp_path):
    """The pass applies to PIR programs; on an already converted loop it removes nothing."""
    _, _, reference, inputs = source
    dst, _ = converted
    before = snapshot(dst)
    again = tmp_path / "again"
    result = run_convert(dst, again)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == "remove_loop_assign: removed 0 copies from 1 loops; kept 0"
    metadata = json.loads((again / METADATA_FILE).read_text())
    assert metadata["conversion"]["source_format"] == "pir" and metadata["report"]["removed"] == 0
    np.testing.assert_array_equal(StaticGenerationModel(again, remove_loop_assign=False).run(inputs), reference)
    assert snapshot(dst) == before


def test_a_non_empty_destination_is_replaced_only_with_force(source, tmp_path):
    src, before, _, _ = source
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "stale.txt").write_text("from an earlier run")
    refused = run_convert(src, dst)
    assert_one_line_error(refused, f"{dst} already exists and is not empty: choose a new directory or use --force")
    assert snapshot(dst) == {"stale.txt": hashlib.sha256(b"from an earlier run").hexdigest()}
    replaced = run_convert(src, dst, "--force")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert replaced.stdout.splitlines()[0] == REPORT
    assert not (dst / "stale.txt").exists() and (dst / "model.json").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # neither staging nor the old directory left
    assert snapshot(src) == before


def empty_directory(work, src):
    (work / "empty").mkdir()
    return work / "empty", work / "dst"


def corrupt_program(work, src):
    shutil.copytree(src, work / "src")
    (work / "src" / "model.pdmodel").write_bytes(b"not a program")
    return work / "src", work / "dst"


def corrupt_metadata(work, src):
    shutil.copytree(src, work / "src")
    (work / "src" / METADATA_FILE).write_text("{not json")
    return work / "src", work / "dst"


def same_directory(work, src):
    shutil.copytree(src, work / "src")
    return work / "src", work / "src"


def inside_source(work, src):
    shutil.copytree(src, work / "src")
    return work / "src", work / "src" / "converted"


def around_source(work, src):
    # with --force, replacing the destination would delete the source
    shutil.copytree(src, work / "src")
    return work / "src", work


def file_in_the_way(work, src):
    (work / "dst").write_text("not a directory")
    return src, work / "dst"


BAD_INPUTS = {
    "missing source": (lambda work, src: (work / "nope", work / "dst"), "no such model directory"),
    "not a model directory": (empty_directory, "found neither"),
    "corrupt program": (corrupt_program, "cannot read the legacy model"),
    "corrupt metadata": (corrupt_metadata, f"{METADATA_FILE}: cannot read it"),
    "source is destination": (same_directory, "is the source directory"),
    "destination inside source": (inside_source, "is inside the source directory"),
    "source inside destination": (around_source, "choose a destination that does not contain the source"),
    "destination is a file": (file_in_the_way, "exists and is not a directory"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(source, tmp_path, case):
    make, message = BAD_INPUTS[case]
    src, dst = make(tmp_path, source[0])
    before = snapshot(tmp_path)
    assert_one_line_error(run_convert(src, dst, "--force"), message)
    assert snapshot(tmp_path) == before


def test_a_conversion_paddle_inference_cannot_load_is_refused(source, tmp_path, monkeypatch):
    """Never a directory that cannot run: the staged program is loaded on Paddle
    Inference's default config before it is renamed into place."""
    from paddlenlp_ext.convert import ConvertError, convert

    def refuse(config):
        raise RuntimeError("(Unimplemented) an op this build lacks")

    monkeypatch.setattr(inference, "create_predictor", refuse)
    src = source[0]
    with pytest.raises(ConvertError, match=rf"^the converted program does not load on Paddle Inference "
                                           rf"\(\(Unimplemented\) an op this build lacks\); run {src} as it is$"):
        convert(src, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_pass_failing_is_one_line_and_writes_nothing(source, tmp_path, monkeypatch):
    """A pass that fails on a program shape we have not met is our defect, not bad input,
    but the converter still says so in one line and writes nothing."""
    from paddlenlp_ext.convert import ConvertError, convert
    from paddlenlp_ext.passes import pipeline

    def broken(program, outputs):
        raise RuntimeError("3 is not in list")

    monkeypatch.setattr(pipeline, "ONEDNN_GUARD", pipeline.PassStep("onednn_inplace_guard", broken))
    src = source[0]
    with pytest.raises(ConvertError, match=rf"^cannot convert {src}: a pass failed on its program \(3 is not in "
                                           rf"list\); run {src} as it is and report this$"):
        convert(src, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(source, tmp_path):
    from interrupting import interrupt_when_ready

    destination = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "paddlenlp_ext.convert", str(source[0]), str(destination)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # once the conversion is being written (its staging directory exists)
    interrupt_when_ready(process, lambda: any(tmp_path.iterdir()))
    assert list(tmp_path.iterdir()) == []  # no staging directory, no output
