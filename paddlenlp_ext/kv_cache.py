"""The KV cache layouts a ``GenerationLoop`` decodes with, one class each
(``CACHE_LAYOUTS``, after HF transformers' ``cache_utils``):

- ``ConcatCache`` (``cache="concat"``): PaddleNLP's own, a ``(key, value)`` pair per
  layer, [batch, positions, kv_heads, head_dim], grown by ``paddle.concat`` every step:
  a copy of the whole cache per token, which the model's attention does itself.
- ``StaticCache`` (``cache="static"``): after the prefill, per layer, key and value
  buffers of prompt + ``max_new_tokens`` positions, heads before positions
  (``StaticCache.allocate``); each step writes its token's keys and values at one
  position, in place (``write_cache_position_``, the one update), and attention reads
  the whole buffers, the positions not yet written masked (``static_cache_attention``,
  PaddleNLP's ``LlamaAttention.forward`` replaced while a loop runs or is traced). A
  step's ``past_key_values`` is one ``StaticCacheLayer`` per layer
  (``StaticCache.layers``).

The decode loops themselves stay in ``decoding.GenerationLoop``, one ``while`` body per
layout: dy2static carries every name a body assigns, and each layout's body must assign
its own (the static one no model output, which a legacy export would copy every step).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import paddle
import paddle.nn.functional as F
from paddle import _C_ops
from paddle.base.layer_helper import LayerHelper

from .compat import is_legacy_variable


class StaticCacheLayer(NamedTuple):
    """One layer's entry of a static KV cache, as ``GenerationLoop(cache="static")``
    passes it to PaddleNLP's llama in ``past_key_values``.

    ``key`` and ``value``: float [batch, kv_heads, max_len, head_dim], allocated once
    (heads before positions, so that attention multiplies them without a transpose);
    ``write_position``: int64 [1], the position the step's new token is written to,
    the same for every row (the batch is left-padded).
    """

    key: object
    value: object
    write_position: object


def write_cache_position_(buffer, position, value):
    """Write ``value`` [B, H, 1, D] into ``buffer`` [B, H, S, D] at ``position`` (int64
    [1]) of axis 2, in place, and return the written buffer.

    It is a ``put_along_axis`` whose result is its input, because on Paddle 3.3.1 that
    is the write that stays in place in every format:

    - a legacy ``x[:, :, p:p + 1] = v`` is traced into a new variable (dy2static's
      setitem), and the translator turns even a ``set_value`` whose Out is its Input
      into the out-of-place ``set_value_with_tensor``: a copy of the whole buffer per
      write, which Paddle Inference keeps. A legacy ``put_along_axis`` whose Result is
      its Input becomes ``put_along_axis_``;
    - in PIR, ``Tensor.put_along_axis_`` on a while block argument fails in Paddle's
      in-place view check (``check_view_value``: a block argument has no defining op);
      ``_C_ops.put_along_axis_`` is the same op without that check.

    A bfloat16 buffer (PIR only: a bfloat16 model exports in no other format) is
    written by ``set_value_with_tensor_`` instead: Paddle 3.3.1's CPU wheel has no
    bfloat16 ``put_along_axis`` kernel. PIR keeps that op in place (it is what PIR's
    own setitem emits), and it writes the one position: 0.07 ms on a [1, 32, 2176, 128]
    buffer, whose copy would move 17 MiB each way.
    """
    if buffer.dtype == paddle.bfloat16 and not is_legacy_variable(buffer):
        return _C_ops.set_value_with_tensor_(buffer, value, position, position + 1, [1], [2], [], [])
    index = paddle.zeros_like(value, dtype="int64") + position
    if is_legacy_variable(buffer):
        helper = LayerHelper("put_along_axis")
        helper.append_op(type="put_along_axis", inputs={"Input": [buffer], "Index": [index], "Value": [value]},
                         outputs={"Result": [buffer]}, inplace_map={"Input": "Result"},
                         attrs={"Axis": 2, "Reduce": "assign", "include_self": True})
        return buffer
    return _C_ops.put_along_axis_(buffer, index, value, 2, "assign", True)


# PaddleNLP's LlamaAttention.forward while static_cache_attention() is on: the prefill
# (no cache yet) still runs it.
_paddlenlp_llama_attention_forward = None


def _plain_llama_attention(layer) -> bool:
    """``layer`` is a PaddleNLP llama attention that ``_llama_attention_with_static_cache``
    covers: no fused qkv or rope, tensor/sequence parallelism, dynamic NTK or flash attention."""
    config = layer.config
    return not (layer.fuse_attention_qkv or layer.reshard_layer is not None or layer.sequence_parallel
                or layer.kv_indices is not None or not config.rope or layer.use_fused_rope
                or config.use_long_sequence_strategies or config.rope_scaling_type == "dynamic_ntk"
                or config.use_flash_attention)


def supports_static_cache(model) -> bool:
    """Every attention layer of ``model`` is a llama attention the static KV cache covers."""
    from paddlenlp.transformers.llama.modeling import LlamaAttention

    attentions = [layer for layer in model.sublayers() if isinstance(layer, LlamaAttention)]
    return bool(attentions) and all(_plain_llama_attention(layer) for layer in attentions)


def _llama_attention_with_static_cache(self, hidden_states, position_ids=None, past_key_value=None,
                                       attention_mask=None, output_attentions=False, use_cache=False, alibi=None,
                                       npu_is_casual=False):
    """PaddleNLP 2.8.1's ``LlamaAttention.forward`` for one new token per row whose
    past keys and values are a ``StaticCacheLayer``; anything else goes to PaddleNLP's.

    The projections, rotary embedding and output projection are the layer's own; the
    new key and value are written into the buffers in place instead of
    ``paddle.concat``-ed to the past, and attention reads the whole buffers, the
    positions not yet written being masked by ``attention_mask`` (zeros in the
    buffers, minus the float32 minimum in the mask: their softmax weights are exactly
    0). Grouped-query heads are read by grouping the queries per key/value head
    instead of repeating the keys and values (``repeat_kv``): query head ``h`` reads
    key/value head ``h // groups`` either way.
    """
    if not isinstance(past_key_value, StaticCacheLayer):
        return _paddlenlp_llama_attention_forward(self, hidden_states, position_ids, past_key_value, attention_mask,
                                                  output_attentions, use_cache, alibi, npu_is_casual)
    if not _plain_llama_attention(self) or alibi is not None or output_attentions:
        raise NotImplementedError("the static KV cache covers PaddleNLP's plain llama attention: no fused qkv or "
                                  "rope, tensor/sequence parallelism, alibi, dynamic NTK, flash attention or "
                                  "returned weights")
    import paddlenlp.transformers.llama.modeling as llama_modeling

    heads, kv_heads, head_dim = self.num_heads, self.num_key_value_heads, self.head_dim
    query = self.q_proj(hidden_states).reshape([0, 0, heads, head_dim])
    key = self.k_proj(hidden_states).reshape([0, 0, kv_heads, head_dim])
    value = self.v_proj(hidden_states).reshape([0, 0, kv_heads, head_dim])
    cos, sin = self.rotary_emb(value, seq_len=None)  # every position's; position_ids picks the row's
    query, key = llama_modeling.apply_rotary_pos_emb(query, key, cos, sin, position_ids)
    key_buffer = write_cache_position_(past_key_value.key, past_key_value.write_position,
                                       key.transpose([0, 2, 1, 3]))
    value_buffer = write_cache_position_(past_key_value.value, past_key_value.write_position,
                                         value.transpose([0, 2, 1, 3]))
    # [B, 1, heads, D] -> [B, kv_heads, groups, D]: one token, so no transpose is needed.
    query = query.reshape([0, kv_heads, heads // kv_heads, head_dim])
    scores = paddle.matmul(query / math.sqrt(head_dim), key_buffer, transpose_y=True)  # [B, kv_heads, groups, S]
    scores = scores + attention_mask  # [B, 1, 1, S]
    weights = F.softmax(scores, axis=-1, dtype="float32").astype(query.dtype)
    attention = paddle.matmul(weights, value_buffer).reshape([0, 1, heads * head_dim])
    output = self.o_proj(attention)
    return (output, (key_buffer, value_buffer)) if use_cache else output


@contextlib.contextmanager
def static_cache_attention():
    """Let PaddleNLP 2.8.1's llama attention take a static KV cache (``StaticCacheLayer``
    entries in ``past_key_values``): ``LlamaAttention.forward`` is replaced by
    ``_llama_attention_with_static_cache`` inside the block and restored on exit.

    ``GenerationLoop(cache="static")`` enters it around each call, and the exports
    around tracing. With the usual ``(key, value)`` pairs, or none, the attention is
    PaddleNLP's.
    """
    global _paddlenlp_llama_attention_forward
    from paddlenlp.transformers.llama.modeling import LlamaAttention

    original = LlamaAttention.forward
    saved_original = _paddlenlp_llama_attention_forward
    if original is not _llama_attention_with_static_cache:  # not already on (a nested block)
        _paddlenlp_llama_attention_forward = original
    LlamaAttention.forward = _llama_attention_with_static_cache
    try:
        yield
    finally:
        LlamaAttention.forward = original
        _paddlenlp_llama_attention_forward = saved_original


class ConcatCache:
    """PaddleNLP's cache: the model grows its own ``(key, value)`` pairs; nothing of ours
    runs."""

    name = "concat"

    def patches(self):
        """What running or tracing a loop on this cache needs patched: nothing."""
        return contextlib.nullcontext()


class StaticCache:
    """Buffers allocated once after the prefill, written in place each step."""

    name = "static"

    def patches(self):
        """What running or tracing a loop on this cache needs patched: PaddleNLP's llama
        attention taking ``StaticCacheLayer`` entries (``static_cache_attention``)."""
        return static_cache_attention()

    def allocate(self, config, prompt_cache, max_new_tokens) -> tuple:
        """Per layer, key and value buffers [B, kv_heads, prompt + max_new_tokens, head_dim]
        (positions after the prompt's zero), from the prefill's ``(key, value)`` pairs
        [B, prompt, kv_heads, head_dim] of a model with this ``config``."""
        head_dim = config.hidden_size // config.num_attention_heads
        buffers = []
        for key, value in prompt_cache:
            unwritten = paddle.zeros([paddle.shape(key)[0], config.num_key_value_heads, max_new_tokens[0], head_dim],
                                     dtype=key.dtype)
            buffers.append((paddle.concat([key.transpose([0, 2, 1, 3]), unwritten], axis=2),
                            paddle.concat([value.transpose([0, 2, 1, 3]), unwritten], axis=2)))
        return tuple(buffers)

    def layers(self, cache, write_position) -> list:
        """The ``past_key_values`` of one step: each layer's buffers and where to write."""
        return [StaticCacheLayer(key, value, write_position) for key, value in cache]


CACHE_LAYOUTS = {layout.name: layout for layout in (ConcatCache, StaticCache)}
