"""scripts/bench/peers.py: the peers' adapters on a tiny llama, when the extras are
installed (``pip install -e ".[peers]"``): the same weights written for llama.cpp (GGUF)
and HF transformers decode PaddleNLP's greedy tokens in float32, and their reduced
formats run; without the extras, asking for a peer is one line saying what to install."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from bench import peers  # noqa: E402

SETTINGS = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "layers": 2, "heads": 4, "kv_heads": 2,
            "max_position_embeddings": 64, "seed": 3, "batch_size": 1}
NEW_TOKENS = 6


def _installed(*modules) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


@pytest.fixture(scope="module")
def model_and_weights(tmp_path_factory):
    """The tiny random llama (GQA: 4 heads, 2 key/value heads), its weights for the peers
    and PaddleNLP's dygraph greedy tokens on one prompt."""
    import paddle
    from bench.models import random_llama

    from paddlenlp_ext.paddle_modes import dygraph_mode

    weights = tmp_path_factory.mktemp("peers") / "weights.npz"
    ids = np.random.default_rng(0).integers(3, SETTINGS["vocab_size"], size=(1, 12), dtype="int64")
    with dygraph_mode():
        model = random_llama(SETTINGS, SETTINGS["layers"])
        peers.save_weights(model, weights)
        with paddle.no_grad():
            mask = paddle.ones(ids.shape, dtype="int64")  # PaddleNLP's generate needs one on Paddle 3
            generated, _ = model.generate(paddle.to_tensor(ids), attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                          decode_strategy="greedy_search", eos_token_id=None, pad_token_id=0)
    return weights, ids, generated.numpy()


def _feed(ids, new_tokens):
    return {"input_ids": ids, "max_new_tokens": np.array([new_tokens], dtype="int64")}


@pytest.mark.skipif(not _installed("gguf", "llama_cpp"), reason=f"llama.cpp's extras are not installed: {peers.EXTRAS}")
@pytest.mark.parametrize("name", ["llama.cpp-f32", "llama.cpp-bf16", "llama.cpp-q8_0"])
def test_llama_cpp_runs_the_same_weights(model_and_weights, tmp_path, name):
    weights, ids, reference = model_and_weights
    kind, spec = peers.prepare_peer(name, weights, tmp_path, SETTINGS)
    runner = peers.create_runner(kind, spec, threads=1, max_tokens=ids.shape[1] + NEW_TOKENS)
    _, tokens = runner.run(_feed(ids, NEW_TOKENS))
    assert tokens.shape == (1, NEW_TOKENS)
    _, again = runner.run(_feed(ids, NEW_TOKENS))  # a fresh context: no prefix reused
    np.testing.assert_array_equal(again, tokens)
    if name == "llama.cpp-f32":  # the q and k permutation and the layouts are right
        np.testing.assert_array_equal(tokens, reference)


@pytest.mark.skipif(not _installed("torch", "transformers", "safetensors"),
                    reason=f"HF's extras are not installed: {peers.EXTRAS}")
@pytest.mark.parametrize("name", ["hf-float32", "hf-bf16"])
def test_hf_runs_the_same_weights(model_and_weights, tmp_path, name):
    weights, ids, reference = model_and_weights
    kind, spec = peers.prepare_peer(name, weights, tmp_path, SETTINGS)
    _, tokens = peers.create_runner(kind, spec, threads=1, max_tokens=0).run(_feed(ids, NEW_TOKENS))
    assert tokens.shape == (1, NEW_TOKENS)
    if name == "hf-float32":
        np.testing.assert_array_equal(tokens, reference)


def test_a_peer_without_its_extras_is_one_line(monkeypatch):
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda module: None if module == "llama_cpp" else True)
    assert peers.missing_extras(["hf-float32"]) is None
    assert peers.missing_extras(["hf-float32", "llama.cpp-q8_0"]) == (
        '--peers llama.cpp-q8_0 needs llama_cpp: pip install -e ".[peers]"')


@pytest.mark.skipif(not _installed("torch", "transformers", "safetensors"),
                    reason=f"HF's extras are not installed: {peers.EXTRAS}")
def test_the_benchmark_puts_a_peer_beside_our_variant(tmp_path):
    import json
    import subprocess

    output = tmp_path / "bench.json"
    script = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--layers", "1", "--hidden-size", "64",
                             "--contexts", "16", "--new-tokens", "4", "--repeats", "1", "--variants", "static-cache",
                             "--loops", "generation_loop", "--pass-layers", "0", "--peers", "hf-float32",
                             "--output", str(output)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = [row for row in json.loads(output.read_text())["results"] if row["peer"]]
    assert (row["variant"], row["ours"], row["dtype"], row["kv_dtype"]) == ("hf-float32", "static-cache", "float32",
                                                                          "float32")
    assert row["ours_decode_speedup"] > 0 and row["tokens_equal_until"] == 4 and row["token_agreement_with_ours"] == 1
    assert "| 16 | hf-float32 | float32 | float32 |" in result.stdout
