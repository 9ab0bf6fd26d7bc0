"""PaddleNLP 2.8.1's own export (``GenerationMixin.to_static``, ``sample_d2s``: what its
``llm/export_model.py`` runs) on Paddle 3.3.1, in either program format."""

from __future__ import annotations

import contextlib

import paddle

from .legacy_ops import legacy_export_patches, legacy_sampler_patches
from .patching import environment, replaced_attributes
from .pir_export import pir_export_patches
from .tracing import fresh_trace_records


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
    mixin = generation_utils.GenerationMixin
    replacements = [(generation_utils, "TopKProcess", _top_k_process),
                    (mixin, "adjust_logits_during_generation",
                     _logits_in_float32(mixin.adjust_logits_during_generation)),
                    (mixin, "to_static", _to_static_patched(mixin.to_static))]
    with contextlib.ExitStack() as stack:
        stack.enter_context(legacy_export_patches() if legacy else pir_export_patches())
        stack.enter_context(fresh_trace_records())
        if legacy:
            stack.enter_context(legacy_sampler_patches())
        else:
            stack.enter_context(environment(_PIR_ENVIRONMENT))
        stack.enter_context(replaced_attributes(replacements))
        yield
