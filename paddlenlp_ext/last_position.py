"""The prefill computes only what the first new token reads.

That token reads the logits of the prompt's last position. PaddleNLP's causal-LM heads
compute every position's ([B, S, V]: at 2048 prompt tokens and llama2's vocabulary of
32000, 537 GFLOP and 262 MB in float32, thrown away at once), and its llama's last layer
runs its MLP on every position, though after that layer's attention (which writes every
position's keys and values into the cache) nothing reads any position but the last.
llama.cpp skips both (its ``inp_out_ids``), HF transformers the first
(``num_logits_to_keep``).

``last_position_only(model)`` narrows both while the prefill traces, with forward
pre-hooks (the model's code stays PaddleNLP's):

1. the LM head takes the last position of its input, for the architectures whose head
   takes [batch, seq, hidden] (``BATCH_FIRST_HEADS``; ChatGLMv2's is seq-first, an
   architecture not listed keeps every position);
2. in a llama, the last layer's ``post_attention_layernorm`` takes the last position, so
   its MLP runs on one row; the layer's residual add then broadcasts that row over the
   sequence, and the final ``norm`` takes the last position again, the one row of that
   sum that is the layer's true output. Nothing else reads the layer's output.
3. That MLP's result reaches the residual add through an exact copy (a roll by 0): Paddle
   Inference's oneDNN ``matmul_elementwise_add_fuse_pass`` would fold the MLP's last
   product and the add into one op that drops the broadcast (``[B, 1, H]`` out, wrong:
   ``passes/onednn_broadcast_add.py``), on any configuration with oneDNN on that runs the
   exported program as it is, ours or not. The copy is in the program itself.

The last position is every row's last real token: prompts are left-padded.
"""

from __future__ import annotations

import contextlib

import paddle

# model_type -> the attribute of the causal LM holding its head, which takes the hidden
# states as its first argument, [batch, seq, hidden].
BATCH_FIRST_HEADS = {"llama": "lm_head", "gpt": "lm_head"}


def _last_position(layer, inputs):
    hidden_states, *rest = inputs
    # Indexed then unsqueezed, not sliced ([:, -1:]): the static shape is then [B, 1, H]
    # where a slice's is [B, -1, H], and passes.onednn_broadcast_add sees the broadcast.
    return (hidden_states[:, -1, :].unsqueeze(1), *rest)


def _unfusable_copy(layer, inputs, output):
    """``output`` copied by a roll by 0 (in float32 for the half-precision dtypes roll's
    CPU kernel does not take: exact both ways), which no fuse pass matches (rule 3)."""
    wide = output.astype("float32") if output.dtype in (paddle.bfloat16, paddle.float16) else output
    copy = paddle.roll(wide, shifts=0, axis=0)
    return copy.astype(output.dtype) if copy.dtype != output.dtype else copy


def _narrowed_layers(model) -> list:
    """The layers whose input ``last_position_only`` narrows, in ``model``."""
    head = BATCH_FIRST_HEADS.get(getattr(model.config, "model_type", None))
    if head is None:
        return []
    layers = [getattr(model, head)]
    if model.config.model_type == "llama":
        decoder = model.llama
        layers += [decoder.layers[-1].post_attention_layernorm, decoder.norm]
    return layers


@contextlib.contextmanager
def last_position_only(model):
    """Within: ``model`` computes its last position's logits only ([B, 1, V])."""
    hooks = [layer.register_forward_pre_hook(_last_position) for layer in _narrowed_layers(model)]
    if model.config.model_type == "llama":
        hooks.append(model.llama.layers[-1].mlp.register_forward_post_hook(_unfusable_copy))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
