"""The embedded llama2 models: built on first use from a seed and a shipped tokenizer,
cached in save_pretrained layout, and the same on every machine. The suite runs in
static mode (conftest), so every test also checks that loading copes with it."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.models import (BUILD_RECORD, HOME_VARIABLE, KNOWN_MODELS, TOKENIZER_MODEL, ModelError,
                                  load_model)

ROOT = Path(__file__).resolve().parent.parent
# sha256 of llama2's state dict (names and float32 bytes, in order). Pinned so that a
# change in how the weights are drawn, on any machine, fails here.
LLAMA2_WEIGHTS_SHA256 = "09948a492f9507ad76211c2ebb30d06060c79282f392d8483b2d70337bf897dd"
CACHE_FILES = {"config.json", "generation_config.json", "model_state.pdparams", "sentencepiece.bpe.model",
               "tokenizer_config.json", "special_tokens_map.json", BUILD_RECORD}
PROMPTS = ["Hello, my name is Anna.", "The capital of France is", "What is 12 + 30? It is 42!",
           "Once upon a time, in a small town near the river, there lived a baker.", "  two  spaces, one café ☕"]


def weights(model) -> dict:
    with dygraph_mode():
        return {name: value.numpy() for name, value in model.state_dict().items()}


def weights_sha256(model) -> str:
    digest = hashlib.sha256()
    for name, value in weights(model).items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value, dtype="float32").tobytes())
    return digest.hexdigest()


def mtimes(directory: Path) -> dict:
    return {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}


def copy_model(source: Path, target: Path, damage=lambda directory: None) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    damage(target)
    return target


def truncate(name):
    return lambda d: (d / name).write_bytes((d / name).read_bytes()[:100])


def remove(name):
    return lambda d: (d / name).unlink()


@pytest.fixture(scope="module")
def llama2_cache(tmp_path_factory):
    home = tmp_path_factory.mktemp("cache")
    model, tokenizer = load_model("llama2", cache_dir=home)
    return home, model, tokenizer


def test_first_use_writes_the_model_in_save_pretrained_layout(llama2_cache):
    home, model, _ = llama2_cache
    assert sorted(p.name for p in home.iterdir()) == ["llama2"]  # no scratch directory left behind
    assert {p.name for p in (home / "llama2").iterdir()} == CACHE_FILES
    assert json.loads((home / "llama2" / BUILD_RECORD).read_text())["config"] == dict(KNOWN_MODELS["llama2"].config)
    assert not model.training
    assert not paddle.in_dynamic_mode()  # the caller's static mode is back


def test_later_loads_reuse_the_cache_without_rewriting_it(llama2_cache):
    home, model, _ = llama2_cache
    before = mtimes(home / "llama2")
    again, _ = load_model("llama2", cache_dir=home)
    assert mtimes(home / "llama2") == before
    assert weights_sha256(again) == weights_sha256(model)


def test_weights_are_pinned_and_the_same_in_another_cache(llama2_cache, tmp_path):
    _, model, _ = llama2_cache
    assert weights_sha256(model) == LLAMA2_WEIGHTS_SHA256
    other, _ = load_model("llama2", cache_dir=tmp_path)
    assert weights_sha256(other) == LLAMA2_WEIGHTS_SHA256


def test_weights_are_the_same_in_a_fresh_process(tmp_path):
    code = ("import hashlib, numpy as np, paddle; from paddlenlp_ext.models import load_model; "
            f"m, _ = load_model('llama2', cache_dir={str(tmp_path)!r}); d = hashlib.sha256()\n"
            "for k, v in m.state_dict().items(): d.update(k.encode()); d.update(np.float32(v.numpy()).tobytes())\n"
            "print(d.hexdigest())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == LLAMA2_WEIGHTS_SHA256


def test_building_leaves_the_callers_random_generator_alone(tmp_path):
    with dygraph_mode():
        paddle.seed(7)
        expected = paddle.rand([4]).numpy()
        paddle.seed(7)
        load_model("llama2", cache_dir=tmp_path)
        np.testing.assert_array_equal(paddle.rand([4]).numpy(), expected)


def test_cache_home_comes_from_the_argument_then_the_variable_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(HOME_VARIABLE, raising=False)
    load_model()
    assert (tmp_path / "home" / ".cache" / "paddlenlp_ext" / "llama2" / BUILD_RECORD).is_file()
    monkeypatch.setenv(HOME_VARIABLE, str(tmp_path / "variable"))
    load_model()
    assert (tmp_path / "variable" / "llama2" / BUILD_RECORD).is_file()
    load_model(cache_dir=tmp_path / "argument")
    assert (tmp_path / "argument" / "llama2" / BUILD_RECORD).is_file()


def test_a_cache_built_from_another_definition_is_rebuilt(llama2_cache, tmp_path):
    _, model, _ = llama2_cache
    load_model("llama2", cache_dir=tmp_path)
    record = tmp_path / "llama2" / BUILD_RECORD
    record.write_text(record.read_text().replace('"seed": 0', '"seed": 99'))
    (tmp_path / "llama2" / "model_state.pdparams").write_bytes(b"weights of an older version")
    rebuilt, _ = load_model("llama2", cache_dir=tmp_path)
    assert weights_sha256(rebuilt) == weights_sha256(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama2"]


def test_a_model_another_process_put_in_place_meanwhile_is_kept(llama2_cache, tmp_path, monkeypatch):
    import paddlenlp_ext.models as models

    write = models._write_known_model

    def write_while_another_process_finishes_first(name, directory, record):
        write(name, directory, record)
        copy_model(llama2_cache[0] / "llama2", tmp_path / "llama2")

    monkeypatch.setattr(models, "_write_known_model", write_while_another_process_finishes_first)
    model, _ = load_model("llama2", cache_dir=tmp_path)
    assert weights_sha256(model) == LLAMA2_WEIGHTS_SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama2"]


def test_a_users_save_pretrained_directory_loads(llama2_cache, tmp_path):
    _, model, tokenizer = llama2_cache
    with dygraph_mode():
        model.save_pretrained(str(tmp_path / "mine"))
    tokenizer.save_pretrained(str(tmp_path / "mine"))
    for name_or_path in (tmp_path / "mine", str(tmp_path / "mine")):
        loaded, loaded_tokenizer = load_model(name_or_path)
        assert weights_sha256(loaded) == weights_sha256(model) and not loaded.training
        assert loaded_tokenizer("Hello there")["input_ids"] == tokenizer("Hello there")["input_ids"]
    assert not paddle.in_dynamic_mode()


def test_tokenizer_special_ids_match_llama2_and_the_model(llama2_cache):
    _, model, tokenizer = llama2_cache
    special = (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert special == (0, 1, 2, 0)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    assert tokenizer.vocab_size == model.config.vocab_size == KNOWN_MODELS["llama2"].config["vocab_size"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenizer_round_trips_prompts(llama2_cache, prompt):
    _, _, tokenizer = llama2_cache
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt


def test_tokenizer_keeps_common_words_whole(llama2_cache):
    _, _, tokenizer = llama2_cache
    assert tokenizer.tokenize("The capital of France is") == ["▁The", "▁capital", "▁of", "▁France", "▁is"]
    assert tokenizer.tokenize("in 2024") == ["▁in", "▁", "2", "0", "2", "4"]  # digits split, as in llama2


@pytest.mark.parametrize("name", sorted(KNOWN_MODELS))
def test_paddlenlp_generate_runs_greedy_on_each_model(llama2_cache, tmp_path, name):
    home = llama2_cache[0] if name == "llama2" else tmp_path
    model, tokenizer = load_model(name, cache_dir=home)
    with dygraph_mode():
        ids = paddle.to_tensor([tokenizer("Once upon a time")["input_ids"]])
        runs = [model.generate(ids, attention_mask=paddle.ones_like(ids), max_new_tokens=6,
                               decode_strategy="greedy_search")[0].numpy() for _ in range(2)]
    assert runs[0].shape == (1, 6) and ((0 <= runs[0]) & (runs[0] < model.config.vocab_size)).all()
    np.testing.assert_array_equal(runs[0], runs[1])
    assert isinstance(tokenizer.decode(runs[0][0]), str)


def test_gqa_variant_has_fewer_key_value_heads(tmp_path):
    model, _ = load_model("llama2-gqa", cache_dir=tmp_path)
    config = model.config
    assert config.num_hidden_layers == 3 and config.num_key_value_heads == 2 < config.num_attention_heads == 4
    shapes = {name: value.shape for name, value in weights(model).items()}
    head_dim = config.hidden_size // config.num_attention_heads
    assert shapes["llama.layers.0.self_attn.q_proj.weight"] == (64, 4 * head_dim)
    assert shapes["llama.layers.0.self_attn.k_proj.weight"] == (64, 2 * head_dim)
    assert shapes["llama.layers.0.self_attn.v_proj.weight"] == (64, 2 * head_dim)


def test_shipped_tokenizer_rebuilds_byte_identically(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tokenizer.py"), "--output",
                             str(tmp_path / "rebuilt.model")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "rebuilt.model").read_bytes() == TOKENIZER_MODEL.read_bytes()


@pytest.mark.parametrize("damage, message", [
    (remove("config.json"), "{d}: no config.json (expected a save_pretrained model directory)"),
    (remove("model_state.pdparams"), "{d}: no model weights (model_state.pdparams or model_state.pdparams.index.json "
                                     "or model.safetensors or model.safetensors.index.json)"),
    (remove("tokenizer_config.json"), "{d}: no tokenizer (tokenizer_config.json); save the tokenizer with "
                                      "tokenizer.save_pretrained there too"),
    (truncate("config.json"), "cannot load the model in {d}: Unterminated string starting at"),
    (truncate("model_state.pdparams"), "cannot load the model in {d}: `paddle.load` can not parse the file"),
    (truncate("sentencepiece.bpe.model"), "cannot load the tokenizer in {d}: INTERNAL: could not parse ModelProto"),
], ids=["no-config", "no-weights", "no-tokenizer", "bad-config", "bad-weights", "bad-tokenizer"])
def test_unusable_directories_raise_model_error(llama2_cache, tmp_path, damage, message):
    directory = copy_model(llama2_cache[0] / "llama2", tmp_path / "damaged", damage)
    with pytest.raises(ModelError) as raised:
        load_model(str(directory))
    assert str(raised.value).startswith(message.format(d=directory)) and "\n" not in str(raised.value)
    assert not paddle.in_dynamic_mode()


def test_damaged_cache_says_how_to_rebuild(llama2_cache, tmp_path):
    copy_model(llama2_cache[0] / "llama2", tmp_path / "llama2", truncate("model_state.pdparams"))
    with pytest.raises(ModelError, match=r"can not parse the file.*\(delete the directory to rebuild it\)$"):
        load_model("llama2", cache_dir=tmp_path)


def test_unknown_names_and_missing_paths_raise_model_error(tmp_path):
    with pytest.raises(ModelError) as raised:
        load_model("llama3")
    assert str(raised.value) == ("unknown model 'llama3': known models are llama2, llama2-gqa, "
                                 "or give a save_pretrained directory")
    with pytest.raises(ModelError) as raised:
        load_model(str(tmp_path / "nothing"))
    assert str(raised.value) == f"{tmp_path / 'nothing'}: no such directory"
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelError) as raised:
        load_model(tmp_path / "file")
    assert str(raised.value) == f"{tmp_path / 'file'}: not a directory (expected a save_pretrained model directory)"


def test_unwritable_cache_raises_model_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelError) as raised:
        load_model("llama2", cache_dir=tmp_path / "file")
    assert str(raised.value) == f"cannot write {tmp_path / 'file' / 'llama2'}: File exists"
    assert os.listdir(tmp_path) == ["file"]
