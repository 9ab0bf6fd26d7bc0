"""QWen, Mixtral and Bloom (PaddleNLP 2.8.1) in static mode: exported in PIR with
compat.architectures' patches, cleaned, run on Paddle Inference, the tokens of
PaddleNLP's dynamic generate; without the patches the export fails. Mixtral in dygraph
with its Paddle 3 fix."""

import numpy as np
import paddle
import pytest
from test_decoding import left_padded

import paddlenlp_ext.compat.architectures as compat_architectures
from paddlenlp_ext.decoding import DecodingConfig
from paddlenlp_ext.export import export_generation_model
from paddlenlp_ext.inference import StaticGenerationModel
from paddlenlp_ext.paddle_modes import dygraph_mode

NEW_TOKENS = 8
PROMPTS = [[1, 17, 45], [1, 17, 45, 300, 999, 5]]
GREEDY = DecodingConfig(eos_token_id=2, pad_token_id=0)
TINY = dict(vocab_size=1000, pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
CONFIGS = {
    "qwen": ("QWenForCausalLM", "QWenConfig", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                                   num_attention_heads=4, kv_channels=16, max_position_embeddings=256,
                                                   seq_length=64)),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(hidden_size=64, intermediate_size=128,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=2, max_position_embeddings=256,
                                                            num_local_experts=4, num_experts_per_tok=2)),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(hidden_size=64, n_layer=2, n_head=4)),
    "gpt": ("GPTForCausalLM", "GPTConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                num_attention_heads=4, max_position_embeddings=256,
                                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
    "chatglm_v2": ("ChatGLMv2ForCausalLM", "ChatGLMv2Config", dict(hidden_size=64, ffn_hidden_size=128,
                                                                   num_hidden_layers=2, num_attention_heads=4,
                                                                   kv_channels=16, multi_query_group_num=2,
                                                                   max_sequence_length=256, add_qkv_bias=True)),
}
# The architectures compat.architectures patches, and a format whose export needs it.
PATCHED = {"qwen": "pir", "mixtral": "pir", "bloom": "pir", "gpt": "legacy"}


def tiny(model_type):
    import paddlenlp.transformers as transformers

    model_class, config_class, settings = CONFIGS[model_type]
    with dygraph_mode():
        paddle.seed(0)
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**TINY, **settings))
        # Bloom's own init gives one token over and over: weights of the others' scale.
        rng = np.random.RandomState(0)
        for name, parameter in model.named_parameters():
            if model_type == "bloom" and "norm" not in name and not name.endswith("bias"):
                parameter.set_value(rng.normal(0.0, 0.2, parameter.shape).astype("float32"))
        model.eval()
    return model


def paddlenlp_generate(model, ids, mask):
    """PaddleNLP's dynamic generate (Mixtral's with its one Paddle 3 fix, as the
    predictor's dynamic mode runs it)."""
    with dygraph_mode(), compat_architectures.dynamic_patches(model):
        mask = paddle.to_tensor(mask)
        positions = paddle.clip(paddle.cumsum(mask, axis=1) - 1, min=0)
        out, _ = model.generate(paddle.to_tensor(ids), attention_mask=mask, position_ids=positions,
                                max_new_tokens=NEW_TOKENS, decode_strategy="greedy_search", eos_token_id=None,
                                pad_token_id=0)
    return out.numpy()


@pytest.mark.parametrize("fmt", ["pir", "legacy"])
@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_a_static_export_gives_paddlenlps_tokens(model_type, fmt, tmp_path):
    """One prompt for GPT: PaddleNLP's GPT attends to a batch's padding (its
    prepare_inputs_for_generation drops the mask), which our loop masks."""
    model = tiny(model_type)
    ids, mask = left_padded(PROMPTS[1:] if model_type == "gpt" else PROMPTS)
    reference = paddlenlp_generate(model, ids, mask)
    assert reference.shape == (len(ids), NEW_TOKENS) and len(set(reference.ravel().tolist())) > 2
    with dygraph_mode():
        result = export_generation_model(model, tmp_path / "export", decoding=DecodingConfig(pad_token_id=0),
                                         format=fmt)
    assert result.report is None or result.report.kept == ()
    feed = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": np.array([NEW_TOKENS], dtype="int64"),
            **GREEDY.feed(0)}
    for onednn in ("all", "off"):
        static = StaticGenerationModel(result.directory, onednn=onednn, fall_back=False)
        if fmt == "legacy":  # cleaned at load: the translated loop's copies go (the pass keeps what it must)
            assert static.copies_before > 0 and static.report.removed > 0
        np.testing.assert_array_equal(static.run(feed), reference, err_msg=onednn)


@pytest.mark.parametrize("model_type", list(PATCHED))
def test_without_its_patches_the_export_fails(model_type, tmp_path, monkeypatch):
    monkeypatch.setattr(compat_architectures, "PATCHES", {})
    with dygraph_mode(), pytest.raises(Exception):
        export_generation_model(tiny(model_type), tmp_path / "export", format=PATCHED[model_type])
    assert not (tmp_path / "export").exists()


# Which architecture's legacy export needs each legacy op of compat (beyond the llama's).
LEGACY_OP_USERS = {"cos": "chatglm_v2", "sin": "chatglm_v2", "bmm": "chatglm_v2", "tanh": "bloom", "sum": "mixtral"}


@pytest.mark.parametrize("op", sorted(LEGACY_OP_USERS))
def test_a_legacy_export_fails_without_each_op_it_needs(op, tmp_path, monkeypatch):
    import paddlenlp_ext.compat.legacy_ops as legacy_ops

    monkeypatch.setattr(legacy_ops, "LEGACY_OPS", {k: v for k, v in legacy_ops.LEGACY_OPS.items() if k != op})
    with dygraph_mode(), pytest.raises(Exception, match=r"must be Value, but got (Variable|None)"):
        export_generation_model(tiny(LEGACY_OP_USERS[op]), tmp_path / "export", format="legacy")


def test_every_legacy_op_has_a_model_that_needs_it():
    import paddlenlp_ext.compat.legacy_ops as legacy_ops
    from test_compat import LLAMA_LEGACY_OPS

    assert set(legacy_ops.LEGACY_OPS) == set(LEGACY_OP_USERS) | set(LLAMA_LEGACY_OPS)


def test_mixtral_generates_in_dygraph_with_its_fix_only():
    """PaddleNLP 2.8.1's Mixtral cannot generate on Paddle 3.3.1 (its routing weights lose
    an axis); dynamic_patches gives the axis back."""
    model = tiny("mixtral")
    ids, mask = left_padded(PROMPTS)
    with dygraph_mode(), pytest.raises(Exception):
        model.generate(paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask), max_new_tokens=2,
                       decode_strategy="greedy_search")
    assert paddlenlp_generate(model, ids, mask).shape == (2, NEW_TOKENS)


def test_the_qwen_patches_leave_the_model_as_they_found_it():
    from paddlenlp.transformers.qwen import modeling

    model = tiny("qwen")
    attention = model.qwen.h[0].attn
    attention._ntk_cached = 3.0  # as a dynamic call on a long prompt leaves it
    forward = modeling.RotaryEmbedding.forward
    with compat_architectures.export_patches(model):
        assert not attention.use_dynamic_ntk and attention._ntk_cached == 1.0
        assert modeling.RotaryEmbedding.forward is not forward
    assert attention.use_dynamic_ntk and attention._ntk_cached == 3.0
    assert modeling.RotaryEmbedding.forward is forward
