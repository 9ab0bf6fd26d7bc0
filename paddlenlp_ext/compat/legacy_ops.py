"""Tracing into a legacy (ProgramDesc) program on Paddle 3.3.1: the ops Paddle binds
for PIR only, emitted the legacy way for a legacy Variable (the llama's, the other
architectures', PaddleNLP's sampler's), and the llama MLP's swiglu."""

from __future__ import annotations

import contextlib

import paddle
import paddle.nn.functional as F
from paddle.base.framework import Variable, convert_np_dtype_to_dtype_
from paddle.base.layer_helper import LayerHelper

from .patching import replaced_attributes
from .tracing import isolated_dy2static_cache


def is_legacy_variable(x) -> bool:
    """``x`` is a Variable of a legacy (ProgramDesc) program being traced: the ops it
    meets must be appended the legacy way."""
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


def _tril(x, diagonal=0, name=None):
    return _append_legacy_op("tril_triu", {"X": [x]}, {"diagonal": int(diagonal), "lower": True}, x.dtype)


def _logical_not(x, out=None, name=None):
    return _append_legacy_op("logical_not", {"X": [x]}, {}, paddle.bool)


def _unary(op_type: str):
    def legacy(x, name=None):
        return _append_legacy_op(op_type, {"X": [x]}, {}, x.dtype)

    return legacy


def _gelu(x, approximate=False, name=None):
    return _append_legacy_op("gelu", {"X": [x]}, {"approximate": bool(approximate)}, x.dtype)


def _sum(x, axis=None, dtype=None, keepdim=False, name=None):
    # paddle.sum's dtypes: ``dtype`` if given, int64 for bool and int32 values.
    if dtype is None and x.dtype in (paddle.bool, paddle.int32):
        dtype = paddle.int64
    if dtype is not None:
        x = x.astype(dtype)
    dims = [] if axis is None else ([axis] if isinstance(axis, int) else list(axis))
    return _append_legacy_op("reduce_sum", {"X": [x]}, {"dim": dims, "keep_dim": bool(keepdim),
                                                       "reduce_all": axis is None}, x.dtype)


def _bmm(x, y, name=None):
    return _append_legacy_op("bmm", {"X": [x], "Y": [y]}, {}, x.dtype)


def _roll(x, shifts, axis=None, name=None):
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    axis = [] if axis is None else ([axis] if isinstance(axis, int) else list(axis))
    return _append_legacy_op("roll", {"X": [x]}, {"shifts": shifts, "axis": axis}, x.dtype)


# Paddle 3.3.1 (paddle/base/dygraph/generated_tensor_methods_patch.py) binds these
# paddle.X / Tensor.X (and paddle.nn.functional.X) names straight to `_C_ops.X`, which
# takes eager tensors and PIR values only: in legacy static mode they raise "argument
# (position 1) must be Value, but got Variable". The llama forward reaches matmul
# (attention, lm_head), rsqrt (RMSNorm), tril (causal mask) and logical_not (dy2static's
# `if`); decoding uses argmax, the prefill roll (last_position's copy); the other
# architectures cos, sin and bmm (ChatGLMv2's rotary embedding and attention), tanh
# (Bloom's gelu) and sum (Mixtral's routing); GPT's gelu is swapped where GPT keeps it
# (``legacy_aware_gelu``).
# For a legacy Variable we append the legacy op they used to emit.
LEGACY_OPS = {
    "matmul": _matmul,
    "argmax": _argmax,
    "tril": _tril,
    "logical_not": _logical_not,
    "roll": _roll,
    **{name: _unary(name) for name in ("rsqrt", "cos", "sin", "tanh")},
    "bmm": _bmm,
    "sum": _sum,
}


def legacy_aware_gelu():
    """``F.gelu``, appending the legacy op for a legacy Variable: for the models that keep
    ``F.gelu`` as an attribute, out of the patches' reach (GPT: compat.architectures)."""
    return _dispatch(F.gelu, _gelu)


def _dispatch(original, legacy):
    # Not renamed after ``original``: dy2static converts a method called on a Variable
    # (``emb.cos()``) by looking its __name__ up in the module it converted, where "cos"
    # is not ("Function: cos doesn't exist in the Module transformed from AST").
    def op(*args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        return legacy(*args, **kwargs) if is_legacy_variable(x) else original(*args, **kwargs)

    return op


def _any(x, axis=None, keepdim=False, name=None):
    reduce_all = axis is None or (isinstance(axis, (list, tuple)) and len(axis) in (0, len(x.shape)))
    dim = [] if axis is None else ([axis] if isinstance(axis, int) else list(axis))
    return _append_legacy_op("reduce_any", {"X": [x]}, {"dim": dim, "keep_dim": bool(keepdim),
                                                         "reduce_all": reduce_all}, paddle.bool)


def _logical_and(x, y, out=None, name=None):
    return _append_legacy_op("logical_and", {"X": [x], "Y": [y]}, {}, paddle.bool)


# The same Paddle 3.3.1 binding (see LEGACY_OPS) for two more names that only
# PaddleNLP's sample_d2s reaches: paddle.any (the while condition) and
# paddle.logical_and (get_unfinished_flag, with an eos id).
SAMPLER_LEGACY_OPS = {
    "any": _any,
    "logical_and": _logical_and,
}


def _swiglu(x, y=None):
    if y is None:
        x, y = paddle.chunk(x, chunks=2, axis=-1)
    return F.silu(x) * y


def _legacy_op_replacements(ops: dict, owners) -> list:
    """``(owner, name, dispatching op)`` for each name of ``ops`` each of ``owners`` has."""
    return [(owner, name, _dispatch(getattr(owner, name), legacy))
            for name, legacy in ops.items() for owner in owners if hasattr(owner, name)]


@contextlib.contextmanager
def legacy_export_patches():
    """Patches for tracing a PaddleNLP 2.8.1 llama into a legacy (ProgramDesc) program."""
    import paddlenlp.transformers.llama.modeling as llama_modeling

    replacements = _legacy_op_replacements(LEGACY_OPS, (paddle, paddle.tensor, Variable, F, F.activation))
    # paddle.incubate.nn.functional.swiglu on Paddle 3.3.1 only handles dynamic and
    # PIR mode and returns None in legacy mode (the MLP then fails on None.dtype);
    # PaddleNLP 2.8.1's llama imports it as `swiglu`. Use the silu(x) * y it equals.
    replacements.append((llama_modeling, "swiglu", _swiglu))
    with isolated_dy2static_cache(), replaced_attributes(replacements):
        yield


def legacy_sampler_patches():
    """The sampler's ops (``SAMPLER_LEGACY_OPS``) for tracing PaddleNLP 2.8.1's
    ``sample_d2s`` into a legacy program, on top of ``legacy_export_patches``."""
    return replaced_attributes(_legacy_op_replacements(SAMPLER_LEGACY_OPS, (paddle, paddle.tensor, Variable)))
