"""llm/export_model.py with PaddleNLP's own loop (``--loop paddlenlp``, legacy format, as
PaddleNLP 2.8 users have their models): the directory runs in our predictor with and
without the pass, through the converter, and in Paddle Inference configured as
PaddleNLP's static predictor does it with the load-time hook; PaddleNLP's greedy
tokens every time. And one error line for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_convert import assert_one_line_error, run_convert
from test_decoding import NEW_TOKENS, paddlenlp_greedy

import paddlenlp_ext
from paddlenlp_ext.files import current_umask
from paddlenlp_ext.inference import StaticGenerationModel, executed_loop_copies, run_predictor
from paddlenlp_ext.paddle_config import paddlenlp_static_config
from paddlenlp_ext.models import load_model
from paddlenlp_ext.predictor import PredictorArgument, create_predictor, decoding_settings, model_inputs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "llm" / "export_model.py"
TEXTS = ["The weather today", "My favourite recipe for a quick dinner with friends is"]
PADDLENLP_ORDER = ["input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_k"]


def cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """(directory, CLI result): PaddleNLP's own loop exported in the legacy format."""
    directory = tmp_path_factory.mktemp("native") / "llama2"
    return directory, cli("--model", "llama2", "--output_path", directory, "--loop", "paddlenlp",
                          "--export_format", "legacy")


@pytest.fixture(scope="module")
def reference(native):
    """The greedy setting, PaddleNLP's dynamic greedy tokens, and the inputs, for TEXTS."""
    config = PredictorArgument(model_name_or_path=str(native[0]), mode="static", decode_strategy="greedy_search",
                               max_length=NEW_TOKENS)
    model, tokenizer = load_model("llama2")
    tokenizer.padding_side = "left"
    encoded = tokenizer(TEXTS, padding=True, return_attention_mask=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype("int64"), encoded["attention_mask"].astype("int64")
    assert mask[0].sum() < mask[1].sum()  # left padding in the batch
    tokens = paddlenlp_greedy(model, ids, mask, eos_token_id=tokenizer.eos_token_id)
    return config, tokens, model_inputs(ids, mask, NEW_TOKENS, decoding_settings(config))


def test_cli_writes_paddlenlps_layout(native):
    directory, result = native
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == (
        f"wrote {directory} (legacy, loop paddlenlp: model.pdiparams, model.pdiparams.info, model.pdmodel)")
    files = {path.name for path in directory.iterdir()}
    assert {"model.pdmodel", "model.pdiparams", "config.json", "generation_config.json",
            "tokenizer_config.json", "paddlenlp_ext.json"} <= files
    metadata = json.loads((directory / "paddlenlp_ext.json").read_text())
    assert metadata["loop"] == "paddlenlp" and metadata["inputs"] == PADDLENLP_ORDER
    assert StaticGenerationModel(directory, remove_loop_assign=False).input_names == PADDLENLP_ORDER
    # PaddleNLP's defaults, recorded; its loop exports top-k sampling (top_p 1.0) unless --top_p < 1 is asked for.
    from paddlenlp.generation import GenerationConfig

    recorded = GenerationConfig.from_pretrained(str(directory))  # the file holds what differs from its defaults
    assert (recorded.decode_strategy, recorded.top_k, recorded.top_p, recorded.temperature) == ("sampling", 0, 1.0, 0.95)


@pytest.mark.parametrize("clean", [False, True], ids=["as translated", "remove_loop_assign"])
def test_predictor_gives_paddlenlps_greedy_tokens(native, reference, clean):
    config, tokens, _ = reference
    config = PredictorArgument(**{**config.__dict__, "remove_loop_assign": clean})
    predictor = create_predictor(config)
    assert predictor.static_model.copies_before == 10
    assert predictor.static_model.copies_after == (0 if clean else 10)
    np.testing.assert_array_equal(predictor.generate_ids(TEXTS), tokens)


def test_converter_round_trip_keeps_tokens_order_and_permissions(native, reference, tmp_path):
    _, tokens, inputs = reference
    destination = tmp_path / "converted"
    result = run_convert(native[0], destination)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == "remove_loop_assign: removed 10 copies from 1 loops; kept 0"
    static = StaticGenerationModel(destination, remove_loop_assign=False)
    assert static.input_names == PADDLENLP_ORDER and static.copies_before == 0
    np.testing.assert_array_equal(static.run(inputs), tokens)
    assert destination.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_paddlenlps_predictor_config_with_the_load_time_hook(native, reference, tmp_path):
    _, tokens, inputs = reference
    from paddle import inference

    config = paddlenlp_static_config(native[0])
    np.testing.assert_array_equal(run_predictor(inference.create_predictor(config), inputs)[0], tokens)
    with paddlenlp_ext.enable() as enabled:
        config.set_optim_cache_dir(str(tmp_path))
        config.enable_save_optim_model(True)
        predictor = inference.create_predictor(config)
    assert [report.removed for _, report in enabled.reports] == [10]
    assert executed_loop_copies(str(tmp_path)) == 0
    np.testing.assert_array_equal(run_predictor(predictor, inputs)[0], tokens)


def test_a_missing_input_is_named(native, reference):
    inputs = dict(reference[2])
    del inputs["top_k"]
    with pytest.raises(ValueError, match="^missing model inputs: top_k$"):
        StaticGenerationModel(native[0]).run(inputs)


@pytest.mark.parametrize("args, message", [
    (["--loop", "paddlenlp", "--top_p", "0.9"], "'use_top_p': False"),
    (["--dtype", "float16"], "--dtype float16: Paddle's CPU kernels cannot compute a model in float16"),
    (["--max_length", "0"], "--max_length must be positive"),
    (["--model", "llama3"], "llama3"),
], ids=["top-p on CPU", "dtype", "length", "unknown model"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    output = tmp_path / "out"
    assert_one_line_error(cli("--output_path", output, *args), message)
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_output_path_needs_overwrite(native, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    assert_one_line_error(cli("--model", "llama2", "--output_path", tmp_path / "out"),
                          f"{tmp_path / 'out'} already exists and is not empty: choose a new directory or use "
                          "--overwrite")
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["keep"]


def test_paddlenlps_flags_we_do_not_run_are_refused_in_one_line(tmp_path, capsys):
    from paddlenlp_ext.export_model import main

    assert main(["--output_path", str(tmp_path / "out"), "--block_attn"]) == 2
    assert capsys.readouterr().err == ("error: --block_attn true: needs PaddleNLP's fused inference models and their "
                                       "GPU custom ops (paddlenlp_ops); this predictor runs the model's own "
                                       "generation loop on Paddle Inference\n")
    assert not (tmp_path / "out").exists()
