"""Tracing a PaddleNLP 2.8.1 llama into a PIR program with to_static (Paddle 3.3.1's
default program format): the attention's shape checks, and the ops without a bfloat16
CPU kernel."""

from __future__ import annotations

import contextlib
import math

import paddle
import paddle.nn.functional as F

from .patching import replaced_attributes
from .tracing import isolated_dy2static_cache


def _llama_attention_without_shape_checks(query_states, config, key_states, value_states, attention_mask,
                                         output_attentions, alibi=None, sequence_parallel=False, reshard_layer=None,
                                         npu_is_casual=False):
    """PaddleNLP 2.8.1's llama ``scaled_dot_product_attention`` (its eager branch) minus
    its two shape checks.

    The checks ``attn_weights.shape != [bsz, ...]`` and ``attention_mask.shape != [...]``
    compare lists that hold tensors for the dynamic dimensions (dy2static turns
    ``x.shape`` into such a list), so in a PIR program the comparison calls
    ``bool(Value)``, which Paddle 3.3.1 refuses: "bool(Tensor) is not supported in static
    graph mode". The math is the branch's own, line for line. The cases it leaves out
    raise: PaddleNLP's llama passes a mask and asks for no weights unless configured
    otherwise.
    """
    if (config.use_flash_attention or attention_mask is None or output_attentions or alibi is not None
            or sequence_parallel or reshard_layer is not None):
        raise NotImplementedError("pir_export_patches covers the eager llama attention with a mask only: no flash "
                                  "attention, alibi, sequence or segment parallelism, or returned attention weights")
    return masked_attention(query_states, key_states, value_states, attention_mask)


def masked_attention(query_states, key_states, value_states, attention_mask):
    """PaddleNLP 2.8.1's eager attention (its llama's, and its mixtral's, line for line):
    softmax(q k^T / sqrt(head_dim) + mask) v, the softmax in float32, for [B, S, heads, D]
    states and a mask of [B, 1, S, T] elements; [B, S, heads * D] out."""
    bsz, q_len, num_heads, head_dim = query_states.shape
    _, kv_seq_len, _, _ = value_states.shape
    query_states = paddle.transpose(query_states, [0, 2, 1, 3])
    key_states = paddle.transpose(key_states, [0, 2, 1, 3])
    value_states = paddle.transpose(value_states, [0, 2, 1, 3])
    attn_weights = paddle.matmul(query_states / math.sqrt(head_dim), key_states.transpose([0, 1, 3, 2]))
    attention_mask = attention_mask.reshape([bsz, 1, q_len, kv_seq_len])
    attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, axis=-1, dtype="float32").astype(query_states.dtype)
    attn_output = paddle.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose([0, 2, 1, 3])
    return attn_output.reshape([bsz, q_len, head_dim * num_heads])


@contextlib.contextmanager
def pir_export_patches():
    """Patches for tracing a PaddleNLP 2.8.1 llama into a PIR program with to_static
    (Paddle 3.3.1's default program format).

    dy2static converts only functions it finds among their own module's globals, so
    each replacement is a module-level function of this module.
    """
    global _paddlenlp_apply_rotary_pos_emb
    import paddlenlp.transformers.llama.modeling as llama_modeling

    replaced = {"scaled_dot_product_attention": _llama_attention_without_shape_checks,
                "apply_rotary_pos_emb": _rotary_pos_emb_any_dtype, "swiglu": _swiglu_any_dtype,
                "repeat_kv": _repeat_kv_any_dtype}
    _paddlenlp_apply_rotary_pos_emb = llama_modeling.apply_rotary_pos_emb
    with replaced_attributes([(llama_modeling, name, function) for name, function in replaced.items()]), \
            isolated_dy2static_cache():
        yield


# Paddle 3.3.1's CPU wheel has no bfloat16 kernel for gather_nd (the rotary embedding's
# `cos[position_ids]` in PaddleNLP 2.8.1's llama), swiglu (its MLP) or tile (its
# grouped-query attention's `repeat_kv`), and PIR refuses to trace them on a bfloat16
# value ("Check data type error for op: gather_nd ... expected_dtype: ... float32"). In
# a bfloat16 model the first two run in float32, their results cast back: the gather is
# exact either way; swiglu's result rounds once to bfloat16, as a bfloat16 kernel's
# would. The tile is an expand (the same copies; it has a bfloat16 kernel).
_paddlenlp_apply_rotary_pos_emb = None


def _repeat_kv_any_dtype(hidden_states, n_rep):
    """PaddleNLP 2.8.1's ``repeat_kv``: [B, S, kv_heads, D] to [B, S, kv_heads * n_rep, D],
    each key/value head ``n_rep`` times in a row; an expand instead of its tile."""
    if n_rep == 1:
        return hidden_states
    batch, length, heads, dim = hidden_states.shape
    repeated = hidden_states.unsqueeze(-2).expand([batch, length, heads, n_rep, dim])
    return repeated.reshape([batch, length, heads * n_rep, dim])


def _rotary_pos_emb_any_dtype(q, k, cos, sin, position_ids):
    """PaddleNLP 2.8.1's ``apply_rotary_pos_emb``, with the bfloat16 gather in float32."""
    from paddlenlp.transformers.llama.modeling import rotate_half

    if position_ids is None or cos.dtype != paddle.bfloat16:
        return _paddlenlp_apply_rotary_pos_emb(q, k, cos, sin, position_ids)
    cos = cos.squeeze(axis=[0, 2]).astype("float32")[position_ids].astype(q.dtype).unsqueeze(2)
    sin = sin.squeeze(axis=[0, 2]).astype("float32")[position_ids].astype(q.dtype).unsqueeze(2)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def _swiglu_any_dtype(x, y=None):
    """``paddle.incubate.nn.functional.swiglu``, in float32 for a bfloat16 ``x``."""
    from paddle.incubate.nn.functional import swiglu

    if x.dtype != paddle.bfloat16:
        return swiglu(x, y)
    return swiglu(x.astype("float32"), None if y is None else y.astype("float32")).astype(x.dtype)
