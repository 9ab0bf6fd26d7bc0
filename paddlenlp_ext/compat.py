"""Patches that let PaddleNLP 2.8.1 models export on Paddle 3.x, and workarounds of
Paddle behaviour; all of them live here.

Each patch is applied only inside the context manager that needs it and restored on
exit; nothing installed is edited.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref

import paddle
import paddle.nn.functional as F
from paddle.base.framework import Variable, convert_np_dtype_to_dtype_
from paddle.base.layer_helper import LayerHelper


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
_LEGACY_OPS = {
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
    ``F.gelu`` as an attribute, out of the patches' reach (GPT: compat_architectures)."""
    return _dispatch(F.gelu, _gelu)


def _dispatch(original, legacy):
    # Not renamed after ``original``: dy2static converts a method called on a Variable
    # (``emb.cos()``) by looking its __name__ up in the module it converted, where "cos"
    # is not ("Function: cos doesn't exist in the Module transformed from AST").
    def op(*args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        return legacy(*args, **kwargs) if is_legacy_variable(x) else original(*args, **kwargs)

    return op


def _swiglu(x, y=None):
    if y is None:
        x, y = paddle.chunk(x, chunks=2, axis=-1)
    return F.silu(x) * y


@contextlib.contextmanager
def _isolated_dy2static_cache():
    """A block whose to_static conversions neither reuse nor leave converted functions.

    dy2static (Paddle 3.3.1, ``program_translator.FunctionCache`` and
    ``utils.ast_to_func``) converts each function once per process and gives the
    converted function a copy of its module's globals taken then. A module global
    patched here would be missed by a function converted before the block (a failed
    ``to_static`` first, then a retry with the patches), and kept after the block by one
    converted inside it. So the block gets an empty cache and the old one is put back.
    """
    from paddle.jit.dy2static import program_translator

    cache = program_translator._FUNCTION_CACHE
    saved = cache._converted_static_func_caches
    cache._converted_static_func_caches = weakref.WeakKeyDictionary()
    try:
        yield
    finally:
        cache._converted_static_func_caches = saved


@contextlib.contextmanager
def legacy_export_patches():
    """Patches for tracing a PaddleNLP 2.8.1 llama into a legacy (ProgramDesc) program."""
    import paddlenlp.transformers.llama.modeling as llama_modeling

    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    with _isolated_dy2static_cache():
        try:
            for name, legacy in _LEGACY_OPS.items():
                for owner in (paddle, paddle.tensor, Variable, F, F.activation):
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
    originals = {name: getattr(llama_modeling, name) for name in replaced}
    _paddlenlp_apply_rotary_pos_emb = originals["apply_rotary_pos_emb"]
    for name, function in replaced.items():
        setattr(llama_modeling, name, function)
    try:
        with _isolated_dy2static_cache():
            yield
    finally:
        for name, function in originals.items():
            setattr(llama_modeling, name, function)


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


# --- PaddleNLP 2.8.1's own export: GenerationMixin.to_static / sample_d2s ---------------

def _any(x, axis=None, keepdim=False, name=None):
    reduce_all = axis is None or (isinstance(axis, (list, tuple)) and len(axis) in (0, len(x.shape)))
    dim = [] if axis is None else ([axis] if isinstance(axis, int) else list(axis))
    return _append_legacy_op("reduce_any", {"X": [x]}, {"dim": dim, "keep_dim": bool(keepdim),
                                                         "reduce_all": reduce_all}, paddle.bool)


def _logical_and(x, y, out=None, name=None):
    return _append_legacy_op("logical_and", {"X": [x], "Y": [y]}, {}, paddle.bool)


# The same Paddle 3.3.1 binding (see _LEGACY_OPS) for two more names that only
# PaddleNLP's sample_d2s reaches: paddle.any (the while condition) and
# paddle.logical_and (get_unfinished_flag, with an eos id).
_SAMPLER_LEGACY_OPS = {
    "any": _any,
    "logical_and": _logical_and,
}


def _top_k_process(probs, top_k, min_tokens_to_keep):
    """PaddleNLP 2.8.1's ``TopKProcess`` (paddlenlp/generation/logits_process.py) for a
    ``top_k`` that may be a tensor.

    ``to_static(..., {"use_top_p": False})`` passes ``top_k`` as an ``InputSpec([1],
    "int64")``, and ``TopKProcess`` starts with ``min(max(top_k, min_tokens_to_keep),
    probs.shape[-1])``: Python's ``max``/``min`` compare a tensor, which is
    ``bool(Value)`` in a PIR program ("bool(Tensor) is not supported in static graph
    mode", Paddle 3.3.1). A legacy Variable is simply true, so the legacy export
    succeeds with ``k`` fixed at ``min_tokens_to_keep`` (1): the program ignores the
    ``top_k`` it is fed (seen on 3.3.1). The same bounds as a ``clip`` on the tensor;
    the rest is the function's own code (probabilities below the k-th largest become 0).
    """
    vocab_size = probs.shape[-1]
    if paddle.is_tensor(top_k):
        top_k = paddle.clip(top_k, min=min_tokens_to_keep, max=vocab_size if vocab_size > 0 else None)
    else:
        top_k = min(max(top_k, min_tokens_to_keep), vocab_size)
    topk_probs, _ = paddle.topk(probs, k=top_k)
    return paddle.where(probs >= topk_probs[:, -1:], probs, paddle.full_like(probs, 0.0))


def _logits_in_float32(adjust):
    """PaddleNLP 2.8.1's ``GenerationMixin.adjust_logits_during_generation`` (the hook
    its decoding loops call on each step's last logits), whose result is cast to float32
    when it is bfloat16: the sampling after it (softmax, ``where``, ``argmax``, ``topk``,
    ``multinomial``) has no bfloat16 CPU kernels on Paddle 3.3.1, and PIR refuses a
    bfloat16 ``where`` or ``argmax`` as the loop is traced. A bfloat16 value is exactly a
    float32 one, so greedy search picks the same token."""

    def adjust_logits_during_generation(self, logits):
        logits = adjust(self, logits)
        return paddle.cast(logits, paddle.float32) if logits.dtype == paddle.bfloat16 else logits

    return adjust_logits_during_generation


def _fill_special_token_ids(model, config: dict) -> dict:
    """PaddleNLP 2.8.1's ``to_static`` picks ``self.generation_config.pad_token_id or
    config.get("pad_token_id", None)`` (the same for eos): a pad id of 0, llama's, reads
    as false and, with no ``pad_token_id`` in ``config`` (``llm/export_model.py`` passes
    none), becomes None; ``sample_d2s`` then fails in ``paddle.full_like(next_tokens,
    None)`` ("The fill_value should be ... but received <class 'NoneType'>"). Filling
    the config's missing ids from the generation config gives the ids the ``or`` meant.
    """
    config = dict(config)
    for name in ("pad_token_id", "eos_token_id"):
        if config.get(name) is None:
            config[name] = getattr(model.generation_config, name, None)
    return config


class TopPSamplingUnavailable(RuntimeError):
    """``use_top_p`` export on a Paddle build without a ``top_p_sampling`` kernel."""


def _top_p_sampling_available() -> bool:
    from paddle.base import core

    return "top_p_sampling" in core._get_all_register_op_kernels("phi")


def _check_top_p_sampling(config: dict) -> None:
    """``use_top_p`` (PaddleNLP's default) exports ``paddle.tensor.top_p_sampling``,
    which has GPU/XPU kernels only: on Paddle 3.3.1's CPU wheel (and 2.6.2's) the op
    cannot even be traced (PIR: "Check data type error for op: top_p_sampling ...
    expected_dtype:"; legacy: "The kernel `top_p_sampling` is not registered"). Say so
    in one line before tracing instead."""
    if config.get("use_top_p", True) and not _top_p_sampling_available():
        raise TopPSamplingUnavailable(
            "top_p_sampling has no kernel in this Paddle build (CPU): export with "
            "{'use_top_p': False} (top-k sampling; top_k=1 is greedy) or on a GPU build")


def _to_static_patched(original):
    def to_static(self, path, config):
        config = _fill_special_token_ids(self, config)
        _check_top_p_sampling(config)
        return original(self, path, config)

    to_static.__wrapped__ = original
    return to_static


# PaddleNLP 2.8.1's sample_d2s increments `cur_len`, an element of `paddle.shape(input_ids)`
# (a view in dygraph), in place, inside `paddle.framework._no_check_dy2st_diff()`: its way
# of saying that this is safe. Paddle 3.3.1's PIR to_static ignores that context: after
# tracing, `check_view_api_used_by_inplace` raises "pd_op.increment_'s output variable is
# a viewed Tensor in dygraph ... set env stride_in_no_check_dy2st_diff to 1", and only that
# environment variable turns it off. The counter is read by nothing that would see the
# difference (the static program's slice is its own tensor), so the export sets it.
_PIR_ENVIRONMENT = {"stride_in_no_check_dy2st_diff": "1"}


@contextlib.contextmanager
def _environment(values: dict):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def paddlenlp_export_patches():
    """Patches under which PaddleNLP 2.8.1's own export, ``model.to_static(path,
    config)`` (what its ``llm/export_model.py`` runs), works on Paddle 3.3.1 in the
    program format Paddle is in when the block is entered: PIR (the default) or
    legacy (``paddle.pir_utils.OldIrGuard()`` / ``FLAGS_enable_pir_api=0``).

    On top of ``pir_export_patches`` or ``legacy_export_patches`` (the llama forward):
    ``TopKProcess`` with a tensor ``top_k``, the pad id 0 that ``to_static`` loses,
    the legacy ``any``/``logical_and`` of the sampler, and a one-line error for
    ``use_top_p`` where ``top_p_sampling`` has no kernel.
    """
    import paddlenlp.generation.utils as generation_utils

    legacy = not paddle.framework.use_pir_api()
    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    with contextlib.ExitStack() as stack:
        stack.enter_context(legacy_export_patches() if legacy else pir_export_patches())
        stack.enter_context(fresh_trace_records())
        if not legacy:
            stack.enter_context(_environment(_PIR_ENVIRONMENT))
        try:
            if legacy:
                for name, op in _SAMPLER_LEGACY_OPS.items():
                    for owner in (paddle, paddle.tensor, Variable):
                        if hasattr(owner, name):
                            patch(owner, name, _dispatch(getattr(owner, name), op))
            patch(generation_utils, "TopKProcess", _top_k_process)
            mixin = generation_utils.GenerationMixin
            patch(mixin, "adjust_logits_during_generation",
                  _logits_in_float32(mixin.adjust_logits_during_generation))
            patch(mixin, "to_static", _to_static_patched(mixin.to_static))
            yield
        finally:
            for owner, name, value in reversed(saved):
                setattr(owner, name, value)


# -- parameter scopes ----------------------------------------------------------------------

# Paddle 3.3.1 keeps every scope made by `paddle.static.Scope()` in its ScopePool until the
# process exits (`_Scope._remove_from_pool` is the only way out): dropping the Python
# object frees nothing. A loaded program's parameters would stay in memory beside the
# predictor's own copy, twice the weights. Erasing the scope's variables frees them.
def empty_scope(scope) -> None:
    """Free every variable of a ``paddle.static.Scope`` (the scope stays usable, empty)."""
    scope.erase(scope.local_var_names())


# -- the Executor's order ------------------------------------------------------------------

# Paddle 3.3.1's interpreter (``paddle.static.Executor``) runs ops in an order built from
# the variables they read and write, which misses one write-after-read: in a while body,
# after an in-place write into a carried buffer (``set_value_with_tensor_`` on a block
# argument) whose result an op reads, a later ``assign_out_`` into that block argument
# may run before the read. Its serial mode then runs the copy first, every time; its
# default multi-thread mode races. Paddle Inference runs the program's order. With
# ``FLAGS_new_executor_sequential_run`` the Executor runs it too (seen on Paddle 3.3.1,
# CPU; tests/test_paddle_defects.py pins it).
@contextlib.contextmanager
def executor_in_program_order():
    flag = "FLAGS_new_executor_sequential_run"
    previous = paddle.get_flags([flag])
    paddle.set_flags({flag: True})
    try:
        yield
    finally:
        paddle.set_flags(previous)


# -- translating legacy programs -----------------------------------------------------------

# Paddle 3.3.1's ProgramDesc-to-PIR translator (ProgramTranslator::TranslateIfOperation in
# paddle/fluid/ir_adaptor/translator/program_translator.cc) makes a `conditional_block` a
# `pd_op.if` whose false branch yields, for each output the translation has no value
# for yet, `pd_op.full(0)` of the variable's declared shape. A persistable variable gets
# a value (a `builtin.parameter`) only where some op reads it. So a block that rebuilds a
# saved buffer before anything reads it (PaddleNLP 2.8.1's qwen: `if seqlen >
# self._seq_len_cached:` rebuilds the rotary cos/sin cache) means "zeros of the traced
# shape" on PIR when the branch is not taken, where the old IR keeps the loaded value:
# wrong tokens, or `Input(index[-1)] has wrong value` in gather_nd once a position passes
# the traced rows. Listing the variable as an input of its block makes the translator
# read the parameter first, and the false branch yield it; the old IR reads `Input` as a
# declaration only. Seen on Paddle 3.3.1, for programs saved by 2.6.2 and 3.3.1.
def read_persistables_written_in_branches(desc) -> list[str]:
    """Add each persistable variable a ``conditional_block`` of the legacy
    ``core.ProgramDesc`` writes to that block's ``Input`` (in place, before it is
    translated to PIR); the names added."""
    added = []
    for block_index in range(desc.num_blocks()):
        block = desc.block(block_index)
        for op_index in range(block.op_size()):
            op = block.op(op_index)
            if op.type() != "conditional_block":
                continue
            inputs = list(op.input("Input"))
            written = [name for name in dict.fromkeys(op.output("Out")) if name not in inputs
                       and (var := block.find_var_recursive(name.encode())) is not None and var.persistable()]
            if written:
                op.set_input("Input", inputs + written)
                added += written
    return added
