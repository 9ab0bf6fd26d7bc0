"""The pass on a real decoding loop: a tiny PaddleNLP llama, greedy, exported in the
legacy format and translated to PIR as Paddle Inference 3.x does at load time."""

import numpy as np
import paddle
import pytest
from loop_programs import count_loop_copies

from paddlenlp_ext import analyze_loop_assign, remove_loop_assign, remove_loop_assign_pr9002
from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop, export_legacy
from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.passes.loop_cache_layout import carry_loop_caches_permuted
from paddlenlp_ext.inference import StaticGenerationModel
from paddlenlp_ext.passes.pipeline import ONEDNN_MODES
from paddlenlp_ext.program_files import load_program, run_program

PROMPT = np.array([[1, 17, 45, 300, 999, 5]], dtype="int64")
NEW_TOKENS = 10


def tiny_llama(layers=2, key_value_heads=4):
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    paddle.seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=key_value_heads, max_position_embeddings=256,
                         rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def paddlenlp_greedy(model, prompt, new_tokens):
    """PaddleNLP's own dynamic generate(); it needs a 2-D mask on Paddle 3.x."""
    ids = paddle.to_tensor(prompt)
    out, _ = model.generate(ids, attention_mask=paddle.ones_like(ids), max_new_tokens=new_tokens,
                            decode_strategy="greedy_search", eos_token_id=model.config.eos_token_id)
    return out.numpy()


def export_greedy(directory, **llama):
    """A legacy export of greedy decoding: (model directory, PaddleNLP's tokens)."""
    with dygraph_mode():
        model = tiny_llama(**llama)
        reference = paddlenlp_greedy(model, PROMPT, NEW_TOKENS)
        loop = GenerationLoop(model, DecodingConfig(eos_token_id=model.config.eos_token_id))
        export_legacy(loop, str(directory / "model"))
    return directory, reference


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_greedy(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def exported_gqa(tmp_path_factory):
    """Grouped-query attention: 2 key/value heads for 4 query heads."""
    return export_greedy(tmp_path_factory.mktemp("llama-gqa"), key_value_heads=2)


def feed(n=NEW_TOKENS):
    return {"input_ids": PROMPT, "attention_mask": np.ones_like(PROMPT), "max_new_tokens": np.array([n], dtype="int64"),
            **DecodingConfig().feed()}


def test_translated_loop_tokens_match_paddlenlp_generate(exported):
    directory, reference = exported
    (tokens,) = run_program(load_program(directory), feed())
    assert tokens.shape == (1, NEW_TOKENS)
    np.testing.assert_array_equal(tokens, reference)


def test_pass_removes_every_copy_of_the_loop_and_keeps_the_tokens(exported):
    directory, reference = exported
    model = load_program(directory)
    before = count_loop_copies(model.program)
    # generated, token, tokens seen, mask, position, step, finished, the logits and
    # the 4 cache tensors once, the condition twice
    assert before == 14
    report = remove_loop_assign(model.program, outputs=model.outputs)
    assert report.removed == before and report.kept == () and report.loops == 1
    assert count_loop_copies(model.program) == 0
    assert analyze_loop_assign(model.program, outputs=model.outputs).removable == ()
    assert remove_loop_assign(model.program, outputs=model.outputs).removed == 0
    for n in (1, 4, NEW_TOKENS):
        (tokens,) = run_program(model, feed(n))
        np.testing.assert_array_equal(tokens, reference[:, :n])


def test_pr9002_rule_on_the_loop_leaves_the_chains(exported):
    directory, reference = exported
    model = load_program(directory)
    report = remove_loop_assign_pr9002(model.program)
    # Only single copies into block arguments: not the condition's chain of two (the
    # second is written into the outer condition value).
    assert report.removed == 12 and len(report.kept) == 2
    (tokens,) = run_program(model, feed())
    np.testing.assert_array_equal(tokens, reference)


def _whole_cache_reads(program) -> int:
    """Transposes and head repeats (tiles) in the loop body of a value that grows by a
    concat (the cache), through the unsqueeze of a repeat."""
    body = next(op for op in program.global_block().ops if op.name() == "pd_op.while").as_while_op().body()
    count = 0
    for op in body.ops:
        if op.name() in ("pd_op.transpose", "pd_op.tile"):
            source = op.operand_source(0).get_defining_op()
            while source is not None and source.name() in ("pd_op.transpose", "pd_op.reshape", "pd_op.tile",
                                                           "pd_op.unsqueeze"):
                source = source.operand_source(0).get_defining_op()
            count += source is not None and source.name() == "pd_op.concat"
    return count


@pytest.mark.parametrize("fixture, before, after", [("exported", 6, 0), ("exported_gqa", 10, 4)],
                         ids=["mha", "gqa"])
def test_the_cleaned_loop_carries_its_caches_in_the_attention_layout(request, fixture, before, after):
    """After remove_loop_assign, loop_cache_layout carries each of the 4 caches (2
    layers, keys and values) permuted: no step transposes a whole cache, and the
    tokens are PaddleNLP's. With grouped-query attention the caches' heads are still
    repeated every step (one tile per cache), but what is repeated is the permuted
    cache. Before remove_loop_assign the copies read the caches as they are, so
    nothing is rewritten. Our predictors, which apply the rewrite, give the same tokens
    in every oneDNN mode."""
    directory, reference = request.getfixturevalue(fixture)
    model = load_program(directory)
    assert carry_loop_caches_permuted(model.program, outputs=model.outputs).rewritten == 0
    remove_loop_assign(model.program, outputs=model.outputs)
    assert _whole_cache_reads(model.program) == before  # values once, keys twice (+ a tile each), per layer
    report = carry_loop_caches_permuted(model.program, outputs=model.outputs)
    assert (report.rewritten, report.loops) == (4, 1), report.summary()
    assert _whole_cache_reads(model.program) == after
    assert not carry_loop_caches_permuted(model.program, outputs=model.outputs).modified
    for n in (1, 4, NEW_TOKENS):
        (tokens,) = run_program(model, feed(n))
        np.testing.assert_array_equal(tokens, reference[:, :n])
    for onednn in ONEDNN_MODES:  # and as our predictors run it (they apply the rewrite)
        predicted = StaticGenerationModel(directory, onednn=onednn, fall_back=False).run(feed())
        np.testing.assert_array_equal(predicted, reference, err_msg=onednn)


def inspect(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "paddlenlp_ext.inspect", *args], capture_output=True, text=True,
                          timeout=300)


def test_inspect_script_reports_the_loop(exported):
    import json

    directory, _ = exported
    result = inspect(str(directory), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "model": str(directory), "format": "legacy", "loops": 1, "copies": 14, "removable": 14, "kept": {},
        "pr9002_removable": 12}


def test_inspect_script_rejects_a_missing_model(tmp_path):
    result = inspect(str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nothing'}: no such model directory"
