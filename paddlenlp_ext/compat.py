"""Patches that let PaddleNLP 2.8.1 models export on Paddle 3.x; all of them live here.

Each patch is applied only inside the context manager that needs it and restored on
exit; nothing installed is edited.
"""

from __future__ import annotations

import contextlib
import math

import paddle
import paddle.nn.functional as F
from paddle.base.framework import Variable, convert_np_dtype_to_dtype_
from paddle.base.layer_helper import LayerHelper


def _is_legacy_variable(x) -> bool:
    return isinstance(x, Variable) and not paddle.in_dynamic_mode() and not paddle.framework.use_pir_api()


def _append_legacy_op(op_type: str, inputs: dict, attrs: dict, dtype):
    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(dtype=dtype)
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": [out]}, attrs=attrs)
    return out


def _matmul(x, y, transpose_x=False, transpose_y=False, name=None):
    attrs = {"trans_x": bool(transpose_x), "trans_y": bool(transpose_y)}
    return _append_legacy_op("matmul_v2", {"X": [x], "Y": [y]}, attrs, x.dtype)


def _argmax(x, axis=None, keepdim=False, dtype="int64", name=None):
    dtype = convert_np_dtype_to_dtype_(dtype)
    attrs = {"axis": 0 if axis is None else int(axis), "keepdims": bool(keepdim), "flatten": axis is None,
             "dtype": int(dtype)}
    return _append_legacy_op("arg_max", {"X": [x]}, attrs, dtype)


def _rsqrt(x, name=None):
    return _append_legacy_op("rsqrt", {"X": [x]}, {}, x.dtype)


def _tril(x, diagonal=0, name=None):
    return _append_legacy_op("tril_triu", {"X": [x]}, {"diagonal": int(diagonal), "lower": True}, x.dtype)


def _logical_not(x, out=None, name=None):
    return _append_legacy_op("logical_not", {"X": [x]}, {}, paddle.bool)


# Paddle 3.3.1 (paddle/base/dygraph/generated_tensor_methods_patch.py) binds these
# paddle.X / Tensor.X names straight to `_C_ops.X`, which takes eager tensors and PIR
# values only: in legacy static mode they raise "argument (position 1) must be Value,
# but got Variable". The llama forward reaches matmul (attention, lm_head), rsqrt
# (RMSNorm), tril (causal mask) and logical_not (dy2static's `if`); decoding uses
# argmax. For a legacy Variable we append the legacy op they used to emit.
_LEGACY_OPS = {
    "matmul": _matmul,
    "argmax": _argmax,
    "rsqrt": _rsqrt,
    "tril": _tril,
    "logical_not": _logical_not,
}


def _dispatch(original, legacy):
    def op(*args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        return legacy(*args, **kwargs) if _is_legacy_variable(x) else original(*args, **kwargs)

    op.__name__ = getattr(original, "__name__", "op")
    return op


def _swiglu(x, y=None):
    if y is None:
        x, y = paddle.chunk(x, chunks=2, axis=-1)
    return F.silu(x) * y


@contextlib.contextmanager
def legacy_export_patches():
    """Patches for tracing a PaddleNLP 2.8.1 llama into a legacy (ProgramDesc) program."""
    import paddlenlp.transformers.llama.modeling as llama_modeling

    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    try:
        for name, legacy in _LEGACY_OPS.items():
            for owner in (paddle, paddle.tensor, Variable):
                if hasattr(owner, name):
                    patch(owner, name, _dispatch(getattr(owner, name), legacy))
        # paddle.incubate.nn.functional.swiglu on Paddle 3.3.1 only handles dynamic and
        # PIR mode and returns None in legacy mode (the MLP then fails on None.dtype);
        # PaddleNLP 2.8.1's llama imports it as `swiglu`. Use the silu(x) * y it equals.
        patch(llama_modeling, "swiglu", _swiglu)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


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
    import paddlenlp.transformers.llama.modeling as llama_modeling

    original = llama_modeling.scaled_dot_product_attention
    llama_modeling.scaled_dot_product_attention = _llama_attention_without_shape_checks
    try:
        yield
    finally:
        llama_modeling.scaled_dot_product_attention = original


def _drop_stale_trace_records():
    from paddle.base.dygraph.base import in_to_static_mode
    from paddle.jit.dy2static.parameter_recorder import _global_parameter_recorder
    from paddle.jit.dy2static.program_translator import ProgramTranslator

    if in_to_static_mode():  # a trace is running: its records are live
        return
    legacy = ProgramTranslator.get_instance()._params_recorder  # legacy programs
    legacy.params_dict.clear()
    _global_parameter_recorder.params_dict.clear()  # PIR programs
    _global_parameter_recorder.tensor2value.clear()


@contextlib.contextmanager
def fresh_trace_records():
    """Trace and save with no parameters recorded by an earlier, failed trace.

    While dy2static traces a function, Paddle 3.3.1 records every parameter and buffer
    the function reads (``ProgramTranslator._params_recorder`` for legacy programs,
    ``parameter_recorder._global_parameter_recorder`` for PIR ones), keyed by
    ``id(main_program)``, and pops the record only when the trace returns
    (``ConcreteProgram.from_func_spec``, ``graph_tracing_guard``): a trace that raises
    leaves its record behind, holding its layer's tensors. When a later trace's new
    Program lands at the dead program's address (CPython reuses ids), it pops those
    tensors with its own: ``jit.save`` then looks them up in the saved layer's state
    dict and raises ``KeyError: 'eager_tmp_10'`` (another model's rotary cache) in the
    legacy format, and in PIR format the trace reuses values of the dead program and
    the process can crash. Records only matter during a trace, so they are all dropped
    before ours (whatever failed before) and after it (in case ours fails).
    """
    _drop_stale_trace_records()
    try:
        yield
    finally:
        _drop_stale_trace_records()
