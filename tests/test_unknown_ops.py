"""A directory saved by a newer Paddle, whose program names an op this Paddle does not
have, is one ModelDirectoryError naming the op on every route: StaticGenerationModel,
convert, the load-time hook and the predictor. Without the check, Paddle 3.3.1 loads a
PIR program with a nameless op in that place (our code then crashes the process) and
sends a legacy one to the translator, whose failure would look like ours."""

import json
import shutil
import subprocess
import sys

import paddle
import pytest
from branch_written_buffer import build

import paddlenlp_ext
import paddlenlp_ext.inference as inference
import paddlenlp_ext.program_files as program_files
from paddlenlp_ext.unknown_ops import unknown_legacy_ops

NEW_OP = "gather_nd_from_paddle_9"


def message(path, op):
    return (f"{path}: the program uses ops Paddle {paddle.__version__} does not have ({op}); was it saved by "
            "a newer Paddle? Export it again with this Paddle, or install the newer one")


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    """A legacy program with a conditional_block (no PIR op of that name) and a PIR one."""
    from paddlenlp_ext.paddle_modes import dygraph_mode

    legacy = tmp_path_factory.mktemp("legacy")
    build(legacy)
    pir = tmp_path_factory.mktemp("pir")
    with dygraph_mode():
        paddle.jit.save(paddle.nn.Embedding(100, 2), str(pir / "model"),
                        input_spec=[paddle.static.InputSpec([None, None], "int64", "input_ids")])
    return {"legacy": legacy, "pir": pir}


def newer_legacy(source, target):
    """``source`` with its gather_nd op renamed NEW_OP."""
    from paddle.base import core

    shutil.copytree(source, target)
    desc = core.ProgramDesc((target / "model.pdmodel").read_bytes())
    ops = [desc.block(b).op(i) for b in range(desc.num_blocks()) for i in range(desc.block(b).op_size())]
    (renamed,) = [op for op in ops if op.type() == "gather_nd"]
    renamed.set_type(NEW_OP)
    (target / "model.pdmodel").write_bytes(desc.serialize_to_string())
    return target / "model.pdmodel"


def newer_pir(source, target):
    """``source`` with its embedding op renamed "embedding_from_paddle_9"."""
    shutil.copytree(source, target)
    program = json.loads((target / "model.json").read_text())
    text = json.dumps(program, separators=(",", ":"))
    assert text.count('"#":"1.embedding"') == 1
    (target / "model.json").write_text(text.replace('"#":"1.embedding"', '"#":"1.embedding_from_paddle_9"'))
    return target / "model.json"


@pytest.fixture(params=["legacy", "pir"])
def newer(request, sound, tmp_path):
    """(directory, program file, the unknown op) for a program from a "newer Paddle"."""
    if request.param == "legacy":
        return tmp_path / "newer", newer_legacy(sound["legacy"], tmp_path / "newer"), NEW_OP
    return tmp_path / "newer", newer_pir(sound["pir"], tmp_path / "newer"), "embedding_from_paddle_9"


def test_ops_the_translator_rewrites_itself_are_not_unknown(sound):
    """conditional_block has no PIR op of its name (check_unregistered_ops lists it), but
    Paddle knows it: a sound program is not refused."""
    from paddle.base import core

    desc = core.ProgramDesc((sound["legacy"] / "model.pdmodel").read_bytes())
    assert "conditional_block" in paddle.base.libpaddle.pir.check_unregistered_ops(desc)
    assert unknown_legacy_ops(desc) == []
    for directory in sound.values():
        program_files.load_program(directory).release()


def test_static_generation_model_and_load_program_name_the_unknown_op(newer):
    directory, program_file, op = newer
    for load in (program_files.load_program, inference.StaticGenerationModel):
        with pytest.raises(program_files.ModelDirectoryError) as raised:
            load(directory)
        assert str(raised.value) == message(program_file, op)


def test_the_hook_names_the_unknown_op(newer):
    directory, program_file, op = newer
    config = paddle.inference.Config(str(program_file), str(directory / "model.pdiparams"))
    with paddlenlp_ext.enable(), pytest.raises(program_files.ModelDirectoryError) as raised:
        paddle.inference.create_predictor(config)
    assert str(raised.value) == message(program_file, op)


@pytest.mark.parametrize("route", ["convert", "predictor"])
def test_the_command_lines_say_it_in_one_line_with_exit_2(newer, tmp_path, route):
    from paddlenlp.transformers import LlamaTokenizer

    from paddlenlp_ext.models import TOKENIZER_MODEL

    directory, program_file, op = newer
    output = tmp_path / "out"
    if route == "convert":
        args = ["-m", "paddlenlp_ext.convert", str(directory), str(output)]
    else:
        LlamaTokenizer(vocab_file=str(TOKENIZER_MODEL), pad_token="<unk>").save_pretrained(str(directory))
        args = ["-m", "paddlenlp_ext.predictor", "--model_name_or_path", str(directory), "--output_file", str(output)]
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "error: " + message(program_file, op)
    assert "Traceback" not in result.stderr
    assert not output.exists()
