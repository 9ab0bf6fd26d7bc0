"""pipeline: the one place that says which passes run on a program, and in which order.

Every route that rewrites a program asks this module for its passes: the runtime
(``inference``: ``StaticGenerationModel``, the load-time hook's predictor), what leaves
our hands (``convert``, the save hook) and the benchmark. Where the program will run
decides what it gets (after torch.fx's ``PassManager``: a list of named steps, each
returning a report whose ``modified`` is true exactly when the IR changed):

- **Saved** (``saving_passes``): the directory is run by whoever loads it, Paddle
  Inference's default CPU config included (oneDNN on, ``inplace_pass`` on), so it gets
  ``float32_outputs``, ``transpose_perms``, ``remove_loop_assign``,
  ``onednn_broadcast_add``, ``inplace_reads`` then ``guard_onednn_inplace``, always.
- **Run by our own predictors** (``running_passes``), on ``device`` with oneDNN as
  ``onednn`` says (``ONEDNN_MODES``) for ``batch_size`` sequences a run:
  ``float32_outputs``, ``transpose_perms``, ``remove_loop_assign`` (when asked),
  ``loop_cache_layout`` (every
  device); on CPU ``loop_float32_gemv`` (on AMD processors, where the kernel exists) then
  ``loop_weight_matmul`` (both up to ``ADDMM_MAX_BATCH`` sequences, or with oneDNN off),
  ``loop_bfloat16_gemv`` and ``loop_bfloat16_batched_matmul`` (where the
  kernels exist), ``loop_float32_batched_matmul`` (where ``loop_float32_gemv`` runs),
  ``loop_rms_norm`` (where the kernels exist);
  on CPU with oneDNN on, ``onednn_broadcast_add``; ``inplace_reads``;
  on CPU the guard, as much of it as the configuration needs
  (``_guard_on_our_config``, ``_guard_with_onednn_off``).
- **The fallback's program** (``running_passes(..., optimize=False)``): none of the
  optimizations, only what makes the configuration safe (``float32_outputs``,
  ``transpose_perms``, ``onednn_broadcast_add`` with oneDNN on, ``inplace_reads``, the
  guard).

The order matters: the guard decides on the program as it will be saved, so it runs
last; ``loop_cache_layout`` reads loop variables as ``remove_loop_assign`` leaves them
(a copy in the way hides the concat it matches); ``loop_weight_matmul`` runs before the
guard so that the guard sees the ``addmm`` readers it creates.

This module knows the passes and the names of the configurations; it knows nothing of
models, directories or Paddle Inference's ``Config``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from ..options import DEVICES

logger = logging.getLogger("paddlenlp_ext")

# Which kernels run on oneDNN on CPU: Paddle's placement (every op with a oneDNN
# kernel), or none (``paddle_config.configure_cpu`` sets them).
ONEDNN_MODES = ("all", "off")
DEFAULT_ONEDNN = "all"

# Up to this many sequences per run, our oneDNN configuration runs a decode loop's weight
# products on the plain GEMM (loop_weight_matmul). That GEMM (MKL) streams the weights once
# for one row, but its time grows with the rows (at llama2-7B's MLP shape, one thread:
# 10.4 ms for 1 row, 19.4 for 2, 41.4 for 4), while oneDNN's matmul costs about the same
# for a few rows as for one. A llama2-7B-shaped layer's step (static cache, 256 prompt
# tokens, medians of 3, same tokens), plain GEMM against oneDNN: 108 against 128 ms at
# batch 2, 168 against 136 at batch 3, 178 against 122 at batch 4.
ADDMM_MAX_BATCH = 2


@dataclass(frozen=True)
class PassStep:
    """One pass of a pipeline: ``run(program, outputs)`` rewrites ``program`` in place and
    returns its report (``modified``, ``summary()``); ``outputs`` are the values the
    caller fetches after the run."""

    name: str
    run: Callable


@dataclass(frozen=True)
class PipelineReport:
    """``(step name, report)`` for every step run, in order."""

    reports: tuple

    @property
    def modified(self) -> bool:
        return any(report.modified for _, report in self.reports)

    def get(self, name: str):
        """The report of step ``name``, or None when it did not run."""
        return next((report for step, report in self.reports if step == name), None)

    def summary(self) -> str:
        return "; ".join(f"{name}: {report.summary()}" for name, report in self.reports)


def check_options(device: str, onednn: str, batch_size: int = 1) -> None:
    """Raise ValueError for an option no pipeline (and no configuration) exists for: a
    caller's mistake, never a reason to fall back."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if onednn not in ONEDNN_MODES:
        raise ValueError(f"onednn must be one of {', '.join(ONEDNN_MODES)}, got {onednn!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, got {batch_size!r}")


def _float32_outputs(program, outputs):
    from .float32_outputs import fetch_bfloat16_outputs_as_float32

    return fetch_bfloat16_outputs_as_float32(program, outputs)


def _transpose_perms(program, outputs):
    from .transpose_perms import state_transpose_perms_non_negative

    return state_transpose_perms_non_negative(program, outputs)


def _inplace_reads(program, outputs):
    from .inplace_reads import read_inplace_results

    return read_inplace_results(program, outputs)


def _remove_loop_assign(program, outputs):
    from .remove_loop_assign import remove_loop_assign

    return remove_loop_assign(program, outputs)


def _loop_cache_layout(program, outputs):
    from .loop_cache_layout import carry_loop_caches_permuted

    return carry_loop_caches_permuted(program, outputs)


def _loop_weight_matmul(program, outputs):
    from .loop_weight_matmul import run_loop_weight_matmuls_as_addmm

    return run_loop_weight_matmuls_as_addmm(program, outputs)


def _loop_float32_gemv(program, outputs):
    from ..native import load_float32_gemv
    from .loop_float32_gemv import run_loop_float32_matmuls_on_gemv

    return run_loop_float32_matmuls_on_gemv(program, outputs, load_kernel=load_float32_gemv)


def _loop_bfloat16_gemv(program, outputs):
    from ..native import load_bfloat16_gemv
    from .loop_bfloat16_gemv import run_loop_bfloat16_matmuls_on_gemv

    # ``load_bfloat16_gemv`` builds the kernel the first time (seconds): only for programs
    # that have such a product.
    return run_loop_bfloat16_matmuls_on_gemv(program, outputs, load_kernel=load_bfloat16_gemv)


def _loop_bfloat16_batched_matmul(program, outputs):
    from ..native import load_bfloat16_batched_matmul
    from .loop_batched_matmul import run_loop_bfloat16_matmuls_on_batched_kernel

    return run_loop_bfloat16_matmuls_on_batched_kernel(program, outputs, load_kernel=load_bfloat16_batched_matmul)


def _loop_float32_batched_matmul(program, outputs):
    from ..native import load_float32_batched_matmul
    from .loop_batched_matmul import run_loop_float32_matmuls_on_batched_kernel

    return run_loop_float32_matmuls_on_batched_kernel(program, outputs, load_kernel=load_float32_batched_matmul)


def _loop_rms_norm(program, outputs):
    from ..native import load_rms_norm
    from .loop_rms_norm import run_loop_rms_norms_on_kernel

    return run_loop_rms_norms_on_kernel(program, outputs, load_kernel=load_rms_norm)


def _broadcast_add(program, outputs):
    from .onednn_broadcast_add import copy_broadcast_add_operands

    return copy_broadcast_add_operands(program, outputs)


def _guard(program, outputs):
    from .onednn_inplace_guard import guard_onednn_inplace

    return guard_onednn_inplace(program, outputs)


def _guard_on_our_config(program, outputs):
    """Our oneDNN configuration deletes ``inplace_pass``, the alias's usual source, so the
    guard copies only what a configuration without it needs (conditions 5 and 6: values
    a loop carries in a blocked layout, values an if's branches yield), and the reads of
    programs holding ops oneDNN may give a blocked layout (``passes.onednn_layouts``):
    the differential test found such programs wrong with the reads unguarded, and no
    other. Elsewhere the read copies would only cost time (12% of a token at 128 prompt
    tokens on the benchmark's llama)."""
    from .onednn_inplace_guard import guard_onednn_inplace
    from .onednn_layouts import has_blocked_layout_ops

    return guard_onednn_inplace(program, outputs, reads=has_blocked_layout_ops(program))


def _guard_with_onednn_off(program, outputs):
    """oneDNN off still runs oneDNN kernels for bfloat16 ops that have no plain bfloat16
    kernel, with ``inplace_pass`` on (``needs_guard_with_onednn_off``)."""
    from .onednn_inplace_guard import OneDNNGuardReport, needs_guard_with_onednn_off

    if not needs_guard_with_onednn_off(program):
        return OneDNNGuardReport(0)
    return _guard(program, outputs)


# Paddle Inference cannot copy a bfloat16 output out: first, on every route, so that the
# passes after it see the cast that reads the output (the guard counts reads).
FLOAT32_OUTPUTS = PassStep("float32_outputs", _float32_outputs)
# Paddle Inference with oneDNN corrupts the heap on a negative perm entry: on every route
# (harmless elsewhere: the same permutation).
TRANSPOSE_PERMS = PassStep("transpose_perms", _transpose_perms)
REMOVE_LOOP_ASSIGN = PassStep("remove_loop_assign", _remove_loop_assign)
# oneDNN's matmul + add fusion drops the add's broadcast: wherever oneDNN's fuse passes
# run (Paddle's default CPU config, our "all"); before the guard, which sees the copies.
ONEDNN_BROADCAST_ADD = PassStep("onednn_broadcast_add", _broadcast_add)
# oneDNN, and Paddle Inference's CSE, lose an in-place write for the readers of the
# written value: they read the writer's result instead (the same buffer elsewhere), on
# every route. After the loop passes, whose
# rules read the copies as Paddle's translator writes them; before the guard.
INPLACE_READS = PassStep("inplace_reads", _inplace_reads)
LOOP_CACHE_LAYOUT = PassStep("loop_cache_layout", _loop_cache_layout)
LOOP_WEIGHT_MATMUL = PassStep("loop_weight_matmul", _loop_weight_matmul)
# Where MKL's one-row GEMM does not use a second thread (AMD processors: ``float32_gemv_pays``);
# before loop_weight_matmul, which keeps the products it leaves.
LOOP_FLOAT32_GEMV = PassStep("loop_float32_gemv", _loop_float32_gemv)
# Its attention products over the KV cache, where our float32 kernels run; after the
# weights' rules, before the guard.
LOOP_FLOAT32_BATCHED_MATMUL = PassStep("loop_float32_batched_matmul", _loop_float32_batched_matmul)
# Where the kernel exists (``native``: else the step keeps every matmul); before the
# guard, which sees its readers.
LOOP_BFLOAT16_GEMV = PassStep("loop_bfloat16_gemv", _loop_bfloat16_gemv)
# The attention's bfloat16 products over the KV cache; after the weights' (whose
# products it leaves to loop_bfloat16_gemv), before the guard.
LOOP_BFLOAT16_BATCHED_MATMUL = PassStep("loop_bfloat16_batched_matmul", _loop_bfloat16_batched_matmul)
# A decode loop's RMSNorms (eight small ops each) as one op, float32 and bfloat16, where
# the kernels exist; before the guard, which sees its readers.
LOOP_RMS_NORM = PassStep("loop_rms_norm", _loop_rms_norm)
# What Paddle's default CPU config needs (inplace_pass on): every program we save.
ONEDNN_GUARD = PassStep("onednn_inplace_guard", _guard)
# What our oneDNN configuration needs (inplace_pass deleted).
ONEDNN_GUARD_OURS = PassStep("onednn_inplace_guard", _guard_on_our_config)
# What our configuration with oneDNN off needs (inplace_pass on, oneDNN for bfloat16 ops).
ONEDNN_GUARD_OFF = PassStep("onednn_inplace_guard", _guard_with_onednn_off)


def float32_gemv_pays() -> bool:
    """Whether a decode loop's float32 weight products run on our kernel
    (``loop_float32_gemv``) rather than MKL's GEMM: on AMD processors, where MKL reads a
    one-row product at one core's speed whatever the thread count."""
    from ..cpu import is_amd

    return is_amd()


def saving_passes(remove_copies: bool = True) -> tuple[PassStep, ...]:
    """The passes of a program that leaves our hands (``convert``, the save hook)."""
    return ((FLOAT32_OUTPUTS, TRANSPOSE_PERMS) + ((REMOVE_LOOP_ASSIGN,) if remove_copies else ())
            + (ONEDNN_BROADCAST_ADD, INPLACE_READS, ONEDNN_GUARD))


def running_passes(device: str = "cpu", onednn: str = DEFAULT_ONEDNN, batch_size: int = 1, *,
                   remove_copies: bool = True, optimize: bool = True) -> tuple[PassStep, ...]:
    """The passes of a program our own predictor runs on ``device`` (oneDNN as ``onednn``
    says on CPU), fed ``batch_size`` sequences a run. ``remove_copies``: with
    ``remove_loop_assign`` first. ``optimize=False``: only the passes that make the
    configuration safe (the fallback's program)."""
    check_options(device, onednn, batch_size)
    steps = [FLOAT32_OUTPUTS, TRANSPOSE_PERMS]
    if optimize:
        if remove_copies:
            steps.append(REMOVE_LOOP_ASSIGN)
        steps.append(LOOP_CACHE_LAYOUT)
        if device == "cpu" and (onednn == "off" or batch_size <= ADDMM_MAX_BATCH):
            steps += [LOOP_FLOAT32_GEMV, LOOP_WEIGHT_MATMUL] if float32_gemv_pays() else [LOOP_WEIGHT_MATMUL]
        if device == "cpu":
            steps += [LOOP_BFLOAT16_GEMV, LOOP_BFLOAT16_BATCHED_MATMUL]
            if float32_gemv_pays():
                steps.append(LOOP_FLOAT32_BATCHED_MATMUL)
            steps.append(LOOP_RMS_NORM)
    if device == "cpu" and onednn != "off":
        steps.append(ONEDNN_BROADCAST_ADD)
    steps.append(INPLACE_READS)
    if device == "cpu":
        steps.append(ONEDNN_GUARD_OURS if onednn != "off" else ONEDNN_GUARD_OFF)
    return tuple(steps)


def run_passes(program, outputs: list, steps) -> PipelineReport:
    """Run ``steps`` on ``program`` in order (each rewrites it in place); ``outputs`` is
    the list of values the caller fetches afterwards: a step that replaces one of them
    replaces it in this list."""
    reports = []
    for step in steps:
        report = step.run(program, outputs)
        if report.modified:
            logger.debug("%s: %s", step.name, report.summary())
        reports.append((step.name, report))
    return PipelineReport(tuple(reports))
