"""llm/predictor.py: the main command, the same greedy outputs in every mode, and one
clear error for every bad input, through the real CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paddlenlp_ext.predictor import main

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "llm" / "predictor.py"
PROMPTS = [{"src": "The weather today", "tgt": "sunny"},
           {"src": "My favourite recipe for a quick dinner with friends is"}]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


@pytest.fixture(scope="module")
def home(tmp_path_factory, monkeypatch_module):
    """One model cache for the module (the embedded model is built once)."""
    path = tmp_path_factory.mktemp("home")
    monkeypatch_module.setenv("PADDLENLP_EXT_HOME", str(path))
    return path


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def test_main_command_prints_outputs_and_the_report(home, tmp_path):
    result = cli("--model", "llama2", "--remove_loop_assign", "--max_length", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    # the static KV cache by default: its loop copies no cache (the concat loop has 14 copies)
    assert "remove_loop_assign: removed 9 copies from 1 loops; kept 0" in result.stdout
    assert result.stdout.count("***********Output**********") == 2
    lines = (tmp_path / "output.json").read_text().splitlines()
    assert [set(json.loads(line)) for line in lines] == [{"src", "tgt", "output"}] * 2


def run_mode(tmp_path, data_file, name, *args):
    output = tmp_path / f"{name}.json"
    assert main(["--model", "llama2", "--decode_strategy", "greedy_search", "--max_length", "8",
                 "--batch_size", "2", "--data_file", str(data_file), "--output_file", str(output), *args]) == 0
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_greedy_outputs_are_identical_in_every_mode(home, tmp_path, data_file, capsys):
    modes = {
        "dynamic": ["--mode", "dynamic"],
        # The cleanup is on in static mode unless --remove_loop_assign false; given alone, it chooses static mode.
        "legacy": ["--mode", "static", "--export_format", "legacy", "--remove_loop_assign", "false"],
        "legacy+pass": ["--mode", "static", "--export_format", "legacy"],
        "pir": ["--mode", "static", "--export_format", "pir", "--remove_loop_assign", "false"],
        "pir+pass": ["--remove_loop_assign", "--export_format", "pir", "--cache", "static"],  # the default, named
        "legacy concat": ["--mode", "static", "--export_format", "legacy", "--cache", "concat",
                          "--remove_loop_assign", "false"],
        "legacy+pass concat": ["--remove_loop_assign", "--export_format", "legacy", "--cache", "concat"],
    }
    results = {name: run_mode(tmp_path, data_file, name, *args) for name, args in modes.items()}
    reference = results.pop("dynamic")
    assert [r["src"] for r in reference] == [p["src"] for p in PROMPTS]
    assert [r["tgt"] for r in reference] == ["sunny", ""]
    assert all(r["output"] for r in reference)
    for name, records in results.items():
        assert records == reference, name
    printed = capsys.readouterr().out
    assert "remove_loop_assign: removed 9 copies from 1 loops; kept 0" in printed  # legacy+pass, static cache
    assert "remove_loop_assign: off by --remove_loop_assign false (9 copies in the loop)" in printed  # legacy
    assert "remove_loop_assign: removed 14 copies from 1 loops; kept 0" in printed  # legacy+pass concat
    assert "remove_loop_assign: off by --remove_loop_assign false (14 copies in the loop)" in printed  # concat


def test_benchmark_reports_prefill_and_decode_apart_on_the_given_prompts(home, tmp_path, data_file, capsys):
    assert main(["--model", "llama2", "--mode", "static", "--max_length", "8", "--benchmark", "--data_file",
                 str(data_file), "--output_file", str(tmp_path / "out.json")]) == 0
    (line,) = [text for text in capsys.readouterr().out.splitlines() if text.startswith("benchmark: ")]
    number = r"[0-9]+\.[0-9]"
    assert re.fullmatch(
        rf"benchmark: 2 prompts in 2 batches, 3 repeats after a warm-up: prefill {number} ms \(min {number}, max "
        rf"{number}\) per batch; decode {number} ms \(min {number}, max {number}\) per token \({number} tokens/s per "
        rf"batch\); [0-9]+ tokens generated per repeat", line), line


def test_benchmark_takes_the_prefill_from_the_whole_run(monkeypatch):
    """On a clock that a fake predictor advances by 10 ms for its prompt and 5 ms per
    later token, the prefill is 10 ms and a decode step 5 ms."""
    import paddlenlp_ext.predictor as predictor_module

    clock = [0.0]
    monkeypatch.setattr(predictor_module.time, "perf_counter", lambda: clock[0])

    class Timed:
        config = predictor_module.PredictorArgument(batch_size=2, max_length=6)

        class tokenizer:
            eos_token_id = 2

        def generate_ids(self, texts, max_new_tokens=None):
            steps = max_new_tokens or self.config.max_length
            clock[0] += 0.010 + 0.005 * (steps - 1)
            ids = np.full((len(texts), steps), 7)
            ids[0, 3:] = [2] + [0] * (steps - 4) if steps > 3 else ids[0, 3:]  # row 0 stops at its eos
            return ids

    result = predictor_module.benchmark(Timed(), ["a", "b", "c"], repeats=2)
    assert (result.prompts, result.batches, result.repeats) == (3, 2, 2)
    assert result.prefill_ms == pytest.approx((10.0, 10.0, 10.0))
    assert result.decode_ms_per_token == pytest.approx((5.0, 5.0, 5.0))
    assert result.tokens == 4 + 6 + 4  # batch [a, b]: a to its eos, b whole; batch [c]: c to its eos


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("missing data file", ["--data_file", "{tmp}/nope.jsonl"], "cannot read {tmp}/nope.jsonl: No such file or directory"),
        ("unreadable data file", ["--data_file", "{tmp}"], "cannot read {tmp}: Is a directory"),
        ("gpu without paddlepaddle-gpu", ["--device", "gpu"],
         "--device gpu needs paddlepaddle-gpu (see the README's GPU section)"),
        ("malformed line", ["--data_file", "{tmp}/bad.jsonl"], "{tmp}/bad.jsonl line 2: not valid JSON (Expecting value)"),
        ("no src", ["--data_file", "{tmp}/nosrc.jsonl"], "{tmp}/nosrc.jsonl line 1: expected an object with a string \"src\""),
        ("empty data file", ["--data_file", "{tmp}/empty.jsonl"], "{tmp}/empty.jsonl: no prompts"),
        ("missing model dir", ["--model_name_or_path", "{tmp}/nomodel"], "{tmp}/nomodel: no such model directory"),
        ("hub name", ["--model_name_or_path", "meta-llama/Llama-2-7b-chat"], "meta-llama/Llama-2-7b-chat: no such "
         "model directory (a model hub name? this predictor never downloads: give a local save_pretrained directory)"),
        ("another prefix", ["--model_name_or_path", "{tmp}/prefixed"], "{tmp}/prefixed: a static model saved as "
         "rank_0.pdmodel; this predictor reads model.json or model.pdmodel (PaddleNLP's --model_prefix model): "
         "rename its files"),
        ("unknown model", ["--model", "gpt5"], "unknown model 'gpt5': known models are llama2, llama2-gqa, or give a save_pretrained directory"),
        ("zero max_length", ["--max_length", "0"], "--max_length must be a positive integer, got 0"),
        ("negative src_length", ["--src_length", "-3"], "--src_length must be a positive integer, got -3"),
        ("zero batch", ["--batch_size", "0"], "--batch_size must be a positive integer, got 0"),
        ("top_p 0", ["--top_p", "0"], "--top_p must be in (0, 1] (1.0 = off), got 0.0"),
        ("top_p 1.5", ["--top_p", "1.5", "--mode", "static"], "--top_p must be in (0, 1] (1.0 = off), got 1.5"),
        ("temperature 0", ["--temperature", "0"],
         "--temperature must be positive (for greedy decoding use greedy_search or top_k 1), got 0.0"),
        ("temperature -1", ["--temperature", "-1", "--mode", "static"],
         "--temperature must be positive (for greedy decoding use greedy_search or top_k 1), got -1.0"),
        ("negative top_k", ["--top_k", "-1"], "--top_k must be >= 0 (0 = off), got -1"),
        ("zero penalty", ["--repetition_penalty", "0"], "--repetition_penalty must be positive (1.0 = off), got 0.0"),
        ("float16", ["--dtype", "float16"],
         "--dtype float16: Paddle's CPU kernels cannot compute a model in float16 (no float16 matmul on CPU); use --dtype float32, which loads a float16 checkpoint cast to float32"),
        ("unknown dtype", ["--dtype", "fp32"], "--dtype must be one of float32, float16, bfloat16, got 'fp32'"),
        ("bfloat16 in dygraph", ["--dtype", "bfloat16"], "--dtype bfloat16: Paddle's dygraph has no bfloat16 matmul "
         "on CPU; use --mode static (a static program computes in bfloat16 on oneDNN)"),
        ("float16 export on CPU", ["--model_name_or_path", "{tmp}/float16"],
         "{tmp}/float16: the model was exported in float16, which Paddle's CPU kernels cannot compute; export it "
         "again from its checkpoint with --dtype float32"),
        ("output under a file", ["--output_file", "{tmp}/bad.jsonl/out.json"],
         "cannot write {tmp}/bad.jsonl/out.json: {tmp}/bad.jsonl is not a directory"),
        ("output is a directory", ["--output_file", "{tmp}"], "cannot write {tmp}: it is a directory"),
        ("static directory, dynamic mode", ["--model_name_or_path", "{tmp}/static", "--mode", "dynamic"],
         "{tmp}/static is a static model directory: run it with --mode static"),
        ("static directory, no tokenizer", ["--model_name_or_path", "{tmp}/static"],
         "{tmp}/static: no tokenizer (tokenizer_config.json) beside the static model"),
        ("truncated parameters", ["--model_name_or_path", "{tmp}/truncated"],
         "{tmp}/truncated: model.pdiparams: tensor 1: the file ends 4 bytes early (truncated?)"),
        ("pass in dynamic mode", ["--remove_loop_assign", "--mode", "dynamic"],
         "--remove_loop_assign rewrites the static graph; it cannot be used with --mode dynamic"),
        ("too long", ["--src_length", "1000", "--max_length", "100"],
         "--src_length + --max_length = 1100 exceeds the model's max_position_embeddings (1024)"),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_no_output_file(home, tmp_path, case, args, message):
    (tmp_path / "bad.jsonl").write_text('{"src": "fine"}\n{"src": broken\n')
    (tmp_path / "nosrc.jsonl").write_text('{"tgt": "x"}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "model.pdmodel").write_bytes(b"")
    (tmp_path / "truncated").mkdir()
    (tmp_path / "prefixed").mkdir()
    for name in ("rank_0.pdmodel", "rank_0.pdiparams", "config.json"):
        (tmp_path / "prefixed" / name).write_bytes(b"{}")
    (tmp_path / "float16").mkdir()
    for name, data in (("model.pdmodel", b""), ("model.pdiparams", b""), ("tokenizer_config.json", b"{}"),
                       ("config.json", b'{"dtype": "float16"}')):
        (tmp_path / "float16" / name).write_bytes(data)
    for name, data in (("model.pdmodel", b""), ("tokenizer_config.json", b"{}"), ("model.pdiparams", b"\0" * 8)):
        (tmp_path / "truncated" / name).write_bytes(data)
    output = tmp_path / "out.json"
    args = [a.format(tmp=tmp_path) for a in args]
    result = cli("--output_file", str(output), *args, cwd=tmp_path)
    assert result.returncode == 2, (case, result.stdout[-500:], result.stderr[-2000:])
    assert result.stderr.strip().splitlines()[-1] == "error: " + message.format(tmp=tmp_path)
    assert "Traceback" not in result.stderr
    assert not output.exists() and not any(p.name.startswith(".out.json") for p in tmp_path.iterdir())


def test_generated_tokens_are_counted_up_to_each_rows_eos():
    import numpy as np

    from paddlenlp_ext.predictor import count_generated

    ids = np.array([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert count_generated(ids, eos_token_id=2) == 2 + 4 + 1
    assert count_generated(ids, eos_token_id=None) == 12


def test_an_id_the_tokenizer_cannot_decode_is_one_error():
    """A model whose vocabulary outgrows its tokenizer's: sentencepiece's IndexError
    (OUT_OF_RANGE) would be a traceback."""
    from paddlenlp.transformers import LlamaTokenizer

    from paddlenlp_ext.models import TOKENIZER_MODEL
    from paddlenlp_ext.predictor import BasePredictor, PredictorArgument, PredictorError

    tokenizer = LlamaTokenizer(vocab_file=str(TOKENIZER_MODEL), pad_token="<unk>")
    predictor = BasePredictor(PredictorArgument(), tokenizer)
    assert predictor._postprocess(np.array([[5, 1999]])) == [tokenizer.decode([5, 1999], skip_special_tokens=True)]
    with pytest.raises(PredictorError, match="^the model generated token id 2000, which its tokenizer "
                                             r"\(ids 0 to 1999\) cannot decode"):
        predictor._postprocess(np.array([[5, 2000]]))


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    from paddlenlp_ext.predictor import PredictorError, write_results

    (tmp_path / "file").write_text("x")
    with pytest.raises(PredictorError, match="cannot write"):
        write_results(str(tmp_path / "file" / "out.json"), [{"src": "a"}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_model_inputs_have_paddlenlps_names_dtypes_and_left_padded_positions():
    import numpy as np

    from paddlenlp_ext.predictor import GENERATION_INPUTS, PredictorArgument, decoding_settings, model_inputs

    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    config = PredictorArgument(top_k=3, top_p=0.7, temperature=0.5, seed=9)
    inputs = model_inputs(np.array([[0, 0, 7, 8], [4, 5, 6, 7]]), mask, 5, decoding_settings(config))
    assert set(inputs) == set(GENERATION_INPUTS)
    assert inputs["position_ids"].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    assert {name: (a.dtype.name, a.shape) for name, a in inputs.items() if a.ndim == 1} == {
        "max_new_tokens": ("int64", (1,)), "top_k": ("int64", (1,)), "top_p": ("float32", (1,)),
        "temperature": ("float32", (1,)), "repetition_penalty": ("float32", (1,)), "seed": ("int64", (1,))}
    assert inputs["top_k"][0] == 3 and inputs["top_p"][0] == np.float32(0.7) and inputs["max_new_tokens"][0] == 5
    greedy = decoding_settings(PredictorArgument(decode_strategy="greedy_search", top_k=3))
    assert greedy["top_k"] == 1


def predictor_for_inputs(monkeypatch, directory, names, config):
    """A StaticGraphPredictor on a stand-in model that takes ``names`` (no program is loaded)."""
    import paddlenlp_ext.inference as inference
    from paddlenlp_ext.predictor import StaticGraphPredictor

    class Model:
        has_loop, report = True, None

        def __init__(self, *args, **kwargs):
            self.input_names = names

    class Tokenizer:
        padding_side = "right"

    monkeypatch.setattr(inference, "StaticGenerationModel", Model)
    return StaticGraphPredictor(config, directory, Tokenizer())


@pytest.mark.parametrize("names, message", [
    (["input_ids", "attention_mask", "max_new_tokens", "stop_words"], "takes input 'stop_words'"),
    (["input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_p", "temperature"],
     "^--decode_strategy greedy_search: the model takes no top_k input; it decodes with top_k 0$"),
], ids=["unknown input", "greedy on a top-p model"])
def test_a_model_the_predictor_cannot_feed_is_one_error(monkeypatch, tmp_path, names, message):
    from paddlenlp_ext.predictor import PredictorArgument, PredictorError

    with pytest.raises(PredictorError, match=message) as error:
        predictor_for_inputs(monkeypatch, tmp_path, names, PredictorArgument(decode_strategy="greedy_search"))
    assert "\n" not in str(error.value)


def test_a_long_prompt_keeps_its_last_src_length_tokens():
    from paddlenlp.transformers import LlamaTokenizer

    from paddlenlp_ext.models import TOKENIZER_MODEL
    from paddlenlp_ext.predictor import BasePredictor, PredictorArgument

    text = "one two three four five six seven eight nine ten"
    tokenizer = LlamaTokenizer(vocab_file=str(TOKENIZER_MODEL), pad_token="<unk>")
    whole = tokenizer(text)["input_ids"]
    assert len(whole) > 4
    ids, mask = BasePredictor(PredictorArgument(src_length=4), tokenizer)._preprocess([text, "one"])
    # <s>, then the text's last 3 tokens (the tokenizer keeps its special tokens)
    assert whole[0] == tokenizer.bos_token_id
    assert ids[0].tolist() == whole[:1] + whole[-3:] and mask[0].tolist() == [1] * 4
    assert mask[1].tolist() == [0] * (4 - mask[1].sum()) + [1] * mask[1].sum()  # the short one, left-padded


def test_bad_arguments_are_refused_before_paddle_is_imported(tmp_path):
    """Each bad input above is found by validate(), which imports neither Paddle nor
    PaddleNLP: the line comes in a fraction of a second, not after a model is built."""
    code = ("import sys; from paddlenlp_ext.predictor import main; "
            "code = main(sys.argv[1:]); print(code, 'paddle' in sys.modules, 'paddlenlp' in sys.modules)")
    for args in (["--model", "gpt5"], ["--data_file", str(tmp_path / "nope.jsonl")], ["--top_p", "1.5"],
                 ["--model_name_or_path", str(tmp_path)], ["--output_file", str(tmp_path)]):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        assert result.stdout.split() == ["2", "False", "False"], (args, result.stderr[-1000:])
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("arguments, message", [
    ({"max_length": 0}, "--max_length must be a positive integer, got 0"),
    ({"src_length": -5}, "--src_length must be a positive integer, got -5"),
    ({"mode": "bogus"}, "--mode must be one of dynamic, static, got 'bogus'"),
    ({"dtype": "float16"}, "--dtype float16: Paddle's CPU kernels cannot compute a model in float16"),
    ({"mode": "dynamic", "remove_loop_assign": True}, "--remove_loop_assign rewrites the static graph"),
    ({"decode_strategy": "beam_search"}, "--decode_strategy must be one of sampling, greedy_search"),
    ({"top_k": 2.5}, "--top_k must be an integer, got 2.5"),
    ({"temperature": "hot"}, "--temperature must be a number, got 'hot'"),
])
def test_the_python_api_validates_as_the_command_line_does(arguments, message):
    from paddlenlp_ext.predictor import PredictorArgument, create_predictor

    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        create_predictor(PredictorArgument(**arguments))


def test_the_apis_defaults_are_the_command_lines():
    from paddlenlp_ext.predictor import PredictorArgument, parse_arguments, validate

    assert validate(PredictorArgument()) == parse_arguments([])[0]
    assert validate(PredictorArgument()).mode == "dynamic"


def test_predict_refuses_no_prompts_and_batches_by_batch_size():
    from paddlenlp.transformers import LlamaTokenizer

    from paddlenlp_ext.models import TOKENIZER_MODEL
    from paddlenlp_ext.predictor import BasePredictor, PredictorArgument

    class Recording(BasePredictor):
        def generate_ids(self, texts):
            batches.append(list(texts))
            return np.full((len(texts), 1), 5, dtype="int64")

    batches = []
    predictor = Recording(PredictorArgument(batch_size=2),
                          LlamaTokenizer(vocab_file=str(TOKENIZER_MODEL), pad_token="<unk>"))
    with pytest.raises(ValueError, match="non-empty list of prompts"):
        predictor.predict([])
    assert len(predictor.predict(["a", "b", "c"])) == 3
    assert batches == [["a", "b"], ["c"]]


@pytest.fixture(scope="module")
def sampling_export(home, tmp_path_factory):
    """The embedded llama2's loop, exported with sampling (top_k 20) as its recorded
    default: what `export_model.py --top_k 20` writes."""
    from paddlenlp_ext.decoding import DecodingConfig
    from paddlenlp_ext.export import export_generation_model
    from paddlenlp_ext.models import load_model
    from paddlenlp_ext.paddle_modes import dygraph_mode

    model, tokenizer = load_model("llama2")
    directory = tmp_path_factory.mktemp("sampling") / "llama2"
    with dygraph_mode():
        export_generation_model(model, directory, tokenizer=tokenizer, format="legacy",
                                decoding=DecodingConfig("sampling", top_k=20, eos_token_id=2, pad_token_id=0))
    return directory, model, tokenizer


def test_every_decoding_flag_is_honoured_on_our_export(sampling_export, monkeypatch):
    from test_decoding import run_dynamic

    import paddlenlp_ext.inference as inference
    import paddlenlp_ext.predictor as predictor_module
    from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop
    from paddlenlp_ext.predictor import PredictorArgument, create_predictor

    directory, model, tokenizer = sampling_export
    texts = [PROMPTS[1]["src"]]
    # Every predictor resolves its flags anew; the program is loaded once, the model too.
    loaded = {}
    load_program = inference.StaticGenerationModel
    monkeypatch.setattr(inference, "StaticGenerationModel",
                        lambda path, **kwargs: loaded.get(str(path)) or loaded.setdefault(str(path),
                                                                                           load_program(path, **kwargs)))
    monkeypatch.setattr(predictor_module, "_load", lambda source, dtype: (model, tokenizer))

    def tokens(mode, **flags):
        source = {"model_name_or_path": str(directory)} if mode == "static" else {"model": "llama2"}
        return create_predictor(PredictorArgument(mode=mode, max_length=12, **source, **flags)).generate_ids(texts)

    greedy = tokens("dynamic", decode_strategy="greedy_search")  # PaddleNLP's generate
    np.testing.assert_array_equal(tokens("static", decode_strategy="greedy_search"), greedy)
    penalized = tokens("dynamic", decode_strategy="greedy_search", repetition_penalty=0.5)
    assert not np.array_equal(penalized, greedy)
    np.testing.assert_array_equal(tokens("static", decode_strategy="greedy_search", repetition_penalty=0.5),
                                  penalized)
    # Sampling: this project's sampler, as the loop draws in dynamic mode for the same settings.
    sampled = tokens("static", top_k=5, temperature=1.5, top_p=0.9, seed=3)
    predictor = create_predictor(PredictorArgument(mode="static", model_name_or_path=str(directory)))
    ids, mask = predictor._preprocess(texts)
    settings = DecodingConfig("sampling", top_k=5, temperature=1.5, top_p=0.9, eos_token_id=2, pad_token_id=0)
    np.testing.assert_array_equal(sampled, run_dynamic(GenerationLoop(model, settings), ids, mask, 12, seed=3))
    assert not np.array_equal(sampled, tokens("static", top_k=5, temperature=1.5, top_p=0.9, seed=4))
    assert not np.array_equal(sampled[:, :greedy.shape[1]], greedy[:, :sampled.shape[1]])
    # A sampling flag alone samples, with PaddleNLP 2.8's other defaults (top_k 0, top_p
    # 0.7, temperature 0.95): never greedy for want of a --top_k.
    for flags in ({"top_p": 0.5}, {"temperature": 5.0}):
        alone = tokens("static", seed=3, **flags)
        settings = DecodingConfig("sampling", **{"top_k": 0, "top_p": 0.7, "temperature": 0.95, **flags},
                                  eos_token_id=2, pad_token_id=0)
        np.testing.assert_array_equal(alone, run_dynamic(GenerationLoop(model, settings), ids, mask, 12, seed=3))
        assert not np.array_equal(alone[:, :greedy.shape[1]], greedy[:, :alone.shape[1]]), flags
        dynamic = tokens("dynamic", seed=3, **flags)  # PaddleNLP's generate samples too
        assert not np.array_equal(dynamic[:, :greedy.shape[1]], greedy[:, :dynamic.shape[1]]), flags


@pytest.mark.parametrize("names, flags, message", [
    (["input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_k"], {"temperature": 0.7, "top_k": 5},
     "^--temperature 0.7: the model takes no temperature input; it decodes with temperature 1.0$"),
    (["input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_k"], {"repetition_penalty": 1.2},
     "^--repetition_penalty 1.2: the model takes no repetition_penalty input; it decodes with repetition_penalty 1.0$"),
    (["input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_k"], {"seed": 3, "top_k": 5},
     "^--seed 3: the model takes no seed input and does not record the seed it uses$"),
    (["input_ids", "attention_mask", "max_new_tokens", "seed"], {"top_k": 5},
     "^--top_k 5: the model takes no top_k input and does not record the top_k it uses$"),
], ids=["temperature", "penalty", "seed", "an older export of ours"])
def test_a_decoding_flag_a_model_cannot_take_is_one_error(monkeypatch, tmp_path, names, flags, message):
    from paddlenlp_ext.predictor import PredictorArgument, PredictorError

    with pytest.raises(PredictorError, match=message):
        predictor_for_inputs(monkeypatch, tmp_path, names, PredictorArgument(**flags))
    predictor_for_inputs(monkeypatch, tmp_path, names, PredictorArgument())  # unset, the model's own: no error


def test_top_k_0_is_off_on_paddlenlps_loop_too(monkeypatch, tmp_path):
    """PaddleNLP's loop clips top_k to at least 1 (greedy); off is the whole vocabulary."""
    from paddlenlp_ext.predictor import PredictorArgument

    names = ["input_ids", "attention_mask", "position_ids", "max_new_tokens", "top_k"]
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 2000}))
    assert predictor_for_inputs(monkeypatch, tmp_path, names, PredictorArgument(top_k=0)).settings["top_k"] == 2000
    assert predictor_for_inputs(monkeypatch, tmp_path, names, PredictorArgument(top_k=7)).settings["top_k"] == 7
    # Unset, it is what PaddleNLP's predictor feeds (its default, 0): greedy on that loop, as there.
    assert predictor_for_inputs(monkeypatch, tmp_path, names, PredictorArgument()).settings["top_k"] == 0


def test_a_static_model_that_does_not_generate_is_one_error(home, tmp_path, capsys):
    """A model saved with paddle.jit.save that takes input_ids but has no decoding loop
    (a classifier, say) is refused, not run into an empty output."""
    import paddle

    from paddlenlp_ext.models import load_model
    from paddlenlp_ext.paddle_modes import dygraph_mode

    _, tokenizer = load_model("llama2")
    with dygraph_mode():
        classifier = paddle.nn.Embedding(100, 2)
        paddle.jit.save(classifier, str(tmp_path / "model"),
                        input_spec=[paddle.static.InputSpec([None, None], "int64", "input_ids")])
    tokenizer.save_pretrained(str(tmp_path))
    capsys.readouterr()
    assert main(["--model_name_or_path", str(tmp_path), "--output_file", str(tmp_path / "out.json")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {tmp_path}: not a generation model (it needs input_ids and a decoding loop; it takes input_ids "
        "and has no loop)")
    assert not (tmp_path / "out.json").exists()


def test_a_static_run_of_a_dygraph_model_exports_it_once(tmp_path, monkeypatch):
    import paddlenlp_ext.export as export_module
    from paddlenlp_ext.models import HOME_VARIABLE
    from paddlenlp_ext.predictor import PredictorArgument, create_predictor

    monkeypatch.setenv(HOME_VARIABLE, str(tmp_path))
    exports = []
    original = export_module.export_generation_model

    def export_and_lose_the_race(model, output_dir, **kwargs):
        exports.append(kwargs["format"])
        original(model, output_dir, **kwargs)  # as if another process had finished first
        raise export_module.DirectoryExistsError(output_dir, meanwhile=True)

    monkeypatch.setattr(export_module, "export_generation_model", export_and_lose_the_race)
    config = PredictorArgument(model="llama2", mode="static", max_length=4, decode_strategy="greedy_search")
    lines = []
    first = create_predictor(config, progress=lines.append).generate_ids(["hello"])  # uses the winner's
    assert exports == ["legacy"] and lines[0].startswith("exporting llama2 (legacy) to ")
    second = create_predictor(config, progress=lines.append).generate_ids(["hello"])
    assert exports == ["legacy"] and lines[-1].endswith("(kept from an earlier export)")
    np.testing.assert_array_equal(first, second)
    (kept,) = (tmp_path / "exports").iterdir()
    assert kept.name.startswith("llama2-legacy-")
    # Anything that changes the program is another directory.
    other = create_predictor(PredictorArgument(**{**config.__dict__, "export_format": "pir"}), progress=lines.append)
    assert other.static_model.format == "pir" and exports == ["legacy", "pir"]


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(tmp_path):
    import os

    from interrupting import interrupt_when_ready

    env = {**os.environ, "PADDLENLP_EXT_HOME": str(tmp_path / "home")}
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--model", "llama2", "--mode", "static"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exports = tmp_path / "home" / "exports"
    # once the export is being written (its staging directory exists)
    interrupt_when_ready(process, lambda: exports.is_dir() and any(exports.iterdir()))
    assert not (tmp_path / "output.json").exists()
    assert list(exports.iterdir()) == []  # no staging directory, no export


def test_the_first_line_comes_before_paddle_is_imported(tmp_path):
    """The main command says what it does before the seconds Paddle takes to import."""
    code = ("import sys; import paddlenlp_ext.predictor as p\n"
            "def stop(*args, **kwargs):\n"
            "    print('paddle loaded:', 'paddle' in sys.modules, file=sys.stderr); sys.exit(0)\n"
            "p.quiet_paddlenlp = p.create_predictor = stop; p.main(['--model', 'llama2', '--mode', 'static'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.stderr.splitlines()[:2] == ["2 prompts; starting Paddle", "paddle loaded: False"], result.stderr


def test_on_a_terminal_the_progress_bar_keeps_off_the_output_lines(home, tmp_path, data_file):
    """Outputs go through tqdm.write: on a terminal, where the bar (stderr) and the
    outputs (stdout) share the screen, every output line starts a line of its own."""
    import os
    import pty

    pid, terminal = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal, 100 columns wide
        import fcntl
        import struct
        import termios

        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.chdir(tmp_path)
        os.execv(sys.executable, [sys.executable, str(SCRIPT), "--model", "llama2", "--mode", "static",
                                  "--max_length", "2", "--data_file", str(data_file)])
    screen = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    assert os.waitpid(pid, 0)[1] == 0, screen.decode(errors="replace")[-2000:]
    text = screen.decode(errors="replace")
    assert "batches:" in text and text.count("***********Source**********") == 2
    for marker in ("***********Source**********", "***********Output**********"):
        for at in [i for i in range(len(text)) if text.startswith(marker, i)]:
            assert text[at - 1] in "\r\n", text[max(0, at - 80):at + len(marker)]


def test_a_static_model_no_configuration_runs_right_is_one_error(home, tmp_path, capsys, monkeypatch):
    """When our configuration cannot run a PIR directory and oneDNN is on, nothing known
    to be right is left (Paddle's default oneDNN config is not): one error line."""
    import paddle

    import paddlenlp_ext.inference as inference
    from paddlenlp_ext.models import load_model
    from paddlenlp_ext.paddle_modes import dygraph_mode

    def broken(loaded, config_for):
        raise RuntimeError("cannot create")

    _, tokenizer = load_model("llama2")
    with dygraph_mode():
        paddle.jit.save(paddle.nn.Embedding(100, 2), str(tmp_path / "model"),
                        input_spec=[paddle.static.InputSpec([None, None], "int64", "input_ids")])
    tokenizer.save_pretrained(str(tmp_path))
    monkeypatch.setattr(inference, "_staged_predictor", broken)
    capsys.readouterr()
    assert main(["--model_name_or_path", str(tmp_path), "--output_file", str(tmp_path / "out.json")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {tmp_path}: no configuration known to run it right is left (the prepared program could not be "
        "built: cannot create; the untouched program could not be built: cannot create)")
    assert not (tmp_path / "out.json").exists()


def test_the_exported_dygraph_model_is_freed_before_the_predictor_loads(tmp_path, monkeypatch):
    """A whole bfloat16 llama2-7B (12.6 GiB) fits 24 GiB once, not twice: the model a
    static run exports must be gone when the predictor loads the export. PaddleNLP's
    layers and the traced program hold it through reference cycles, which the
    automatic collector may not reach in time (off here, to be sure of it)."""
    import gc
    import weakref

    import paddlenlp_ext.predictor as predictor_module
    from paddlenlp_ext.models import HOME_VARIABLE

    monkeypatch.setenv(HOME_VARIABLE, str(tmp_path))
    loaded = []
    original = predictor_module._load

    def load_and_watch(source, dtype):
        model, tokenizer = original(source, dtype)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    monkeypatch.setattr(predictor_module, "_load", load_and_watch)
    config = predictor_module.PredictorArgument(model_name_or_path="llama2", mode="static", export_format="pir",
                                                dtype="float32")
    gc.disable()
    try:
        _, exported = predictor_module._cached_export(config, "llama2", lambda message: None)
        assert exported and len(loaded) == 1
        assert loaded[0]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("args, message", [
    (["--inference_model"], "--inference_model true: needs PaddleNLP's fused inference models"),
    (["--block_attn", "true"], "--block_attn true: needs PaddleNLP's fused inference models"),
    (["--quant_type", "weight_only_int8"], "--quant_type weight_only_int8: quantized inference needs PaddleNLP's"),
    (["--lora_path", "lora"], "--lora_path lora: LoRA is not applied here: merge the tuned weights"),
    (["--avx_model"], "--avx_model true: PaddleNLP's AVX mode needs xFasterTransformer's custom ops"),
    (["--model_type", "gpt-3"], "--model_type gpt-3: PaddleNLP's modeling files under llm/"),
    (["--model_prefix", "rank_0"], "--model_prefix rank_0: static models are read as model.json or model.pdmodel"),
])
def test_paddlenlps_flags_we_do_not_run_are_refused_in_one_line(args, message):
    from paddlenlp_ext.predictor import PredictorError, parse_arguments

    with pytest.raises(PredictorError) as raised:
        parse_arguments(args)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_paddlenlps_flags_at_their_defaults_parse_and_argparse_errors_are_one_line(capsys):
    from paddlenlp_ext.predictor import PredictorArgument, parse_arguments, validate

    defaults = ["--model_prefix", "model", "--quant_type", "None", "--inference_model", "false", "--block_size", "64",
                "--enable_memory_optim", "true", "--use_flash_attention", "false"]
    assert parse_arguments(defaults)[0] == validate(PredictorArgument())
    for args, line in ((["--device", "xpu"], "error: argument --device: invalid choice: 'xpu'"),
                       (["--decode_strategy", "beam_search"], "error: argument --decode_strategy: invalid choice"),
                       (["--num_beams", "4"], "error: unrecognized arguments: --num_beams 4")):
        with pytest.raises(SystemExit) as exited:
            parse_arguments(args)
        stderr = capsys.readouterr().err
        assert exited.value.code == 2 and stderr.startswith(line) and stderr.count("\n") == 1, stderr


def _checkpoint_stub(directory, model_type):
    """What validation reads of a checkpoint (no model is loaded there)."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    (directory / "model_state.pdparams").write_bytes(b"")
    (directory / "tokenizer_config.json").write_text("{}")
    return str(directory)


@pytest.mark.parametrize("model_type", ["chatglm", "opt"])
def test_an_architecture_static_mode_cannot_export_is_one_line(tmp_path, model_type):
    from paddlenlp_ext.predictor import PredictorArgument, PredictorError, validate

    source = _checkpoint_stub(tmp_path / model_type, model_type)
    with pytest.raises(PredictorError, match=rf"^{source}: static mode cannot export a {model_type} model \(it "
                                             r"exports llama, gpt, chatglm_v2, qwen, mixtral, bloom\); "
                                             r"run it with --mode dynamic$"):
        validate(PredictorArgument(model_name_or_path=source, mode="static"))
    assert validate(PredictorArgument(model_name_or_path=source)).mode == "dynamic"


def test_every_architecture_exports_in_either_format(tmp_path):
    from paddlenlp_ext.predictor import PredictorArgument, validate
    from paddlenlp_ext.predictor_args import STATIC_ARCHITECTURES

    for model_type in STATIC_ARCHITECTURES:
        source = _checkpoint_stub(tmp_path / model_type, model_type)
        assert validate(PredictorArgument(model_name_or_path=source, mode="static")).export_format == "legacy"
        assert validate(PredictorArgument(model_name_or_path=source, mode="static",
                                          export_format="pir")).export_format == "pir"


def test_static_mode_states_qwens_context_limit(tmp_path):
    """A QWen export computes as PaddleNLP does up to its seq_length tokens
    (compat.architectures: dynamic NTK's alpha 1, the rotary cache's length)."""
    from paddlenlp_ext.predictor import PredictorArgument, PredictorError, validate

    source = _checkpoint_stub(tmp_path / "qwen", "qwen")
    config = json.loads((tmp_path / "qwen" / "config.json").read_text())
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({**config, "seq_length": 512}))
    assert validate(PredictorArgument(model_name_or_path=source, mode="static", src_length=448,
                                      max_length=64)).mode == "static"
    with pytest.raises(PredictorError, match=r"^--src_length \+ --max_length = 576: a static qwen export computes "
                                             r"contexts of up to 512 tokens as PaddleNLP does \(its seq_length\); "
                                             r"lower them or run with --mode dynamic$"):
        validate(PredictorArgument(model_name_or_path=source, mode="static"))
    assert validate(PredictorArgument(model_name_or_path=source, mode="dynamic")).mode == "dynamic"


def test_a_gpt_checkpoint_runs_in_static_mode_with_generates_tokens(home, tmp_path):
    """GPT (PaddleNLP's GPTForCausalLM) in static mode: exported in PaddleNLP's legacy
    format (compat.architectures' GPT patch), cleaned, the tokens of PaddleNLP's dynamic
    generate. One prompt: PaddleNLP's GPT attends to the padding of a batch (its
    prepare_inputs_for_generation drops the attention mask), which our loop masks."""
    import paddle
    from paddlenlp.transformers import GPTConfig, GPTForCausalLM, LlamaTokenizer

    from paddlenlp_ext.models import TOKENIZER_MODEL
    from paddlenlp_ext.paddle_modes import dygraph_mode
    from paddlenlp_ext.predictor import PredictorArgument, create_predictor

    tokenizer = LlamaTokenizer(vocab_file=str(TOKENIZER_MODEL), pad_token="<unk>")
    with dygraph_mode():
        paddle.seed(1234)
        config = GPTConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=256, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2)
        GPTForCausalLM(config).save_pretrained(str(tmp_path / "gpt"))
    tokenizer.save_pretrained(str(tmp_path / "gpt"))
    texts = [PROMPTS[1]["src"]]
    tokens = {}
    for mode in ("dynamic", "static"):
        predictor = create_predictor(PredictorArgument(model_name_or_path=str(tmp_path / "gpt"), mode=mode,
                                                       decode_strategy="greedy_search", src_length=64, max_length=8))
        tokens[mode] = predictor.generate_ids(texts)
        if mode == "static":
            assert predictor.static_model.format == "legacy" and predictor.static_model.report is not None
    np.testing.assert_array_equal(tokens["static"], tokens["dynamic"])
    assert len(set(tokens["static"][0].tolist())) > 1  # not one token over and over


def test_a_model_paddle_cannot_trace_is_one_line(tmp_path, monkeypatch):
    """dy2static failing inside a model's forward (an architecture the gate let through)
    is one line suggesting dynamic mode; PADDLENLP_EXT_VERBOSE=1 keeps the traceback."""
    from types import SimpleNamespace

    import paddlenlp_ext.export as export
    import paddlenlp_ext.predictor as predictor_module
    from paddlenlp_ext.predictor import PredictorArgument, PredictorError, validate

    def untraceable(*args, **kwargs):
        raise TypeError("float(Variable) is not supported in static graph mode.\n")

    monkeypatch.setenv("PADDLENLP_EXT_HOME", str(tmp_path))  # no export kept from an earlier test
    model = SimpleNamespace(config=SimpleNamespace(eos_token_id=2, pad_token_id=0))
    monkeypatch.setattr(predictor_module, "_load", lambda source, dtype: (model, None))
    monkeypatch.setattr(export, "export_generation_model", untraceable)
    config = validate(PredictorArgument(model="llama2", mode="static"))
    with pytest.raises(PredictorError) as raised:
        predictor_module._cached_export(config, "llama2", lambda message: None)
    assert str(raised.value) == ("llama2: the static export failed (TypeError: float(Variable) is not supported in "
                                 "static graph mode.); run it with --mode dynamic (PADDLENLP_EXT_VERBOSE=1 shows the "
                                 "traceback)")
    monkeypatch.setenv("PADDLENLP_EXT_VERBOSE", "1")
    with pytest.raises(TypeError):
        predictor_module._cached_export(config, "llama2", lambda message: None)
