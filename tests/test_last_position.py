"""last_position_only: the prefill computes the last position's logits only, and those
equal the full forward's; in a llama, the last layer's MLP runs on that one position."""

import numpy as np
import paddle
import pytest

from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop
from paddlenlp_ext.last_position import last_position_only
from paddlenlp_ext.paddle_modes import dygraph_mode

IDS = [[0, 0, 5, 17, 45], [1, 17, 45, 300, 999]]
MASK = [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]


def tiny(model_type):
    from paddlenlp.transformers import GPTConfig, GPTForCausalLM, LlamaConfig, LlamaForCausalLM

    paddle.seed(0)
    if model_type == "llama":
        config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = LlamaForCausalLM(config)
    else:
        config = GPTConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=256, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2)
        model = GPTForCausalLM(config)
    model.eval()
    return model


@pytest.mark.parametrize("model_type", ["llama", "gpt"])
def test_the_last_positions_logits_and_the_cache_equal_the_full_forwards(model_type):
    with dygraph_mode():
        model = tiny(model_type)
        ids, mask = paddle.to_tensor(IDS), paddle.to_tensor(MASK)
        position_ids = paddle.clip(paddle.cumsum(mask, axis=1) - 1, min=0)

        def forward():
            return model(ids, position_ids=position_ids, attention_mask=mask, use_cache=True, return_dict=False)

        full_logits, full_cache = forward()[:2]
        with last_position_only(model):
            logits, cache = forward()[:2]
        assert logits.shape == [2, 1, 1000]
        np.testing.assert_allclose(logits.numpy(), full_logits[:, -1:, :].numpy(), rtol=1e-5, atol=1e-5)
        for layer, full_layer in zip(cache, full_cache):
            for tensor, full_tensor in zip(layer, full_layer):
                np.testing.assert_array_equal(tensor.numpy(), full_tensor.numpy())
        # The hooks are gone: the model computes every position again.
        assert forward()[0].shape == [2, 5, 1000]


def test_the_prefill_runs_the_head_and_the_last_mlp_on_one_position():
    """In the loop: the head's and the last layer MLP's first call (the prefill) see one
    position, the first layer's MLP every position; the decode steps one position each."""
    with dygraph_mode():
        model = tiny("llama")
        seen = {"head": [], "first mlp": [], "last mlp": []}
        layers = {"head": model.lm_head, "first mlp": model.llama.layers[0].mlp,
                  "last mlp": model.llama.layers[-1].mlp}
        for name, layer in layers.items():
            layer.register_forward_pre_hook(lambda layer, inputs, name=name: seen[name].append(inputs[0].shape[1]))
        loop = GenerationLoop(model, DecodingConfig(eos_token_id=None, pad_token_id=0))
        loop(paddle.to_tensor(IDS), paddle.to_tensor(MASK), paddle.to_tensor([3], dtype="int64"))
    assert seen == {"head": [1, 1, 1], "first mlp": [5, 1, 1], "last mlp": [1, 1, 1]}
