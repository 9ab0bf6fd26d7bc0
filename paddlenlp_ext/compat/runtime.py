"""Workarounds of Paddle 3.3.1 for loading and running programs: scopes it never frees,
the Executor's order, the executor's garbage-collector thread, and the translation of
legacy branches writing saved buffers."""

from __future__ import annotations

import contextlib
import logging
import os

import paddle

logger = logging.getLogger("paddlenlp_ext")


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


# -- the executor's garbage collector on CPU ------------------------------------------------

# Paddle 3.3.1's new executor (Paddle Inference's, the Executor's) frees a CPU program's
# dead tensors on a thread of its own, one task per tensor while
# FLAGS_eager_delete_tensor_gb is 0, its default (InterpreterCoreEventGarbageCollector,
# paddle/fluid/framework/new_executor/garbage_collector/event_garbage_collector.cc), and
# that thread's work queue spins between tasks (allow_spinning). A decode step frees
# hundreds of tensors, so the thread spun through most of a core beside the threads that
# compute: measured on a 2-vCPU Zen 4, a toy layer decoding at two threads, it took 57% of
# a vCPU (the OpenMP worker got 50%), and a step cost 4.0 ms. With a threshold the
# garbage is freed once that many bytes have gathered, one task a batch: the thread took
# 3%, a step 2.2 ms; a llama2-7B-shaped layer's bfloat16 step (512 tokens, two threads,
# alternated with the default, 12 rounds) took 0.87x-0.92x the time. The batch is small
# beside what a step holds (10 MiB; a tensor larger than that is freed at once).
GARBAGE_BATCH_FLAG = "FLAGS_eager_delete_tensor_gb"
GARBAGE_BATCH_GB = 0.01
PADDLE_DEFAULT_GARBAGE_GB = 0.0


def garbage_batch_left_alone(environ, current_gb: float) -> str | None:
    """Why the executor's garbage-collection threshold stays as it is, or None when it is
    to be ``GARBAGE_BATCH_GB``: the user chose it (in the environment, which Paddle
    read when it loaded, or in this process, a value other than Paddle's default)."""
    if GARBAGE_BATCH_FLAG in environ:
        return f"{GARBAGE_BATCH_FLAG}={environ[GARBAGE_BATCH_FLAG]} is set"
    if current_gb != PADDLE_DEFAULT_GARBAGE_GB:
        return f"{GARBAGE_BATCH_FLAG} is {current_gb} in this process"
    return None


def batch_cpu_garbage_collection() -> None:
    """Have the executors this process creates from now on free dead tensors in batches of
    ``GARBAGE_BATCH_GB`` (see above), unless the user chose a threshold."""
    current = paddle.get_flags([GARBAGE_BATCH_FLAG])[GARBAGE_BATCH_FLAG]
    reason = garbage_batch_left_alone(os.environ, current)
    if reason is None:
        paddle.set_flags({GARBAGE_BATCH_FLAG: GARBAGE_BATCH_GB})
    else:
        logger.debug("the executor's garbage threshold left as it is (%s)", reason)


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
