"""What tracing PaddleNLP 2.8.1's QWen, Mixtral, Bloom and GPT into a program needs patched
on Paddle 3.3.1, and running Mixtral at all (the rest of ``compat`` holds the llama's and
the loop's; the same rules: one patch per upstream behaviour, each undone on exit, each with
a test that fails without it, ``tests/test_architectures.py``).

``export_patches(model)`` applies the patches of ``model``'s architecture while it is
exported (either loop, either format: the legacy format also needs the ops
``compat.legacy_ops.LEGACY_OPS`` emits the legacy way); ``dynamic_patches(model)`` those it needs
to generate in dygraph. dy2static converts only functions it finds among their own module's
globals, so every replacement is a module-level function here. Each keeps PaddleNLP's
math; what a patch cannot keep is a limit the predictor states (QWen's, below).
"""

from __future__ import annotations

import contextlib
import math

import paddle
import paddle.nn.functional as F

from .legacy_ops import legacy_aware_gelu
from .patching import replaced_attributes
from .pir_export import masked_attention

# --- QWen -------------------------------------------------------------------------------
# 1. QWenAttention.forward computes dynamic NTK's alpha from the prompt's length with
#    Python math (``math.log(kv_seq_len / seq_length)``: "float(Variable) is not supported
#    in static graph mode"). Traced with ``use_dynamic_ntk`` off, alpha is 1, which is
#    what PaddleNLP computes for any prompt of at most ``seq_length`` tokens (the alpha a
#    dynamic call left in ``_ntk_cached`` is set to 1 for the trace too).
# 2. RotaryEmbedding.forward rebuilds its cos/sin cache under a condition on the length,
#    so the traced branch would create the cache ("'RotaryEmbedding' object has no
#    attribute 'cos_cached'"). The cache is built before the trace, for ``seq_length``
#    positions (each position's values do not depend on the cache's length), and the
#    traced forward only slices it.
# 3. QWenAttention._attn compares ``attn_weights.shape`` with a list, which is
#    ``bool(Value)`` in a PIR program. Replaced by its eager branch without the check.
# So a QWen export covers contexts (prompt and new tokens) of up to ``seq_length``.


def _qwen_rotary_forward(self, x, max_seq_len, offset=0, ntk_alpha=1.0):
    """PaddleNLP 2.8.1's RotaryEmbedding.forward without its cache rebuild (2)."""
    cos = self.cos_cached[:, offset:offset + max_seq_len, :, ...]
    sin = self.sin_cached[:, offset:offset + max_seq_len, :, ...]
    return (cos.cast(x.dtype) if cos.dtype != x.dtype else cos, sin.cast(x.dtype) if sin.dtype != x.dtype else sin)


def _qwen_attn(self, query, key, value, attention_mask=None):
    """PaddleNLP 2.8.1's QWenAttention._attn, its eager branch without the shape check (3)."""
    if self.config.use_flash_attention:
        raise NotImplementedError("export_patches covers QWen's eager attention only (no flash attention)")
    bsz, q_len, num_heads, head_dim = query.shape
    query = query.transpose([0, 2, 1, 3])
    key = key.transpose([0, 2, 1, 3])
    value = value.transpose([0, 2, 1, 3])
    attn_weights = paddle.matmul(query / math.sqrt(head_dim), key.transpose([0, 1, 3, 2]))
    attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, axis=-1, dtype="float32").astype(value.dtype)
    attn_weights = self.attn_dropout(attn_weights)
    attn_output = paddle.matmul(attn_weights, value)
    return attn_output.transpose([0, 2, 1, 3]), attn_weights


@contextlib.contextmanager
def _qwen(model):
    from paddlenlp.transformers.qwen import modeling

    from ..paddle_modes import dygraph_mode

    with dygraph_mode():
        for layer in model.sublayers():
            if isinstance(layer, modeling.RotaryEmbedding):
                layer.update_cos_sin_cache(model.config.seq_length)  # (2)
    attentions = [layer for layer in model.sublayers() if isinstance(layer, modeling.QWenAttention)]
    no_dynamic_ntk = [(layer, name, value) for layer in attentions
                      for name, value in (("use_dynamic_ntk", False), ("_ntk_cached", 1.0))]  # (1)
    with replaced_attributes(no_dynamic_ntk + [(modeling.RotaryEmbedding, "forward", _qwen_rotary_forward),
                                               (modeling.QWenAttention, "_attn", _qwen_attn)]):
        yield


# --- Mixtral ----------------------------------------------------------------------------
# 1. MixtralSparseMoeBlock.forward runs each expert on the tokens routed to it: it skips
#    an expert under a data-dependent ``continue`` and calls ``.item()``, which no static
#    program can hold. Traced dense instead: every expert on every token, weighted by the
#    token's routing weight for it (0 for the experts not among its top k), summed in
#    expert order as PaddleNLP's ``index_add_`` sums them. The same math at num_experts /
#    top_k times the MoE's FLOPs (and weight reads in a decode step).
# 2. The rotary embedding's forward rebuilds its cache under a condition on the length
#    (as QWen's); the cache PaddleNLP builds at construction covers
#    ``max_position_embeddings``, the most a model takes, and the traced forward only
#    slices it.
# 3. scaled_dot_product_attention compares shapes with lists (``bool(Value)``), as the
#    llama's does (``compat.pir_export._llama_attention_without_shape_checks``).


def _mixtral_routing(self, hidden_states):
    """PaddleNLP 2.8.1's MixtralSparseMoeBlock routing of [tokens, hidden] states: the
    router's logits, and each token's top-k experts with their weights (renormalized)."""
    router_logits = self.gate(hidden_states)
    with paddle.amp.auto_cast(False):
        routing_weights = F.softmax(router_logits.astype("float32"), axis=1)
    routing_weights, selected_experts = paddle.topk(routing_weights, self.top_k, axis=-1)
    routing_weights /= routing_weights.sum(axis=-1, keepdim=True)
    return router_logits, routing_weights.astype(hidden_states.dtype), selected_experts


def _mixtral_dense_moe_forward(self, hidden_states):
    """PaddleNLP 2.8.1's MixtralSparseMoeBlock.forward, every expert on every token (1)."""
    batch_size, seq_len, hidden_dim = hidden_states.shape
    hidden_states = hidden_states.reshape([-1, hidden_dim])
    router_logits, routing_weights, selected_experts = _mixtral_routing(self, hidden_states)
    # [tokens, top_k, experts] -> [tokens, experts]: each expert's weight for each token.
    chosen = F.one_hot(selected_experts, num_classes=self.num_experts).astype(hidden_states.dtype)
    expert_weights = (chosen * routing_weights.unsqueeze(-1)).sum(axis=1)
    final_hidden_states = paddle.zeros_like(hidden_states)
    for expert_id in range(self.num_experts):
        weight = expert_weights[:, expert_id:expert_id + 1]
        final_hidden_states = final_hidden_states + self.experts[expert_id](hidden_states) * weight
    return final_hidden_states.reshape([batch_size, seq_len, hidden_dim]), router_logits


def _mixtral_rotary_forward(self, x, seq_len=None):
    """PaddleNLP 2.8.1's MixtralRotaryEmbedding.forward without its cache rebuild (2)."""
    cos = self.cos_cached[:, :seq_len, :, :]
    sin = self.sin_cached[:, :seq_len, :, :]
    return (cos.cast(x.dtype) if cos.dtype != x.dtype else cos, sin.cast(x.dtype) if sin.dtype != x.dtype else sin)


def _mixtral_attention(query_states, config, key_states, value_states, attention_mask, output_attentions,
                       training=True, sequence_parallel=False):
    """PaddleNLP 2.8.1's mixtral scaled_dot_product_attention, its eager branch with a
    mask, without the shape checks (3)."""
    if config.use_flash_attention or attention_mask is None or output_attentions or sequence_parallel:
        raise NotImplementedError("export_patches covers Mixtral's eager attention with a mask only")
    return masked_attention(query_states, key_states, value_states, attention_mask)


@contextlib.contextmanager
def _mixtral(model):
    from paddlenlp.transformers.mixtral import modeling

    with replaced_attributes([(modeling.MixtralSparseMoeBlock, "forward", _mixtral_dense_moe_forward),
                              (modeling.MixtralRotaryEmbedding, "forward", _mixtral_rotary_forward),
                              (modeling, "scaled_dot_product_attention", _mixtral_attention)]):
        yield


# 4. In dynamic mode too: MixtralSparseMoeBlock.forward scales each expert's rows by
#    ``routing_weights[top_x, idx]``, where ``idx, top_x = paddle.where(mask)``. Paddle
#    2.x's ``where`` gave [N, 1] indices, so the weights came out [N, 1] and broadcast over
#    the hidden size; Paddle 3's gives [N], the weights come out [N], and the product
#    with the [N, hidden] rows fails. ``dynamic_patches`` restores the axis, nothing else.


def _mixtral_sparse_moe_forward(self, hidden_states):
    """PaddleNLP 2.8.1's MixtralSparseMoeBlock.forward with the routing weights [N, 1] (4)."""
    batch_size, seq_len, hidden_dim = hidden_states.shape
    hidden_states = hidden_states.reshape([-1, hidden_dim])
    router_logits, routing_weights, selected_experts = _mixtral_routing(self, hidden_states)
    final_hidden_states = paddle.zeros([batch_size * seq_len, hidden_dim], dtype=hidden_states.dtype)
    expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).transpose([2, 1, 0])
    for expert_id in range(self.num_experts):
        idx, top_x = paddle.where(expert_mask[expert_id])
        if top_x.shape[0] == 0:
            continue
        current_state = paddle.gather(hidden_states, top_x)
        current_hidden_states = self.experts[expert_id](current_state) * routing_weights[top_x, idx].unsqueeze(-1)
        final_hidden_states.index_add_(top_x, 0, current_hidden_states.astype(hidden_states.dtype))
    return final_hidden_states.reshape([batch_size, seq_len, hidden_dim]), router_logits


@contextlib.contextmanager
def _mixtral_dynamic(model):
    from paddlenlp.transformers.mixtral import modeling

    with replaced_attributes([(modeling.MixtralSparseMoeBlock, "forward", _mixtral_sparse_moe_forward)]):
        yield


# --- Bloom ------------------------------------------------------------------------------
# 1. BloomModel._prepare_attn_mask builds the causal mask only ``if src_length > 1``, a
#    tensor condition in a trace, and the branch that skips it leaves the mask undefined
#    ("bitwise_and(): argument (position 2) must be Value, but got UndefinedVar"). Built
#    always: for one new token the causal mask lets it see every position, so the mask is
#    the same.
# 2. BloomForCausalLM.forward names the cache ``cache``; the loops pass
#    ``past_key_values``. Taken under either name.

_bloom_causal_lm_forward = None


def _bloom_prepare_attn_mask(self, attention_mask, input_shape, past_key_values_length, num_heads):
    """PaddleNLP 2.8.1's BloomModel._prepare_attn_mask with the causal mask always (1),
    for the 2-D masks the loops pass."""
    from paddlenlp.transformers.bloom.modeling import _expand_2d_mask, _make_causal_mask

    _, src_length = input_shape
    causal = _make_causal_mask(input_shape, past_key_values_length=past_key_values_length)
    expanded_attn_mask = _expand_2d_mask(attention_mask, tgt_length=src_length) & causal
    mask_shape = expanded_attn_mask.shape
    expanded_attn_mask = expanded_attn_mask.expand([mask_shape[0], num_heads, mask_shape[2], mask_shape[3]])
    zero = paddle.zeros(expanded_attn_mask.shape, dtype=paddle.float32)
    neg_inf = paddle.full(expanded_attn_mask.shape, paddle.finfo(paddle.float32).min, dtype=paddle.float32)
    expanded_attn_mask = paddle.where(expanded_attn_mask, zero, neg_inf)
    batch_size, num_heads, sq_len, kv_len = expanded_attn_mask.shape
    return expanded_attn_mask.reshape([batch_size * num_heads, sq_len, kv_len])


def _bloom_forward(self, input_ids=None, cache=None, attention_mask=None, position_ids=None, use_cache=None,
                   return_dict=None, past_key_values=None, **kwargs):
    """BloomForCausalLM.forward taking the cache as ``past_key_values`` too (2)."""
    return _bloom_causal_lm_forward(self, input_ids, cache if past_key_values is None else past_key_values,
                                    attention_mask, position_ids, use_cache=use_cache, return_dict=return_dict,
                                    **kwargs)


@contextlib.contextmanager
def _bloom(model):
    global _bloom_causal_lm_forward
    from paddlenlp.transformers.bloom import modeling

    _bloom_causal_lm_forward = modeling.BloomForCausalLM.forward
    with replaced_attributes([(modeling.BloomModel, "_prepare_attn_mask", _bloom_prepare_attn_mask),
                              (modeling.BloomForCausalLM, "forward", _bloom_forward)]):
        yield


# --- GPT --------------------------------------------------------------------------------
# 1. GPT's decoder layers keep ``F.gelu`` as an attribute, taken at construction, so the
#    legacy tracing patches (compat.legacy_ops.legacy_export_patches) never reach it: "gelu():
#    argument (position 1) must be Value, but got Variable". Each is swapped for the
#    legacy-aware gelu while the model is exported.


def _gpt(model):
    layers = [layer for layer in model.sublayers() if getattr(layer, "activation", None) is F.gelu]
    return replaced_attributes([(layer, "activation", legacy_aware_gelu()) for layer in layers])


# --- dispatch ---------------------------------------------------------------------------

PATCHES = {"qwen": _qwen, "mixtral": _mixtral, "bloom": _bloom, "gpt": _gpt}
DYNAMIC_PATCHES = {"mixtral": _mixtral_dynamic}


def export_patches(model):
    """The patches ``model``'s architecture needs while it is exported (none for the
    others)."""
    patches = PATCHES.get(getattr(model.config, "model_type", None))
    return patches(model) if patches is not None else contextlib.nullcontext()


def dynamic_patches(model):
    """The patches ``model``'s architecture needs to run in dygraph (none for the others)."""
    patches = DYNAMIC_PATCHES.get(getattr(model.config, "model_type", None))
    return patches(model) if patches is not None else contextlib.nullcontext()

